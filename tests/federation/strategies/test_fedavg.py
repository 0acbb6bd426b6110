import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedumm.federation.strategies import build_strategy
from fedumm.federation.strategies.base import sample_weights
from fedumm.federation.update import ClientUpdate


def _update(cid, value, n):
    return ClientUpdate(cid, {"w": torch.tensor(value, dtype=torch.float32)}, n, 1)


def test_fedavg_hand_computed():
    updates = [_update("a", [1.0, 2.0], 10), _update("b", [4.0, -1.0], 30)]
    out = build_strategy("fedavg").aggregate({"w": torch.zeros(2)}, updates)
    # (10 * [1, 2] + 30 * [4, -1]) / 40 = [3.25, -0.25]
    assert torch.allclose(out["w"], torch.tensor([3.25, -0.25]), atol=1e-6)


@given(
    values=st.lists(st.floats(-5, 5), min_size=3, max_size=3),
    sizes=st.lists(st.integers(1, 1000), min_size=1, max_size=6),
)
@settings(max_examples=50, deadline=None)
def test_fedavg_of_identical_updates_is_that_update(values, sizes):
    updates = [_update(str(i), values, n) for i, n in enumerate(sizes)]
    out = build_strategy("fedavg").aggregate({"w": torch.zeros(3)}, updates)
    assert torch.allclose(out["w"], torch.tensor(values), atol=1e-5)
    assert abs(sum(sample_weights(updates)) - 1) < 1e-9
