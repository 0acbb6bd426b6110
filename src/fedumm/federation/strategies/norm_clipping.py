"""Norm clipping (Sun et al., 2019, "Can You Really Backdoor Federated Learning?").

Each client's update Delta_k = theta_k - theta_t is scaled down to norm at most M before the
sample-weighted average, which bounds how far any one client can move the global model:
    theta_{t+1} = theta_t + sum_k p_k * Delta_k * min(1, M / ||Delta_k||)
"""

from __future__ import annotations

import torch

from fedumm.federation.strategies.base import Strategy, sample_weights


def clip_to_norm(delta: dict[str, torch.Tensor], bound: float) -> dict[str, torch.Tensor]:
    """`delta` scaled so its global L2 norm over all tensors is at most `bound`."""
    norm = torch.sqrt(sum((v.double() ** 2).sum() for v in delta.values())).item()
    factor = min(1.0, bound / norm) if norm > 0 else 1.0
    return {k: v * factor for k, v in delta.items()}


class NormClipping(Strategy):
    name = "norm_clipping"
    paper = "Sun et al., 2019"
    defaults = {"clip_norm": 1.0}

    def aggregate(self, global_params, updates):
        out = dict(global_params)
        for p, u in zip(sample_weights(updates), updates):
            delta = {k: u.params[k] - v for k, v in global_params.items()}
            for k, d in clip_to_norm(delta, self.hp["clip_norm"]).items():
                out[k] = out[k] + p * d
        return out
