"""Secure aggregation as Bonawitz et al. specify it: keys agreed by the clients, masks from a PRG
the server cannot key, Shamir shares that recover the masks of clients that drop out after
masking, and rounds that abort cleanly below the threshold."""

import base64
import contextlib
import json
import logging

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedumm.cli import app
from fedumm.config import ConfigError
from fedumm.federation import wire
from fedumm.federation.client import ClientData
from fedumm.federation.identity import verify
from fedumm.federation.secure_aggregation import (
    WEIGHT,
    ClientPolicy,
    ClientSession,
    ProtocolError,
    ServerSession,
    _masks,
    decode,
    encode,
    reconstruct,
    split,
)
from fedumm.federation.update import ClientUpdate
from fedumm.seeding import derive_seed
from fedumm.validation import load_run_config
from tests.federation.test_server import _train, server

IDS = [f"site-{i}" for i in range(1, 6)]


def _updates(seed: int, ids=IDS) -> dict[str, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return {u: {"a": torch.randn(5, 3, generator=g), "b": torch.randn(7, generator=g)} for u in ids}


def _protocol(
    updates: dict, weights: dict, threshold: int, drop_after_masking=(), answer: bool = True
):
    """One round between a ServerSession and ClientSessions; returns (sum, everything the
    server received, the sessions). Clients accept any threshold here (allow_minority);
    a client that refuses to unmask simply does not answer."""
    rnd = 3
    policy = ClientPolicy(2, allow_minority=True)
    clients = {u: ClientSession(u, rnd, policy) for u in updates}
    secagg = ServerSession(rnd, threshold)
    adverts = {u: c.advertise() for u, c in clients.items()}
    roster, listed = secagg.roster(adverts)
    shares = {u: clients[u].share(roster) for u in listed}
    inboxes = secagg.route(shares)
    masked = {}
    for u, c in clients.items():
        c.receive(inboxes[u])
        if u not in drop_after_masking:
            masked[u] = c.mask(updates[u], weights[u])
    seen = {"adverts": adverts, "shares": shares, "masked": masked, "inboxes": inboxes}
    if not answer:
        return None, seen, clients
    request = secagg.unmask_request(sorted(masked))
    answers = {}
    for u in masked:
        with contextlib.suppress(ProtocolError):
            answers[u] = clients[u].unmask(request)
    seen["answers"] = answers
    total, weight = secagg.unmask(masked, answers)
    assert weight == pytest.approx(sum(weights[u] for u in masked))
    return total, seen, clients


def _decoded(masked: dict) -> dict:
    """A masked upload read as fixed-point values (what the server sees of one client)."""
    flat = {k: v.numpy().view(np.uint64).reshape(-1) for k, v in masked.items()}
    return decode(flat, {k: tuple(v.shape) for k, v in masked.items()})


def _plain_sum(updates, weights, ids):
    return {k: sum(weights[u] * updates[u][k].double() for u in ids) for k in ("a", "b")}


@given(st.integers(0, 10_000), st.integers(2, 5))
@settings(max_examples=10, deadline=None)
def test_the_unmasked_sum_is_the_weighted_sum(seed, threshold):
    updates = _updates(seed)
    weights = {u: float(10 * (i + 1)) for i, u in enumerate(IDS)}
    total, _, _ = _protocol(updates, weights, threshold)
    plain = _plain_sum(updates, weights, IDS)
    assert all(torch.allclose(total[k], plain[k], atol=1e-5) for k in plain)


@pytest.mark.parametrize("dropped", [["site-2"], ["site-1", "site-4"]])
def test_dropouts_after_masking_up_to_n_minus_t_recover_the_exact_sum(dropped):
    updates, weights = _updates(7), dict.fromkeys(IDS, 3.0)
    total, _, _ = _protocol(updates, weights, threshold=3, drop_after_masking=dropped)
    survivors = [u for u in IDS if u not in dropped]
    plain = _plain_sum(updates, weights, survivors)
    assert all(torch.allclose(total[k], plain[k], atol=1e-5) for k in plain)


def test_fewer_survivors_than_the_threshold_abort():
    with pytest.raises(ProtocolError, match="unmasking answers, fewer than the threshold 4"):
        _protocol(_updates(1), dict.fromkeys(IDS, 1.0), 4, ["site-1", "site-2", "site-3"])


def test_the_server_cannot_recover_one_clients_update_from_what_it_receives():
    """A planted update, and every byte the server received: neither the run seed (how masks
    were made before) nor the secrets the server may reconstruct (self-masks of survivors)
    unmask it, and the masked upload alone looks uniform."""
    updates, weights = _updates(11), dict.fromkeys(IDS, 1.0)
    planted = {"a": torch.full((5, 3), 0.25), "b": torch.full((7,), -0.5)}
    updates["site-3"] = planted
    _, seen, clients = _protocol(updates, weights, threshold=3)
    y = seen["masked"]["site-3"]
    # 1. The masked upload carries no trace of the update: decoded, it is noise of about 2^61.
    noise = _decoded(y)
    assert noise["a"].abs().mean() > 1e9 and noise["b"].abs().mean() > 1e9
    # 2. The old attack: masks regenerated from the run seed, as the server could before.
    rng = np.random.default_rng(derive_seed(0, 3, 0x5A))
    old = {
        k: torch.from_numpy(
            (v.numpy().view(np.uint64) - rng.integers(0, 2**64, v.shape, dtype=np.uint64)).view(
                np.int64
            )
        )
        for k, v in y.items()
    }
    assert not torch.allclose(_decoded(old)["a"], planted["a"].double(), atol=1.0)
    # 3. What the server legitimately reconstructs for a survivor is its self-mask seed (from
    # the b shares); with it, the pairwise masks are still there.
    b_shares = [
        tuple((int(x), int(h, 16)))
        for x, h in (json.loads(a)["b"]["site-3"] for a in seen["answers"].values())
    ]
    seed = reconstruct(b_shares[:3]).to_bytes(32, "big")
    assert seed == clients["site-3"].b_seed
    shapes = {k: tuple(v.shape) for k, v in y.items()}
    without_self = {
        k: torch.from_numpy((y[k].numpy().view(np.uint64).reshape(-1) - m).view(np.int64)).reshape(
            shapes[k]
        )
        for k, m in _masks(seed, shapes).items()
    }
    assert not torch.allclose(_decoded(without_self)["a"], planted["a"].double(), atol=1.0)
    # 4. ...and no answer hands it a survivor's mask key: only dropped clients' are shared.
    assert all(json.loads(a)["s"] == {} for a in seen["answers"].values())
    # 5. The shares it routed are ciphertexts: no share of site-3's key is in clear.
    secret = str(int.from_bytes(clients["site-3"].s_private, "big"))
    assert all(secret not in blob.decode() for blob in seen["shares"].values())


def test_a_client_never_reveals_both_secrets_of_one_client_nor_answers_twice():
    updates, weights = _updates(2), dict.fromkeys(IDS, 1.0)
    _, _, clients = _protocol(updates, weights, threshold=3, answer=False)
    others = IDS[1:]
    greedy = json.dumps({"round": 3, "survivors": IDS, "dropped": ["site-2"]}).encode()
    with pytest.raises(ProtocolError, match="do not split the peers"):
        clients["site-1"].unmask(greedy)
    fair = json.dumps({"round": 3, "survivors": IDS, "dropped": []}).encode()
    assert json.loads(clients["site-1"].unmask(fair))["s"] == {}
    again = json.dumps(
        {"round": 3, "survivors": ["site-1", *others[:2]], "dropped": others[2:]}
    ).encode()
    with pytest.raises(ProtocolError, match="asked twice"):
        clients["site-1"].unmask(again)


def test_malformed_or_replayed_key_messages_drop_their_sender(caplog):
    rnd = 5
    clients = {u: ClientSession(u, rnd) for u in IDS[:4]}
    secagg = ServerSession(rnd, 2)
    adverts = {u: c.advertise() for u, c in clients.items()}
    adverts["site-2"] = ClientSession("site-2", rnd - 1).advertise()  # replayed from round 4
    adverts["site-3"] = b"\x00garbage"
    with caplog.at_level(logging.WARNING, logger="fedumm"):
        roster, listed = secagg.roster(adverts)
    assert listed == ["site-1", "site-4"]
    assert "site-2's keys is for round 4, not 5 (replayed or malformed)" in caplog.text
    assert "site-3's keys is not a protocol message" in caplog.text
    # a tampered ciphertext: its recipient refuses the share, the round still sums exactly
    shares = {u: clients[u].share(roster) for u in listed}
    message = json.loads(shares["site-1"])
    blob = bytearray(message["to"]["site-4"].encode())
    blob[20] = ord("A") if blob[20] != ord("A") else ord("B")
    message["to"]["site-4"] = blob.decode()
    shares["site-1"] = json.dumps(message).encode()
    inboxes = secagg.route(shares)
    with caplog.at_level(logging.WARNING, logger="fedumm"):
        clients["site-4"].receive(inboxes["site-4"])
    assert "site-4 refused the share from site-1" in caplog.text


def test_a_secure_federation_matches_the_plain_one_with_stragglers_and_dropout():
    """The issue's case: stragglers past the deadline (and dropouts) after masking. Before,
    their masks stayed in the sum (largest weight 19,645); now they are removed."""
    clients = [ClientData(f"site-{i}", [None] * (10 * i)) for i in range(1, 7)]
    late = lambda c: 10.0 if c.client_id in ("site-2", "site-5") else 1.0  # noqa: E731
    rules = dict(deadline=5.0, duration=late, dropout=0.2)
    plain, _ = server(_train(), 6, clients=clients, **rules).run({"w": torch.zeros(3)}, 3)
    engine = server(_train(), 6, clients=clients, secure_threshold=3, **rules)
    secure, records = engine.run({"w": torch.zeros(3)}, 3)
    assert torch.allclose(secure["w"], plain["w"], atol=1e-5)
    assert float(secure["w"].abs().max()) < 100  # masks left in the sum would be ~1e9
    for r in records:  # every round lost both stragglers and one more client after masking
        assert {"site-2", "site-5"} <= set(r.late) | set(r.dropped) and len(r.dropped) == 1
        assert len(r.client_metrics) == 6 - len(set(r.late) | set(r.dropped))
    assert all(r.secagg_bytes > 0 and r.aborted is None for r in records)


def test_a_round_below_the_threshold_aborts_and_keeps_the_model(caplog):
    clients = [ClientData(f"site-{i}", [None] * 10) for i in range(1, 5)]
    engine = server(_train(), 4, clients=clients, secure_threshold=4, dropout=0.25)
    with caplog.at_level(logging.ERROR, logger="fedumm"):
        final, records = engine.run({"w": torch.ones(2)}, 2)
    assert torch.equal(final["w"], torch.ones(2))
    assert all("fewer than the threshold 4" in r.aborted for r in records)
    assert "aborted, the global model stays as it was" in caplog.text


def test_shamir_shares_reconstruct_with_any_t_of_them():
    shares = split(123456789, n=5, t=3)
    assert reconstruct([shares[0], shares[2], shares[4]]) == 123456789
    assert reconstruct(shares[1:4]) == 123456789
    assert reconstruct(shares[:2]) != 123456789  # t - 1 shares: a different polynomial's f(0)


def test_fixed_point_round_trips():
    values = {"w": torch.tensor([0.5, -1.25, 3.0])}
    decoded = decode(encode(values, 4.0), {"w": (3,), WEIGHT: (1,)})
    assert torch.allclose(decoded["w"], 4.0 * values["w"].double())
    assert float(decoded[WEIGHT]) == 4.0


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["federation.strategy.name=scaffold"], "scaffold cannot aggregate from"),
        (["federation.max_update_norm=1.0"], "cannot be checked on masked updates"),
        (["federation.clients_per_round=1"], "needs at least 2 clients per round"),
        (["federation.secure_aggregation.threshold=9"], "threshold (9) exceeds the 8 clients"),
    ],
)
def test_incompatible_settings_are_refused(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_run_config(None, ["federation.secure_aggregation.enabled=true", *overrides])
    assert message in str(err.value)
    with pytest.raises(ValueError, match="cannot aggregate from"):
        server(_train(), 3, strategy="krum", secure_threshold=2)


def test_stragglers_under_secure_aggregation_end_to_end(tiny_foundation, tmp_path):
    """The issue's repro through `fedumm run`: 4 clients, half of them stragglers past the
    deadline. Secure aggregation ends with the plain run's adapter (the masks of the late
    clients are removed from the sum, not left in it)."""
    from safetensors.torch import load_file

    from tests.tiny import run_tiny

    late = [
        "federation.num_clients=4",
        "federation.clients_per_round=4",
        "threads=1",
        "federation.stragglers=0.5",
        "federation.round_deadline=3",
        "federation.rounds=3",
        "baselines.local=false",
        "baselines.centralized=false",
    ]
    adapters = {}
    for name, secure in (("plain", "false"), ("secure", "true")):
        result = run_tiny(
            tmp_path / name,
            tiny_foundation,
            *late,
            f"federation.secure_aggregation.enabled={secure}",
            "federation.secure_aggregation.threshold=2",
            "federation.secure_aggregation.allow_minority=true",
        )
        assert result.exit_code == 0, result.output
        adapters[name] = load_file(tmp_path / name / "global_adapter.safetensors")
    rounds = json.loads((tmp_path / "secure" / "results.json").read_text())["rounds"]
    assert all(len(r["late"]) == 2 and r["secagg_bytes"] > 0 for r in rounds)
    a, b = adapters["plain"], adapters["secure"]
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    assert max(float(v.abs().max()) for v in b.values()) < 5  # no mask left in it


# ------------------------------------------------------------------ attacks a curious server tries


def _one_client_round(n: int = 3, rnd: int = 1, policy=None):
    """Sessions of n clients and the server, up to masking (inboxes received)."""
    policy = policy or ClientPolicy(2)
    ids = [f"site-{i}" for i in range(1, n + 1)]
    clients = {u: ClientSession(u, rnd, policy) for u in ids}
    secagg = ServerSession(rnd, policy.threshold)
    roster, listed = secagg.roster({u: c.advertise() for u, c in clients.items()})
    inboxes = secagg.route({u: clients[u].share(roster) for u in listed})
    for u in ids:
        clients[u].receive(inboxes[u])
    return clients, secagg, roster


def test_no_two_tensors_of_an_upload_share_a_mask_word():
    """Before, tensor i's mask was tensor 0's keystream shifted by i blocks: two all-zero
    tensors of 4,096 values shared 4,094 mask words."""
    clients, _, _ = _one_client_round()
    y = clients["site-1"].mask({"a": torch.zeros(4096), "b": torch.zeros(4096)}, 1.0)
    shared = set(y["a"].tolist()) & set(y["b"].tolist())
    assert len(shared) == 0


def test_knowing_every_tensor_of_an_upload_but_one_leaves_the_last_masked():
    """The server knows tensor 'a' (a layer that got no gradient: still zero) and tries to read
    'b' from a's mask at every alignment; before, it read 4,094 of 4,096 values exactly."""
    clients, _, _ = _one_client_round()
    secret = torch.randn(4096, generator=torch.Generator().manual_seed(0))
    y = clients["site-2"].mask({"a": torch.zeros(4096), "b": secret}, 1.0)
    mask_a = y["a"].numpy().view(np.uint64)  # q(0) = 0: the upload is the mask
    masked_b = y["b"].numpy().view(np.uint64)
    best = 0
    for shift in range(-8, 9):  # any keystream offset between the two tensors
        lo, hi = max(0, shift), min(4096, 4096 + shift)
        guess = (masked_b[lo - shift : hi - shift] - mask_a[lo:hi]).view(np.int64) / 2**24
        best = max(
            best, int((np.abs(guess - secret.numpy()[lo - shift : hi - shift]) < 1e-6).sum())
        )
    assert best == 0


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 2.0**40])
def test_a_client_withdraws_an_update_it_cannot_mask_and_the_round_sums_the_others(bad, caplog):
    """Before, NaN, inf and |x| >= 2^39 were encoded as 0 and the client's weight stayed in
    the divisor. Now the client withdraws (sends nothing) and is recovered as dropped."""
    clients = [ClientData(f"site-{i}", [None] * 10) for i in range(1, 5)]

    def train(client, params, rnd):
        value = float(client.client_id.split("-")[1])
        out = {k: v + (bad if client.client_id == "site-2" else value) for k, v in params.items()}
        return ClientUpdate(client.client_id, out, len(client.data), 1)

    with caplog.at_level(logging.WARNING, logger="fedumm"):
        final, records = server(train, 4, clients=clients, secure_threshold=3).run(
            {"w": torch.zeros(3)}, 1
        )
    assert torch.allclose(final["w"], torch.full((3,), (1 + 3 + 4) / 3), atol=1e-5)
    assert records[0].rejected[0]["client_id"] == "site-2"
    assert "withdrew its update" in records[0].rejected[0]["reason"]
    assert "site-2 withdraws its update" in caplog.text


def test_the_divisor_is_the_sum_of_the_weights_clients_masked():
    """A client masks with weight 1,000 while claiming its partition's 10 samples. Before, the
    server divided by the claims (40): the 'mean' came out 25x the largest update. Now the
    weight travels masked and the result is a true weighted mean of the updates."""
    clients = [ClientData(f"site-{i}", [None] * 10) for i in range(1, 5)]
    engine = server(_train(), 4, clients=clients, secure_threshold=3)

    def inflating(rnd, down, update, inboxes):
        cid = update.client_id
        weight = 1000 if cid == "site-4" else update.num_samples
        session = engine.transport.sessions[cid]
        session.receive(inboxes[cid])
        return wire.pack(session.mask(update.params, weight))

    engine.transport.upload = inflating
    final, _ = engine.run({"w": torch.zeros(3)}, 1)
    expected = (10 * 1 + 10 * 2 + 10 * 3 + 1000 * 4) / 1030
    assert torch.allclose(final["w"], torch.full((3,), expected), atol=1e-5)
    assert float(final["w"].max()) <= 4  # inside the updates' range, whatever the weights


def test_clients_check_what_the_server_asks():
    """Threshold below the site's, t <= n/2, a roster without my own keys, a U2 smaller than
    t or outside the roster, an unmasking request outside U2: refused by the client."""
    clients, secagg, roster = _one_client_round(4, policy=ClientPolicy(3))
    message = json.loads(roster)
    for t, why in ((2, "below this site's 3"), (5, "more than half")):
        asked = json.dumps({**message, "threshold": t}).encode()
        with pytest.raises(ProtocolError, match=why):
            clients["site-1"].share(asked)
    fresh = ClientSession("site-1", 1, ClientPolicy(3))
    fresh.advertise()
    with pytest.raises(ProtocolError, match="own keys"):  # the server swapped mine
        fresh.share(roster)
    minority = ClientSession("site-1", 1, ClientPolicy(2))
    keys = {u: message["keys"][u] for u in ("site-2", "site-3", "site-4")}
    keys["site-1"] = json.loads(minority.advertise())
    keys["site-1"] = {k: keys["site-1"][k] for k in ("c_pk", "s_pk", "b_commit")}
    with pytest.raises(ProtocolError, match="more than half"):
        minority.share(json.dumps({"round": 1, "threshold": 2, "keys": keys}).encode())
    session = clients["site-1"]
    inbox = lambda peers: json.dumps({"round": 1, "peers": peers, "from": {}}).encode()  # noqa: E731
    for peers, why in (
        (["site-1", "site-2"], "fewer than the threshold 3"),
        (["site-1", "site-2", "site-9"], "not of the roster"),
    ):
        with pytest.raises(ProtocolError, match=why):
            session.receive(inbox(peers))
    session.mask({"w": torch.zeros(2)}, 1.0)
    outside = json.dumps(
        {"round": 1, "survivors": ["site-1", "site-2", "site-3", "site-9"], "dropped": ["site-4"]}
    ).encode()
    with pytest.raises(ProtocolError, match="do not split the peers"):
        session.unmask(outside)
    too_few = json.dumps(
        {"round": 1, "survivors": ["site-1", "site-2"], "dropped": ["site-3", "site-4"]}
    ).encode()
    with pytest.raises(ProtocolError, match="threshold 3"):
        session.unmask(too_few)


def test_a_key_of_small_order_drops_its_sender_not_the_round(caplog):
    """An all-zero X25519 key used to make every honest client's share() raise ValueError,
    which crashed the embedded run and killed FLARE sites."""
    ids = ["site-1", "site-2", "site-3", "site-4"]
    clients = {u: ClientSession(u, 1, ClientPolicy(3)) for u in ids}
    adverts = {u: c.advertise() for u, c in clients.items()}
    evil = json.loads(adverts["site-4"])
    evil["c_pk"] = evil["s_pk"] = base64.b64encode(bytes(32)).decode()
    adverts["site-4"] = json.dumps(evil).encode()
    secagg = ServerSession(1, 3)
    with caplog.at_level(logging.WARNING, logger="fedumm"):
        roster, listed = secagg.roster(adverts)
    assert listed == ids[:3] and "refused site-4: a public key of small order" in caplog.text
    assert all(clients[u].share(roster) for u in listed)
    # a server that lets it through anyway: the honest client refuses the roster, cleanly
    forged = json.loads(roster)
    forged["keys"]["site-4"] = {"c_pk": evil["c_pk"], "s_pk": evil["s_pk"]}
    with pytest.raises(ProtocolError, match="small order"):
        clients["site-1"].share(json.dumps(forged).encode())


def _substitute_keys(signed: bool):
    """The server gives site-1 a roster in which every other client's keys are its own (a
    man in the middle), decrypts the shares site-1 sends them, and unmasks site-1 alone."""
    from fedumm.federation.identity import simulated_identities
    from fedumm.federation.secure_aggregation import _check_keys

    ids = ["site-1", "site-2", "site-3"]
    made = simulated_identities(ids) if signed else {}
    victim = ClientSession("site-1", 1, ClientPolicy(2, identity=made.get("site-1")))
    advert = json.loads(victim.advertise())
    fakes = {u: ClientSession(u, 1, ClientPolicy(2)) for u in ids[1:]}  # the server's keys
    keys = {"site-1": {k: v for k, v in advert.items() if k not in ("round", "client")}}
    keys.update(
        {
            u: {k: v for k, v in json.loads(f.advertise()).items() if k not in ("round", "client")}
            for u, f in fakes.items()
        }
    )
    roster = json.dumps({"round": 1, "threshold": 2, "keys": keys}).encode()
    _check_keys("site-1", keys["site-1"], 1, None)
    shares = json.loads(victim.share(roster))["to"]
    for u, fake in fakes.items():  # the server, holding the fake keys, decrypts
        fake.roster = {v: {k: base64.b64decode(keys[v][k]) for k in ("c_pk", "s_pk")} for v in ids}
        fake.peers = ids
        fake.receive(json.dumps({"round": 1, "peers": ids, "from": {"site-1": shares[u]}}).encode())
    secret = {"w": torch.linspace(-1, 1, 6)}
    victim.receive(json.dumps({"round": 1, "peers": ids, "from": {}}).encode())
    y = victim.mask(secret, 1.0)
    b = reconstruct(
        [tuple((x, int(h, 16))) for x, h in (f.held["site-1"]["b"] for f in fakes.values())]
    )
    s = reconstruct(
        [tuple((x, int(h, 16))) for x, h in (f.held["site-1"]["s"] for f in fakes.values())]
    )
    seed = b.to_bytes(32, "big")
    assert s.to_bytes(32, "big") == victim.s_private  # its mask key too
    from fedumm.federation.secure_aggregation import _pair_context, agree

    shapes = {k: tuple(v.shape) for k, v in y.items()}
    flat = {k: v.numpy().view(np.uint64).reshape(-1).copy() for k, v in y.items()}
    for k, m in _masks(seed, shapes).items():
        flat[k] -= m
    for u, fake in fakes.items():
        key = agree(
            fake.s_private, base64.b64decode(keys["site-1"]["s_pk"]), _pair_context(1, "site-1", u)
        )  # the server holds the fake key
        for k, m in _masks(key, shapes).items():
            flat[k] -= m  # site-1 < every other: it added each pair's mask
    return decode(flat, shapes)["w"], secret["w"]


def test_a_server_that_substitutes_keys_reads_an_update_unless_keys_are_signed():
    recovered, secret = _substitute_keys(signed=False)
    assert torch.allclose(recovered.float(), secret, atol=1e-6)  # the attack works unsigned
    with pytest.raises(ProtocolError, match="not signed|not issued|not site-2's"):
        _substitute_keys(signed=True)


SIGNED = [
    "federation.num_clients=3",
    "federation.clients_per_round=3",
    "threads=1",
    "federation.rounds=2",
    "baselines.local=false",
    "baselines.centralized=false",
    "federation.secure_aggregation.enabled=true",
]


def test_signed_keys_end_to_end_with_made_and_written_identities(tiny_foundation, tmp_path):
    """`fedumm run` with signed keys (identities made for the run, then a folder from
    `fedumm identities`) ends with the unsigned run's adapter; a folder without a site's
    identity is refused naming what is missing."""
    from safetensors.torch import load_file

    from tests.tiny import run_tiny, runner

    written = tmp_path / "identities"
    made = runner.invoke(app, ["identities", str(written), "--sites", "3"])
    assert made.exit_code == 0 and (written / "site-3.key").stat().st_mode & 0o077 == 0
    runs = {
        "unsigned": [],
        "made": ["federation.secure_aggregation.signed_keys=true"],
        "written": [
            "federation.secure_aggregation.signed_keys=true",
            f"federation.secure_aggregation.identities={written}",
        ],
    }
    adapters = {}
    for name, extra in runs.items():
        result = run_tiny(tmp_path / name, tiny_foundation, *SIGNED, *extra)
        assert result.exit_code == 0, result.output
        adapters[name] = load_file(tmp_path / name / "global_adapter.safetensors")
        rounds = json.loads((tmp_path / name / "results.json").read_text())["rounds"]
        assert all(r["aborted"] is None and len(r["client_metrics"]) == 3 for r in rounds)
    for name in ("made", "written"):
        a, b = adapters["unsigned"], adapters[name]
        assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    (written / "site-2.key").unlink()
    result = run_tiny(
        tmp_path / "broken",
        tiny_foundation,
        *runs["written"][1:],
        *SIGNED,
        "federation.secure_aggregation.signed_keys=true",
    )
    assert result.exit_code != 0
    assert "no identity for site-2" in str(result.exception) + result.output


def test_an_export_with_signed_keys_needs_identities_the_sites_hold(tmp_path):
    """A run fedumm starts hands its sites identities (FLARE POC: its kits; otherwise written
    for the run); an exported job runs on machines it cannot hand them to."""
    from tests.tiny import runner

    result = runner.invoke(
        app,
        [
            "flare",
            "export",
            "configs/quickstart.yaml",
            "-o",
            str(tmp_path / "job"),
            "--set",
            "federation.secure_aggregation.enabled=true",
            "--set",
            "federation.secure_aggregation.signed_keys=true",
        ],
    )
    assert result.exit_code == 2
    assert "secure_aggregation.signed_keys: an exported job runs on the sites'" in result.output
    with pytest.raises(ConfigError, match="is half or less of the 8 clients"):
        load_run_config(
            None,
            [
                "federation.secure_aggregation.enabled=true",
                "federation.secure_aggregation.threshold=4",
            ],
        )


def test_a_session_saved_as_json_resumes_the_round_and_keeps_no_identity():
    """How an engine that keeps client state between messages (Flower) stores a session:
    plain JSON, the site's identity key left out (the site re-attaches its own)."""
    from fedumm.federation.identity import simulated_identities

    made = simulated_identities(IDS[:3])
    policies = {u: ClientPolicy(2, identity=made[u]) for u in IDS[:3]}
    clients = {u: ClientSession(u, 2, policies[u]) for u in IDS[:3]}
    secagg = ServerSession(2, 2, made["site-1"].root_pem)
    roster, listed = secagg.roster({u: c.advertise() for u, c in clients.items()})
    shares = {u: clients[u].share(roster) for u in listed}
    saved = {u: c.to_json() for u, c in clients.items()}
    assert all("PRIVATE KEY" not in text for text in saved.values())
    clients = {u: ClientSession.from_json(saved[u], policies[u]) for u in IDS[:3]}
    inboxes = secagg.route(shares)
    updates = _updates(4, IDS[:3])
    masked = {}
    for u, c in clients.items():
        c.receive(inboxes[u])
        masked[u] = c.mask(updates[u], 1.0)
    request = secagg.unmask_request(sorted(masked))
    total, weight = secagg.unmask(masked, {u: c.unmask(request) for u, c in clients.items()})
    plain = _plain_sum(updates, dict.fromkeys(IDS[:3], 1.0), IDS[:3])
    assert weight == 3.0 and all(torch.allclose(total[k], plain[k], atol=1e-5) for k in plain)
    with pytest.raises(ProtocolError, match="not a saved secure-aggregation session"):
        ClientSession.from_json('{"me": 1}', ClientPolicy())


def test_runs_with_separate_processes_hand_their_sites_identities(tmp_path):
    """engines/site.with_identities: signed keys and no folder named get one written for the
    run (FLARE's simulator, Flower); FLARE's POC names its provisioned kits without writing;
    a named folder, or unsigned keys, are left as they are."""
    from fedumm.engines.site import with_identities
    from fedumm.federation.identity import Identities

    signed = load_run_config(
        None,
        [
            "federation.secure_aggregation.enabled=true",
            "federation.secure_aggregation.signed_keys=true",
            "federation.num_clients=3",
            "federation.clients_per_round=3",
        ],
    )
    cfg = with_identities(signed, tmp_path / "written")
    folder = cfg.federation.secure_aggregation.identities
    assert folder == str(tmp_path / "written") and len(list((tmp_path / "written").iterdir())) == 7
    identities = Identities(folder, ["site-1", "site-2", "site-3"])
    one = identities.of("site-3")
    verify(identities.root, "site-3", one.certificate_pem, b"k", one.sign(b"k"))
    kits = with_identities(signed, tmp_path / "kits", write=False)
    assert kits.federation.secure_aggregation.identities == str(tmp_path / "kits")
    assert not (tmp_path / "kits").exists()
    assert with_identities(cfg, tmp_path / "other") is cfg
    unsigned = load_run_config(None, ["federation.secure_aggregation.enabled=true"])
    assert with_identities(unsigned, tmp_path / "none") is unsigned


def test_a_site_that_refuses_its_inbox_withdraws_instead_of_failing(tiny_foundation, caplog):
    """How FLARE and Flower sites answer: a site whose inbox breaks the protocol (here U2
    smaller than t) sends an empty upload, which the server rejects as withdrawn; it raises
    nothing."""
    from fedumm.engines.site import Site
    from fedumm.federation.update import UpdateRejected
    from tests.tiny import TINY_RUN

    cfg = load_run_config(
        None,
        [
            *TINY_RUN,
            f"model.foundation={tiny_foundation}",
            "federation.clients_per_round=3",
            "threads=1",
            "federation.secure_aggregation.enabled=true",
        ],
    )
    site = Site.build(cfg, "site-1")
    site.secagg(1, "advertise", b"")
    clients = {u: ClientSession(u, 1, ClientPolicy(2)) for u in ("site-2", "site-3")}
    secagg = ServerSession(1, 2)
    adverts = {
        "site-1": site.sessions["site-1"].advertise(),
        **{u: c.advertise() for u, c in clients.items()},
    }
    roster, _ = secagg.roster(adverts)
    assert site.secagg(1, "share", roster)
    short = json.dumps({"round": 1, "peers": ["site-1"], "from": {}}).encode()
    message = wire.pack(site.parts.initial)
    with caplog.at_level(logging.WARNING, logger="fedumm"):
        meta, up = site.train(1, message, short)
    assert up == b"" and "site-1 withdraws its update" in caplog.text
    with pytest.raises(UpdateRejected, match="withdrew its update"):
        server(_train(), 2)._receive(ClientUpdate("site-1", {}, meta["num_samples"], 1), up, {}, {})
