import math

import pytest
import torch

from fedumm.federation.compression.base import CodecError
from fedumm.federation.compression.blockwise import Blockwise
from fedumm.federation.compression.cast import Cast
from fedumm.federation.compression.topk import TopK

G = torch.Generator().manual_seed(0)


def test_each_tensor_keeps_its_largest_values_and_their_positions():
    x = torch.tensor([0.1, -3.0, 0.2, 2.0, 0.0, 5.0, -0.1, -6.0, 0.3, 0.2])
    codec = TopK(0.25, Cast("fp32"))  # tensors of 4 and 6 values: ceil(1) and ceil(1.5) kept
    parts = codec.encode(x, [4, 6], G)
    # 3 indices would be 12 bytes, a bitmap of 10 values 2: bits 1, 5, 7 (low bit first)
    assert "index" not in parts and parts["bitmap"].tolist() == [0b10100010, 0]
    assert parts["values.values"].tolist() == [-3.0, 5.0, -6.0]
    y = codec.decode(parts, [4, 6])
    assert y.tolist() == [0, -3.0, 0, 0, 0, 5.0, 0, -6.0, 0, 0]


def test_positions_travel_as_int32_indices_when_few_values_are_kept():
    x = torch.zeros(1000)
    x[[3, 500, 999]] = torch.tensor([1.0, -2.0, 3.0])
    codec = TopK(0.003, Cast("fp32"))  # 3 kept: 12 bytes of indices against 125 of bitmap
    parts = codec.encode(x, [1000], G)
    assert "bitmap" not in parts and parts["index"].tolist() == [3, 500, 999]
    assert torch.equal(codec.decode(parts, [1000]), x)


@pytest.mark.parametrize("fraction", [0.01, 1 / 32, 0.05, 0.1, 0.5])
def test_the_smaller_of_indices_and_bitmap_travels(fraction):
    n = 4096
    parts = TopK(fraction, Cast("fp32")).encode(torch.randn(n), [n], G)
    kept = math.ceil(fraction * n)
    position_bytes = sum(
        t.numel() * t.element_size() for k, t in parts.items() if k != "values.values"
    )
    assert position_bytes == min(4 * kept, n // 8)


def test_fraction_one_with_fp32_values_is_exact():
    x = torch.randn(300)
    codec = TopK(1.0, Cast("fp32"))
    assert torch.equal(codec.decode(codec.encode(x, [100, 200], G), [100, 200]), x)


def test_kept_values_through_int8():
    x = torch.randn(1000)
    codec = TopK(0.1, Blockwise(8, 64))
    parts = codec.encode(x, [1000], G)
    assert parts["values.codes"].dtype == torch.int8 and parts["values.codes"].numel() == 100
    y = codec.decode(parts, [1000])
    kept = x.abs().topk(100).indices
    assert float((y[kept] - x[kept]).abs().max()) <= float(parts["values.scales"].float().max())
    assert int((y != 0).sum()) <= 100


def test_bad_positions_are_refused():
    codec = TopK(0.5, Cast("fp32"))  # 2 of 4 values: a bitmap of 1 byte
    values = {"values.values": torch.ones(2)}
    for bitmap, match in (
        (0b0111, "marks 3 values, not 2"),
        (0b1_0001, "past the message's values"),
    ):
        with pytest.raises(CodecError, match=match):
            codec.decode({"bitmap": torch.tensor([bitmap], dtype=torch.uint8), **values}, [4])
    codec = TopK(0.001, Cast("fp32"))  # 2 of 2000: int32 indices
    values = {"values.values": torch.ones(2)}
    for index, match in (
        ([0, 2000], "outside \\[0, 2000\\)"),
        ([-1, 2], "outside"),
        ([2, 2], "strictly increasing"),
        ([3, 1], "strictly increasing"),
    ):
        with pytest.raises(CodecError, match=match):
            codec.decode({"index": torch.tensor(index, dtype=torch.int32), **values}, [2000])
    with pytest.raises(CodecError, match="shape \\(2,\\)"):
        codec.decode({"index": torch.tensor([0, 1, 2], dtype=torch.int32), **values}, [2000])
