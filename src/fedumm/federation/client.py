"""A client's local update: load the global adapter, train on private data, return the adapter.

Clients own data and nothing else: the frozen base model is shared by every simulated client and
the adapter is swapped in and out, so memory does not grow with the number of clients.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from peft import PeftModel

from fedumm.config import FederationConfig
from fedumm.federation.update import ClientUpdate, Params
from fedumm.models.lora import get_adapter, set_adapter
from fedumm.models.processor import Encoded
from fedumm.training import TrainingHooks, train_steps


@dataclass
class ClientData:
    client_id: str
    data: list[Encoded]


def derive_seed(*parts: int) -> int:
    """A well-mixed 31-bit seed from (run seed, round, client, ...): independent streams."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0] >> 1)


def local_update(
    model: PeftModel,
    client: ClientData,
    global_params: Params,
    cfg: FederationConfig,
    seed: int,
    pad_id: int,
    hooks: TrainingHooks | None = None,
    steps: int | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> ClientUpdate:
    """AdamW steps from the global adapter on local data: `steps`, else cfg's local schedule."""
    set_adapter(model, global_params)
    steps = steps or cfg.steps_for(len(client.data))
    stats = train_steps(
        model, client.data, steps, cfg.batch_size, cfg.lr, cfg.weight_decay, seed, pad_id,
        hooks=hooks, on_step=on_step,
    )  # fmt: skip
    return ClientUpdate(
        client_id=client.client_id,
        params=get_adapter(model),
        num_samples=len(client.data),
        num_steps=stats.steps,
        metrics={"loss": stats.loss, "train_seconds": stats.seconds},
    )
