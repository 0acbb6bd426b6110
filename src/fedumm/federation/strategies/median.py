"""Coordinate-wise median (Yin et al., ICML 2018, "Byzantine-Robust Distributed Learning:
Towards Optimal Statistical Rates").

    theta_{t+1}[j] = median_k theta_k[j]          for every coordinate j
Unweighted: a Byzantine client could otherwise claim a huge sample count. Robust while fewer
than half of the clients are malicious; under benign non-IID data it is less efficient than FedAvg.
"""

from __future__ import annotations

import torch

from fedumm.federation.strategies.base import Strategy


class Median(Strategy):
    name = "median"
    paper = "Yin et al., ICML 2018"

    def aggregate(self, global_params, updates):
        return {
            k: torch.quantile(torch.stack([u.params[k] for u in updates]).float(), 0.5, dim=0).to(
                v.dtype
            )
            for k, v in global_params.items()
        }
