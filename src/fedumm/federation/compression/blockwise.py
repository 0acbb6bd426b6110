"""Blockwise integer quantization (as QSGD and FedPAQ quantize updates; the block layout is
bitsandbytes'): the vector is cut into blocks of `block_size` values, each block sent as
b-bit integers q in [-L, L], L = 2^(b-1) - 1, and one scale s = max|x| / L (bf16, rounded up),
decoded as x' = s q.

Stochastic rounding makes it unbiased: q = floor(x/s) + 1 with probability x/s - floor(x/s),
so E[x'] = x and |x - x'| < s; nearest rounding halves the worst error (s/2) but is biased.
int8 sends 1 byte a value, int4 half a byte (two codes to a byte, low nibble first), plus two
bytes of scale per block.
"""

from __future__ import annotations

import torch

from fedumm.federation.compression.base import Codec, CodecError, Parts, finite, part


def stochastic_round(y: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """floor(y) + Bernoulli(y - floor(y)): unbiased; nearest rounding without a generator.
    Overwrites `y` (a 7B adapter's 8.4M values: each pass and allocation saved counts)."""
    if generator is None:
        return torch.round(y)
    low = torch.floor(y)
    frac = y.sub_(low)
    return low.add_(torch.rand(y.shape, generator=generator).lt_(frac))


def scales_up(absmax: torch.Tensor, levels: int) -> torch.Tensor:
    """absmax / levels as bf16, rounded up, so that |x| / s <= levels holds for the stored s."""
    exact = absmax / levels
    s = exact.to(torch.bfloat16)
    low = s.float() < exact
    return torch.where(low, torch.nextafter(s, torch.full_like(s, float("inf"))), s)


class BlockScaled(Codec):
    """A codec that sends one bf16 scale per block of `block` values (the last block may be
    short): how it cuts a vector into blocks and reads the scales back."""

    block: int

    def _blocks(self, n: int) -> int:
        return -(-n // self.block)

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        """Flat `x` as rows of a block each, the last padded with zeros."""
        pad = self._blocks(x.numel()) * self.block - x.numel()
        return (torch.nn.functional.pad(x, (0, pad)) if pad else x).view(-1, self.block)

    def _scales(self, parts: Parts, n: int) -> torch.Tensor:
        """The scales of a message of `n` values, checked finite and non-negative."""
        scales = finite(part(parts, "scales", torch.bfloat16, self._blocks(n)).float(), "scales")
        if bool((scales < 0).any()):
            raise CodecError("a block's scale is negative")
        return scales


class Blockwise(BlockScaled):
    def __init__(self, bits: int, block_size: int, stochastic: bool = True):
        if bits not in (4, 8):
            raise ValueError(f"blockwise quantization has 4 or 8 bits, not {bits}")
        self.name, self.bits, self.block = f"int{bits}", bits, block_size
        self.levels, self.stochastic = 2 ** (bits - 1) - 1, stochastic

    def quantize(self, x: torch.Tensor, generator: torch.Generator | None) -> tuple:
        """(integer codes in [-L, L] as int8, bf16 scales) of flat `x`."""
        n = x.numel()
        blocks = self._rows(x)
        scales = scales_up(blocks.abs().amax(dim=1), self.levels)
        s = scales.float()
        y = blocks / torch.where(s > 0, s, 1.0).unsqueeze(1)  # a block of scale 0 is all 0
        q = stochastic_round(y, generator if self.stochastic else None)
        q = q.clamp_(-self.levels, self.levels).to(torch.int8).view(-1)[:n]
        return q, scales

    def encode(self, x: torch.Tensor, sizes: list[int], generator: torch.Generator) -> Parts:
        q, scales = self.quantize(x, generator)
        codes = pack_nibbles(q) if self.bits == 4 else q
        return {"codes": codes, "scales": scales}

    def decode(self, parts: Parts, sizes: list[int]) -> torch.Tensor:
        n = sum(sizes)
        scales = self._scales(parts, n)
        if self.bits == 4:
            q = unpack_nibbles(part(parts, "codes", torch.uint8, -(-n // 2)), n)
        else:
            q = part(parts, "codes", torch.int8, n)
        # codes are at most L by their type (int8: 127; a nibble less 8: 7), so one pass for
        # the least: -128 (int8) and -8 (int4) are codes no encoder makes
        if n and int(q.min()) < -self.levels:
            raise CodecError(f"an {self.name} code outside [-{self.levels}, {self.levels}]")
        if len(scales) and float(scales.max()) * self.levels > torch.finfo(torch.float32).max:
            raise CodecError(f"a scale whose codes decode to NaN or infinite {self.name} values")
        return (self._rows(q.float()) * scales.unsqueeze(1)).view(-1)[:n]


def pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """int4 codes in [-7, 7] two to a byte (code + 8, low nibble first; an odd tail gets 8)."""
    u = (q.to(torch.int16) + 8).to(torch.uint8)
    if u.numel() % 2:
        u = torch.cat([u, torch.full((1,), 8, dtype=torch.uint8)])
    pairs = u.view(-1, 2)
    return pairs[:, 0] | (pairs[:, 1] << 4)


def unpack_nibbles(packed: torch.Tensor, n: int) -> torch.Tensor:
    codes = torch.stack([packed & 0x0F, packed >> 4], dim=1).view(-1)[:n]
    return codes.to(torch.int8) - 8
