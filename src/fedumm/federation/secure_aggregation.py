"""Secure aggregation by pairwise additive masks (Bonawitz et al., CCS 2017), simulated.

Every pair of clients (i, j) of a round shares a seed (from a key agreement in the real
protocol; here derived from the run seed, the round and the pair). Client i uploads, with q a
fixed-point encoding (24 fractional bits) and m_ij uniform in [0, 2^48):
    y_i = q(n_i * theta_i) + sum_{j > i} m_ij - sum_{j < i} m_ji        (mod 2^48)
Each y_i alone is uniformly random; the masks cancel in the sum, which gives the server
q(sum_i n_i theta_i), hence the sample-weighted mean, and nothing about any single client.
If a client drops out after masking, its masks no longer cancel; the real protocol recovers them
from secret-shared seeds, which is not simulated here, so dropout is refused with it.
"""

from __future__ import annotations

import torch

from fedumm.federation.update import Params
from fedumm.seeding import derive_seed

MODULUS = 2**48
SCALE = 2**24


def _pair_mask(shape: torch.Size, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, MODULUS, shape, generator=generator, dtype=torch.int64)


def mask(values: Params, weight: float, me: int, peers: list[int], round_seed: int) -> Params:
    """Client `me`'s masked upload of weight * values; `peers` are all clients of the round."""
    out = {}
    for index, (k, v) in enumerate(sorted(values.items())):
        y = torch.round(v.double() * weight * SCALE).long() % MODULUS
        for other in peers:
            if other == me:
                continue
            m = _pair_mask(v.shape, derive_seed(round_seed, min(me, other), max(me, other), index))
            y = (y + m) % MODULUS if me < other else (y - m) % MODULUS
        out[k] = y
    return out


def unmask_sum(masked: list[Params]) -> Params:
    """sum_i weight_i * values_i from all the masked uploads of a round (float64)."""
    out = {}
    for k in masked[0]:
        total = sum(m[k] for m in masked) % MODULUS
        signed = torch.where(total >= MODULUS // 2, total - MODULUS, total)
        out[k] = signed.double() / SCALE
    return out
