"""The tasks a run builds from its config, and the refusals before any work."""

from fedumm.config import load_config
from fedumm.models import load_processor
from fedumm.tasks import build_tasks
from tests.tiny import TINY_RUN


def tasks_of(*overrides):
    cfg = load_config("configs/quickstart.yaml", [*TINY_RUN, *overrides])
    return build_tasks(cfg, load_processor(cfg.model))


def test_each_named_task_is_built_with_a_label_per_training_sample(tiny_foundation):
    tasks = tasks_of(f"model.foundation={tiny_foundation}", "data.tasks=[vqa, generation]")
    assert list(tasks) == ["vqa", "generation"]
    for task in tasks.values():
        assert len(task.labels) == len(task.train) > 0
    assert tasks["vqa"].summary()["train_samples"] == 96
    assert tasks["generation"].summary()["train_samples"] == 48


def test_every_task_of_a_unified_run_is_scored_in_one_flat_dict(tiny_foundation):
    from fedumm.config import EvalConfig
    from fedumm.models import load
    from fedumm.tasks import evaluate

    tasks = tasks_of(f"model.foundation={tiny_foundation}", "data.tasks=[vqa, generation]")
    loaded = load(
        load_config("configs/quickstart.yaml", [f"model.foundation={tiny_foundation}"]).model
    )
    metrics = evaluate(tasks, loaded.model, loaded.processor, EvalConfig(images_per_prompt=1))
    assert "vqa_accuracy" in metrics and "geneval_overall" in metrics
