"""fedumm: federated LoRA fine-tuning of unified multimodal models.

Start at `fedumm.recipe.FederatedRun` (what `fedumm run` executes); the packages below it are
data (ShapesWorld, partitioning), models (the unified model, LoRA), federation (client, engine,
strategies) and evaluation.
"""

__version__ = "0.1.0"
