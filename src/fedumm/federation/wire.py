"""What travels between server and clients: tensors serialized with safetensors.

The embedded engine really serializes and deserializes every message, so the bytes it reports are
the bytes a network would carry, and a tensor that cannot travel fails here, not in production.
"""

from __future__ import annotations

import torch
from safetensors.torch import load, save

Params = dict[str, torch.Tensor]


def pack(params: Params) -> bytes:
    return save({k: v.contiguous() for k, v in params.items()})


def unpack(blob: bytes) -> Params:
    return load(blob)


def num_bytes(params: Params) -> int:
    return len(pack(params))
