"""Several devices: a round's clients train in parallel, one worker per device, and the
federation ends exactly as on one device (here two CPU workers stand in for two GPUs)."""

import json
import multiprocessing

import pytest
import torch
from safetensors.torch import load_file

from fedumm.engines.embedded import DevicePool
from tests.tiny import run_tiny

THREE = [
    "federation.num_clients=3",
    "federation.clients_per_round=3",
    "threads=1",
    "baselines.local=false",
    "baselines.centralized=false",
]


def _without_timings(node):
    if isinstance(node, dict):
        return {
            k: _without_timings(v)
            for k, v in node.items()
            if "seconds" not in k and k not in ("config", "runtime", "wall")
        }
    if isinstance(node, list):
        return [_without_timings(v) for v in node]
    return node


# By default SCAFFOLD (state that travels with the client to its worker) and FedSA-LoRA
# (personalized: each client's own B); FedAvg takes the same way through the pool with less to
# carry, so it is slow (it starts two worker processes, as each case does).
@pytest.mark.parametrize(
    "strategy", [pytest.param("fedavg", marks=pytest.mark.slow), "scaffold", "fedsa_lora"]
)
def test_two_device_workers_give_the_one_device_federation(tiny_foundation, tmp_path, strategy):
    """With compressed uploads and error feedback, whose residual the main process keeps
    (SCAFFOLD: int8, its Delta c_i exact; FedSA-LoRA: int4; residual states compared in
    test_compression_engines.py, slow)."""
    upload = "int4" if strategy == "fedsa_lora" else "int8"
    compressed = [
        f"federation.compression.upload.scheme={upload}",
        "federation.compression.upload.error_feedback=true",
    ]
    runs = {}
    for name, devices in (("one", []), ("two", ["runtime.devices=[cpu, cpu]"])):
        out = tmp_path / name
        result = run_tiny(
            out,
            tiny_foundation,
            *THREE,
            f"federation.strategy.name={strategy}",
            *compressed,
            *devices,
        )
        assert result.exit_code == 0, result.output
        runs[name] = json.loads((out / "results.json").read_text())
    assert _without_timings(runs["one"]) == _without_timings(runs["two"])
    assert runs["two"]["runtime"]["devices"] == ["cpu", "cpu"]
    a = load_file(tmp_path / "one" / "global_adapter.safetensors")
    b = load_file(tmp_path / "two" / "global_adapter.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    losses = [m["loss"] for r in runs["two"]["rounds"] for m in r["client_metrics"].values()]
    assert len(losses) == 6 and len(set(losses)) == 6  # every client trained, each its own data


def test_a_failing_worker_is_raised_with_its_device(caplog):
    pool = DevicePool.__new__(DevicePool)
    mine, theirs = multiprocessing.Pipe()
    theirs.send(("error", "OutOfMemoryError", "CUDA out of memory", "Traceback ..."))
    with pytest.raises(torch.OutOfMemoryError, match="on cuda:1: CUDA out of memory"):
        pool._answer(torch.device("cuda:1"), mine)
    theirs.send(("error", "KeyError", "'site-9'", "Traceback ..."))
    with pytest.raises(RuntimeError, match="the worker on cuda:1 failed: KeyError"):
        pool._answer(torch.device("cuda:1"), mine)
    theirs.close()
    with pytest.raises(RuntimeError, match="the worker on cuda:1 died"):
        pool._answer(torch.device("cuda:1"), mine)
