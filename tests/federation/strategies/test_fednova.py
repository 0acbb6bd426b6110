import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedumm.federation.strategies import build_strategy

from .conftest import update


def test_hand_computed_unequal_steps():
    out = build_strategy("fednova").aggregate(
        {"w": torch.zeros(1)},
        [update("a", {"w": [2.0]}, 1, steps=1), update("b", {"w": [6.0]}, 3, steps=2)],
    )
    # p = (0.25, 0.75); d = 0.25 * 2/1 + 0.75 * 6/2 = 2.75; tau_eff = 0.25 + 1.5 = 1.75
    assert abs(out["w"].item() - 1.75 * 2.75) < 1e-6  # FedAvg would give 5.0


@given(
    st.lists(st.tuples(st.floats(-5, 5), st.integers(1, 100)), min_size=1, max_size=5),
    st.integers(1, 50),
)
@settings(max_examples=40, deadline=None)
def test_equal_local_steps_is_fedavg(clients, steps):
    start = {"w": torch.tensor([0.3])}
    ups = [update(str(i), {"w": [v]}, n, steps) for i, (v, n) in enumerate(clients)]
    nova = build_strategy("fednova").aggregate(start, ups)
    assert torch.allclose(nova["w"], build_strategy("fedavg").aggregate(start, ups)["w"], atol=1e-4)
