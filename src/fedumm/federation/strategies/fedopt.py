"""FedOpt (Reddi et al., ICLR 2021, "Adaptive Federated Optimization"), Algorithm 2.

The server treats the FedAvg pseudo-gradient Delta_t = sum_k p_k (theta_k - theta_t) as a
gradient for an adaptive optimizer:
    m_t = beta1 * m_{t-1} + (1 - beta1) * Delta_t                 (m_{-1} = 0)
    v_t = second_moment(v_{t-1}, Delta_t^2)                        (v_{-1} = tau^2)
    theta_{t+1} = theta_t + eta * m_t / (sqrt(v_t) + tau)
as in the paper: no bias correction. FedAdam, FedYogi and FedAdagrad differ only in v_t.
"""

from __future__ import annotations

import torch
from pydantic import Field

from fedumm.federation.strategies.base import Strategy, StrategyParams, pseudo_gradient


class FedOpt(Strategy):
    state_attrs = ("m", "v")
    aggregates_weighted_mean = True

    class Params(StrategyParams):
        server_lr: float = Field(0.03, gt=0, description="Server step size eta.")
        beta1: float = Field(0.9, ge=0, lt=1, description="First-moment decay beta1.")
        tau: float = Field(
            1e-3,
            gt=0,
            description="Adaptivity tau: v starts at tau^2; steps divide by sqrt(v) + tau.",
        )

    def __init__(self, context=None, **hyperparameters):
        super().__init__(context, **hyperparameters)
        self.m: dict = {}
        self.v: dict = {}

    def second_moment(self, v: torch.Tensor, delta_sq: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def aggregate(self, global_params, updates):
        delta = pseudo_gradient(global_params, updates)
        b1, eta, tau = self.hp["beta1"], self.hp["server_lr"], self.hp["tau"]
        out = {}
        for k, d in delta.items():
            m = self.m.get(k, torch.zeros_like(d))
            v = self.v.get(k, torch.full_like(d, tau**2))
            self.m[k] = b1 * m + (1 - b1) * d
            self.v[k] = self.second_moment(v, d * d)
            out[k] = global_params[k] + eta * self.m[k] / (self.v[k].sqrt() + tau)
        return out
