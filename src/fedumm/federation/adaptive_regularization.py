"""FedMLLM's adaptive regularization (Xu et al., arXiv 2411.14717), a modality-agnostic strategy.

Each client adds a proximal term on the adapters of the *middle* decoder layers only, where
FedMLLM finds modality-independent features, leaving the outer layers free to fit the client's
modalities:
    h_k(theta) = F_k(theta) + (mu / 2) * w * ||theta_mid - theta_mid_global||^2,
    theta_mid = the LoRA tensors of decoder layers s .. L-1-s (L layers in all).
It is switched on beside any strategy (federation.adaptive_regularization); FedMLLM's defaults
are mu = 0.01, w = 0.1, s = 4 on a 28-32-layer language model.
"""

from __future__ import annotations

import re

import torch

from fedumm.federation.strategies.fedprox import ProximalTerm
from fedumm.federation.update import Params
from fedumm.training import TrainingHooks

_LAYER = re.compile(r"\.layers\.(\d+)\.")


def middle_layer_keys(keys: list[str], num_layers: int, skip: int) -> list[str]:
    """The keys of tensors inside decoder layers skip .. num_layers-1-skip."""
    if 2 * skip >= num_layers:
        raise ValueError(
            f"federation.adaptive_regularization.skip_layers={skip} leaves no "
            f"middle layer of the model's {num_layers}"
        )
    middle = []
    for key in keys:
        found = _LAYER.search(key)
        if found and skip <= int(found.group(1)) <= num_layers - 1 - skip:
            middle.append(key)
    return middle


class Both(TrainingHooks):
    """Two sets of hooks at once: the strategy's and the regularizer's."""

    def __init__(self, first: TrainingHooks, second: TrainingHooks):
        self.first, self.second = first, second

    def loss(self, model: torch.nn.Module, task_loss: torch.Tensor) -> torch.Tensor:
        return self.second.loss(model, self.first.loss(model, task_loss))

    def before_step(self, model: torch.nn.Module) -> None:
        self.first.before_step(model)
        self.second.before_step(model)


def middle_layer_proximal(
    model: torch.nn.Module, anchor: Params, mu: float, weight: float, skip: int
) -> ProximalTerm:
    """FedProx's term with strength mu * w, over the middle layers' adapter tensors only."""
    layers = model.get_base_model().config.num_hidden_layers
    keys = middle_layer_keys(list(anchor), layers, skip)
    return ProximalTerm(model, {k: anchor[k] for k in keys}, mu * weight)
