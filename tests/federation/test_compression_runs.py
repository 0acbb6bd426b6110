"""Compressed messages in runs (issue 38): error feedback keeps exactly what compression
dropped, round after round (by hand and in a real tiny run); a malformed compressed upload is
rejected by the real server, naming the problem, while the others' count; and `fedumm run`
refuses each compression setting it cannot run, naming the key."""

import base64
import json
import math
import zlib
from collections import defaultdict
from dataclasses import dataclass, field

import pytest
import torch
from safetensors.torch import load, load_file, save

from fedumm.cli import app
from fedumm.config import CompressionConfig
from fedumm.engines.embedded import InProcess
from fedumm.federation.compression import RESIDUAL, Compression, message
from fedumm.federation.server import RoundFailed, RoundRules, Server
from fedumm.federation.strategies import build_strategy
from fedumm.federation.update import ClientUpdate
from tests.engines.test_flower import TWO_CLIENTS
from tests.federation.test_server import CLIENTS, ModelFreeParts, _train
from tests.tiny import run_tiny, runner

TOPK_INT8 = {"scheme": "topk", "fraction": 0.1, "values": "int8"}


def _compression(seed: int = 0, **upload) -> Compression:
    return Compression(CompressionConfig.model_validate({"upload": upload}), seed)


# Error feedback: what a client sent over the rounds plus its residual is what it changed.


@pytest.mark.parametrize(
    "upload",
    [
        TOPK_INT8,
        {"scheme": "topk", "fraction": 0.05, "values": "fp32"},
        {"scheme": "int4", "block_size": 8},
        {"scheme": "int8", "rounding": "nearest"},
        {"scheme": "bf16"},
        {"scheme": "sign", "block_size": 8},
    ],
    ids=lambda u: "-".join(str(v) for v in u.values()),
)
def test_what_was_sent_plus_the_residual_is_the_sum_of_the_changes(upload):
    """Three rounds of hand-made changes from a reference that moves each round (the model a
    client receives): after each, the decoded uploads' changes summed plus the residual in
    the client's state equal the changes summed; the exact keys never leave a residual, and
    a key without a reference (sent as it is) keeps one like the others."""
    codec = _compression(**upload, error_feedback=True)
    g = torch.Generator().manual_seed(7)
    shapes = {"w": (24, 10), "b": (37,), "fresh": (3, 5)}  # "fresh": no reference
    state, sent, changed = {}, defaultdict(float), defaultdict(float)
    for rnd in (1, 2, 3):
        reference = {k: torch.randn(s, generator=g) for k, s in shapes.items() if k != "fresh"}
        change = {k: torch.randn(s, generator=g) * 10.0**-rnd for k, s in shapes.items()}
        params = {k: reference.get(k, 0) + change[k] for k in shapes}
        exact = {"c": torch.randn(6, generator=g)}
        blob = codec.pack_upload({**params, **exact}, reference, frozenset(exact), state, rnd, 3)
        got = codec.unpack_upload(blob, reference)
        assert torch.equal(got["c"], exact["c"])  # exact: fp32, as it was
        assert set(state) == {RESIDUAL + k for k in shapes}  # none for the exact key
        for k in shapes:
            sent[k] = sent[k] + (got[k] - reference.get(k, 0))
            changed[k] = changed[k] + change[k]
            residual = state[RESIDUAL + k]
            assert residual.abs().max() > 0, (rnd, k)  # lossy: something was left over
            assert torch.allclose(sent[k] + residual, changed[k], rtol=0, atol=2e-6), (rnd, k)
        if upload["scheme"] == "topk":  # only the kept values moved
            for k, s in shapes.items():
                moved = int((got[k] - reference.get(k, 0) != 0).sum())
                assert moved <= math.ceil(upload["fraction"] * math.prod(s))


def test_without_error_feedback_nothing_is_kept():
    codec = _compression(**TOPK_INT8)
    state = {}
    reference = {"w": torch.zeros(50)}
    codec.pack_upload({"w": torch.randn(50)}, reference, frozenset(), state, 1, 1)
    assert state == {}


TOPK_EF = [
    "federation.compression.upload.scheme=topk",
    "federation.compression.upload.fraction=0.1",
    "federation.compression.upload.values=int8",
    "federation.compression.upload.error_feedback=true",
]


def test_in_a_tiny_run_the_residual_keeps_what_top_k_dropped(
    tiny_foundation, tmp_path, monkeypatch
):
    """Every upload of a real run (top-k 10% in int8, error feedback; both clients in each of
    3 rounds): the residual is nonzero for every tensor the client sends and changes from round
    to round; the server's decoded change plus the new residual is the client's change plus
    its old residual; and the run's client_states/ hold the last residuals."""
    calls = []
    pack = Compression.pack_upload

    def recording(self, upload, reference, exact, state, rnd, number):
        before = {k: v.clone() for k, v in state.items() if k.startswith(RESIDUAL)}
        blob = pack(self, upload, reference, exact, state, rnd, number)
        after = {k: v.clone() for k, v in state.items() if k.startswith(RESIDUAL)}
        got = self.unpack_upload(blob, reference)
        calls.append((rnd, number, upload, reference, before, after, got))
        return blob

    monkeypatch.setattr(Compression, "pack_upload", recording)
    out = tmp_path / "run"
    rounds = ["federation.rounds=3", "baselines.zero_shot=false"]
    result = run_tiny(out, tiny_foundation, *TWO_CLIENTS, *TOPK_EF, *rounds)
    assert result.exit_code == 0, result.output
    assert sorted((rnd, number) for rnd, number, *_ in calls) == [
        (r, n) for r in (1, 2, 3) for n in (1, 2)
    ]
    residuals = defaultdict(list)
    for rnd, number, upload, reference, before, after, got in calls:
        assert upload.keys() == reference.keys() and len(upload) > 0
        assert set(after) == {RESIDUAL + k for k in upload}
        for k in upload:
            new, old = after[RESIDUAL + k], before.get(RESIDUAL + k, 0)
            assert new.abs().max() > 0, (rnd, number, k)
            sent = got[k] - reference[k]
            assert int((sent != 0).sum()) <= math.ceil(0.1 * upload[k].numel())
            assert torch.allclose(sent + new, upload[k] - reference[k] + old, atol=1e-6)
        residuals[number].append(torch.cat([after[k].flatten() for k in sorted(after)]))
    for kept in residuals.values():
        assert len(kept) == 3
        assert not torch.equal(kept[0], kept[1]) and not torch.equal(kept[1], kept[2])
    files = sorted((out / "client_states").glob("site-*.safetensors"))
    assert [f.name.split(".")[0] for f in files] == ["site-1", "site-2"]
    last = {number: kept[-1] for number, kept in residuals.items()}
    for f in files:
        stored = load_file(f)
        assert stored.keys() == set(after)
        flat = torch.cat([stored[k].flatten() for k in sorted(stored)])
        assert torch.equal(flat, last[int(f.name.split(".")[0].split("-")[1])])


# Malformed compressed uploads through the real server.


@dataclass
class CompressingParts(ModelFreeParts):
    """ModelFreeParts whose sites compress their uploads as a run's do: a strategy, each
    client's state (error feedback's residual) and its number (the rounding's seed)."""

    strategy: object = field(default_factory=lambda: build_strategy("fedavg"))
    client_states: dict = field(default_factory=lambda: defaultdict(dict))

    def number(self, client) -> int:
        return int(client.client_id.split("-")[1])


START = {"w": torch.zeros(20, 10), "b": torch.zeros(5)}  # sorted: b (5 values), then w (200)


def _server(upload: dict, corrupt=None, bad=("site-4",), clients=CLIENTS) -> Server:
    """A server and its in-process clients (site-k adds k to every value) compressing their
    uploads by `upload`; those in `bad` pass theirs through `corrupt` on the way."""
    compression = _compression(**upload)
    parts = CompressingParts(_train(), clients, compression=compression)
    transport = InProcess(parts)
    honest = transport.upload

    def upload_of(rnd, down, update, inboxes):
        blob = honest(rnd, down, update, inboxes)
        return corrupt(blob) if corrupt and update.client_id in bad else blob

    transport.upload = upload_of
    return Server(
        clients,
        parts.strategy,
        transport,
        lambda params: {},
        len(clients),
        0,
        RoundRules(),
        progress=False,
        compression=compression,
    )


def _message(tensors: dict, header) -> bytes:
    text = base64.b64encode(zlib.compress(json.dumps(header).encode())).decode()
    return save(tensors, metadata={message.HEADER: text})


def _raw(header: dict, data: bytes = b"") -> bytes:
    """A safetensors file written by hand: `header` as its JSON, whatever it holds."""
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data


def _edit(parts=None, header=None):
    """A corruption of a well-formed message: its parts changed in place by `parts`, its
    header (a dict) by `header`."""

    def corrupt(blob: bytes) -> bytes:
        tensors, head = dict(load(blob)), message._header(blob)
        if parts is not None:
            tensors = {k: v.clone() for k, v in tensors.items()}
            parts(tensors)
        if header is not None:
            header(head)
        return _message(tensors, head)

    return corrupt


def _set(name: str, value, at: int = 0):
    def change(t):
        t[name][at] = value

    return change


def _resize(name: str, by: int):
    def change(t):
        v = t[name]
        t[name] = torch.cat([v, v[:by]]) if by > 0 else v[:by]

    return change


def _rename(old: str, new: str, relative: bool | None = None, shape: list | None = None):
    def change(h):
        for e in h["tensors"]:
            if e[0] == old:
                e[0] = new
                e[1] = e[1] if shape is None else shape
                e[3] = e[3] if relative is None else relative

    return change


def _metadata(value):
    """A message whose compression header (metadata) is `value`, not base64 text."""
    entry = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}
    return lambda blob: _raw({"__metadata__": {message.HEADER: value}, "x": entry}, bytes(4))


def _huge_header(blob: bytes) -> bytes:
    h = message._header(blob)
    h["tensors"][0][1] = [10**200, 10**200]
    return _message(dict(load(blob)), h)


def _nested_header(blob: bytes) -> bytes:
    text = base64.b64encode(zlib.compress(b"[" * 100_000 + b"]" * 100_000)).decode()
    return save(dict(load(blob)), metadata={message.HEADER: text})


def _inf_product(t):  # the largest bf16 scale times code 127: no longer a float32
    t["main.scales"][0] = torch.finfo(torch.bfloat16).max
    t["main.codes"][0] = 127


INT8, INT4, FP16 = {"scheme": "int8"}, {"scheme": "int4"}, {"scheme": "fp16"}
TOPK = {"scheme": "topk", "fraction": 0.1, "values": "int8"}  # 21 of 205 kept: a bitmap
SPARSE = {"scheme": "topk", "fraction": 0.02, "values": "int8"}  # 5 kept: int32 indices
MALFORMED = {
    "codes-one-too-many": (INT8, _edit(_resize("main.codes", 1)), "part 'codes' is torch.int8"),
    "scales-one-too-few": (INT8, _edit(_resize("main.scales", -1)), "part 'scales'"),
    "index-past-the-end": (SPARSE, _edit(_set("main.index", 205, -1)), "an index outside [0, 205)"),
    "index-negative": (SPARSE, _edit(_set("main.index", -1)), "an index outside [0, 205)"),
    "bitmap-a-bit-more": (TOPK, _edit(_set("main.bitmap", 0xFF)), "the bitmap marks"),
    "bitmap-past-the-end": (TOPK, _edit(_set("main.bitmap", 0xE0, -1)), "past the message's"),
    "bitmap-one-byte-short": (TOPK, _edit(_resize("main.bitmap", -1)), "part 'bitmap'"),
    "index-repeated": (
        SPARSE,
        _edit(lambda t: t["main.index"].__setitem__(1, t["main.index"][0])),
        "not strictly increasing",
    ),
    "topk-values-too-few": (TOPK, _edit(_resize("main.values.codes", -1)), "part 'codes'"),
    "scale-nan": (INT8, _edit(_set("main.scales", float("nan"))), "scales holds NaN"),
    "scale-negative": (INT8, _edit(_set("main.scales", -0.5)), "scale is negative"),
    "int8-code-minus-128": (INT8, _edit(_set("main.codes", -128)), "outside [-127, 127]"),
    "int4-code-minus-8": (INT4, _edit(_set("main.codes", 0x80)), "outside [-7, 7]"),
    "fp16-inf": (FP16, _edit(_set("main.values", float("inf"))), "fp16 values holds NaN"),
    "overflowing-product": (INT8, _edit(_inf_product), "NaN or infinite"),
    "header-not-base64": (
        INT8,
        lambda blob: save(dict(load(blob)), metadata={message.HEADER: "@@not base64@@"}),
        "unreadable compression header",
    ),
    "header-not-zlib": (
        INT8,
        lambda blob: save(dict(load(blob)), metadata={message.HEADER: "AAAAAAAA"}),
        "unreadable compression header",
    ),
    "header-not-an-object": (
        INT8,
        lambda blob: _message(dict(load(blob)), ["int8"]),
        "not an object",
    ),
    "header-nested-too-deep": (INT8, _nested_header, "unreadable compression header"),
    "header-not-text": (INT8, _metadata(12345), "compression header"),
    "metadata-not-an-object": (
        INT8,
        lambda blob: _raw({"__metadata__": [message.HEADER]}),
        "not a safetensors message",
    ),
    "entries-malformed": (
        INT8,
        _edit(header=lambda h: h["tensors"][0].__setitem__(1, [-5])),
        "[key, shape, group, relative]",
    ),
    "shape-too-large": (TOPK, _huge_header, "more than 281474976710656 values"),
    "another-codec": (INT8, _edit(header=lambda h: h.update(codec="fp16")), "encoded with 'fp16'"),
    "a-key-not-expected": (
        INT8,
        _edit(header=_rename("w", "x")),
        "declares 'x' of shape (20, 10), which is not expected",
    ),
    "a-shape-not-expected": (
        INT8,
        _edit(header=_rename("w", "w", shape=[10, 20])),
        "declares 'w' of shape (10, 20), which is not expected",
    ),
    "a-huge-tensor-declared": (  # refused before the receiver allocates 1e10 values for it
        SPARSE,
        _edit(header=_rename("w", "w", shape=[100000, 100000])),
        "declares 'w' of shape (100000, 100000), which is not expected",
    ),
    "a-key-twice": (INT8, _edit(header=_rename("b", "w", relative=False)), "a key appears twice"),
    "not-safetensors": (INT8, lambda blob: b"\x07garbage", "not a safetensors message"),
    "truncated": (INT8, lambda blob: blob[:-9], "not a safetensors message"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_compressed_upload_is_rejected_and_the_others_count(case):
    """site-4's upload, made malformed on the way: the round rejects it as a malformed
    compressed upload (a CodecError, not whatever else the bytes made the decoder raise),
    naming the problem, and aggregates sites 1-3 as if site-4 had not been sampled."""
    upload, corrupt, reason = MALFORMED[case]
    engine = _server(upload, corrupt)
    params, record = engine.run_round(1, dict(START))
    assert [r["client_id"] for r in record.rejected] == ["site-4"]
    said = record.rejected[0]["reason"]
    assert said.startswith("client site-4: malformed compressed upload: "), said
    assert reason in said, said
    assert set(record.client_metrics) == {"site-1", "site-2", "site-3", "site-4"}
    expected, _ = _server(upload, clients=CLIENTS[:3]).run_round(1, dict(START))
    assert params.keys() == START.keys()
    assert all(torch.equal(params[k], expected[k]) for k in START)
    if upload not in (TOPK, SPARSE):  # FedAvg of +1, +2, +3 by 10, 20, 30 samples (int8: nearly)
        assert float(params["w"].mean()) == pytest.approx(14 / 6, rel=0.02)
    assert all(float(params[k].abs().max()) > 1 for k in START)  # they did count


def test_the_well_formed_messages_of_each_scheme_pass():
    """The corrupted cases start from messages the server takes (so the rejections above are
    the corruptions'): and a plain wire message, which every receiver also reads."""
    for upload in (INT8, INT4, FP16, TOPK):
        _, record = _server(upload).run_round(1, dict(START))
        assert record.rejected == []
    from fedumm.federation import wire

    plain = _server(INT8, lambda blob: wire.pack({k: v + 4 for k, v in START.items()}))
    params, record = plain.run_round(1, dict(START))
    assert record.rejected == [] and float(params["b"][0]) == pytest.approx(3.0, rel=0.02)


def test_a_bf16_model_comes_back_in_bf16():
    """Full fine-tuning of a bf16 model: a compressed change decodes onto the server's bf16
    copy as bf16, the dtype its template asks for (as float32, every update was rejected)."""
    start = {k: v.to(torch.bfloat16) for k, v in START.items()}
    for upload in (INT8, TOPK, FP16):
        params, record = _server(upload).run_round(1, start)
        assert record.rejected == [], record.rejected
        assert all(v.dtype == torch.bfloat16 for v in params.values())


def test_scaffolds_exact_control_variates_come_back_in_the_models_dtype():
    """SCAFFOLD's Delta c_i travels exactly, decoded as fp32: on a bf16 model the server
    casts it to the template's dtype (before, every upload was rejected: 'has dtype
    torch.float32, expected torch.bfloat16')."""
    from fedumm.federation.strategies import FederationContext

    compression = _compression(**INT8)
    strategy = build_strategy("scaffold", FederationContext(num_clients=4))
    parts = CompressingParts(_train(), CLIENTS, compression=compression, strategy=strategy)
    engine = Server(
        CLIENTS,
        strategy,
        InProcess(parts),
        lambda params: {},
        4,
        0,
        RoundRules(),
        progress=False,
        compression=compression,
    )
    params, record = engine.run_round(1, {k: v.to(torch.bfloat16) for k, v in START.items()})
    assert record.rejected == [], record.rejected
    assert all(v.dtype == torch.bfloat16 for v in [*params.values(), *strategy.c.values()])
    assert float(strategy.c["w"][0, 0]) == (1 + 2 + 3 + 4) / 4  # each client's exact Delta c_i


def test_a_client_that_cannot_encode_its_update_withdraws_and_the_round_goes_on(caplog):
    """A change of 1e5 overflows fp16: that client withdraws (logged) instead of crashing
    the run, and the server aggregates the others."""

    def train_client(client, params, rnd):
        step = 1e5 if client.client_id == "site-4" else 1.0
        out = {k: v + step for k, v in params.items()}
        return ClientUpdate(client.client_id, out, len(client.data), 1)

    engine = _server(FP16)
    engine.transport.parts.train_client = train_client
    with caplog.at_level("WARNING", logger="fedumm"):
        params, record = engine.run_round(1, {k: v.clone() for k, v in START.items()})
    assert "site-4 withdraws its update" in caplog.text and "overflows fp16" in caplog.text
    assert [r["client_id"] for r in record.rejected] == ["site-4"]
    assert "withdrew its update" in record.rejected[0]["reason"]
    assert torch.allclose(params["w"], torch.ones(20, 10))


def test_when_every_upload_is_malformed_the_round_fails_and_the_model_is_kept():
    everyone = [c.client_id for c in CLIENTS]
    engine = _server(SPARSE, MALFORMED["index-repeated"][1], bad=everyone)
    start = {k: v.clone() for k, v in START.items()}
    with pytest.raises(RoundFailed, match=r"0 valid update\(s\) of 4 sampled .*4 rejected"):
        engine.run_round(1, start)
    assert all(torch.equal(start[k], START[k]) for k in START)


# `fedumm run` refuses what it cannot run, naming the key (exit code 2, before any work).

C = "federation.compression."
REFUSED = {
    "unknown-scheme": ([f"{C}upload.scheme=zip"], f"{C}upload.scheme", ""),
    "fraction-0": ([f"{C}upload.scheme=topk", f"{C}upload.fraction=0"], f"{C}upload.fraction", ""),
    "fraction-1.5": (
        [f"{C}upload.scheme=topk", f"{C}upload.fraction=1.5"],
        f"{C}upload.fraction",
        "",
    ),
    "block-size-48": (
        [f"{C}upload.scheme=int8", f"{C}upload.block_size=48"],
        f"{C}upload.block_size",
        "",
    ),
    "fraction-with-int8": (
        [f"{C}upload.scheme=int8", f"{C}upload.fraction=0.5"],
        f"{C}upload",
        "fraction",
    ),
    "topk-broadcast": ([f"{C}broadcast.scheme=topk"], "federation.compression", "broadcast.scheme"),
    "error-feedback-on-the-broadcast": (
        [f"{C}broadcast.scheme=fp16", f"{C}broadcast.error_feedback=true"],
        "federation.compression",
        "broadcast.error_feedback",
    ),
    "flora-topk": (
        ["federation.strategy.name=flora", f"{C}upload.scheme=topk"],
        f"{C}upload.scheme",
        "",
    ),
    "fp16-under-secure-aggregation": (
        ["federation.secure_aggregation.enabled=true", f"{C}upload.scheme=fp16"],
        "federation",
        "compression.upload.scheme",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_fedumm_run_refuses_compression_it_cannot_run_naming_the_key(case, tmp_path):
    """Exit code 2 and the key in the message, as `location: [Value error, ]key...` (a
    section's own check names the key inside it after the section); no output folder."""
    settings, where, key = REFUSED[case]
    args = ["run", "configs/quickstart.yaml", "-o", str(tmp_path / "out"), "--quiet"]
    for item in settings:
        args += ["--set", item]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = [line.strip() for line in result.output.splitlines()]
    line = next((line for line in lines if line.startswith(where + ": ")), None)
    assert line is not None, result.output
    if key:  # the key inside the section, the first thing its check says
        said = line[len(where) + 2 :].removeprefix("Value error, ")
        assert said.startswith(key), line
    assert not (tmp_path / "out").exists()
