"""What a run builds from its config, and what a client does with it."""

from __future__ import annotations

import pytest

from fedumm.config import load_config
from fedumm.parts import build_parts
from tests.tiny import TINY_RUN


def parts_of(foundation, *overrides):
    items = [*TINY_RUN, f"model.foundation={foundation}", *overrides]
    return build_parts(load_config("configs/quickstart.yaml", items))


def test_every_process_builds_the_same_parts(tiny_foundation):
    a, b = parts_of(tiny_foundation), parts_of(tiny_foundation)
    assert [len(c.data) for c in a.clients] == [len(c.data) for c in b.clients]
    assert all(a.initial[k].equal(b.initial[k]) for k in a.initial)
    assert set(a.seconds) == {"model", "data", "partition"}


def test_a_clients_training_is_seeded_by_the_round_and_the_client(tiny_foundation):
    parts = parts_of(tiny_foundation)
    site = parts.client("site-2")
    first = parts.train_client(site, parts.initial, 1)
    again = parts.train_client(site, parts.initial, 1)
    later = parts.train_client(site, parts.initial, 2)
    assert first.client_id == "site-2" and first.num_steps == 2
    assert all(first.params[k].equal(again.params[k]) for k in first.params)
    assert any(not first.params[k].equal(later.params[k]) for k in first.params)
    with pytest.raises(ValueError, match="no client 'site-9'"):
        parts.client("site-9")


def test_a_malicious_client_poisons_its_update(tiny_foundation):
    parts = parts_of(tiny_foundation, "attack.kind=sign_flip", "attack.fraction=0.4")
    (bad,) = parts.malicious
    honest = parts_of(tiny_foundation)
    client = parts.client(bad)
    poisoned = parts.train_client(client, parts.initial, 1)
    clean = honest.train_client(honest.client(bad), honest.initial, 1)
    assert any(not poisoned.params[k].equal(clean.params[k]) for k in clean.params)


def test_the_secure_aggregation_policy_is_the_configs_threshold(tiny_foundation):
    parts = parts_of(
        tiny_foundation,
        "federation.secure_aggregation.enabled=true",
        "federation.num_clients=4",
        "federation.clients_per_round=4",
    )
    policy = parts.secagg_policy("site-1")
    assert policy.threshold == 3 and policy.identity is None
