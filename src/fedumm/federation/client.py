"""A client's local update: start from what the server sent, train on private data, answer.

Clients own their data and a small `state` (what an algorithm keeps on the client, e.g. SCAFFOLD's
control variate); the frozen base model is shared by every simulated client and the adapter is
swapped in and out, so memory does not grow with the number of clients. The client's side of
the strategy computes on the model's device; what it keeps and what it sends is on the CPU.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from peft import PeftModel

from fedumm.config import AdaptiveRegularizationConfig, FederationConfig
from fedumm.dp_sgd import DPSGDSetting
from fedumm.federation import wire
from fedumm.federation.adaptive_regularization import Both, middle_layer_proximal
from fedumm.federation.compression.masked import MaskedUpload
from fedumm.federation.secure_aggregation import ClientSession, ProtocolError
from fedumm.federation.strategies.base import Strategy
from fedumm.federation.strategies.fedavg import FedAvg
from fedumm.federation.update import ClientUpdate, Params
from fedumm.models.lora import adapter_parameters, get_adapter, set_adapter
from fedumm.models.processor import Encoded
from fedumm.runtime import model_device
from fedumm.training import Learner, Schedule, TrainingHooks, train_steps

log = logging.getLogger("fedumm")


@dataclass
class ClientData:
    client_id: str
    data: list[Encoded]


def site_names(num_clients: int) -> list[str]:
    """site-1 .. site-K: the clients' names, which pick their share of the partition under
    every engine (FLARE sites must be named the same)."""
    return [f"site-{i}" for i in range(1, num_clients + 1)]


@contextmanager
def frozen_factors(model: PeftModel, factors: tuple[str, ...]) -> Iterator[None]:
    """Temporarily stop training the named adapter factors (e.g. FFA-LoRA's 'lora_A')."""
    frozen = [
        p
        for k, p in adapter_parameters(model).items()
        if p.requires_grad and any(f".{f}." in k for f in factors)
    ]
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)


@dataclass(frozen=True)
class Federated:
    """What federated training adds to a client's local steps (the baselines train without):
    the strategy's client side, with this client's `state` (kept between rounds) and fresh
    adapter `initial`, and the federation's own terms, FedMLLM's regularization and DP-SGD."""

    strategy: Strategy
    state: Params
    initial: Params | None = None
    regularization: AdaptiveRegularizationConfig | None = None
    dp_sgd: DPSGDSetting | None = None

    @classmethod
    def of(
        cls, cfg: FederationConfig, strategy: Strategy, state: Params, initial: Params | None = None
    ) -> Federated:
        """As `cfg` sets the terms every client shares."""
        reg, dp = cfg.adaptive_regularization, cfg.dp_sgd
        private = DPSGDSetting(dp.clip_norm, dp.noise_multiplier, cfg.seeded_privacy_noise)
        return cls(
            strategy, state, initial, reg if reg.enabled else None, private if dp.enabled else None
        )

    def hooks(self, model: PeftModel, message: Params, start: Params) -> TrainingHooks | None:
        """The strategy's changes to local training, and the regularizer's around `start`."""
        hooks = self.strategy.client_hooks(model, message, self.state)
        reg = self.regularization
        if reg is None:
            return hooks
        prox = middle_layer_proximal(model, start, reg.mu, reg.weight, reg.skip_layers)
        return Both(hooks, prox) if hooks else prox


def local_schedule(
    cfg: FederationConfig, steps: int, seed: int, lr: float | Callable[[int], float] | None = None
) -> Schedule:
    """A client's `steps` as `cfg` sets them; `lr` a rate or a schedule over the steps
    (default: cfg.lr)."""
    return Schedule(
        steps,
        cfg.batch_size,
        cfg.lr if lr is None else lr,
        seed,
        cfg.weight_decay,
        cfg.max_grad_norm,
        cfg.optimizer,
    )


def local_update(
    learner: Learner,
    client: ClientData,
    message: Params,
    schedule: Schedule,
    federated: Federated | None = None,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
) -> ClientUpdate:
    """`client`'s steps from the server's `message` as `federated` asks; without it, plain
    training from `message` (FedAvg's client side), as the baselines train."""
    side = federated or Federated(FedAvg(), {})
    model, state = learner.model, side.state
    device = model_device(model)
    message, initial = _on(message, device), _on(side.initial, device)
    state.update(_on(state, device))
    start = side.strategy.client_start(message, state, initial)
    set_adapter(model, start)
    hooks = side.hooks(model, message, start)
    with frozen_factors(model, side.strategy.frozen):
        stats = train_steps(learner, client.data, schedule, hooks, side.dp_sgd, on_step)
    trained = get_adapter(model)
    upload = side.strategy.client_finish(message, trained, state, hooks)
    state.update(_on(state, "cpu"))
    return ClientUpdate(
        client_id=client.client_id,
        params=_on(upload, "cpu"),
        num_samples=len(client.data),
        num_steps=stats.steps,
        metrics={"loss": stats.loss, "train_seconds": stats.seconds},
    )


def _on(params: Params | None, device) -> Params | None:
    """`params` on `device` (the same tensors where they are there already)."""
    return None if params is None else {k: v.to(device) for k, v in params.items()}


def upload(
    update: ClientUpdate,
    equal_weights: bool = False,
    session: ClientSession | None = None,
    inbox: bytes | None = None,
    quantized: MaskedUpload | None = None,
) -> bytes:
    """What leaves a client: its update serialized; under secure aggregation (`session`, with
    the `inbox` the task brought) masked first, with the weight the server gives it (its
    samples, or 1 under `equal_weights`: client_weights equal): as weight * update in fixed
    point, or with `quantized` (int8 / int4 upload compression) as weight * its change
    quantized to one scale every client shares (compression/masked.py), whose residual then
    goes into the client's state. Empty when the client withdraws (an update it cannot mask,
    a weight the masked sum was not sized for, an inbox it refuses)."""
    params = update.params
    if session is not None:
        weight = 1 if equal_weights else update.num_samples
        try:
            session.receive(inbox)
            if quantized is None:
                params = session.mask(params, weight)
            else:
                words, residual = quantized.encode(params, weight)
                params = session.mask_words(words, ring=quantized.shared.ring)
                quantized.state.update(residual)
        except ProtocolError as e:  # withdraw: the others' shares recover my masks
            log.warning(
                "secure aggregation round %d: %s withdraws its update: %s",
                session.round,
                update.client_id,
                e,
            )
            return b""
    return wire.pack(params)
