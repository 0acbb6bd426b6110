"""16-bit floats: each value cast to fp16 or bf16 (round to nearest), half the bytes of fp32.

fp16 keeps 10 mantissa bits but flushes values below 6e-8 to zero and overflows above 65504;
bf16 keeps fp32's range with 7 mantissa bits. An adapter's change in a round is small, so
fp16's precision is the better default; a value fp16 cannot hold is refused, not sent as inf.
"""

from __future__ import annotations

import torch

from fedumm.federation.compression.base import Codec, CodecError, Parts, finite, part

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class Cast(Codec):
    def __init__(self, name: str):
        self.name, self.dtype = name, DTYPES[name]
        self.lossless = name == "fp32"

    def encode(self, x: torch.Tensor, sizes: list[int], generator: torch.Generator) -> Parts:
        values = x.to(self.dtype)
        if not bool(torch.isfinite(values).all()) and bool(torch.isfinite(x).all()):
            raise CodecError(
                f"a value of magnitude {float(x.abs().max()):.3g} overflows {self.name}"
            )
        return {"values": values}

    def decode(self, parts: Parts, sizes: list[int]) -> torch.Tensor:
        values = part(parts, "values", self.dtype, sum(sizes))
        return finite(values.float(), f"{self.name} values")
