"""The run recipe's phases, each on its own, on a tiny federation (seconds, not a whole run)."""

from __future__ import annotations

import json

import pytest

from fedumm.config import load_config
from fedumm.engines.embedded import connect
from fedumm.federation import checkpoint
from fedumm.federation.client import ClientData
from fedumm.recipe import FederatedRun, claims
from fedumm.results import RoundResult
from tests.tiny import TINY_RUN

ZERO = dict(
    clients=[], metrics={}, bytes_up=0, bytes_down=0, seconds=0, train_seconds=0, eval_seconds=0
)
NO_BASELINES = ["baselines.zero_shot=false", "baselines.local=false", "baselines.centralized=false"]


def tiny_config(foundation, *overrides):
    items = [*TINY_RUN, f"model.foundation={foundation}", *overrides]
    return load_config("configs/quickstart.yaml", items)


def set_up(foundation, out, *overrides) -> FederatedRun:
    run = FederatedRun(tiny_config(foundation, *overrides), out, connect, progress=False)
    run.setup()
    return run


def test_setup_builds_the_parts_and_the_results_header(tiny_foundation, tmp_path):
    run = set_up(tiny_foundation, tmp_path, "attack.kind=sign_flip", "attack.fraction=0.5")
    assert len(run.parts.clients) == 3 and run.params is run.parts.initial
    assert list(run.results) == ["config", "model", "runtime", "baselines", "attack"]
    assert run.results["config"]["federation"]["num_clients"] == 3
    assert run.results["attack"]["clients"] == run.parts.malicious != []


def test_zero_shot_evaluates_the_fresh_adapter_only_when_asked(tiny_foundation, tmp_path):
    run = set_up(tiny_foundation, tmp_path / "on")
    run.zero_shot()
    assert set(run.baselines.zero_shot.metrics) >= {"vqa_accuracy"}
    off = set_up(tiny_foundation, tmp_path / "off", "baselines.zero_shot=false")
    off.zero_shot()
    assert off.baselines.present() == {}


def test_rounds_record_every_round_and_checkpoint(tiny_foundation, tmp_path):
    run = set_up(tiny_foundation, tmp_path, "checkpoint_every=1")
    run.rounds()
    assert [r.round for r in run.records] == [1, 2]
    assert run.results["final"].metrics == run.records[-1].metrics
    assert checkpoint.load(tmp_path).round == 2
    assert run.params is not run.parts.initial


def test_resume_continues_after_the_checkpoints_round(tiny_foundation, tmp_path):
    first = set_up(tiny_foundation, tmp_path, "checkpoint_every=1", "federation.rounds=1")
    first.rounds()
    again = set_up(tiny_foundation, tmp_path, "checkpoint_every=1", "federation.rounds=1")
    again.resume()
    assert again.first_round == 2 and again.records == first.records
    for key, value in first.params.items():
        assert again.params[key].equal(value)
    other = set_up(tiny_foundation, tmp_path, "checkpoint_every=1", "federation.lr=0.5")
    with pytest.raises(checkpoint.CheckpointError, match="another config"):
        other.resume()
    other.resume(force=True)
    assert other.first_round == 2


def test_local_baseline_trains_each_client_for_its_share_of_the_rounds(
    tiny_foundation, tmp_path, monkeypatch
):
    run = set_up(tiny_foundation, tmp_path)
    trained = []
    monkeypatch.setattr(
        run, "_train_alone", lambda c, steps, *a: trained.append((c.client_id, steps)) or {"a": 1}
    )
    run.local_baseline()
    # 2 of 3 clients a round for 2 rounds of 2 steps: ceil(2 * 2/3 * 2) = 3 steps each
    assert trained == [("site-1", 3), ("site-2", 3), ("site-3", 3)]
    assert [c.client_id for c in run.baselines.local.clients] == [
        "site-1",
        "site-2",
        "site-3",
    ]


def test_centralized_baseline_takes_as_many_steps_as_the_federation(
    tiny_foundation, tmp_path, monkeypatch
):
    run = set_up(tiny_foundation, tmp_path)
    run.records = [
        RoundResult(
            round=1, **ZERO, client_metrics={"site-1": {"steps": 2}, "site-2": {"steps": 5}}
        ),
        RoundResult(round=2, **ZERO, client_metrics={"site-3": {"steps": 4}}),
    ]
    trained = []
    monkeypatch.setattr(
        run, "_train_alone", lambda c, steps, *a: trained.append((c, steps)) or {"a": 1}
    )
    run.centralized_baseline()
    pooled, steps = trained[0]
    assert steps == 11 and len(pooled.data) == len(run.parts.partition.pooled)
    assert run.baselines.centralized.metrics == {"a": 1}


def test_finish_writes_results_adapter_and_report(tiny_foundation, tmp_path):
    run = set_up(tiny_foundation, tmp_path, *NO_BASELINES, "federation.rounds=1")
    run.engine_info = {"engine": "test"}
    run.rounds()
    run.finish(1.5)
    stored = json.loads((tmp_path / "results.json").read_text())
    assert list(stored)[-4:] == ["data", "wall_seconds", "setup_seconds", "engine"]
    assert stored["wall_seconds"] == 1.5 and stored["communication"]["total_bytes"] > 0
    assert (tmp_path / "global_adapter.safetensors").stat().st_size > 0
    assert "federated LoRA" in (tmp_path / "report.md").read_text()


@pytest.mark.parametrize("resume", [False, True])
def test_run_calls_the_phases_in_order_and_closes_on_failure(
    tiny_foundation, tmp_path, monkeypatch, resume
):
    run = FederatedRun(tiny_config(tiny_foundation), tmp_path, connect, progress=False)
    called, closed = [], []
    phases = ["resume", "zero_shot", "rounds", "local_baseline", "centralized_baseline"]
    for phase in phases:
        monkeypatch.setattr(run, phase, lambda *a, phase=phase: called.append(phase))

    def fail(seconds):
        raise RuntimeError("disk full")

    monkeypatch.setattr(run, "finish", fail)
    real_setup = run.setup

    def setup(resume=False):
        real_setup(resume)
        run.tracker.close = closed.append
        run.transport.close = lambda: closed.append("transport")

    monkeypatch.setattr(run, "setup", setup)
    with pytest.raises(RuntimeError, match="disk full"):
        run.run(resume=resume)
    first = "resume" if resume else "zero_shot"
    assert called == [first, "rounds", "local_baseline", "centralized_baseline"]
    assert closed == [True, "transport"]  # the tracker is told the run failed


def test_claims_follow_the_client_weights(tiny_foundation):
    fed = tiny_config(tiny_foundation).federation
    clients = [ClientData("site-1", [0] * 40), ClientData("site-2", [0] * 10)]
    by_size = claims(fed.model_copy(update={"client_weights": "partition"}), clients)
    assert by_size.samples("site-1") == 40 and by_size.max_steps("site-2") == fed.local_steps
    capped = fed.model_copy(update={"client_weights": "capped", "max_claimed_samples": 20})
    assert claims(capped, clients).max_samples == 20
    equal = claims(fed.model_copy(update={"client_weights": "equal"}), clients)
    assert equal.samples is None and equal.max_steps("site-1") == fed.local_steps
