"""Randomness that protects privacy: the Gaussian noise of DP-FedAvg and DP-SGD, and the client
and batch sampling their accountant's amplification by sampling relies on.

By default it is AES-256-CTR keyed by 256 bits from the operating system (`secrets`), its
64-bit words turned into uniforms and, by Box-Muller, into Gaussians: a cryptographic
generator whose key nobody can recompute, not from the run seed, nor by trying seeds
(a `torch.Generator` keeps 32 bits of its seed: 2^32 guesses would find the noise of a released
model and subtract it). `seeded` keeps the reproducible path for simulations: a
`torch.Generator` from the run seed, exactly as before, whose epsilon the report then calls a
simulation figure (anyone holding the config regenerates the noise).
"""

from __future__ import annotations

import math
import secrets

import numpy as np
import torch

from fedumm.seeding import derive_seed


class PrivacyRandom:
    """Uniforms, Gaussians and permutations from AES-256-CTR under a 256-bit key."""

    def __init__(self, key: bytes | None = None):
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        key = secrets.token_bytes(32) if key is None else key
        if len(key) != 32:
            raise ValueError(f"a privacy key has 32 bytes, not {len(key)}")
        self._stream = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()

    def uniform(self, count: int) -> np.ndarray:
        """`count` float64 uniforms in (0, 1), 53 random bits each."""
        words = np.frombuffer(self._stream.update(bytes(8 * count)), dtype=np.uint64)
        return ((words >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53

    def normal(self, shape: tuple | torch.Size, std: float) -> torch.Tensor:
        """Gaussian noise N(0, std^2) of `shape` (float32, on the CPU), by Box-Muller."""
        count = math.prod(shape)
        u1, u2 = self.uniform(count), self.uniform(count)
        z = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
        return torch.from_numpy((std * z).astype(np.float32)).reshape(tuple(shape))

    def permutation(self, n: int) -> torch.Tensor:
        """A uniform permutation of 0..n-1 (the order of distinct uniform keys)."""
        return torch.from_numpy(np.argsort(self.uniform(n), kind="stable"))

    def choice(self, n: int, k: int) -> list[int]:
        """k of 0..n-1 without replacement, uniformly."""
        return sorted(self.permutation(n)[:k].tolist())


class SeededRandom:
    """The simulation path: a torch.Generator from the run seed and where the draw happens
    (reproducible, and so regenerable by whoever holds the config)."""

    def __init__(self, *parts: int):
        self.generator = torch.Generator().manual_seed(derive_seed(*parts))

    def normal(self, shape: tuple | torch.Size, std: float) -> torch.Tensor:
        return std * torch.randn(tuple(shape), generator=self.generator)

    def permutation(self, n: int) -> torch.Tensor:
        return torch.randperm(n, generator=self.generator)


def privacy_random(seeded: bool, *parts: int) -> PrivacyRandom | SeededRandom:
    """The generator of one privacy draw: from the run seed and `parts` for a simulation that
    asks for it (`federation.seeded_privacy_noise`), else from the operating system."""
    return SeededRandom(*parts) if seeded else PrivacyRandom()
