"""The facade every engine uses: uploads as changes, exact keys, error feedback, seeding."""

import pytest
import torch

from fedumm.config import CodecConfig, CompressionConfig
from fedumm.federation import wire
from fedumm.federation.compression import RESIDUAL, Compression, build_codec
from fedumm.federation.compression.blockwise import Blockwise
from fedumm.federation.compression.cast import Cast
from fedumm.federation.compression.topk import TopK


def _compression(seed=0, **upload):
    return Compression(CompressionConfig(upload=CodecConfig(**upload)), seed)


def test_each_scheme_builds_its_codec():
    assert build_codec(CodecConfig()) is None
    assert isinstance(build_codec(CodecConfig(scheme="bf16")), Cast)
    codec = build_codec(CodecConfig(scheme="int4", block_size=128, rounding="nearest"))
    assert isinstance(codec, Blockwise) and (codec.bits, codec.block, codec.stochastic) == (
        4,
        128,
        False,
    )
    topk = build_codec(CodecConfig(scheme="topk", fraction=0.01, values="int8"))
    assert isinstance(topk, TopK) and isinstance(topk.values, Blockwise)


def test_none_sends_todays_plain_messages():
    params = {"a": torch.randn(3, 4)}
    plain = Compression()
    assert plain.pack_broadcast(params, 1) == wire.pack(params)
    assert plain.pack_upload(params, params, frozenset(), {}, 1, 1) == wire.pack(params)


def test_an_upload_travels_as_its_change_and_the_server_adds_its_own_reference():
    """The client received a lossy broadcast (fp16); its change is measured from that, and the
    server adds the change to its exact global: the broadcast's rounding error never enters
    the aggregate."""
    comp = Compression(
        CompressionConfig(upload=CodecConfig(scheme="fp16"), broadcast=CodecConfig(scheme="fp16"))
    )
    global_ = {"w": torch.tensor([1.0001, 2.0003, -0.3333])}
    received = comp.unpack_broadcast(comp.pack_broadcast(global_, 1))
    assert not torch.equal(received["w"], global_["w"])  # fp16 rounded it
    trained = {"w": received["w"] + torch.tensor([0.01, -0.02, 0.0])}
    blob = comp.pack_upload(trained, received, frozenset(), {}, 1, 1)
    out = comp.unpack_upload(blob, global_)["w"]
    assert torch.allclose(out, global_["w"] + torch.tensor([0.01, -0.02, 0.0]), atol=1e-5)


def test_exact_keys_travel_exactly_whatever_the_codec():
    comp = _compression(scheme="int4")
    upload = {"w": torch.randn(64), "control/w": torch.randn(64) * 1e-6}
    blob = comp.pack_upload(upload, {"w": torch.zeros(64)}, frozenset({"control/w"}), {}, 1, 1)
    out = comp.unpack_upload(blob, {"w": torch.zeros(64)})
    assert torch.equal(out["control/w"], upload["control/w"])
    assert not torch.equal(out["w"], upload["w"])  # int4 is lossy


def test_error_feedback_sends_over_the_rounds_what_it_dropped():
    """Top-k 10% of a constant change of 100 values over 20 rounds: without feedback, the same
    10 values go every round and 90 never move; with it, the residual carries the rest, so
    every value moves, and after each round sent + residual = the sum of the changes."""
    change = torch.linspace(1.0, 0.5, 100)
    for feedback in (False, True):
        kwargs = {"error_feedback": True} if feedback else {}
        comp, state = _compression(scheme="topk", fraction=0.1, **kwargs), {}
        server = torch.zeros(100)
        for rnd in range(1, 21):
            reference = {"w": server.clone()}
            blob = comp.pack_upload({"w": server + change}, reference, frozenset(), state, rnd, 1)
            server = comp.unpack_upload(blob, reference)["w"]
            if feedback:
                assert torch.allclose(server + state[RESIDUAL + "w"], change * rnd, atol=1e-5)
        moved = int((server != 0).sum())
        if feedback:
            assert moved == 100 and RESIDUAL + "w" in state
        else:
            assert moved == 10 and not state


def test_the_residual_is_kept_beside_a_strategys_own_state():
    state = {"lora_B": torch.ones(2)}  # e.g. FedSA-LoRA's B
    comp = _compression(scheme="int8", error_feedback=True)
    comp.pack_upload({"w": torch.randn(8)}, {}, frozenset(), state, 1, 1)
    assert set(state) == {"lora_B", RESIDUAL + "w"} and torch.equal(state["lora_B"], torch.ones(2))


def test_stochastic_rounding_is_seeded_by_run_round_and_client():
    upload, ref = {"w": torch.randn(256)}, {"w": torch.zeros(256)}

    def blob(seed, rnd, client):
        return _compression(seed, scheme="int4").pack_upload(
            upload, ref, frozenset(), {}, rnd, client
        )

    assert blob(0, 1, 1) == blob(0, 1, 1)
    assert len({blob(0, 1, 1), blob(1, 1, 1), blob(0, 2, 1), blob(0, 1, 2)}) == 4


@pytest.mark.parametrize(
    "upload, broadcast, per_value",
    [("fp16", "bf16", 2), ("int8", "int8", 1 + 2 / 64), ("int4", "int4", 0.5 + 2 / 64)],
)
def test_messages_shrink_by_the_codecs_ratio(upload, broadcast, per_value):
    """Of a 7B-shaped adapter layer's q/k/v/o LoRA (r=8): the codec's bytes a value (int8/int4
    plus a bf16 scale per 64 values) and a header of under 1 KB; fp32 is 4 bytes a value."""
    params = {
        f"layers.0.{m}.lora_{f}.weight": torch.randn(*shape) * 0.01
        for m in ("q", "k", "v", "o")
        for f, shape in (("A", (8, 4096)), ("B", (4096, 8)))
    }
    comp = Compression(
        CompressionConfig(
            upload=CodecConfig(scheme=upload), broadcast=CodecConfig(scheme=broadcast)
        )
    )
    values = sum(v.numel() for v in params.values())
    assert values * 4 < len(wire.pack(params)) < values * 4 + 1024
    down = len(comp.pack_broadcast(params, 1))
    up = len(comp.pack_upload(params, {}, frozenset(), {}, 1, 1))
    for size in (down, up):
        assert values * per_value < size < values * per_value + 1024
