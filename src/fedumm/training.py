"""The one optimisation loop every part of fedumm uses: pretraining, a client's local update,
and the local-only and centralized baselines. Same code, so the comparisons are fair; the same
on every device (`Runtime`: placement, mixed precision, micro-batches)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from fedumm.dp_sgd import DPSGD
from fedumm.models.janus import CODES
from fedumm.models.processor import IGNORE, Encoded
from fedumm.privacy_random import privacy_random
from fedumm.runtime import (
    CPU,
    Runtime,
    model_device,
    prefetched,
    release_host_memory,
    to_device,
)


@dataclass
class TrainStats:
    steps: int
    samples: int
    seconds: float
    loss: float  # mean training loss over the last (up to 10) steps


class TrainingHooks:
    """Where an algorithm changes local training (FedProx's proximal term, SCAFFOLD's correction).

    The default changes nothing: plain steps on the task loss, which is what FedAvg asks for.
    """

    def loss(self, model: torch.nn.Module, task_loss: torch.Tensor) -> torch.Tensor:
        """The loss to minimise given the task's; terms added here are added once per step."""
        return task_loss

    def before_step(self, model: torch.nn.Module) -> None:
        """Runs on the (clipped) gradients just before the optimizer step."""
        return None


OPTIMIZERS = {"adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
TRIM_EVERY = 50  # steps between handing freed host memory back (release_host_memory)


def batches(n: int, batch_size: int, steps: int, permute: Callable[[int], torch.Tensor]):
    """Index batches for `steps` steps, reshuffling each epoch; yields at most `n` per batch.
    `permute(n)` draws each epoch's order."""
    size = min(batch_size, n)
    order = permute(n)
    pos = 0
    for _ in range(steps):
        if pos + size > n:
            order, pos = permute(n), 0
        yield order[pos : pos + size].tolist()
        pos += size


def target_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Tokens the loss is taken on (labels are shifted by one inside the models), and image
    codes a drawing model predicts beside them."""
    codes = batch.get(CODES)
    return int((batch["labels"][:, 1:] != IGNORE).sum()) + (0 if codes is None else codes.numel())


def model_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The model's own loss on a batch (a processor's `loss` may compute it otherwise)."""
    return model(**batch).loss


def train_steps(
    model: torch.nn.Module,
    data: list[Encoded],
    steps: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    collate: Callable[[list[Encoded]], dict[str, torch.Tensor]],
    hooks: TrainingHooks | None = None,
    lr_schedule: Callable[[int], float] | None = None,
    max_grad_norm: float | None = 1.0,
    optimizer: str = "adamw",
    on_step: Callable[[int, torch.Tensor], None] | None = None,
    dp_sgd: tuple[float, float, bool] | None = None,
    runtime: Runtime = CPU,
    loss_fn: Callable[[torch.nn.Module, dict], torch.Tensor] = model_loss,
) -> TrainStats:
    """Run `steps` optimizer steps (AdamW or plain SGD) on the trainable parameters of `model`
    over `data` (batched by `collate`, the processor's), clipping the gradient norm to
    `max_grad_norm` unless it is None. With `dp_sgd` = (per-sample clip norm, noise
    multiplier, noise from the seed) the steps are DP-SGD steps instead. `model` is on
    `runtime.device`; a step whose batch is split into micro-batches weights each by its share
    of the target tokens, so its gradient is the whole batch's. `on_step(step, loss)` gets the
    loss as a tensor; `loss_fn(model, batch)` is the task loss (the processor's)."""
    if not data:
        raise ValueError("cannot train on an empty data set")
    start = time.perf_counter()  # the set-up (optimizer, modes) is the client's work too
    hooks = hooks or TrainingHooks()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = OPTIMIZERS[optimizer](params, lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    permute = lambda n: torch.randperm(n, generator=generator)  # noqa: E731
    private = None
    if dp_sgd:
        clip, noise, seeded = dp_sgd
        randomness = privacy_random(seeded, seed, 0xD5)
        private = DPSGD(model, clip, noise, randomness)
        if not seeded:  # the accountant's sampling rate B / n holds only if nobody can
            permute = randomness.permutation  # predict the batches: the OS draws them
    forward = private.module if private else model
    scaler = runtime.grad_scaler()
    device = model_device(model)

    def build(idx: list[int]) -> tuple[int, list[tuple[dict, int]]]:
        """A step's micro-batches on the device, each with its count of target tokens."""
        pieces = [collate([data[i] for i in part]) for part in runtime.micro_batches(idx)]
        return len(idx), [(to_device(b, device), target_tokens(b)) for b in pieces]

    order = batches(len(data), batch_size, steps, permute)
    stream = prefetched(order, build) if runtime.prefetch else map(build, order)
    model.train()
    losses, samples = [], 0
    try:
        for step, (size, pieces) in enumerate(stream):
            if lr_schedule is not None:
                for group in optimizer.param_groups:
                    group["lr"] = lr_schedule(step)
            optimizer.zero_grad(set_to_none=True)
            total = sum(tokens for _, tokens in pieces)
            task_loss = None
            for i, (batch, tokens) in enumerate(pieces):
                with runtime.autocast():
                    part = loss_fn(forward, batch)
                if len(pieces) > 1:
                    part = part * (tokens / max(total, 1))
                loss = hooks.loss(model, part) if i == 0 else part
                (scaler.scale(loss) if scaler else loss).backward()
                task_loss = part.detach() if task_loss is None else task_loss + part.detach()
            if scaler is not None:
                scaler.unscale_(optimizer)
            if private is not None:
                private.privatize()  # per-sample clipping replaces the batch clipping
            elif max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            overflowed = scaler is not None and nonfinite(
                {i: p.grad for i, p in enumerate(params) if p.grad is not None}
            )
            if not overflowed:  # fp16 skips a step that overflowed
                hooks.before_step(model)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            losses.append(task_loss)
            samples += size
            if step % TRIM_EVERY == TRIM_EVERY - 1:
                release_host_memory()
            if on_step is not None:
                on_step(step, task_loss)
    finally:
        if private is not None:
            private.close()
    model.eval()
    tail = [float(x) for x in losses[-10:]]
    return TrainStats(steps, samples, time.perf_counter() - start, sum(tail) / len(tail))


def nonfinite(tensors: Mapping[Any, torch.Tensor]) -> list:
    """The keys of the tensors holding NaN or an infinity. One fused norm over the floating
    ones, read back once, screens them (a norm is finite when every value is, unless it
    overflows; then each is checked): a 7B model's adapter is 256 tensors, and a check each
    costs 25 ms on a CPU and a device sync each on a GPU."""
    floats = [k for k, v in tensors.items() if v.is_floating_point()]
    norms = torch._foreach_norm([tensors[k] for k in floats]) if floats else []
    if not floats or torch.isfinite(torch.stack(norms)).all():
        return []
    return [k for k in floats if not torch.isfinite(tensors[k]).all()]


@torch.no_grad()
def evaluation_loss(
    model: torch.nn.Module,
    data: list[Encoded],
    collate: Callable[[list[Encoded]], dict[str, torch.Tensor]],
    batch_size: int = 256,
    runtime: Runtime = CPU,
    loss_fn: Callable[[torch.nn.Module, dict], torch.Tensor] = model_loss,
) -> float:
    """Mean next-token loss over the target tokens of `data` (teacher forcing)."""
    model.eval()
    device = model_device(model)
    total, count = 0.0, 0
    for i in range(0, len(data), batch_size):
        batch = collate(data[i : i + batch_size])
        n = target_tokens(batch)
        with runtime.autocast():
            total += loss_fn(model, to_device(batch, device)).item() * n
        count += n
    return total / max(count, 1)
