"""Median, trimmed mean, Krum / Multi-Krum and norm clipping against hand-computed cases."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedumm.federation.strategies import build_strategy

from .conftest import update

START = {"w": torch.zeros(2)}
# Four honest clients near (1, 1) and one attacker far away; sample counts are ignored.
HONEST = [[1.0, 1.2], [0.9, 1.0], [1.1, 0.8], [1.0, 1.1]]
UPDATES = [update(str(i), {"w": v}, 10) for i, v in enumerate(HONEST)] + [
    update("evil", {"w": [-50.0, 40.0]}, 10_000)
]


def test_median():
    out = build_strategy("median").aggregate(START, UPDATES)
    # per coordinate: sorted x = [-50, .9, 1, 1, 1.1] -> 1.0; y = [.8, 1, 1.1, 1.2, 40] -> 1.1
    assert torch.allclose(out["w"], torch.tensor([1.0, 1.1]), atol=1e-6)


def test_trimmed_mean():
    out = build_strategy("trimmed_mean", trim_fraction=0.2).aggregate(START, UPDATES)
    # drop 1 from each end: x mean(.9, 1, 1) ; y mean(1, 1.1, 1.2)
    assert torch.allclose(out["w"], torch.tensor([2.9 / 3, 3.3 / 3]), atol=1e-6)


def test_krum_and_multi_krum():
    # f = 1: each score sums the 5 - 1 - 2 = 2 smallest squared distances to the others.
    out = build_strategy("krum", num_byzantine=1).aggregate(START, UPDATES)
    assert torch.allclose(out["w"], torch.tensor([1.0, 1.1]), atol=1e-6)  # client 3's update
    out = build_strategy("krum", num_byzantine=1, multi_krum=2).aggregate(START, UPDATES)
    assert torch.allclose(out["w"], torch.tensor([1.0, 1.15]), atol=1e-6)  # clients 3 and 0
    with pytest.raises(ValueError, match="more than 2f \\+ 2 = 6 updates"):
        build_strategy("krum", num_byzantine=2).aggregate(START, UPDATES)


def test_norm_clipping():
    ups = [update("a", {"w": [3.0, 4.0]}, 1), update("b", {"w": [0.3, 0.4]}, 1)]
    out = build_strategy("norm_clipping", clip_norm=1.0).aggregate(START, ups)
    # a's delta (norm 5) becomes (0.6, 0.8); b's (norm 0.5) stays; mean = (0.45, 0.6)
    assert torch.allclose(out["w"], torch.tensor([0.45, 0.6]), atol=1e-6)
    # Default: the bound is the round's median norm (here 1.0: norms 5, 0.5, 1).
    ups.append(update("c", {"w": [0.0, 1.0]}, 1))
    out = build_strategy("norm_clipping").aggregate(START, ups)
    assert torch.allclose(out["w"], torch.tensor([0.9 / 3, 2.2 / 3]), atol=1e-6)


@given(st.lists(st.floats(-5, 5), min_size=2, max_size=2), st.integers(3, 7))
@settings(max_examples=30, deadline=None)
def test_identical_updates_are_kept_by_every_robust_rule(values, k):
    ups = [update(str(i), {"w": values}, i + 1) for i in range(k)]
    rules = [
        build_strategy("median"),
        build_strategy("trimmed_mean"),
        build_strategy("krum", num_byzantine=0, multi_krum=2),
    ]
    for rule in rules:
        out = rule.aggregate(START, ups)
        assert torch.allclose(out["w"], torch.tensor(values), atol=1e-5), rule.name
