"""`fedumm run` at tiny scale, as a user calls it, for the end-to-end tests."""

from typer.testing import CliRunner

from fedumm.cli import app

runner = CliRunner()

TINY_RUN = [
    "data.train_samples=96",
    "data.test_samples=24",
    "partition.min_samples=4",
    "federation.num_clients=3",
    "federation.clients_per_round=2",
    "federation.rounds=2",
    "federation.local_steps=2",
    "federation.batch_size=8",
    "lora.r=2",
    "eval.batch_size=24",
    "data.generation.train_samples=48",
    "data.generation.test_prompts_per_tag=2",
    "eval.images_per_prompt=2",
    "eval.every=1",
    "federation.lr_decay=none",  # two rounds at one lr (cosine has tests of its own)
]


def run_tiny(out, foundation, *overrides, cli=()):
    """`fedumm run` with TINY_RUN and `overrides` as --set items, plus `cli` options."""
    args = ["run", "configs/quickstart.yaml", "-o", str(out), "--quiet", *cli]
    for item in [*TINY_RUN, f"model.foundation={foundation}", *overrides]:
        args += ["--set", item]
    return runner.invoke(app, args)


def client_losses(results: dict) -> list[float]:
    """The clients' mean training loss in each round of a run's results."""
    return [
        sum(m["loss"] for m in r["client_metrics"].values()) / len(r["client_metrics"])
        for r in results["rounds"]
    ]


def assert_trained(results: dict) -> None:
    """Training moved the model: the clients' loss fell from the first round to the last."""
    losses = client_losses(results)
    assert losses[-1] < losses[0], f"the clients' loss did not fall: {losses}"


def wait_for_checkpoint(proc, out, at_least: int, timeout: float = 300) -> None:
    """Wait until the run `proc` writes to `out` has checkpointed round `at_least` (or ended)."""
    import json
    import time
    from pathlib import Path

    manifest, deadline = Path(out) / "checkpoint.json", time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if manifest.is_file() and json.loads(manifest.read_text())["round"] >= at_least:
            return
        time.sleep(0.05)
