import logging

import pytest
import torch

from fedumm.engines.embedded import InProcess
from fedumm.federation.server import Server
from fedumm.federation.strategies.fedavg import FedAvg
from fedumm.federation.update import (
    Claims,
    ClientUpdate,
    UpdateRejected,
    validate_update,
)
from tests.federation.test_server import CLIENTS, ModelFreeParts, server

REF = {"a": torch.zeros(2, 3), "b": torch.zeros(4)}


def _with(**params):
    return ClientUpdate("site-7", {**{k: v.clone() for k, v in REF.items()}, **params}, 10, 1)


@pytest.mark.parametrize(
    "update, reason",
    [
        (ClientUpdate("site-7", {"a": torch.zeros(2, 3)}, 10, 1), "missing 1 key(s), e.g. 'b'"),
        (_with(c=torch.zeros(1)), "unexpected 1 key(s), e.g. 'c'"),
        (_with(a=torch.zeros(3, 2)), "'a' has shape (3, 2), expected (2, 3)"),
        (_with(b=torch.zeros(4, dtype=torch.float64)), "'b' has dtype torch.float64"),
        (_with(b=torch.tensor([0.0, float("nan"), 0.0, 0.0])), "'b' contains NaN or infinite"),
        (_with(a=torch.full((2, 3), float("inf"))), "'a' contains NaN or infinite"),
        (ClientUpdate("site-7", dict(REF), 0, 1), "num_samples must be a positive integer"),
        (ClientUpdate("site-7", dict(REF), 10, 0), "num_steps must be at least 1, got 0"),
        (ClientUpdate("site-7", dict(REF), 5000, 1), "claims 5000 samples; its partition holds 10"),
        (ClientUpdate("site-7", dict(REF), 10, 9), "claims 9 local steps, more than the 4 it was"),
    ],
)
def test_malformed_updates_are_rejected_with_the_reason(update, reason):
    claims = Claims(samples=lambda cid: 10, max_steps=lambda cid: 4)
    with pytest.raises(UpdateRejected) as err:
        validate_update(update, REF, claims=claims)
    assert "client site-7" in str(err.value) and reason in str(err.value)


def test_a_well_formed_update_passes():
    validate_update(_with(), REF)


def test_a_claim_above_the_cap_is_rejected():
    update = ClientUpdate("site-7", {k: v.clone() for k, v in REF.items()}, 900, 1)
    with pytest.raises(UpdateRejected, match="claims 900 samples, more than the 500"):
        validate_update(update, REF, claims=Claims(max_samples=500))
    validate_update(update, REF, claims=Claims(max_samples=900))


def _claiming(samples=None, steps=1, value=1.0):
    """Clients that add `value` to the model; site-4 claims `samples` and `steps`."""

    def train_client(client, params, rnd):
        n = samples if samples is not None and client.client_id == "site-4" else len(client.data)
        s = steps if client.client_id == "site-4" else 1
        return ClientUpdate(client.client_id, {k: v + value for k, v in params.items()}, n, s)

    return train_client


def test_weight_inflation_and_zero_steps_never_reach_the_aggregate():
    sizes = {c.client_id: len(c.data) for c in CLIENTS}
    claims = Claims(samples=sizes.__getitem__, max_steps=lambda cid: 1)
    start = {"w": torch.zeros(2)}
    inflated, records = server(_claiming(samples=10_000), claims=claims).run(start, 1)
    assert records[0].rejected[0]["client_id"] == "site-4"
    assert "claims 10000 samples; its partition holds 40" in records[0].rejected[0]["reason"]
    # FedNova divides by the steps: a claim of 0 used to make the aggregate NaN
    nova, records = server(_claiming(steps=0), strategy="fednova", claims=claims).run(start, 1)
    assert torch.isfinite(nova["w"]).all() and records[0].rejected[0]["client_id"] == "site-4"


class Overflowing(FedAvg):
    """A server optimizer that overflows: its aggregate of valid updates is infinite."""

    def aggregate(self, global_params, updates):
        return {k: v * 1e39 for k, v in super().aggregate(global_params, updates).items()}


def test_a_non_finite_aggregate_is_refused_and_the_model_kept(caplog):
    """Every update valid, the aggregate not: the round is aborted, logged, the model kept."""
    engine = Server(
        CLIENTS,
        Overflowing(),
        InProcess(ModelFreeParts(_claiming())),
        lambda p: {},
        4,
        seed=0,
        progress=False,
    )
    with caplog.at_level(logging.ERROR, logger="fedumm"):
        final, records = engine.run({"w": torch.ones(2)}, 1)
    assert torch.equal(final["w"], torch.ones(2))
    assert "NaN or infinite values" in records[0].aborted
    assert "round 1 aborted, the global model stays as it was" in caplog.text
