"""The strategy interface: everything an FL algorithm decides, and nothing an engine does.

An engine (embedded or NVIDIA FLARE) only moves tensors; it asks the strategy what local training
should add (`client_hooks`) and how to turn the updates that arrived into the next global adapter
(`aggregate`). Algorithms are pure functions of tensors, so they are tested without any engine.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch

from fedumm.federation.update import ClientUpdate
from fedumm.training import TrainingHooks

Params = dict[str, torch.Tensor]


class Strategy(ABC):
    name: ClassVar[str]

    def client_hooks(self, client_id: str, global_params: Params) -> TrainingHooks | None:
        """How this algorithm changes a client's local training; None leaves it plain."""
        return None

    @abstractmethod
    def aggregate(self, global_params: Params, updates: list[ClientUpdate]) -> Params:
        """The next global adapter from the current one and the validated client updates."""


def sample_weights(updates: list[ClientUpdate]) -> list[float]:
    """p_k = n_k / sum n: each client's share of the round's samples."""
    total = sum(u.num_samples for u in updates)
    return [u.num_samples / total for u in updates]


def weighted_average(tensors: list[Params], weights: list[float]) -> Params:
    keys = tensors[0].keys()
    return {k: sum(w * t[k] for w, t in zip(weights, tensors)) for k in keys}
