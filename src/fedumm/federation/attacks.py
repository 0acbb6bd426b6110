"""Malicious clients, simulated: what robust aggregation has to survive.

A malicious client trains honestly, then replaces its update Delta = theta_k - theta (relative to
what the server sent it; zero for keys the server did not send) before uploading:
- sign_flip: theta - m * Delta  (pushes the model the other way)
- scale:     theta + m * Delta  (one client outvotes the rest)
- random:    theta + Gaussian noise with m times Delta's norm
"""

from __future__ import annotations

import math

import torch

from fedumm.federation.update import Params

ATTACKS = ("sign_flip", "scale", "random")


def poison(upload: Params, sent: Params, kind: str, magnitude: float, seed: int) -> Params:
    """The malicious version of an honest `upload`, given what the server `sent`."""
    if kind not in ATTACKS:
        raise ValueError(f"unknown attack {kind!r}; known: {', '.join(ATTACKS)}")
    reference = {k: sent[k] if k in sent else torch.zeros_like(v) for k, v in upload.items()}
    delta = {k: upload[k] - reference[k] for k in upload}
    if kind == "sign_flip":
        return {k: reference[k] - magnitude * d for k, d in delta.items()}
    if kind == "scale":
        return {k: reference[k] + magnitude * d for k, d in delta.items()}
    generator = torch.Generator().manual_seed(seed)
    noise = {k: torch.randn(d.shape, generator=generator, dtype=d.dtype) for k, d in delta.items()}
    norm = math.sqrt(sum(float((d**2).sum()) for d in delta.values()))
    noise_norm = math.sqrt(sum(float((n**2).sum()) for n in noise.values()))
    factor = magnitude * norm / noise_norm if noise_norm > 0 else 0.0
    return {k: reference[k] + factor * n for k, n in noise.items()}
