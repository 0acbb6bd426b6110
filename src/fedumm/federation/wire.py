"""What travels between server and clients: tensors serialized with safetensors.

The embedded engine really serializes and deserializes every message, so the bytes it reports are
the bytes a network would carry, and a tensor that cannot travel fails here, not in production.
"""

from __future__ import annotations

import json

import torch
from safetensors.torch import load, save

Params = dict[str, torch.Tensor]

# safetensors' names for the dtypes a message may carry, in the order of its Dtype enum
_DTYPE_NAMES = {
    torch.bool: "BOOL",
    torch.uint8: "U8",
    torch.int8: "I8",
    torch.int16: "I16",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int32: "I32",
    torch.float32: "F32",
    torch.float64: "F64",
    torch.int64: "I64",
}
_DTYPE_ORDER = {dtype: i for i, dtype in enumerate(_DTYPE_NAMES)}


def pack(params: Params) -> bytes:
    return save({k: v.contiguous() for k, v in params.items()})


def unpack(blob: bytes) -> Params:
    return load(blob)


def num_bytes(params: Params) -> int:
    """len(pack(params)), computed from the keys, shapes and dtypes alone: sizing a whole
    model's message (what full fine-tuning would send) copies nothing. safetensors writes an
    8-byte length, a JSON header (tensors by its dtype order, descending, then by name),
    padded with spaces to a multiple of 8, then the data."""
    entries = sorted(params.items(), key=lambda kv: (-_DTYPE_ORDER[kv[1].dtype], kv[0]))
    header, offset = {}, 0
    for name, tensor in entries:
        size = tensor.numel() * tensor.element_size()
        header[name] = {
            "dtype": _DTYPE_NAMES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    text = len(json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode())
    return 8 + text + (-text % 8) + offset
