import pytest
import torch

from fedumm.federation.compression.base import CodecError
from fedumm.federation.compression.blockwise import (
    Blockwise,
    pack_nibbles,
    scales_up,
    unpack_nibbles,
)


def _round_trip(codec, x, seed=0):
    parts = codec.encode(x, [x.numel()], torch.Generator().manual_seed(seed))
    return parts, codec.decode(parts, [x.numel()])


def test_a_hand_computed_block():
    """Block [0.7, -1.4, 0.0, 1.4]: scale 1.4 / 127 (bf16, rounded up), nearest codes
    round(x / s) = [64, -127, 0, 127]."""
    codec = Blockwise(8, 4, stochastic=False)
    parts, y = _round_trip(codec, torch.tensor([0.7, -1.4, 0.0, 1.4]))
    s = float(parts["scales"][0])
    assert s >= 1.4 / 127 and s < 1.4 / 127 * (1 + 2**-7)  # bf16, up by at most one ulp
    assert parts["codes"].tolist() == [round(0.7 / s), -round(1.4 / s), 0, round(1.4 / s)]
    assert torch.allclose(y, parts["codes"].float() * s)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("stochastic", [True, False])
def test_the_error_is_below_a_scale_stochastic_and_half_a_scale_nearest(bits, stochastic):
    codec = Blockwise(bits, 64, stochastic)
    x = torch.randn(64 * 10 + 5) * torch.logspace(-4, 0, 64 * 10 + 5)  # a short last block
    parts, y = _round_trip(codec, x)
    s = parts["scales"].float().repeat_interleave(64)[: x.numel()]
    bound = s if stochastic else s / 2
    assert bool(((y - x).abs() <= bound + 1e-12).all())
    levels = 2 ** (bits - 1) - 1
    codes = unpack_nibbles(parts["codes"], x.numel()) if bits == 4 else parts["codes"]
    assert int(codes.abs().max()) == levels  # each block's largest value takes the top code


def test_stochastic_rounding_is_unbiased_and_seeded():
    codec = Blockwise(4, 64)
    x = torch.rand(64) * 0.3
    first = _round_trip(codec, x, seed=1)[1]
    assert torch.equal(first, _round_trip(codec, x, seed=1)[1])  # same seed, same message
    assert not torch.equal(first, _round_trip(codec, x, seed=2)[1])
    mean = torch.stack([_round_trip(codec, x, seed)[1] for seed in range(2000)]).mean(0)
    s = float(_round_trip(codec, x)[0]["scales"][0])
    # each decoded value is x + e with E[e] = 0, |e| < s: 2000 draws put the mean within s/20
    assert float((mean - x).abs().max()) < s / 20


def test_int8_sends_a_byte_a_value_and_int4_half_plus_two_bytes_a_block():
    x = torch.randn(4096)
    for bits, code_bytes in ((8, 4096), (4, 2048)):
        parts = Blockwise(bits, 64).encode(x, [4096], torch.Generator())
        assert parts["codes"].numel() * parts["codes"].element_size() == code_bytes
        assert parts["scales"].dtype == torch.bfloat16 and parts["scales"].numel() == 64


def test_a_zero_block_has_scale_zero_and_decodes_to_zero():
    parts, y = _round_trip(Blockwise(8, 8), torch.cat([torch.zeros(8), torch.ones(8)]))
    assert float(parts["scales"][0]) == 0 and bool((y[:8] == 0).all())


def test_scales_are_rounded_up_so_no_code_exceeds_the_levels():
    absmax = torch.rand(10000) * 10
    s = scales_up(absmax, 127)
    assert bool((absmax / s.float() <= 127).all())


def test_nibbles_pack_two_codes_a_byte_and_back():
    q = torch.arange(-7, 8, dtype=torch.int8)  # 15 codes: an odd tail
    packed = pack_nibbles(q)
    assert packed.dtype == torch.uint8 and packed.numel() == 8
    assert int(packed[0]) == (-7 + 8) | ((-6 + 8) << 4)  # low nibble first
    assert torch.equal(unpack_nibbles(packed, 15), q)


def test_malformed_parts_are_refused():
    codec = Blockwise(8, 4)
    good = {"codes": torch.zeros(8, dtype=torch.int8), "scales": torch.ones(2).bfloat16()}
    assert codec.decode(good, [8]).shape == (8,)
    bad_code = {**good, "codes": torch.tensor([-128, 0, 0, 0, 0, 0, 0, 0], dtype=torch.int8)}
    with pytest.raises(CodecError, match="outside \\[-127, 127\\]"):
        codec.decode(bad_code, [8])
    for scales, match in (
        (torch.tensor([1.0, float("nan")]).bfloat16(), "NaN"),
        (torch.tensor([1.0, -1.0]).bfloat16(), "negative"),
        (torch.ones(3).bfloat16(), "shape \\(2,\\)"),
    ):
        with pytest.raises(CodecError, match=match):
            codec.decode({**good, "scales": scales}, [8])
    with pytest.raises(CodecError, match="torch.int8"):
        codec.decode({**good, "codes": torch.zeros(8, dtype=torch.uint8)}, [8])
    int4 = Blockwise(4, 4)
    with pytest.raises(CodecError, match="outside \\[-7, 7\\]"):  # nibble 0 is code -8
        int4.decode({"codes": torch.zeros(4, dtype=torch.uint8), "scales": good["scales"]}, [8])
