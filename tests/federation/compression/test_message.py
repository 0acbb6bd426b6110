import json

import pytest
import torch
from safetensors.torch import save

from fedumm.config import CodecConfig
from fedumm.federation import wire
from fedumm.federation.compression import build_codec
from fedumm.federation.compression.base import CodecError
from fedumm.federation.compression.blockwise import Blockwise
from fedumm.federation.compression.cast import Cast
from fedumm.federation.compression.message import HEADER, decode, encode

G = torch.Generator().manual_seed(0)
PARAMS = {
    "layers.0.q.lora_A.weight": torch.randn(4, 64),
    "layers.0.q.lora_B.weight": torch.randn(64, 4) * 0.01,
    "layers.1.q.lora_A.weight": torch.randn(4, 64),
}


def test_a_message_is_one_array_per_part_and_a_header_naming_each_tensor():
    blob, decoded = encode(PARAMS, Blockwise(8, 64), G, decoded=True)
    tensors = wire.unpack(blob)
    assert sorted(tensors) == ["main.codes", "main.scales"]
    assert tensors["main.codes"].numel() == 3 * 256
    out = decode(blob, Blockwise(8, 64))
    assert {k: v.shape for k, v in out.items()} == {k: v.shape for k, v in PARAMS.items()}
    for k in PARAMS:
        assert torch.equal(out[k], decoded[k])  # the sender knows what the receiver gets
    # the header is a small fraction of an int8 message of 768 values
    assert len(blob) < 768 + 2 * 12 + 400


def test_relative_values_are_added_to_the_receivers_reference_and_exact_ones_kept():
    reference = {k: torch.full_like(v, 5.0) for k, v in PARAMS.items()}
    change = {k: v - reference[k] for k, v in PARAMS.items()}
    exact = {"control/x": torch.tensor([1e-9, 3.0])}
    blob, _ = encode(change, Cast("fp32"), G, exact, frozenset(PARAMS))
    out = decode(blob, Cast("fp32"), reference)
    for k, v in PARAMS.items():
        assert torch.allclose(out[k], v, atol=1e-6)
    assert torch.equal(out["control/x"], exact["control/x"])
    with pytest.raises(CodecError, match="change from a tensor the receiver does not hold"):
        decode(blob, Cast("fp32"), {})


def test_a_plain_wire_message_is_read_as_it_is():
    assert torch.equal(
        decode(wire.pack(PARAMS), Cast("fp16"))["layers.0.q.lora_A.weight"],
        PARAMS["layers.0.q.lora_A.weight"],
    )


def _with_header(header, tensors):
    import base64
    import zlib

    text = base64.b64encode(zlib.compress(json.dumps(header).encode())).decode()
    return save(tensors, metadata={HEADER: text})


@pytest.mark.parametrize(
    "blob, match",
    [
        (b"\x05\x00\x00\x00\x00\x00\x00\x00{{{{{", "not a safetensors message"),
        (save({"a": torch.zeros(1)}, metadata={HEADER: "%%%"}), "unreadable compression header"),
        (_with_header({"codec": "int4", "tensors": []}, {}), "not this run's 'int8'"),
        (_with_header({"codec": "int8", "tensors": [["a", [2], "main"]]}, {}), "entries"),
        (_with_header({"codec": "int8", "tensors": [["a", [-2], "main", False]]}, {}), "entries"),
        (
            _with_header({"codec": "int8", "tensors": [["a", [4], "main", False]]}, {}),
            "missing part",
        ),
        (
            _with_header(
                {
                    "codec": "int8",
                    "tensors": [["a", [4], "main", False], ["a", [4], "main", False]],
                },
                {
                    "main.codes": torch.zeros(8, dtype=torch.int8),
                    "main.scales": torch.ones(1).bfloat16(),
                },
            ),
            "a key appears twice",
        ),
        (
            _with_header(
                {"codec": "int8", "tensors": [["a", [10**12], "main", False]]},
                {
                    "main.codes": torch.zeros(8, dtype=torch.int8),
                    "main.scales": torch.ones(1).bfloat16(),
                },
            ),
            "expected torch.bfloat16 of shape",
        ),
    ],
)
def test_malformed_messages_raise_codec_errors(blob, match):
    with pytest.raises(CodecError, match=match):
        decode(blob, build_codec(CodecConfig(scheme="int8", block_size=8)))


def test_a_header_that_inflates_without_end_is_refused():
    import base64
    import zlib

    bomb = base64.b64encode(zlib.compress(b" " * (1 << 25))).decode()
    with pytest.raises(CodecError, match="inflates past"):
        decode(save({"a": torch.zeros(1)}, metadata={HEADER: bomb}), Cast("fp16"))
