"""The one optimisation loop every part of fedumm uses: pretraining, a client's local update,
and the local-only and centralized baselines. Same code, so the comparisons are fair; the same
on every device (`Runtime`: placement, mixed precision, micro-batches)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from fedumm.distributed import RankGroup
from fedumm.dp_sgd import DPSGD, DPSGDSetting
from fedumm.models.janus import CODES
from fedumm.models.processor import IGNORE, Encoded
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

Collate = Callable[[list[Encoded]], dict[str, torch.Tensor]]
LossFn = Callable[[torch.nn.Module, dict], torch.Tensor]


def model_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The model's own loss on a batch (a processor's `loss` may compute it otherwise)."""
    return model(**batch).loss


@dataclass(frozen=True)
class Learner:
    """What trains: the model, how examples become a batch and a batch a loss (the
    processor's), where it runs (`Runtime`: placement, mixed precision, micro-batches), and
    with which other processes it shares each batch (`ranks`: fedumm.distributed)."""

    model: torch.nn.Module
    collate: Collate
    loss_fn: LossFn = model_loss
    runtime: Runtime = CPU
    ranks: RankGroup | None = None


@dataclass(frozen=True)
class Schedule:
    """The steps to take: how many, on batches of what size drawn by what seed, at what
    learning rate (a rate, or a schedule over the steps), by which optimizer, and the
    gradient norm each step is clipped to (None: not clipped)."""

    steps: int
    batch_size: int
    lr: float | Callable[[int], float]
    seed: int
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    optimizer: str = "adamw"

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"a schedule takes steps >= 1 of batches >= 1, not {self}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer {self.optimizer!r} is none of {', '.join(OPTIMIZERS)}")

    def lr_at(self, step: int) -> float:
        return self.lr(step) if callable(self.lr) else self.lr


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


def train_steps(
    learner: Learner,
    data: list[Encoded],
    schedule: Schedule,
    hooks: TrainingHooks | None = None,
    dp_sgd: DPSGDSetting | None = None,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
) -> TrainStats:
    """Take `schedule`'s steps on the trainable parameters of `learner.model` over `data`;
    under `dp_sgd` they are DP-SGD steps. `on_step(step, loss)` gets the loss as a tensor."""
    if not data:
        raise ValueError("cannot train on an empty data set")
    start = time.perf_counter()  # the set-up (optimizer, modes) is the client's work too
    model = learner.model
    stepper = _Stepper(learner, schedule, hooks or TrainingHooks(), dp_sgd)
    generator = torch.Generator().manual_seed(schedule.seed)
    permute = lambda n: torch.randperm(n, generator=generator)  # noqa: E731
    if dp_sgd is not None and not dp_sgd.seeded_noise:
        permute = stepper.private.noise.permutation  # the batches too (DPSGDSetting.randomness)
    order = batches(len(data), schedule.batch_size, schedule.steps, permute)
    build = partial(_pieces, learner, data, model_device(model))
    stream = prefetched(order, build) if learner.runtime.prefetch else map(build, order)
    model.train()
    losses, samples = [], 0
    try:
        for step, (size, pieces) in enumerate(stream):
            loss = stepper.step(pieces, schedule.lr_at(step))
            losses.append(loss)
            samples += size
            if step % TRIM_EVERY == TRIM_EVERY - 1:
                release_host_memory()
            if on_step is not None:
                on_step(step, loss)
    finally:
        stepper.close()
    model.eval()
    tail = [float(x) for x in losses[-10:]]
    return TrainStats(schedule.steps, samples, time.perf_counter() - start, sum(tail) / len(tail))


def _pieces(
    learner: Learner, data: list[Encoded], device: torch.device, idx: list[int]
) -> tuple[int, list[tuple[dict, int]]]:
    """A step's micro-batches on `device`, each with its count of target tokens: of this
    rank's share of the batch when several processes train it. A sharded base runs every
    forward pass on all ranks at once, so a rank short of micro-batches adds weightless ones."""
    ranks, split = learner.ranks, learner.runtime.micro_batches
    parts = split(idx if ranks is None else ranks.share(idx))
    pieces = [(learner.collate([data[i] for i in part]), None) for part in parts]
    if ranks is not None and ranks.sharded:
        missing = ranks.most_pieces(idx, lambda share: len(split(share))) - len(pieces)
        pieces += [(learner.collate([data[idx[0]]]), 0)] * missing
    return len(idx), [
        (to_device(b, device), target_tokens(b) if tokens is None else tokens)
        for b, tokens in pieces
    ]


class _Stepper:
    """The optimizer's steps on batches of micro-batches, each weighted by its share of the
    target tokens (so the gradient is the whole batch's); under DP-SGD, private steps."""

    def __init__(
        self,
        learner: Learner,
        schedule: Schedule,
        hooks: TrainingHooks,
        dp_sgd: DPSGDSetting | None,
    ):
        self.learner, self.hooks, self.max_grad_norm = learner, hooks, schedule.max_grad_norm
        self.params = [p for p in learner.model.parameters() if p.requires_grad]
        self.optimizer = OPTIMIZERS[schedule.optimizer](
            self.params, lr=schedule.lr_at(0), weight_decay=schedule.weight_decay
        )
        self.private = None
        if dp_sgd is not None:
            self.private = DPSGD(learner.model, dp_sgd, dp_sgd.randomness(schedule.seed))
        self.forward = self.private.module if self.private else learner.model
        self.scaler = learner.runtime.grad_scaler()

    def close(self) -> None:
        """Unhook DP-SGD from the model, which other clients share."""
        if self.private is not None:
            self.private.close()

    def step(self, pieces: list[tuple[dict, int]], lr: float) -> torch.Tensor:
        """The step's task loss (detached), after the step."""
        optimizer, scaler, model = self.optimizer, self.scaler, self.learner.model
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        ranks = self.learner.ranks
        total = sum(tokens for _, tokens in pieces)
        if ranks is not None:  # the whole batch's tokens weigh each rank's share
            total = ranks.total(total)
        task_loss = torch.zeros((), device=model_device(model))
        for i, (batch, tokens) in enumerate(pieces):
            with self.learner.runtime.autocast():
                part = self.learner.loss_fn(self.forward, batch)
            if len(pieces) > 1 or ranks is not None:
                part = part * (tokens / max(total, 1))
            first = i == 0 and (ranks is None or ranks.rank == 0)  # the terms count once
            loss = self.hooks.loss(model, part) if first else part
            (scaler.scale(loss) if scaler else loss).backward()
            task_loss = part.detach() if i == 0 else task_loss + part.detach()
        if ranks is not None:
            task_loss = ranks.sum_gradients(self.params, task_loss)
        if scaler is not None:
            scaler.unscale_(optimizer)
        self._bound()
        overflowed = scaler is not None and nonfinite(
            {i: p.grad for i, p in enumerate(self.params) if p.grad is not None}
        )
        if not overflowed:  # fp16 skips a step that overflowed
            self.hooks.before_step(model)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        return task_loss

    def _bound(self) -> None:
        """Bound the gradient: DP-SGD's per-sample clipping and noise, else the batch's norm."""
        if self.private is not None:
            self.private.privatize()
        elif self.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)


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
    collate: Collate,
    batch_size: int = 256,
    runtime: Runtime = CPU,
    loss_fn: LossFn = model_loss,
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
