"""Compressed messages (issue 38) on every engine: FLARE's simulator, Flower's simulation and
the embedded engine's device pool give the embedded engine's adapter, losses, scores and
bytes per round, with error feedback's residual kept where each keeps a client's state (FLARE:
the site's state files; Flower: the node's context.state; the pool: this process, travelling
with the client to its worker). FLARE's POC carries compressed broadcasts in
test_flare.py's POC test.

Each test says its engine in its source ("--engine", "flare" / "flower"), which is how
tests/conftest.py keeps an engine's process runs on one pytest-xdist worker."""

import json

import pytest
import torch
from safetensors.torch import load_file

from fedumm.federation.compression import RESIDUAL
from fedumm.models.lora import is_fold
from tests.engines.test_flower import TWO_CLIENTS
from tests.tiny import run_tiny

UP, DOWN = "federation.compression.upload.", "federation.compression.broadcast."
COMPRESSED = {
    # top-k 10% of the change in int8 with error feedback; the model down in fp16
    "fedavg-topk-int8-ef": [
        "federation.strategy.name=fedavg",
        f"{UP}scheme=topk",
        f"{UP}fraction=0.1",
        f"{UP}values=int8",
        f"{UP}error_feedback=true",
        f"{DOWN}scheme=fp16",
    ],
    # the adapter's change in int8 with error feedback; Delta c_i exactly
    "scaffold-int8-ef": [
        "federation.strategy.name=scaffold",
        f"{UP}scheme=int8",
        f"{UP}error_feedback=true",
    ],
    # A's change in int4 with error feedback (B stays on the client); A down in bf16
    "fedsa_lora-int4-ef": [
        "federation.strategy.name=fedsa_lora",
        f"{UP}scheme=int4",
        f"{UP}error_feedback=true",
        f"{DOWN}scheme=bf16",
    ],
}


def _run(out, foundation, case, *overrides, cli=()):
    result = run_tiny(out, foundation, *TWO_CLIENTS, *COMPRESSED[case], *overrides, cli=cli)
    assert result.exit_code == 0, result.output
    return json.loads((out / "results.json").read_text()), load_file(
        out / "global_adapter.safetensors"
    )


def _assert_same(embedded, other, case: str) -> None:
    """The parity test_flare.py and test_flower.py hold engines to: the final scores, the
    adapter (1e-5), each round's bytes up and down, each client's loss (1e-6); and the run
    did compress and train."""
    (mine, a), (theirs, b) = embedded, other
    plain = mine["communication"]["adapter_message_bytes"]  # one fp32 message of the adapter
    if case.startswith("scaffold"):
        plain *= 2  # and Delta c_i, as large, which travels exactly
    assert theirs["final"]["metrics"] == mine["final"]["metrics"]
    assert a.keys() == b.keys() and len(a) > 0
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-5
    assert max(float(a[k].abs().max()) for k in a) > 1e-3  # the adapter did train
    for r, s in zip(mine["rounds"], theirs["rounds"], strict=True):
        assert (r["bytes_up"], r["bytes_down"]) == (s["bytes_up"], s["bytes_down"])
        assert r["rejected"] == s["rejected"] == []
        assert r["bytes_up"] < len(r["client_metrics"]) * plain  # compressed
        for site, metrics in r["client_metrics"].items():
            assert s["client_metrics"][site]["loss"] == pytest.approx(metrics["loss"], 1e-6)
        assert s["metrics"] == r["metrics"]


def _residuals(state: dict) -> dict:
    return {k: v for k, v in state.items() if k.startswith(RESIDUAL)}


def _embedded_states(out) -> dict:
    """site -> its state as the embedded run's client_states/ holds it at the end."""
    files = sorted((out / "client_states").glob("site-*.safetensors"))
    return {f.name.split(".")[0]: load_file(f) for f in files}


# Each engine's process runs take 20-45 s, so these are slow: by default the engines' own parity
# tests carry compressed messages (test_flare.py's simulator int4 uploads with error feedback,
# its POC int8 masked uploads; test_flower.py's secure aggregation int8 with error feedback;
# test_device_pool.py SCAFFOLD int8 and FedSA-LoRA int4 with error feedback), and a Flower node
# keeps whatever state the site holds (test_a_flower_nodes_state_carries_the_residual below).
# Here, in addition: top-k, and the residual compared in the sites' state files.
@pytest.mark.slow
@pytest.mark.parametrize("case", list(COMPRESSED))
def test_compressed_flare_simulator_matches_the_embedded_engine(tiny_foundation, tmp_path, case):
    """FLARE's simulator: the embedded engine's results; each site's state file after its
    last round holds the embedded client's residual (a key per tensor it sends, the same
    values) beside its strategy's state."""
    embedded = _run(tmp_path / "embedded", tiny_foundation, case)
    devices = "flare.site_devices={site-1: cpu, site-2: cpu}"
    flare = _run(tmp_path / "flare", tiny_foundation, case, devices, cli=["--engine", "flare"])
    _assert_same(embedded, flare, case)
    states = _embedded_states(tmp_path / "embedded")
    assert sorted(states) == ["site-1", "site-2"]
    for site, state in states.items():
        files = sorted((tmp_path / "flare" / "flare" / "state" / site).glob("state-*"))
        assert files, f"{site} kept no state file"
        kept = load_file(files[-1])
        assert kept.keys() == state.keys()
        assert _residuals(kept) and all(v.abs().max() > 0 for v in _residuals(kept).values())
        uploaded = {k for k in embedded[1] if not is_fold(k)}
        if case == "fedsa_lora-int4-ef":  # only A travels: B stays on the client
            uploaded = {k for k in uploaded if "lora_A" in k}
        assert {k[len(RESIDUAL) :] for k in _residuals(kept)} == uploaded
        assert all(torch.allclose(kept[k], state[k], atol=1e-6) for k in state)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(COMPRESSED))
def test_compressed_flower_simulation_matches_the_embedded_engine(tiny_foundation, tmp_path, case):
    """Flower's simulation: the embedded engine's results, each node's residual and strategy
    state kept in its context.state between rounds (a lost residual changes round 2's
    upload, and so the adapter)."""
    embedded = _run(tmp_path / "embedded", tiny_foundation, case)
    flower = _run(tmp_path / "flower", tiny_foundation, case, cli=["--engine", "flower"])
    _assert_same(embedded, flower, case)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(COMPRESSED))
def test_compressed_device_pool_gives_the_one_device_federation(tiny_foundation, tmp_path, case):
    """Two CPU workers (three clients: this process trains two, the worker one): the results
    and adapter of one device exactly, and the same residuals in client_states/."""
    three = ["federation.num_clients=3", "federation.clients_per_round=3"]
    one = _run(tmp_path / "one", tiny_foundation, case, *three)
    two = _run(tmp_path / "two", tiny_foundation, case, *three, "runtime.devices=[cpu, cpu]")
    _assert_same(one, two, case)
    assert all(torch.equal(one[1][k], two[1][k]) for k in one[1])
    for r, s in zip(one[0]["rounds"], two[0]["rounds"], strict=True):
        assert r["client_metrics"].keys() == s["client_metrics"].keys()
        for site, metrics in r["client_metrics"].items():
            assert s["client_metrics"][site]["loss"] == metrics["loss"]
    a, b = _embedded_states(tmp_path / "one"), _embedded_states(tmp_path / "two")
    assert sorted(a) == sorted(b) == ["site-1", "site-2", "site-3"]
    for site in a:
        assert _residuals(a[site]) and a[site].keys() == b[site].keys()
        assert all(torch.equal(a[site][k], b[site][k]) for k in a[site])


def test_a_flower_nodes_state_carries_the_residual():
    """What a Flower node keeps of its site between messages (context.state): the residual
    beside the strategy's state, every key and value."""
    from types import SimpleNamespace

    from fedumm.engines.flower import _keep, _restore

    state = {"control/w": torch.ones(2), RESIDUAL + "w": torch.tensor([0.5, -0.25, 1e-9])}
    kept, sessions = _keep(SimpleNamespace(state=state, sessions={}))
    back = SimpleNamespace(state={RESIDUAL + "stale": torch.zeros(1)}, sessions={}, parts=None)
    _restore(back, kept, sessions)
    assert back.state.keys() == state.keys()
    assert all(torch.equal(back.state[k], v) for k, v in state.items())
