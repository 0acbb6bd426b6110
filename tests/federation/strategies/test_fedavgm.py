import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedumm.federation.strategies import build_strategy

from .conftest import update


def test_two_rounds_hand_computed():
    s = build_strategy("fedavgm", server_lr=0.5, momentum=0.9)
    theta = {"w": torch.zeros(2)}
    # p = (0.25, 0.75); Delta = 0.25*[1, 2] + 0.75*[3, -2] = [2.5, -1]; v = Delta
    theta = s.aggregate(theta, [update("a", {"w": [1, 2]}, 1), update("b", {"w": [3, -2]}, 3)])
    assert torch.allclose(theta["w"], torch.tensor([1.25, -0.5]), atol=1e-6)
    # Delta = [1, 1]; v = 0.9*[2.5, -1] + [1, 1] = [3.25, 0.1]; theta += 0.5 * v
    moved = (theta["w"] + 1).tolist()
    theta = s.aggregate(theta, [update("a", {"w": moved}, 1), update("b", {"w": moved}, 3)])
    assert torch.allclose(theta["w"], torch.tensor([2.875, -0.45]), atol=1e-6)


@given(st.lists(st.floats(-3, 3), min_size=2, max_size=2), st.integers(1, 50))
@settings(max_examples=30, deadline=None)
def test_no_momentum_and_unit_lr_is_fedavg(values, n):
    updates = [update("a", {"w": values}, n), update("b", {"w": [1.0, 1.0]}, 7)]
    start = {"w": torch.tensor([0.5, -0.5])}
    m = build_strategy("fedavgm", server_lr=1.0, momentum=0.0).aggregate(start, updates)
    assert torch.allclose(
        m["w"], build_strategy("fedavg").aggregate(start, updates)["w"], atol=1e-5
    )
