"""The server's round loop on plain tensors: no model needed to check what it moves and counts."""

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch

from fedumm.config import RunConfig
from fedumm.engines.embedded import InProcess
from fedumm.federation import wire
from fedumm.federation.client import ClientData
from fedumm.federation.compression import Compression
from fedumm.federation.secure_aggregation import ClientPolicy
from fedumm.federation.server import RoundFailed, RoundRules, Server
from fedumm.federation.strategies import build_strategy
from fedumm.federation.update import ClientUpdate

CLIENTS = [ClientData(f"site-{i}", [None] * (10 * i)) for i in range(1, 5)]


def _train(bad=()):
    def train_client(client, params, rnd):
        value = float(client.client_id.split("-")[1])
        out = {k: v + value for k, v in params.items()}
        if client.client_id in bad:
            out["w"] = torch.full_like(out["w"], float("nan"))
        return ClientUpdate(client.client_id, out, len(client.data), 1)

    return train_client


@dataclass
class ModelFreeParts:
    """What the embedded engine's sites use of a run's parts, for clients that train by a
    function: no model, no data, only what the server moves and counts."""

    train_client: Callable[[ClientData, dict, int], ClientUpdate]
    clients: list[ClientData] = field(default_factory=lambda: CLIENTS)
    equal_weights: bool = False
    secure_threshold: int = 2
    cfg: RunConfig = field(init=False)
    compression: Compression = field(default_factory=Compression)

    def __post_init__(self):
        weights = "equal" if self.equal_weights else "partition"
        self.cfg = RunConfig.model_validate({"federation": {"client_weights": weights}})

    def secagg_policy(self, site: str) -> ClientPolicy:
        return ClientPolicy(self.secure_threshold, allow_minority=True)


def _first(params):
    return {"w0": float(params["w"][0])}


def server(
    train_client,
    per_round=4,
    evaluate=lambda p: {},
    strategy="fedavg",
    seed=0,
    clients=CLIENTS,
    **rules,
):
    """A server reaching `clients` in this process, each training by `train_client`;
    `rules`: RoundRules' fields."""
    equal, threshold = rules.get("equal_weights", False), rules.get("secure_threshold") or 2
    transport = InProcess(ModelFreeParts(train_client, clients, equal, threshold))
    return Server(
        clients,
        build_strategy(strategy),
        transport,
        evaluate,
        per_round,
        seed,
        RoundRules(**rules),
        progress=False,
    )


def test_one_round_moves_serialized_tensors_and_aggregates():
    start = {"w": torch.zeros(3)}
    final, records = server(_train(), evaluate=_first).run(start, rounds=1)
    # FedAvg of +1, +2, +3, +4 weighted by 10, 20, 30, 40 samples = 3.0
    assert torch.allclose(final["w"], torch.full((3,), 3.0))
    r = records[0]
    assert r.bytes_down == 4 * len(wire.pack(start))
    assert r.bytes_up == 4 * len(wire.pack(final))
    assert r.metrics == {"w0": 3.0} and r.rejected == []


def test_equal_weights_average_the_updates_whatever_the_clients_hold():
    final, _ = server(_train(), equal_weights=True).run({"w": torch.zeros(3)}, rounds=1)
    # (+1 +2 +3 +4) / 4 = 2.5, where weights by 10, 20, 30, 40 samples give 3.0
    assert torch.allclose(final["w"], torch.full((3,), 2.5))
    # Under secure aggregation the clients mask weight * update with the same weights.
    secure, _ = server(_train(), equal_weights=True, secure_threshold=3).run(
        {"w": torch.zeros(3)}, rounds=1
    )
    assert torch.allclose(secure["w"], torch.full((3,), 2.5), atol=1e-5)


def test_a_nan_update_is_rejected_logged_and_never_aggregated(caplog):
    with caplog.at_level(logging.WARNING, logger="fedumm"):
        final, records = server(_train(bad={"site-4"})).run({"w": torch.zeros(3)}, rounds=2)
    # Each round averages +1, +2, +3 with weights 10, 20, 30 = 14/6; site-4 never counts.
    assert torch.allclose(final["w"], torch.full((3,), 2 * 14 / 6), atol=1e-6)
    assert [r.rejected[0]["client_id"] for r in records] == ["site-4", "site-4"]
    assert "rejected update: client site-4: 'w' contains NaN" in caplog.text


def test_too_few_valid_updates_stop_the_run_clearly():
    bad = {c.client_id for c in CLIENTS}
    with pytest.raises(RoundFailed, match=r"round 1: 0 valid update\(s\) of 4 sampled"):
        server(_train(bad=bad)).run({"w": torch.ones(3)}, rounds=1)


def test_dropout_aggregates_what_arrived_and_is_seeded():
    engine = server(_train(), 4, dropout=0.3, min_clients=2)
    final, records = engine.run({"w": torch.zeros(1)}, rounds=5)
    for r in records:
        assert len(r.dropped) == 1 and r.dropped[0] not in r.client_metrics  # round(0.3 * 4)
        assert r.bytes_up == 3 * len(wire.pack({"w": torch.zeros(1)}))
    assert len({r.dropped[0] for r in records}) > 1
    again = server(_train(), 4, dropout=0.3, min_clients=2).run({"w": torch.zeros(1)}, rounds=5)
    assert torch.equal(again[0]["w"], final["w"])
    strict = server(_train(), 4, dropout=0.3, min_clients=4)
    with pytest.raises(RoundFailed, match="1 dropped out"):
        strict.run({"w": torch.zeros(1)}, rounds=1)


def test_update_norm_bound_rejects_large_updates(caplog):
    engine = server(_train(), 4, max_update_norm=3.5)
    with caplog.at_level(logging.WARNING, logger="fedumm"):
        _, records = engine.run({"w": torch.zeros(3)}, rounds=1)
    # site-k moves every coordinate by k: norm k * sqrt(3); only sites 1 and 2 are within 3.5
    assert sorted(r["client_id"] for r in records[0].rejected) == ["site-3", "site-4"]
    assert "update norm 5.196 exceeds the bound 3.5" in caplog.text


def test_client_sampling_is_seeded_and_partial():
    a = [[c.client_id for c in server(_train(), 2).sample(r)] for r in range(1, 6)]
    b = [[c.client_id for c in server(_train(), 2).sample(r)] for r in range(1, 6)]
    assert a == b and all(len(s) == 2 for s in a) and len({tuple(s) for s in a}) > 1


def test_cyclic_sampling_trains_every_client_once_a_cycle():
    """Cyclic sampling: each cycle of ceil(clients / per round) rounds visits every client,
    in a new seeded order each cycle; a cycle's short last slice is topped up without
    repeating a client within the round."""
    eight = [ClientData(f"site-{i}", [None] * 10) for i in range(1, 9)]

    def rounds(clients, per_round, first, last, seed=0):
        s = server(_train(), per_round, clients=clients, seed=seed)
        s.sampling = "cyclic"
        return [[c.client_id for c in s.sample(r)] for r in range(first, last + 1)]

    for cycle in (rounds(eight, 2, 1, 4), rounds(eight, 2, 5, 8)):
        assert sorted(sum(cycle, [])) == sorted(c.client_id for c in eight)
    assert rounds(eight, 2, 1, 4) != rounds(eight, 2, 5, 8)  # reshuffled
    assert rounds(eight, 2, 1, 8) == rounds(eight, 2, 1, 8)  # seeded
    assert rounds(eight, 2, 1, 8) != rounds(eight, 2, 1, 8, seed=1)
    three = rounds(CLIENTS, 3, 1, 2)  # 4 clients, 3 a round: 3, then 1 + 2 topped up
    assert all(len(set(r)) == 3 for r in three)
    assert set(sum(three, [])) == {c.client_id for c in CLIENTS}
    with pytest.raises(ValueError, match="client sampling 'round-robin' is neither"):
        Server(
            CLIENTS,
            build_strategy("fedavg"),
            InProcess(ModelFreeParts(_train())),
            dict,
            2,
            0,
            sampling="round-robin",
        )


def test_evaluation_cadence():
    engine = server(_train(), 4, lambda p: {"x": 1})
    engine.eval_every = 2
    _, records = engine.run({"w": torch.zeros(1)}, rounds=3)
    assert [bool(r.metrics) for r in records] == [False, True, True]  # every 2nd and the last


def test_stragglers_past_the_deadline_are_left_out():
    # Simulated time: site-k needs 10k; the server waits 25, so sites 3 and 4 are late.
    duration = lambda c: float(len(c.data))  # noqa: E731
    engine = server(_train(), 4, deadline=25.0, duration=duration)
    final, records = engine.run({"w": torch.zeros(1)}, rounds=2)
    assert [r.late for r in records] == [["site-3", "site-4"]] * 2
    assert all(set(r.client_metrics) == {"site-1", "site-2"} for r in records)
    # FedAvg of +1 and +2 weighted 10 and 20 = 5/3 per round
    assert torch.allclose(final["w"], torch.tensor([10 / 3]), atol=1e-6)
    strict = server(_train(), 4, deadline=5.0, duration=duration)
    with pytest.raises(RoundFailed, match="4 too late"):
        strict.run({"w": torch.zeros(1)}, rounds=1)
