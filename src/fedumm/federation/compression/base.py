"""What every codec is: a map from one flat float32 vector (a message's tensors, concatenated)
to named parts that travel as safetensors, and back. A codec never trusts the parts it decodes:
whatever a sender put there, decoding either gives a finite vector of the declared length or
raises CodecError, which the server treats as any bad update (the client is left out).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

Parts = dict[str, torch.Tensor]


class CodecError(ValueError):
    """Parts that are not a message of this codec: wrong dtype or size, out-of-range codes,
    non-finite scales or values."""


class Codec(ABC):
    name: str
    lossless: bool = False

    @abstractmethod
    def encode(self, x: torch.Tensor, sizes: list[int], generator: torch.Generator) -> Parts:
        """The parts of flat float32 `x`, the concatenation of tensors of `sizes` values
        each; `generator` draws whatever randomness the codec uses (seeded by the caller)."""

    @abstractmethod
    def decode(self, parts: Parts, sizes: list[int]) -> torch.Tensor:
        """Flat float32 of sum(sizes) values from `parts`, or CodecError."""


def part(parts: Parts, name: str, dtype: torch.dtype, numel: int) -> torch.Tensor:
    """parts[name], flat, checked to have `dtype` and `numel` values."""
    if name not in parts:
        raise CodecError(f"missing part {name!r}")
    t = parts[name]
    if t.dtype != dtype or t.dim() != 1 or t.numel() != numel:
        raise CodecError(
            f"part {name!r} is {t.dtype} of shape {tuple(t.shape)}; expected {dtype} of "
            f"shape ({numel},)"
        )
    return t


def finite(x: torch.Tensor, what: str) -> torch.Tensor:
    if x.numel() and not bool(torch.isfinite(x).all()):
        raise CodecError(f"{what} holds NaN or infinite values")
    return x
