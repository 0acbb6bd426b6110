"""int8 / int4 uploads under secure aggregation (compression/masked.py): one scale for every
client, the integers masked as they are in a ring sized so that no round's sum can wrap, and
masked traffic that shrinks with them."""

import json
import logging

import numpy as np
import pytest
import torch

from fedumm.config import ConfigError, RunConfig
from fedumm.federation import wire
from fedumm.federation.client import ClientData, upload
from fedumm.federation.compression import RESIDUAL, Compression
from fedumm.federation.compression.masked import WORDS, MaskedUpload, SharedScale
from fedumm.federation.secure_aggregation import (
    ClientPolicy,
    ClientSession,
    ProtocolError,
    Ring,
    ServerSession,
)
from fedumm.federation.strategies import build_strategy
from fedumm.federation.update import ClientUpdate
from fedumm.validation import load_run_config
from tests.federation.test_server import ModelFreeParts, server

ROUND = 2


def _sessions(ids: list[str], threshold: int):
    """Client sessions and the server's, keys shared and inboxes received (ready to mask),
    and the inboxes."""
    policy = ClientPolicy(2, allow_minority=True)
    clients = {u: ClientSession(u, ROUND, policy) for u in ids}
    secagg = ServerSession(ROUND, threshold)
    roster, listed = secagg.roster({u: c.advertise() for u, c in clients.items()})
    inboxes = secagg.route({u: clients[u].share(roster) for u in listed})
    for u in ids:
        clients[u].receive(inboxes[u])
    return clients, secagg, inboxes


def _masked_round(words: dict[str, np.ndarray], ring: Ring, threshold: int = 2, dropped=()):
    """The signed sum the server unmasks of each client's `words` (mod 2^ring.bits), the
    `dropped` clients leaving after sharing their keys; and what the server received."""
    clients, secagg, _ = _sessions(sorted(words), threshold)
    masked = {u: c.mask_words({WORDS: words[u]}, ring=ring) for u, c in clients.items()}
    masked = {u: y for u, y in masked.items() if u not in dropped}
    request = secagg.unmask_request(sorted(masked))
    answers = {u: clients[u].unmask(request) for u in masked}
    total, _ = secagg.unmask_words(masked, answers, ring)
    return ring.signed(total[WORDS]), masked


def _shared(scheme="int8", per_round=2, equal=True, cap=None, sizes=(1,), **codec):
    upload = RunConfig.model_validate(
        {"federation": {"compression": {"upload": {"scheme": scheme, **codec}}}}
    ).federation.compression.upload
    return SharedScale.of(upload, per_round, equal, cap, sizes)


def test_the_masked_sum_is_the_plain_sum_of_the_integers_with_a_client_recovered():
    """Five clients weighted by their partitions (3..7 samples) quantize their changes; one
    leaves after sharing its keys. The server's sum is the survivors' sum of w q, exactly."""
    ids, sizes = [f"site-{i}" for i in range(1, 6)], [3, 7, 5, 4, 6]
    shared = _shared(per_round=5, equal=False, sizes=sizes)
    assert (shared.largest_weight, shared.total_weight, shared.ring.bits) == (7, 35, 14)
    g = torch.Generator().manual_seed(0)
    q = {u: shared.quantize(0.05 * torch.randn(300, generator=g), g) for u in ids}
    words = {u: shared.words(q[u], w) for u, w in zip(ids, sizes)}
    total, masked = _masked_round(words, shared.ring, threshold=3, dropped=["site-3"])
    survivors = [(u, w) for u, w in zip(ids, sizes) if u != "site-3"]
    plain = sum(w * q[u] for u, w in survivors)
    assert np.array_equal(total[:-1], plain.numpy()) and total[-1] == 7 + 3 + 4 + 6
    assert all(y[WORDS].dtype == torch.int16 for y in masked.values())
    # and the server's mean: the reference plus s * sum(w q) / sum(w)
    template = {"a": torch.zeros(100), "b": torch.zeros(20, 10)}
    mean, weight = shared.mean(shared.ring.reduce(total.view(np.uint64)), template, template)
    expected = plain.double() * shared.scale / 20
    assert weight == 20 and torch.equal(mean["b"].reshape(-1), expected[100:])


@pytest.mark.parametrize(
    "scheme, per_round, largest, bits",
    [("int8", 2, 1, 9), ("int4", 2, 1, 5), ("int4", 8, 1, 7), ("int8", 8, 1000, 21)],
)
def test_the_worst_case_sums_exactly_at_m_bits_and_wraps_unseen_at_m_minus_1(
    scheme, per_round, largest, bits
):
    """Every client at +L (then -L) with the largest weight: the sum L * W decodes exactly in
    the ring the config sizes, and one bit fewer wraps it into a value that still passes the
    server's range check (|sum| <= L * sum w): only the sizing prevents the overflow. The
    naive design, int8 values summed in int8 words, already wraps with two clients."""
    shared = _shared(scheme, per_round, largest == 1, None, [largest])
    levels, total_weight = shared.levels, shared.total_weight
    assert shared.ring.bits == bits
    ids = [f"site-{i}" for i in range(1, per_round + 1)]
    for sign in (1, -1):
        q = torch.full((8,), sign * levels)
        words = {u: shared.words(q, largest) for u in ids}
        exact, masked = _masked_round(words, shared.ring)
        assert (exact[:-1] == sign * levels * total_weight).all()
        assert exact[-1] == total_weight
        wrapped, _ = _masked_round(words, Ring(bits - 1))
        assert (wrapped[:-1] != sign * levels * total_weight).all()
        assert (np.abs(wrapped[:-1]) <= levels * total_weight).all()  # unseen by the check
    naive = Ring(8).signed(np.array([2 * 127], dtype=np.uint64))
    assert naive[0] == -2


def test_a_client_outside_the_sized_range_withdraws(caplog):
    """A weight above the largest the modulus was sized for, a code beyond L, a non-finite
    change: refused before masking; through `upload`, the client sends nothing."""
    shared = _shared(per_round=2, equal=False, cap=10)
    with pytest.raises(ProtocolError, match="weight of 11, outside the 1..10"):
        shared.words(torch.zeros(4, dtype=torch.long), 11)
    with pytest.raises(ProtocolError, match="quantized value of 128"):
        shared.words(torch.tensor([0, 128]), 1)
    with pytest.raises(ProtocolError, match="NaN or infinite"):
        shared.quantize(torch.tensor([0.0, float("nan")]), None)
    clients, _, inboxes = _sessions(["site-1", "site-2"], 2)
    params = {"w": torch.zeros(4)}
    for samples, change in ((11, 0.01), (3, float("inf"))):
        quantized = MaskedUpload(shared, params, {}, False, 0)
        update = ClientUpdate("site-1", {"w": params["w"] + change}, samples, 1)
        with caplog.at_level(logging.WARNING, logger="fedumm"):
            assert upload(update, False, clients["site-1"], inboxes["site-1"], quantized) == b""
    assert caplog.text.count("site-1 withdraws its update") == 2


def test_the_server_refuses_a_sum_no_client_within_range_can_make():
    shared = _shared(per_round=2)
    template = {"w": torch.zeros(2)}
    ring = shared.ring

    def words(*values):
        return ring.reduce(np.array(values, dtype=np.int64).view(np.uint64))

    mean, weight = shared.mean(words(254, -3, 2), template, {})
    assert weight == 2 and torch.allclose(
        mean["w"], torch.tensor([127.0, -1.5]).double() * shared.scale
    )
    with pytest.raises(ProtocolError, match="beyond the 127 x 1"):
        shared.mean(words(128, 0, 1), template, {})
    with pytest.raises(ProtocolError, match="weights sum to 3, outside the 1..2"):
        shared.mean(words(0, 0, 3), template, {})


@pytest.mark.parametrize("per_round", [2, 8])
def test_masked_int8_is_a_quarter_of_fixed_point_and_int4_an_eighth(per_round):
    """The quick-start adapter's 43,280 values (LoRA r=4 on the built-in model) in 40
    tensors, masked by one client of `per_round` weighing the same."""
    g = torch.Generator().manual_seed(1)
    sizes = [1082] * 39 + [43280 - 39 * 1082]
    adapter = {
        f"base_model.model.layers.{i}.mlp.up_proj.lora_A.weight": 0.01 * torch.randn(n, generator=g)
        for i, n in enumerate(sizes)
    }
    zero = {k: torch.zeros_like(v) for k, v in adapter.items()}
    clients, _, _ = _sessions([f"site-{i}" for i in range(1, per_round + 1)], 2)
    session = clients["site-1"]
    sent = {"fixed point": len(wire.pack(session.mask(adapter, 1)))}
    for scheme in ("int8", "int4"):
        shared = _shared(scheme, per_round)
        words, _ = MaskedUpload(shared, zero, {}, False, 0).encode(adapter, 1)
        sent[scheme] = len(wire.pack(session.mask_words(words, ring=shared.ring)))
    assert sent["fixed point"] > 8 * 43280
    assert sent["int8"] <= sent["fixed point"] / 4 and sent["int8"] < 2 * 43280 + 200
    assert sent["int4"] <= sent["fixed point"] / 8 and sent["int4"] < 43280 + 200


# ------------------------------------------------------------------ the server's round


def _parts(clients, scheme="int8", equal=False, **codec):
    """Model-free parts whose sites quantize their masked uploads (a FedAvg of 4 clients)."""
    parts = ModelFreeParts(_small_steps, clients, equal, 3)
    weights = "equal" if equal else "partition"
    upload = {"scheme": scheme, **codec}
    parts.cfg = RunConfig.model_validate(
        {
            "federation": {
                "num_clients": len(clients),
                "clients_per_round": len(clients),
                "client_weights": weights,
                "secure_aggregation": {"enabled": True, "threshold": 3},
                "compression": {"upload": upload},
            }
        }
    )
    parts.compression = Compression(parts.cfg.federation.compression, parts.cfg.seed)
    parts.strategy = build_strategy("fedavg")
    parts.client_states = {c.client_id: {} for c in clients}
    parts.number = lambda client: int(client.client_id.split("-")[1])
    return parts


def _small_steps(client, params, rnd):
    k = int(client.client_id.split("-")[1])
    out = {key: v + 0.01 * k + (float("nan") if k == 9 else 0) for key, v in params.items()}
    return ClientUpdate(client.client_id, out, len(client.data), 1)


def _secure_server(parts, **rules):
    engine = server(_small_steps, len(parts.clients), clients=parts.clients, **rules)
    engine.transport.parts = parts
    engine.compression = parts.compression
    return engine


def test_a_secure_int8_round_is_fedavg_within_a_scale_and_counts_its_bytes():
    clients = [ClientData(f"site-{i}", [None] * (10 * i)) for i in range(1, 5)]
    start = {"w": torch.full((64,), 0.5)}
    plain, _ = server(_small_steps, 4, clients=clients).run(start, 1)
    parts = _parts(clients, error_feedback=True)
    engine = _secure_server(parts, secure_threshold=3)
    honest, sent = engine.transport.upload, []
    engine.transport.upload = lambda *args: sent.append(honest(*args)) or sent[-1]
    secure, records = engine.run(start, 1)
    shared = engine.shared_scale
    assert shared.ring.bits == 16  # 127 x W, W = 4 clients x 40 samples: 20,320 < 2^15
    assert (secure["w"] - plain["w"]).abs().max() < shared.scale
    assert records[0].aborted is None and records[0].rejected == []
    # 4 uploads of 65 int16 words each, counted in bytes_up beside the key protocol's
    assert [len(up) for up in sent] == [len(wire.pack({WORDS: torch.zeros(65).short()}))] * 4
    assert 4 * 130 < records[0].bytes_up - sum(map(len, sent)) + 4 * 130 < records[0].secagg_bytes
    # error feedback kept what rounding dropped in each client's state
    assert all(RESIDUAL + "w" in state for state in parts.client_states.values())
    assert max(float(s[RESIDUAL + "w"].abs().max()) for s in parts.client_states.values()) < (
        shared.scale
    )


def test_a_client_that_withdraws_or_sends_words_outside_the_ring_is_recovered(caplog):
    """site-9's change is NaN: it withdraws. site-2 sends a word above 2^m in its int16
    container: refused. The others' sum, unmasked with both recovered, is their mean."""
    clients = [ClientData(f"site-{i}", [None] * 10) for i in (1, 2, 3, 4, 9)]
    parts = _parts(clients, equal=True, rounding="nearest")
    engine = _secure_server(parts, secure_threshold=3, equal_weights=True)
    honest = engine.transport.upload

    def tampering(rnd, down, update, inboxes):
        up = honest(rnd, down, update, inboxes)
        if update.client_id != "site-2":
            return up
        masked = wire.unpack(up)
        masked[WORDS][0] = 2**engine.shared_scale.ring.bits
        return wire.pack(masked)

    engine.transport.upload = tampering
    start = {"w": torch.zeros(8)}
    with caplog.at_level(logging.WARNING, logger="fedumm"):
        final, records = engine.run(start, 1)
    rejected = {r["client_id"]: r["reason"] for r in records[0].rejected}
    assert "withdrew its update" in rejected["site-9"]
    assert "a masked word is not below 2^11" in rejected["site-2"]
    assert records[0].aborted is None
    s = engine.shared_scale.scale  # nearest rounding of each change 0.01 k to a multiple of s
    codes = [round(float(torch.tensor(0.01 * k)) / s) for k in (1, 3, 4)]
    assert torch.allclose(
        final["w"].double(), torch.full((8,), s * sum(codes) / 3).double(), atol=1e-7
    )


# ------------------------------------------------------------------ through `fedumm run`


@pytest.mark.parametrize(
    "scheme, why",
    [
        ("fp16", "a float's exponent cannot be summed under masks"),
        ("bf16", "a float's exponent cannot be summed under masks"),
        ("topk", "the server would need the union of indices"),
        ("sign", "signs of different scales do not add up under masks"),
    ],
)
def test_uploads_that_cannot_be_summed_under_masks_are_refused_naming_the_key(scheme, why):
    with pytest.raises(ConfigError) as err:
        load_run_config(
            None,
            [
                "federation.secure_aggregation.enabled=true",
                f"federation.compression.upload.scheme={scheme}",
            ],
        )
    assert f"compression.upload.scheme {scheme}" in str(err.value)
    assert why in str(err.value)


RUN = [
    "federation.rounds=3",
    "federation.local_steps=4",
    "threads=1",
    "baselines.local=false",
    "baselines.centralized=false",
    "baselines.zero_shot=false",
    "federation.secure_aggregation.enabled=true",
]


def test_secure_int8_trains_end_to_end_on_fewer_bytes(tiny_foundation, tmp_path):
    """`fedumm run` under secure aggregation, fixed point and int8 with error feedback: both
    train, the int8 run uploads fewer bytes (the key protocol's are the same), and its
    clients keep their residuals (in the checkpoint's client states)."""
    from tests.tiny import assert_trained, run_tiny

    results = {}
    int8 = [
        "federation.compression.upload.scheme=int8",
        "federation.compression.upload.error_feedback=true",
        "federation.compression.upload.secure_range=0.05",
        "checkpoint_every=3",
    ]
    for name, extra in (("fixed", []), ("int8", int8)):
        result = run_tiny(tmp_path / name, tiny_foundation, *RUN, *extra)
        assert result.exit_code == 0, result.output
        results[name] = json.loads((tmp_path / name / "results.json").read_text())
        assert all(r["aborted"] is None for r in results[name]["rounds"])
        assert_trained(results[name])
    up = {name: sum(r["bytes_up"] for r in res["rounds"]) for name, res in results.items()}
    assert up["int8"] < up["fixed"] / 3, up  # 42,462 against 171,258 when written
    from safetensors.torch import load_file

    from fedumm.federation.checkpoint import load

    files = load(tmp_path / "int8").client_states  # each trained client's state file
    assert len(files) == 3
    for name in files.values():
        state = load_file(tmp_path / "int8" / "client_states" / name)
        residuals = [v for k, v in state.items() if k.startswith(RESIDUAL)]
        assert residuals and max(float(v.abs().max()) for v in residuals) < 0.05 / 127
