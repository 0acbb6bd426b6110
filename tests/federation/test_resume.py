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


TOPK_EF = [
    "federation.compression.upload.scheme=topk",
    "federation.compression.upload.fraction=0.1",
    "federation.compression.upload.values=int8",
    "federation.compression.upload.error_feedback=true",
    "federation.compression.broadcast.scheme=int8",
    "federation.rounds=4",
    "baselines.local=false",
    "baselines.centralized=false",
]


def _final_states(out) -> dict:
    """client -> its state in the files the run's last checkpoint names (client_states/)."""
    from safetensors.torch import load_file

    named = checkpoint.load(out).client_states
    return {cid: load_file(out / "client_states" / name) for cid, name in named.items()}


def test_a_resumed_run_continues_each_clients_residual(tiny_foundation, tmp_path, monkeypatch):
    """Error feedback (top-k 10% in int8): a run that fails in round 3 of 4, after a client's
    upload changed its residual in memory, resumed from round 2's checkpoint (each client's
    residual in client_states/, the files the checkpoint names) ends as the run never
    interrupted: its results, adapter bytes and every client's final residual."""
    from fedumm.federation.compression import RESIDUAL, Compression

    clean, stopped = tmp_path / "clean", tmp_path / "stopped"
    result = run_tiny(clean, tiny_foundation, *TOPK_EF)
    assert result.exit_code == 0, result.output
    pack = Compression.pack_upload

    def failing(self, upload, reference, exact, state, rnd, number):
        blob = pack(self, upload, reference, exact, state, rnd, number)
        if rnd == 3:  # after the residual changed: it must not count
            raise RuntimeError("the machine went away")
        return blob

    with monkeypatch.context() as patch:
        patch.setattr(Compression, "pack_upload", failing)
        result = run_tiny(stopped, tiny_foundation, *TOPK_EF)
    assert result.exit_code == 1 and "the machine went away" in result.output
    assert not (stopped / "results.json").exists()
    assert checkpoint.load(stopped).round == 2
    kept = _final_states(stopped)
    assert len(kept) == 3  # three clients, two a round: every one trained by round 2
    for state in kept.values():
        assert state and all(k.startswith(RESIDUAL) for k in state)
        assert all(float(v.abs().max()) > 0 for v in state.values())

    result = runner.invoke(app, ["run", "--resume", str(stopped), "--quiet"])
    assert result.exit_code == 0, result.output
    a = json.loads((clean / "results.json").read_text())
    b = json.loads((stopped / "results.json").read_text())
    assert _without_timings(a) == _without_timings(b)
    assert (clean / "global_adapter.safetensors").read_bytes() == (
        stopped / "global_adapter.safetensors"
    ).read_bytes()
    mine, theirs = _final_states(clean), _final_states(stopped)
    assert mine.keys() == theirs.keys() == kept.keys()
    for cid, state in mine.items():
        assert state.keys() == theirs[cid].keys()
        assert all(torch.equal(v, theirs[cid][k]) for k, v in state.items())
    assert any(  # the rounds after the checkpoint changed them
        not torch.equal(v, kept[cid][k]) for cid, s in theirs.items() for k, v in s.items()
    )
