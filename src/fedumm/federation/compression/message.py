"""A compressed message on the wire: one safetensors file whose tensors are the codec's parts
over all of the message's values concatenated (so an int8 block may span two small tensors,
and a message of a thousand tensors carries two arrays, not two thousand), and a header in
its metadata naming each tensor, its shape, and whether it travels as a change from what the
receiver holds (zlib-compressed JSON: a LoRA's key names would otherwise outweigh an int4
adapter of a small model).

Two groups of values: `main`, through the direction's codec, and `exact`, as fp32, for what a
strategy must receive exactly (SCAFFOLD's control variates). A message without the header is
a plain `wire` message (compression `none`), which every receiver also reads.
"""

from __future__ import annotations

import base64
import json
import zlib

import torch
from safetensors.torch import save

from fedumm.federation import wire
from fedumm.federation.compression.base import Codec, CodecError
from fedumm.federation.compression.cast import Cast
from fedumm.federation.update import Params

HEADER = "fedumm.compression"
EXACT = Cast("fp32")
MAX_HEADER = 1 << 24  # bytes of JSON a header may inflate to (a message of 100,000 tensors)
MAX_VALUES = 1 << 48  # values a message's tensors may hold in all (a 2^48-value tensor: 1 PB)


def encode(
    values: Params,
    codec: Codec,
    generator: torch.Generator,
    exact: Params | None = None,
    relative: frozenset[str] = frozenset(),
    decoded: bool = False,
) -> tuple[bytes, Params]:
    """(The message of `values` through `codec` and `exact` as fp32, with `decoded` what the
    receiver will decode of `values`: error feedback's residual is what it lacks; else {}).
    `relative`: the keys that are changes from the receiver's reference."""
    exact = exact or {}
    tensors, entries, received = {}, [], {}
    for group, params, group_codec in (("main", values, codec), ("exact", exact, EXACT)):
        if not params:
            continue
        keys = sorted(params)
        sizes = [params[k].numel() for k in keys]
        flat = torch.cat([params[k].detach().float().reshape(-1).cpu() for k in keys])
        parts = group_codec.encode(flat, sizes, generator)
        tensors.update({f"{group}.{name}": t.contiguous() for name, t in parts.items()})
        entries += [[k, list(params[k].shape), group, k in relative] for k in keys]
        if group == "main" and decoded:
            out = group_codec.decode(parts, sizes)
            received = dict(
                zip(keys, (v.view(params[k].shape) for k, v in zip(keys, out.split(sizes))))
            )
    header = {"codec": codec.name, "tensors": entries}
    text = base64.b64encode(zlib.compress(json.dumps(header, separators=(",", ":")).encode()))
    return save(tensors, metadata={HEADER: text.decode()}), received


def decode(
    blob: bytes, codec: Codec, reference: Params | None = None, template: Params | None = None
) -> Params:
    """The values of message `blob` (float32), each relative one plus `reference`'s value of
    its key; a plain `wire` message as it is. With `template` (what the receiver expects), a
    header naming another key or shape is refused before anything is decoded (a small message
    may not make the receiver allocate a large one) and the values come in its dtypes.
    CodecError for anything that is not a well-formed message of `codec`, naming what."""
    header = _header(blob)
    if header is not None and header.get("codec") != codec.name:
        raise CodecError(f"encoded with {header.get('codec')!r}, not this run's {codec.name!r}")
    try:
        tensors = wire.unpack(blob)
    except Exception as e:  # whatever the bytes were, they were not a message
        raise CodecError(f"not a safetensors message ({e})") from None
    if header is None:
        return tensors
    listed, out = _entries(header), {}
    if len({e[0] for e in listed}) != len(listed):
        raise CodecError("a key appears twice")
    for key, shape, _, _ in listed if template is not None else ():
        if key not in template or tuple(template[key].shape) != tuple(shape):
            raise CodecError(f"declares {key!r} of shape {tuple(shape)}, which is not expected")
    for group, group_codec in (("main", codec), ("exact", EXACT)):
        entries = [e for e in listed if e[2] == group]
        if not entries:
            continue
        prefix = f"{group}."
        parts = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        sizes = [_numel(shape) for _, shape, _, _ in entries]
        flat = group_codec.decode(parts, sizes)
        for (key, shape, _, relative), value in zip(entries, flat.split(sizes)):
            value = value.view(shape)
            if relative:
                base = (reference or {}).get(key)
                if base is None or tuple(base.shape) != tuple(shape):
                    raise CodecError(
                        f"{key!r} is a change from a tensor the receiver does not hold"
                    )
                value = (base.float() + value).to(base.dtype)  # the dtype it has (bf16 weights)
            out[key] = value if template is None else value.to(template[key].dtype)
    return out


def _header(blob: bytes) -> dict | None:
    try:  # RecursionError: JSON nested deeper than the parser goes
        size = int.from_bytes(blob[:8], "little")
        meta = json.loads(blob[8 : 8 + size]).get("__metadata__") or {}
    except (ValueError, AttributeError, RecursionError) as e:
        raise CodecError(f"not a safetensors message ({e})") from None
    if not isinstance(meta, dict):  # safetensors' metadata maps text to text
        raise CodecError("not a safetensors message (its __metadata__ is not an object)")
    if HEADER not in meta:
        return None
    try:
        if not isinstance(meta[HEADER], str):
            raise ValueError(f"{type(meta[HEADER]).__name__}, not base64 text")
        inflate = zlib.decompressobj()
        text = inflate.decompress(base64.b64decode(meta[HEADER], validate=True), MAX_HEADER)
        if inflate.unconsumed_tail:
            raise ValueError(f"inflates past {MAX_HEADER} bytes")
        header = json.loads(text)
    except (ValueError, zlib.error, RecursionError) as e:
        raise CodecError(f"unreadable compression header ({e})") from None
    if not isinstance(header, dict):
        raise CodecError("the compression header is not an object")
    return header


def _entries(header: dict) -> list:
    entries = header.get("tensors")
    ok = isinstance(entries, list) and all(
        isinstance(e, list)
        and len(e) == 4
        and isinstance(e[0], str)
        and isinstance(e[1], list)
        and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in e[1])
        and e[2] in ("main", "exact")
        and isinstance(e[3], bool)
        for e in entries
    )
    if not ok:
        raise CodecError("the header's tensors are not [key, shape, group, relative] entries")
    if sum(_numel(e[1]) for e in entries) > MAX_VALUES:  # past 1e308, float math overflows
        raise CodecError(f"the header's tensors hold more than {MAX_VALUES} values in all")
    return entries


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
