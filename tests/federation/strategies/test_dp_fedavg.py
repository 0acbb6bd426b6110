import math

import pytest
import torch
from opacus.accountants import RDPAccountant

from fedumm.federation.strategies import FederationContext, build_strategy
from fedumm.federation.strategies.dp_fedavg import privacy_spent

from .conftest import update


def test_clipped_mean_without_noise_hand_computed():
    s = build_strategy("dp_fedavg", clip_norm=1.0, noise_multiplier=0.0)
    out = s.aggregate(
        {"w": torch.zeros(2)},
        [update("a", {"w": [3.0, 4.0]}, 1), update("b", {"w": [0.3, 0.4]}, 99)],
    )
    # uniform mean of (0.6, 0.8) and (0.3, 0.4), sample counts ignored
    assert torch.allclose(out["w"], torch.tensor([0.45, 0.6]), atol=1e-6)


def test_noise_has_the_stated_standard_deviation():
    s = build_strategy(
        "dp_fedavg", FederationContext(num_clients=10, seed=7), clip_norm=0.5, noise_multiplier=1.2
    )
    start = {"w": torch.zeros(200_000)}
    out = s.aggregate(start, [update(str(i), {"w": [0.0] * 200_000}, 1) for i in range(4)])
    expected = 1.2 * 0.5 / 4  # z * C / |S|
    assert out["w"].std().item() == pytest.approx(expected, rel=0.01)
    assert abs(out["w"].mean().item()) < 5 * expected / math.sqrt(200_000)


def _noise(seeded: bool) -> torch.Tensor:
    s = build_strategy(
        "dp_fedavg",
        FederationContext(num_clients=10, seed=7, seeded_noise=seeded),
        clip_norm=0.5,
        noise_multiplier=1.2,
    )
    return s.aggregate({"w": torch.zeros(1000)}, [update("a", {"w": [0.0] * 1000}, 1)])["w"]


def test_noise_comes_from_the_operating_system_unless_a_simulation_asks_for_the_seed():
    """Whoever has the config (the run seed) must not be able to regenerate the noise: by
    default two runs with the same seed draw different noise; seeded only when asked."""
    assert not torch.equal(_noise(seeded=False), _noise(seeded=False))
    assert torch.equal(_noise(seeded=True), _noise(seeded=True))


def test_epsilon_is_the_accountants():
    accountant = RDPAccountant()
    for _ in range(30):
        accountant.step(noise_multiplier=1.1, sample_rate=0.25)
    assert privacy_spent(1.1, 0.25, 30, 1e-5) == accountant.get_epsilon(delta=1e-5)
    s = build_strategy("dp_fedavg", FederationContext(num_clients=8), noise_multiplier=1.1)
    for _ in range(30):
        s.aggregate({"w": torch.zeros(1)}, [update("a", {"w": [0.1]}, 1)])
    report = s.summary(sampled_per_round=2)["privacy"]
    assert report["epsilon"] == accountant.get_epsilon(delta=1e-5) and report["rounds"] == 30
    assert privacy_spent(2.0, 0.25, 30, 1e-5) < report["epsilon"]  # more noise, less loss
