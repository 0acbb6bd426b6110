"""The one optimisation loop every part of fedumm uses: pretraining, a client's local update,
and the local-only and centralized baselines. Same code, so the comparisons are fair."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from fedumm.federation.dp_sgd import DPSGD
from fedumm.models.processor import IGNORE, Encoded
from fedumm.seeding import derive_seed


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
        return task_loss

    def before_step(self, model: torch.nn.Module) -> None:
        """Runs on the (clipped) gradients just before the optimizer step."""
        return None


OPTIMIZERS = {"adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}


def batches(n: int, batch_size: int, steps: int, generator: torch.Generator):
    """Index batches for `steps` steps, reshuffling each epoch; yields at most `n` per batch."""
    size = min(batch_size, n)
    order = torch.randperm(n, generator=generator)
    pos = 0
    for _ in range(steps):
        if pos + size > n:
            order, pos = torch.randperm(n, generator=generator), 0
        yield order[pos : pos + size].tolist()
        pos += size


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
    on_step: Callable[[int, float], None] | None = None,
    dp_sgd: tuple[float, float] | None = None,
) -> TrainStats:
    """Run `steps` optimizer steps (AdamW or plain SGD) on the trainable parameters of `model`
    over `data` (batched by `collate`, the processor's), clipping the gradient norm to
    `max_grad_norm` unless it is None. With `dp_sgd` = (per-sample clip norm, noise
    multiplier) the steps are DP-SGD steps instead."""
    if not data:
        raise ValueError("cannot train on an empty data set")
    hooks = hooks or TrainingHooks()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = OPTIMIZERS[optimizer](params, lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    private = DPSGD(model, *dp_sgd, derive_seed(seed, 0xD5)) if dp_sgd else None
    forward = private.module if private else model
    model.train()
    start, losses, samples = time.perf_counter(), [], 0
    try:
        for step, idx in enumerate(batches(len(data), batch_size, steps, generator)):
            if lr_schedule is not None:
                for group in optimizer.param_groups:
                    group["lr"] = lr_schedule(step)
            batch = collate([data[i] for i in idx])
            task_loss = forward(**batch).loss
            loss = hooks.loss(model, task_loss)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if private is not None:
                private.privatize()  # per-sample clipping replaces the batch clipping
            elif max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            hooks.before_step(model)
            optimizer.step()
            losses.append(task_loss.item())
            samples += len(idx)
            if on_step is not None:
                on_step(step, losses[-1])
    finally:
        if private is not None:
            private.close()
    model.eval()
    tail = losses[-10:]
    return TrainStats(steps, samples, time.perf_counter() - start, sum(tail) / len(tail))


@torch.no_grad()
def evaluation_loss(
    model: torch.nn.Module,
    data: list[Encoded],
    collate: Callable[[list[Encoded]], dict[str, torch.Tensor]],
    batch_size: int = 256,
) -> float:
    """Mean next-token loss over the target tokens of `data` (teacher forcing)."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(data), batch_size):
        batch = collate(data[i : i + batch_size])
        n = int((batch["labels"][:, 1:] != IGNORE).sum())
        total += model(**batch).loss.item() * n
        count += n
    return total / max(count, 1)
