"""Checkpoint and resume: a run killed with SIGKILL, then resumed, ends as if never killed."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from fedumm.cli import app
from fedumm.federation import checkpoint
from fedumm.federation.strategies import build_strategy
from tests.tiny import TINY_RUN, run_tiny, runner, wait_for_checkpoint

from .strategies.conftest import update

LONGER = ["federation.rounds=6", "federation.strategy.name=scaffold", "baselines.local=false"]


def _without_timings(node):
    if isinstance(node, dict):
        return {k: _without_timings(v) for k, v in node.items() if "seconds" not in k}
    if isinstance(node, list):
        return [_without_timings(v) for v in node]
    return node


def _command(out, foundation):
    args = [
        sys.executable,
        "-m",
        "fedumm.cli",
        "run",
        "configs/quickstart.yaml",
        "-o",
        str(out),
        "--quiet",
    ]
    for item in [*TINY_RUN, f"model.foundation={foundation}", *LONGER]:
        args += ["--set", item]
    return args


def test_sigkill_then_resume_gives_identical_results(tiny_foundation, tmp_path):
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    assert run_tiny(clean, tiny_foundation, *LONGER).exit_code == 0

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        _command(killed, tiny_foundation),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    wait_for_checkpoint(proc, killed, 2)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "results.json").exists()
    saved = checkpoint.load(killed).records  # timings differ per run: they show what was reused

    # Only --resume: the config comes from the checkpoint.
    result = runner.invoke(app, ["run", "--resume", str(killed), "--quiet"])
    assert result.exit_code == 0, result.output
    a = json.loads((clean / "results.json").read_text())
    b = json.loads((killed / "results.json").read_text())
    assert _without_timings(a) == _without_timings(b)
    assert [r["seconds"] for r in b["rounds"][: len(saved)]] == [r["seconds"] for r in saved]
    assert (clean / "global_adapter.safetensors").read_bytes() == (
        killed / "global_adapter.safetensors"
    ).read_bytes()


def test_corrupted_checkpoint_and_other_config_are_refused(tiny_foundation, tmp_path):
    assert run_tiny(tmp_path, tiny_foundation, "baselines.local=false").exit_code == 0
    result = run_tiny(tmp_path, tiny_foundation, "seed=3", cli=["--resume", str(tmp_path)])
    assert result.exit_code == 1 and "was run with another config" in result.output
    payload = tmp_path / json.loads((tmp_path / checkpoint.MANIFEST).read_text())["file"]
    payload.write_bytes(payload.read_bytes()[:-100])  # truncated
    result = run_tiny(tmp_path, tiny_foundation, cli=["--resume", str(tmp_path)])
    assert result.exit_code == 1 and "corrupted or truncated" in result.output
    with pytest.raises(checkpoint.CheckpointError, match="does not exist"):
        checkpoint.load(tmp_path / "nowhere")


def test_strategy_state_round_trips():
    s = build_strategy("fedadam")
    s.aggregate({"w": torch.zeros(2)}, [update("a", {"w": [1.0, -1.0]}, 1)])
    t = build_strategy("fedadam")
    t.load_state_dict(s.state_dict())
    nxt = [update("a", {"w": [0.5, 0.5]}, 1)]
    start = {"w": torch.tensor([0.1, 0.2])}
    assert torch.equal(s.aggregate(start, nxt)["w"], t.aggregate(start, nxt)["w"])
