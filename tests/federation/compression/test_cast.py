import pytest
import torch

from fedumm.federation.compression.base import CodecError
from fedumm.federation.compression.cast import Cast

G = torch.Generator().manual_seed(0)


def test_fp32_is_exact_and_16_bit_floats_round_to_nearest():
    x = torch.randn(1000).sign() * torch.logspace(-4, 0, 1000)  # fp16's normal range
    assert torch.equal(Cast("fp32").decode(Cast("fp32").encode(x, [1000], G), [1000]), x)
    for name, mantissa in (("fp16", 10), ("bf16", 7)):
        codec = Cast(name)
        y = codec.decode(codec.encode(x, [1000], G), [1000])
        assert y.dtype == torch.float32
        # round to nearest: relative error at most half a unit in the last place
        assert float(((y - x).abs() / x.abs()).max()) <= 2.0 ** -(mantissa + 1)


def test_a_value_fp16_cannot_hold_is_refused_not_sent_as_inf():
    with pytest.raises(CodecError, match="overflows fp16"):
        Cast("fp16").encode(torch.tensor([1e5, 0.0]), [2], G)
    assert torch.isfinite(Cast("bf16").encode(torch.tensor([1e5]), [1], G)["values"]).all()


def test_decoding_checks_dtype_size_and_finiteness():
    codec = Cast("fp16")
    with pytest.raises(CodecError, match="expected torch.float16 of shape \\(3,\\)"):
        codec.decode({"values": torch.zeros(2, dtype=torch.float16)}, [3])
    with pytest.raises(CodecError, match="expected torch.float16"):
        codec.decode({"values": torch.zeros(3)}, [3])
    with pytest.raises(CodecError, match="missing part 'values'"):
        codec.decode({}, [3])
    with pytest.raises(CodecError, match="NaN"):
        codec.decode({"values": torch.tensor([0.0, float("nan"), 1.0]).half()}, [3])
