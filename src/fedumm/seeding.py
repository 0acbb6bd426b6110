"""Every random draw in a run derives from the run seed and where it happens."""

from __future__ import annotations

import numpy as np


def derive_seed(*parts: int) -> int:
    """A well-mixed 31-bit seed from (run seed, round, client, ...): independent streams.
    NumPy's SeedSequence drops trailing zeros (derive_seed(s, 0) == derive_seed(s)), so every
    caller ends its parts with a non-zero client number or stream tag."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0] >> 1)


def draw_share(client_ids: list[str], fraction: float, seed: int) -> list[str]:
    """round(fraction * K) of the clients, drawn by `seed` (malicious ones, slow devices...)."""
    count = round(fraction * len(client_ids))
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(client_ids, count, replace=False).tolist()) if count else []
