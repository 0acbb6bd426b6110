"""Scaled sign (1 bit a value; Bernstein et al., ICML 2018 "signSGD", with the scale and error
feedback of Karimireddy et al., ICML 2019, "Error Feedback Fixes SignSGD and other Gradient
Compression Schemes"): each block of `block_size` values travels as its signs and one bf16
scale, the block's mean magnitude,
    x' = (sum_j |x_j| / n) * sign(x),
the scale that minimizes |x - x'| for these signs. Biased (small values come back at the
block's mean size), so meant for error feedback, which carries the difference to the next
round. 1/8 byte a value plus 2 bytes a block: 0.156 bytes a value at blocks of 64, 26x below
fp32.
"""

from __future__ import annotations

import numpy as np
import torch

from fedumm.federation.compression.base import Parts, finite, part
from fedumm.federation.compression.blockwise import BlockScaled


class Sign(BlockScaled):
    name = "sign"

    def __init__(self, block_size: int):
        self.block = block_size

    def encode(self, x: torch.Tensor, sizes: list[int], generator: torch.Generator) -> Parts:
        n = x.numel()
        blocks = self._rows(x)
        counts = torch.full((blocks.shape[0],), float(self.block))
        counts[-1] = n - (blocks.shape[0] - 1) * self.block  # the last block may be short
        scales = (blocks.abs().sum(dim=1) / counts).to(torch.bfloat16)
        bits = (x >= 0).numpy().astype(np.uint8)
        return {"signs": torch.from_numpy(np.packbits(bits, bitorder="little")), "scales": scales}

    def decode(self, parts: Parts, sizes: list[int]) -> torch.Tensor:
        n = sum(sizes)
        scales = self._scales(parts, n)
        packed = part(parts, "signs", torch.uint8, -(-n // 8)).numpy()
        signs = np.unpackbits(packed, count=n, bitorder="little").astype(np.float32) * 2 - 1
        per_value = scales.repeat_interleave(self.block)[:n]
        return finite(torch.from_numpy(signs) * per_value, "decoded values")
