"""`fedumm run` at tiny scale, as a user calls it, for the end-to-end tests."""

from typer.testing import CliRunner

from fedumm.cli import app

runner = CliRunner()

TINY_RUN = [
    "data.train_samples=96", "data.test_samples=24", "partition.min_samples=4",
    "federation.num_clients=3", "federation.clients_per_round=2", "federation.rounds=2",
    "federation.local_steps=2", "federation.batch_size=8", "lora.r=2", "eval.batch_size=24",
    "data.generation.train_samples=48", "data.generation.test_prompts_per_tag=2",
    "eval.images_per_prompt=2", "eval.every=1",
]  # fmt: skip


def run_tiny(out, foundation, *overrides, cli=()):
    """`fedumm run` with TINY_RUN and `overrides` as --set items, plus `cli` options."""
    args = ["run", "configs/quickstart.yaml", "-o", str(out), "--quiet", *cli]
    for item in [*TINY_RUN, f"model.foundation={foundation}", *overrides]:
        args += ["--set", item]
    return runner.invoke(app, args)
