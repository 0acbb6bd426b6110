"""The NVIDIA FLARE engine: the same job through FLARE's simulator gives the embedded engine's
adapter, for FedAvg and for SCAFFOLD (whose control variates live in the client processes)."""

import json

import pytest
from safetensors.torch import load_file

from tests.tiny import run_tiny

TWO_CLIENTS = ["federation.num_clients=2", "federation.clients_per_round=2", "threads=1",
               "baselines.local=false", "baselines.centralized=false"]  # fmt: skip


@pytest.mark.parametrize("strategy", ["fedavg", "scaffold"])
def test_flare_simulator_matches_the_embedded_engine(tiny_foundation, tmp_path, strategy):
    runs = {}
    for engine in ("embedded", "flare"):
        out = tmp_path / engine
        name = f"federation.strategy.name={strategy}"
        result = run_tiny(out, tiny_foundation, *TWO_CLIENTS, name, cli=["--engine", engine])
        assert result.exit_code == 0, result.output
        runs[engine] = (json.loads((out / "results.json").read_text()),
                        load_file(out / "global_adapter.safetensors"))  # fmt: skip
    (embedded, a), (flare, b) = runs["embedded"], runs["flare"]
    assert a.keys() == b.keys() and len(a) > 0
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-5
    assert max(float(a[k].abs().max()) for k in a) > 1e-3  # the adapter did train
    for mine, theirs in zip(embedded["rounds"], flare["rounds"]):
        assert mine["bytes_up"] == theirs["bytes_up"] and mine["bytes_down"] == theirs["bytes_down"]
        for site, metrics in mine["client_metrics"].items():
            assert theirs["client_metrics"][site]["loss"] == pytest.approx(metrics["loss"], 1e-6)
    # Only adapters travel, from round 1 on: no message carries the base model.
    full = flare["communication"]["full_model_message_bytes"]
    assert all(r["bytes_down"] < full for r in flare["rounds"])
    assert (tmp_path / "flare" / "report.md").is_file()
    assert (tmp_path / "flare" / "flare" / "fedumm" / "server" / "log.txt").is_file()


def test_flare_refuses_what_it_cannot_do_yet(tiny_foundation, tmp_path):
    result = run_tiny(tmp_path / "a", tiny_foundation, "federation.strategy.name=fedsa_lora",
                      cli=["--engine", "flare"])  # fmt: skip
    assert result.exit_code == 2 and "fedsa_lora keeps a personal adapter" in result.output
    result = run_tiny(tmp_path / "b", tiny_foundation, cli=["--engine", "ftp"])
    assert result.exit_code == 2
    assert "engine: Input should be 'embedded' or 'flare'" in result.output
