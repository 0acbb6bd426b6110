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

from peft import PeftModel

from fedumm.config import FederationConfig
from fedumm.federation import wire
from fedumm.federation.adaptive_regularization import Both, middle_layer_proximal
from fedumm.federation.secure_aggregation import ClientSession, ProtocolError
from fedumm.federation.strategies.base import Strategy
from fedumm.federation.update import ClientUpdate, Params
from fedumm.models.lora import adapter_parameters, get_adapter, set_adapter
from fedumm.models.processor import Encoded
from fedumm.runtime import CPU, Runtime, model_device
from fedumm.training import model_loss, train_steps

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


def local_update(
    model: PeftModel,
    client: ClientData,
    message: Params,
    cfg: FederationConfig,
    seed: int,
    collate: Callable[[list[Encoded]], dict],
    strategy: Strategy | None = None,
    state: Params | None = None,
    initial: Params | None = None,
    steps: int | None = None,
    on_step: Callable[[int, float], None] | None = None,
    lr: float | Callable[[int], float] | None = None,
    runtime: Runtime = CPU,
    loss_fn: Callable = model_loss,
) -> ClientUpdate:
    """Local training as `strategy` asks (plain training without one): `steps` steps, else
    cfg's local schedule. `state` is this client's persistent dict, `initial` its fresh adapter;
    `lr` a rate or a schedule over the steps (default cfg.lr); `loss_fn(model, batch)` the
    task loss (the processor's)."""
    state = {} if state is None else state
    device = model_device(model)
    message, initial = _on(message, device), _on(initial, device)
    state.update(_on(state, device))
    start = strategy.client_start(message, state, initial) if strategy else message
    set_adapter(model, start)
    hooks = strategy.client_hooks(model, message, state) if strategy else None
    reg = cfg.adaptive_regularization
    if strategy and reg.enabled:  # federated training only, beside the strategy's own hooks
        prox = middle_layer_proximal(model, start, reg.mu, reg.weight, reg.skip_layers)
        hooks = Both(hooks, prox) if hooks else prox
    steps = steps or cfg.steps_for(len(client.data))
    lr = cfg.lr if lr is None else lr
    dp = cfg.dp_sgd
    dp_sgd = None
    if strategy and dp.enabled:
        dp_sgd = (dp.clip_norm, dp.noise_multiplier, cfg.seeded_privacy_noise)
    with frozen_factors(model, strategy.frozen if strategy else ()):
        stats = train_steps(
            model,
            client.data,
            steps,
            cfg.batch_size,
            lr if not callable(lr) else lr(0),
            cfg.weight_decay,
            seed,
            collate,
            hooks=hooks,
            max_grad_norm=cfg.max_grad_norm,
            optimizer=cfg.optimizer,
            on_step=on_step,
            lr_schedule=lr if callable(lr) else None,
            dp_sgd=dp_sgd,
            runtime=runtime,
            loss_fn=loss_fn,
        )
    trained = get_adapter(model)
    upload = strategy.client_finish(message, trained, state, hooks) if strategy else trained
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
) -> bytes:
    """What leaves a client: its update serialized; under secure aggregation (`session`, with
    the `inbox` the task brought) masked first, as weight * update in fixed point, the weight
    the server gives it: its samples, or 1 under `equal_weights` (client_weights equal).
    Empty when the client withdraws (an update it cannot mask, an inbox it refuses)."""
    params = update.params
    if session is not None:
        try:
            session.receive(inbox)
            params = session.mask(params, 1 if equal_weights else update.num_samples)
        except ProtocolError as e:  # withdraw: the others' shares recover my masks
            log.warning(
                "secure aggregation round %d: %s withdraws its update: %s",
                session.round,
                update.client_id,
                e,
            )
            return b""
    return wire.pack(params)
