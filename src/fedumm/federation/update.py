"""A client's answer to the server, and the checks it must pass before it may be aggregated."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

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


def validate_update(update: ClientUpdate, reference: Params, max_norm: float | None = None) -> None:
    """Raise UpdateRejected unless `update` has exactly `reference`'s keys, shapes, dtypes and
    only finite values, a positive sample count, and (if `max_norm`) lies within `max_norm`
    (L2 over all tensors) of `reference`."""
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
        if not torch.isfinite(t).all():
            raise UpdateRejected(f"{who}: {key!r} contains NaN or infinite values")
    if update.num_samples <= 0:
        raise UpdateRejected(f"{who}: num_samples must be positive, got {update.num_samples}")
    if max_norm is not None:
        norm = sum(
            float(((update.params[k] - v).double() ** 2).sum()) for k, v in reference.items()
        )
        if norm**0.5 > max_norm:
            raise UpdateRejected(
                f"{who}: update norm {norm**0.5:.4g} exceeds the bound {max_norm:g}"
            )
