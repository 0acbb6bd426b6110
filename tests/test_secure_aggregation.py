"""Pairwise-masked secure aggregation: the sum is exact, no single upload reveals its update."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedumm.config import ConfigError
from fedumm.federation.secure_aggregation import MODULUS, SCALE, mask, unmask_sum
from fedumm.validation import load_run_config
from tests.test_server import _train, server


@given(st.integers(2, 6), st.integers(0, 10_000))
@settings(max_examples=25, deadline=None)
def test_masked_sum_is_the_plain_weighted_sum(k, seed):
    g = torch.Generator().manual_seed(seed)
    values = [{"a": torch.randn(5, 3, generator=g), "b": torch.randn(7, generator=g)}
              for _ in range(k)]  # fmt: skip
    weights = [float(w) for w in torch.randint(1, 500, (k,), generator=g)]
    peers = list(range(10, 10 + k))
    masked = [mask(v, w, p, peers, seed) for v, w, p in zip(values, weights, peers)]
    total = unmask_sum(masked)
    for key in ("a", "b"):
        plain = sum(w * v[key].double() for w, v in zip(weights, values))
        assert torch.allclose(total[key], plain, atol=1e-5)
    for v, w, m in zip(values, weights, masked):
        decoded = torch.where(m["a"] >= MODULUS // 2, m["a"] - MODULUS, m["a"]).double() / SCALE
        assert not torch.allclose(decoded, w * v["a"].double(), atol=1.0)


def test_secure_engine_matches_the_plain_one():
    plain, _ = server(_train(), 3, seed=4).run({"w": torch.zeros(3)}, rounds=2)
    engine = server(_train(), 3, seed=4, secure=True)
    secure, records = engine.run({"w": torch.zeros(3)}, rounds=2)
    assert torch.allclose(secure["w"], plain["w"], atol=1e-5)
    assert records[0].bytes_up > 0


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["federation.strategy.name=scaffold"], "scaffold cannot aggregate from"),
        (["federation.dropout=0.2"], "cannot recover the masks of clients that drop out"),
        (["federation.max_update_norm=1.0"], "cannot be checked on masked updates"),
    ],
)
def test_incompatible_settings_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_run_config(None, ["federation.secure_aggregation=true", *overrides])
    with pytest.raises(ValueError, match="cannot aggregate from"):
        server(_train(), 3, strategy="krum", secure=True)
