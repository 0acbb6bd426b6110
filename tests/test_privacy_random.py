"""Privacy randomness nobody can recompute: DP noise and DP's sampling from a 256-bit key."""

import secrets

import numpy as np
import pytest
import torch

from fedumm.federation.client import ClientData
from fedumm.federation.strategies import FederationContext, build_strategy
from fedumm.federation.strategies.dp_fedavg import privacy_spent
from fedumm.privacy_random import PrivacyRandom, SeededRandom
from tests.federation.strategies.conftest import update
from tests.federation.test_server import _train, server


def test_a_torch_generator_keeps_32_bits_of_its_seed_which_is_why_noise_left_it():
    """The old noise: torch.Generator().manual_seed(63 random bits). Seeds equal in their low
    32 bits draw the same noise, so 2^32 guesses find it."""
    seed = (1 << 62) + 12345
    same = [torch.randn(8, generator=torch.Generator().manual_seed(s)) for s in (seed, 12345)]
    assert torch.equal(*same)


def test_keys_equal_in_their_low_64_bits_give_different_noise():
    low = secrets.token_bytes(8)
    a, b = (PrivacyRandom(secrets.token_bytes(24) + low).normal((1000,), 1.0) for _ in "ab")
    assert not torch.allclose(a, b)
    assert torch.equal(
        PrivacyRandom(bytes(32)).normal((5,), 1.0), PrivacyRandom(bytes(32)).normal((5,), 1.0)
    )  # a key fixes the stream


def test_dp_fedavg_noise_differs_when_the_os_entropy_differs_only_above_bit_32(monkeypatch):
    """Two draws of operating-system entropy that agree in their low 32 bits (64 for a key):
    the landed code's noise was identical; a 256-bit key makes it differ."""
    draws = iter([(1 << 40) + 7, (1 << 41) + 7])
    monkeypatch.setattr(secrets, "randbits", lambda bits: next(draws))  # the old path
    keys = iter([bytes(24) + b"low64bit", b"\x01" * 24 + b"low64bit"])
    monkeypatch.setattr(secrets, "token_bytes", lambda n=32: next(keys))  # the new path
    noise = []
    for _ in range(2):
        s = build_strategy(
            "dp_fedavg",
            FederationContext(num_clients=10, seed=7),
            clip_norm=0.5,
            noise_multiplier=1.2,
        )
        noise.append(s.aggregate({"w": torch.zeros(100)}, [update("a", {"w": [0.0] * 100}, 1)]))
    assert not torch.allclose(noise[0]["w"], noise[1]["w"])


def test_gaussians_and_permutations_have_the_right_distribution():
    rng = PrivacyRandom()
    z = rng.normal((400_000,), 2.0).double()
    assert abs(z.mean()) < 0.02 and z.std() == pytest.approx(2.0, rel=0.01)
    assert float((z.abs() < 2.0).double().mean()) == pytest.approx(0.6827, abs=0.005)
    firsts = np.bincount([int(rng.permutation(5)[0]) for _ in range(5000)], minlength=5)
    assert firsts.min() > 850 and sorted(rng.permutation(50).tolist()) == list(range(50))
    assert sorted(SeededRandom(1).permutation(7).tolist()) == list(range(7))


def test_dp_rounds_draw_their_clients_from_the_operating_system():
    """Same run seed, two servers: a seeded draw repeats, a private one does not (so the
    accountant's q = k / N holds against whoever holds the config)."""
    clients = [ClientData(f"site-{i}", [None] * 10) for i in range(1, 21)]
    seeded = [
        [c.client_id for c in server(_train(), 5, clients=clients).sample(r)] for r in range(1, 6)
    ]
    assert seeded == [
        [c.client_id for c in server(_train(), 5, clients=clients).sample(r)] for r in range(1, 6)
    ]
    private = [server(_train(), 5, clients=clients) for _ in "ab"]
    for s in private:
        s.private_sampling = True
    draws = [[[c.client_id for c in s.sample(r)] for r in range(1, 6)] for s in private]
    assert draws[0] != draws[1] and all(len(set(d)) == 5 for d in draws[0])


def test_cyclic_sampling_is_accounted_with_q_1():
    """A cycle tells who trains next: no amplification by sampling. Accounted as if every
    round held every client (an upper bound), and results.json says so."""
    spent = {}
    for sampling in ("random", "cyclic"):
        s = build_strategy(
            "dp_fedavg",
            FederationContext(num_clients=8, client_sampling=sampling),
            noise_multiplier=1.1,
        )
        for _ in range(30):
            s.aggregate({"w": torch.zeros(1)}, [update("a", {"w": [0.1]}, 1)])
        spent[sampling] = s.summary(sampled_per_round=2)["privacy"]
    assert spent["random"]["sample_rate"] == 0.25 and spent["cyclic"]["sample_rate"] == 1.0
    assert spent["cyclic"]["epsilon"] == privacy_spent(1.1, 1.0, 30, 1e-5)
    assert spent["cyclic"]["epsilon"] > 3 * spent["random"]["epsilon"]  # 34.9 against 9.3
    assert spent["cyclic"]["sampling"] == "cyclic (predictable: accounted with q = 1)"
    assert spent["random"]["sampling"] == "operating system"
