"""FedAvgM (Hsu et al., 2019, "Measuring the Effects of Non-Identical Data Distribution for
Federated Visual Classification").

Server momentum on the FedAvg pseudo-gradient Delta_t = sum_k p_k (theta_k - theta_t):
    v_t = beta * v_{t-1} + Delta_t,    theta_{t+1} = theta_t + eta * v_t,    v_0 = 0
beta = 0 and eta = 1 is FedAvg.
"""

from __future__ import annotations

from pydantic import Field

from fedumm.federation.strategies.base import Strategy, StrategyParams, pseudo_gradient


class FedAvgM(Strategy):
    name = "fedavgm"
    paper = "Hsu et al., 2019"
    state_attrs = ("velocity",)
    aggregates_weighted_mean = True

    class Params(StrategyParams):
        server_lr: float = Field(0.3, gt=0, description="Server step size eta.")
        momentum: float = Field(0.9, ge=0, lt=1, description="Server momentum beta.")

    def __init__(self, context=None, **hyperparameters):
        super().__init__(context, **hyperparameters)
        self.velocity: dict = {}

    def aggregate(self, global_params, updates):
        delta = pseudo_gradient(global_params, updates)
        beta, eta = self.hp["momentum"], self.hp["server_lr"]
        for k, d in delta.items():
            self.velocity[k] = beta * self.velocity[k] + d if k in self.velocity else d.clone()
        return {k: global_params[k] + eta * self.velocity[k] for k in global_params}
