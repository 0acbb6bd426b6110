"""Krum and Multi-Krum (Blanchard et al., NeurIPS 2017, "Machine Learning with Adversaries:
Byzantine Tolerant Gradient Descent").

With K updates of which at most f are Byzantine, each update's score is the sum of squared
distances to its K - f - 2 nearest other updates; Krum keeps the update with the lowest score,
Multi-Krum averages the m lowest-scoring ones (m = 1 is Krum). Needs K > 2f + 2.
    score(i) = sum_{j in N_i} ||theta_i - theta_j||^2,   theta_{t+1} = mean of the m best theta_i
"""

from __future__ import annotations

import torch
from pydantic import Field

from fedumm.federation.strategies.base import Strategy, StrategyParams


def krum_scores(vectors: torch.Tensor, num_byzantine: int) -> torch.Tensor:
    """Krum score of every row of `vectors` (K x d)."""
    k = vectors.shape[0]
    if k <= 2 * num_byzantine + 2:
        raise ValueError(f"Krum needs more than 2f + 2 = {2 * num_byzantine + 2} updates, got {k}")
    distances = torch.cdist(vectors, vectors).pow(2)
    distances.fill_diagonal_(float("inf"))
    return distances.topk(k - num_byzantine - 2, dim=1, largest=False).values.sum(dim=1)


class Krum(Strategy):
    name = "krum"
    paper = "Blanchard et al., NeurIPS 2017"

    class Params(StrategyParams):
        num_byzantine: int = Field(
            1, ge=0, description="Malicious clients tolerated, f (rounds need > 2f + 2)."
        )
        multi_krum: int = Field(1, ge=1, description="Best-scored updates averaged, m; 1 is Krum.")

    @classmethod
    def config_problems(cls, cfg):
        problems = super().config_problems(cfg)
        try:
            f = cls.checked_params(cfg.federation.strategy.hyperparameters()).num_byzantine
        except ValueError:  # the parameters are refused: super() named them
            return problems
        sampled = cfg.federation.sampled_per_round
        if sampled <= 2 * f + 2:
            problems.append(
                (
                    "federation.strategy.num_byzantine",
                    f"krum with {f} Byzantine clients needs more than {2 * f + 2} "
                    f"clients per round; {sampled} are sampled",
                )
            )
        return problems

    def aggregate(self, global_params, updates):
        keys = list(global_params)
        flat = torch.stack(
            [torch.cat([u.params[k].flatten().double() for k in keys]) for u in updates]
        )
        scores = krum_scores(flat, int(self.hp["num_byzantine"]))
        chosen = scores.argsort()[: int(self.hp["multi_krum"])].tolist()
        return {k: sum(updates[i].params[k] for i in chosen) / len(chosen) for k in keys}
