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
    assert parts["index"].tolist() == [1, 5, 7]
    assert parts["values.values"].tolist() == [-3.0, 5.0, -6.0]
    y = codec.decode(parts, [4, 6])
    assert y.tolist() == [0, -3.0, 0, 0, 0, 5.0, 0, -6.0, 0, 0]


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
    kept = parts["index"].long()
    assert float((y[kept] - x[kept]).abs().max()) <= float(parts["values.scales"].float().max())
    assert int((y != 0).sum()) <= 100


def test_bad_indices_are_refused():
    codec = TopK(0.5, Cast("fp32"))
    values = {"values.values": torch.ones(2)}
    for index, match in (
        ([0, 4], "outside \\[0, 4\\)"),
        ([-1, 2], "outside"),
        ([2, 2], "strictly increasing"),
        ([3, 1], "strictly increasing"),
    ):
        with pytest.raises(CodecError, match=match):
            codec.decode({"index": torch.tensor(index, dtype=torch.int32), **values}, [4])
    with pytest.raises(CodecError, match="shape \\(2,\\)"):
        codec.decode({"index": torch.tensor([0, 1, 2], dtype=torch.int32), **values}, [4])
