"""Norm clipping (Sun et al., 2019, "Can You Really Backdoor Federated Learning?").

Each client's update Delta_k = theta_k - theta_t is scaled down to norm at most M before the
sample-weighted average, which bounds how far any one client can move the global model:
    theta_{t+1} = theta_t + sum_k p_k * Delta_k * min(1, M / ||Delta_k||)
A fixed M has to be tuned to the size of honest updates (LoRA updates of the built-in model have
norms of a few units after 10-20 steps: a bound of 1 stops learning). By default (clip_norm 0)
M is the median of the round's update norms, so honest-sized updates pass and a scaled one, as
long as attackers are a minority, is cut to the honest size.
"""

from __future__ import annotations

import torch
from pydantic import Field

from fedumm.federation.strategies.base import Strategy, StrategyParams, sample_weights


def norm(delta: dict[str, torch.Tensor]) -> float:
    """Global L2 norm over all tensors."""
    return torch.sqrt(sum((v.double() ** 2).sum() for v in delta.values())).item()


def clip_to_norm(delta: dict[str, torch.Tensor], bound: float) -> dict[str, torch.Tensor]:
    """`delta` scaled so its global L2 norm over all tensors is at most `bound`."""
    size = norm(delta)
    factor = min(1.0, bound / size) if size > 0 else 1.0
    return {k: v * factor for k, v in delta.items()}


class NormClipping(Strategy):
    name = "norm_clipping"
    paper = "Sun et al., 2019"

    class Params(StrategyParams):
        clip_norm: float = Field(
            0.0,
            ge=0,
            description="Update norm bound M; 0 = the median of the round's update norms.",
        )

    def aggregate(self, global_params, updates):
        out = dict(global_params)
        deltas = [{k: u.params[k] - v for k, v in global_params.items()} for u in updates]
        bound = self.hp["clip_norm"] or float(torch.tensor([norm(d) for d in deltas]).median())
        for p, delta in zip(sample_weights(updates), deltas):
            for k, d in clip_to_norm(delta, bound).items():
                out[k] = out[k] + p * d
        return out
