import pytest
import torch

from fedumm.federation.compression.base import CodecError
from fedumm.federation.compression.sign import Sign

G = torch.Generator()


def test_a_hand_computed_block_and_a_short_last_one():
    """Blocks of 4: [1, -3, 0.5, -0.5] has mean magnitude 1.25; the short last block [2, -4]
    has 3 (its two values, not four)."""
    codec = Sign(4)
    x = torch.tensor([1.0, -3.0, 0.5, -0.5, 2.0, -4.0])
    parts = codec.encode(x, [6], G)
    assert parts["scales"].float().tolist() == [1.25, 3.0]
    assert parts["signs"].tolist() == [0b010101]  # bits set where x >= 0, low bit first
    assert codec.decode(parts, [6]).tolist() == [1.25, -1.25, 1.25, -1.25, 3.0, -3.0]


def test_the_mean_magnitude_is_the_scale_that_errs_least_for_these_signs():
    x = torch.randn(64)
    y = Sign(64).decode(Sign(64).encode(x, [64], G), [64])
    error = float((x - y).norm())
    s = float(y.abs()[0])
    for other in (0.9 * s, 1.1 * s):
        assert error < float((x - other * torch.sign(y)).norm())


def test_one_bit_a_value_and_two_bytes_a_block():
    parts = Sign(64).encode(torch.randn(4096), [4096], G)
    assert parts["signs"].numel() == 512 and parts["scales"].numel() == 64


def test_malformed_parts_are_refused():
    codec = Sign(8)
    good = {"signs": torch.zeros(2, dtype=torch.uint8), "scales": torch.ones(2).bfloat16()}
    assert codec.decode(good, [16]).tolist() == [-1.0] * 16
    with pytest.raises(CodecError, match="negative"):
        codec.decode({**good, "scales": torch.tensor([1.0, -1.0]).bfloat16()}, [16])
    with pytest.raises(CodecError, match="NaN"):
        codec.decode({**good, "scales": torch.tensor([1.0, float("nan")]).bfloat16()}, [16])
    with pytest.raises(CodecError, match="part 'signs'"):
        codec.decode({**good, "signs": torch.zeros(3, dtype=torch.uint8)}, [16])
