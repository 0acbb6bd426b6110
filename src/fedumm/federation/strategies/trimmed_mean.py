"""Coordinate-wise trimmed mean (Yin et al., ICML 2018).

For every coordinate, drop the b = floor(beta * K) largest and b smallest of the K client values
and average the rest:
    theta_{t+1}[j] = mean of sorted_k(theta_k[j])[b : K - b]
Unweighted, like the median; beta = 0 is the plain mean.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field

from fedumm.federation.strategies.base import Strategy, StrategyParams


class TrimmedMean(Strategy):
    name = "trimmed_mean"
    paper = "Yin et al., ICML 2018"

    class Params(StrategyParams):
        trim_fraction: float = Field(
            0.2,
            ge=0,
            lt=0.5,
            description="Share beta of the client values cut from each end, per coordinate.",
        )

    def aggregate(self, global_params, updates):
        b = math.floor(self.hp["trim_fraction"] * len(updates))  # trim_fraction < 0.5: K - 2b >= 1
        out = {}
        for k in global_params:
            values = torch.stack([u.params[k] for u in updates]).sort(dim=0).values
            out[k] = values[b : len(updates) - b].mean(dim=0)
        return out
