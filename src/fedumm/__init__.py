"""fedumm: federated LoRA fine-tuning of unified multimodal models.

Start at `fedumm.recipe.FederatedRun` (what `fedumm run` executes); the packages below it are
data (ShapesWorld, partitioning), models (the unified model, LoRA), federation (client, engine,
strategies) and evaluation.
"""

__version__ = "0.1.0"

import logging

# bitsandbytes (model.quantization), imported by peft wherever it is installed, warns in every
# process on a CPU with AVX-512 BF16 that it could not fetch an optional kernel from the Hub;
# it runs on its own CPU kernels instead (docs/results/quantization.md).
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
