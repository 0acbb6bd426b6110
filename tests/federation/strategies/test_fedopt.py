"""FedAdam, FedYogi, FedAdagrad: one round by hand from Reddi et al.'s Algorithm 2."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedumm.federation.strategies import build_strategy

from .conftest import update

ETA, B1, B2, TAU = 0.1, 0.9, 0.99, 0.01
DELTA = 0.5  # the single client moves the weight from 1.0 to 1.5


@pytest.mark.parametrize(
    "name, v",
    [
        ("fedadam", B2 * TAU**2 + (1 - B2) * DELTA**2),
        ("fedyogi", TAU**2 - (1 - B2) * DELTA**2 * math.copysign(1, TAU**2 - DELTA**2)),
        ("fedadagrad", TAU**2 + DELTA**2),
    ],
)
def test_one_round_hand_computed(name, v):
    hp = {"server_lr": ETA, "beta1": B1, "tau": TAU} | (
        {"beta2": B2} if name != "fedadagrad" else {}
    )
    out = build_strategy(name, **hp).aggregate(
        {"w": torch.tensor([1.0])}, [update("a", {"w": [1.0 + DELTA]}, 5)]
    )
    m = (1 - B1) * DELTA  # m_{-1} = 0
    assert out["w"].item() == pytest.approx(1.0 + ETA * m / (math.sqrt(v) + TAU), abs=1e-6)


def test_yogi_second_round_uses_the_sign_of_v_minus_delta_squared():
    s = build_strategy("fedyogi", server_lr=ETA, beta1=B1, beta2=B2, tau=TAU)
    w = s.aggregate({"w": torch.tensor([1.0])}, [update("a", {"w": [1.5]}, 1)])
    v1 = TAU**2 + (1 - B2) * 0.25
    m1 = (1 - B1) * 0.5
    w1 = 1.0 + ETA * m1 / (math.sqrt(v1) + TAU)
    assert w["w"].item() == pytest.approx(w1, abs=1e-6)
    w = s.aggregate(w, [update("a", {"w": [w1 + 0.01]}, 1)])  # tiny Delta: v > Delta^2
    v2 = v1 - (1 - B2) * 1e-4
    m2 = B1 * m1 + (1 - B1) * 0.01
    assert w["w"].item() == pytest.approx(w1 + ETA * m2 / (math.sqrt(v2) + TAU), abs=1e-6)


@given(st.lists(st.floats(-1, 1), min_size=3, max_size=3), st.floats(0.0, 0.999))
@settings(max_examples=40, deadline=None)
def test_fedadam_with_beta1_zero_and_large_tau_is_a_scaled_fedavg_step(deltas, beta2):
    tau = 1e4
    start = {"w": torch.zeros(3)}
    out = build_strategy("fedadam", server_lr=1.0, beta1=0.0, beta2=beta2, tau=tau).aggregate(
        start, [update("a", {"w": deltas}, 3)]
    )
    # v = beta2 tau^2 + (1 - beta2) Delta^2 ~ beta2 tau^2: step = Delta / (tau (1 + sqrt(beta2)))
    expected = torch.tensor(deltas) / (tau * (1 + math.sqrt(beta2)))
    assert torch.allclose(out["w"], expected, rtol=1e-3, atol=1e-12)
