"""A client's answer to the server, and the checks it must pass before it may be aggregated."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from fedumm.training import nonfinite

Params = dict[str, torch.Tensor]


@dataclass
class ClientUpdate:
    """Trained adapter tensors plus what aggregation may weigh them by."""

    client_id: str
    params: Params
    num_samples: int
    num_steps: int
    metrics: dict[str, float] = field(default_factory=dict)


class UpdateRejected(ValueError):
    """An update the server refuses; the message says which client and why."""


@dataclass(frozen=True)
class Claims:
    """What the server lets a client say of its own work: the sample count its update is
    weighted by, and the local steps it took (FedNova divides by them)."""

    samples: Callable[[str], int] | None = None  # the partition's count: a claim must equal it
    max_samples: int | None = None  # otherwise a claim may not exceed this
    max_steps: Callable[[str], int] | None = None  # the steps the client was asked for

    def check(self, update: ClientUpdate) -> None:
        who, n, steps = f"client {update.client_id}", update.num_samples, update.num_steps
        if not isinstance(n, int) or n <= 0:
            raise UpdateRejected(f"{who}: num_samples must be a positive integer, got {n!r}")
        if self.samples is not None and n != self.samples(update.client_id):
            raise UpdateRejected(
                f"{who}: claims {n} samples; its partition holds {self.samples(update.client_id)}"
            )
        if self.max_samples is not None and n > self.max_samples:
            raise UpdateRejected(
                f"{who}: claims {n} samples, more than the {self.max_samples} "
                "a client may (federation.max_claimed_samples)"
            )
        if not isinstance(steps, int) or steps < 1:
            raise UpdateRejected(f"{who}: num_steps must be at least 1, got {steps!r}")
        asked = self.max_steps(update.client_id) if self.max_steps is not None else None
        if asked is not None and steps > asked:
            raise UpdateRejected(
                f"{who}: claims {steps} local steps, more than the {asked} it was asked for"
            )


def validate_update(
    update: ClientUpdate,
    reference: Params,
    max_norm: float | None = None,
    claims: Claims | None = None,
) -> None:
    """Raise UpdateRejected unless `update` has exactly `reference`'s keys, shapes, dtypes and
    only finite values, claims what `claims` allow (a positive sample count and at least one
    step by default), and (if `max_norm`) lies within `max_norm` (L2 over all tensors) of
    `reference`."""
    who = f"client {update.client_id}"
    missing = sorted(reference.keys() - update.params.keys())
    extra = sorted(update.params.keys() - reference.keys())
    if missing:
        raise UpdateRejected(f"{who}: missing {len(missing)} key(s), e.g. {missing[0]!r}")
    if extra:
        raise UpdateRejected(f"{who}: unexpected {len(extra)} key(s), e.g. {extra[0]!r}")
    for key, ref in reference.items():
        t = update.params[key]
        if t.shape != ref.shape:
            raise UpdateRejected(
                f"{who}: {key!r} has shape {tuple(t.shape)}, expected {tuple(ref.shape)}"
            )
        if t.dtype != ref.dtype:
            raise UpdateRejected(f"{who}: {key!r} has dtype {t.dtype}, expected {ref.dtype}")
    bad = nonfinite(update.params)
    if bad:
        raise UpdateRejected(f"{who}: {bad[0]!r} contains NaN or infinite values")
    (claims or Claims()).check(update)
    if max_norm is not None:
        norm = sum(
            float(((update.params[k] - v).double() ** 2).sum()) for k, v in reference.items()
        )
        if norm**0.5 > max_norm:
            raise UpdateRejected(
                f"{who}: update norm {norm**0.5:.4g} exceeds the bound {max_norm:g}"
            )
