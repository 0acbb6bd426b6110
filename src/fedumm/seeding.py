"""Every random draw in a run derives from the run seed and where it happens."""

from __future__ import annotations

import secrets

import numpy as np


def derive_seed(*parts: int) -> int:
    """A well-mixed 31-bit seed from (run seed, round, client, ...): independent streams."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0] >> 1)


def draw_share(client_ids: list[str], fraction: float, seed: int) -> list[str]:
    """round(fraction * K) of the clients, drawn by `seed` (malicious ones, slow devices...)."""
    count = round(fraction * len(client_ids))
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(client_ids, count, replace=False).tolist()) if count else []


def privacy_seed(seeded: bool, *parts: int) -> int:
    """The seed of noise that protects privacy. From the run seed only when a simulation asks
    for reproducible noise (whoever holds the config can then regenerate and subtract it);
    otherwise 63 bits from the operating system, which nobody can recompute."""
    return derive_seed(*parts) if seeded else secrets.randbits(63)
