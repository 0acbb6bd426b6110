"""Every random draw in a run derives from the run seed and where it happens."""

from __future__ import annotations

import numpy as np


def derive_seed(*parts: int) -> int:
    """A well-mixed 31-bit seed from (run seed, round, client, ...): independent streams."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0] >> 1)
