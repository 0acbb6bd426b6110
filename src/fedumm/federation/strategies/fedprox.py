"""FedProx (Li et al., MLSys 2020, "Federated Optimization in Heterogeneous Networks").

Each client minimises its task loss plus a proximal term that keeps it near the global model:
    h_k(w) = F_k(w) + (mu / 2) * ||w - w_t||^2
over the trainable adapter tensors; the server aggregates like FedAvg. mu = 0 is FedAvg.
"""

from __future__ import annotations

import torch
from pydantic import Field

from fedumm.federation.strategies.base import StrategyParams
from fedumm.federation.strategies.fedavg import FedAvg
from fedumm.federation.update import Params
from fedumm.models.lora import adapter_parameters
from fedumm.training import TrainingHooks


class ProximalTerm(TrainingHooks):
    """Adds (mu / 2) * ||w - anchor||^2 over the trainable tensors that `anchor` names."""

    def __init__(self, model: torch.nn.Module, anchor: Params, mu: float):
        live = adapter_parameters(model)
        self.pairs = [(live[k], anchor[k]) for k in anchor if k in live and live[k].requires_grad]
        self.mu = mu

    def loss(self, model: torch.nn.Module, task_loss: torch.Tensor) -> torch.Tensor:
        distance = sum(((p - a) ** 2).sum() for p, a in self.pairs)
        return task_loss + 0.5 * self.mu * distance


class FedProx(FedAvg):
    name = "fedprox"
    paper = "Li et al., MLSys 2020"

    class Params(StrategyParams):
        mu: float = Field(0.01, ge=0, description="Proximal weight mu; 0 is FedAvg.")

    def client_hooks(self, model, message, state):
        return ProximalTerm(model, message, self.hp["mu"])
