"""Secure aggregation as Bonawitz et al. specify it: keys agreed by the clients, masks from a PRG
the server cannot key, Shamir shares that recover the masks of clients that drop out after
masking, and rounds that abort cleanly below the threshold."""

import json
import logging

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedumm.config import ConfigError
from fedumm.federation.client import ClientData
from fedumm.federation.secure_aggregation import (
    MODULUS,
    ClientSession,
    ProtocolError,
    ServerSession,
    _pair_mask,
    decode,
    encode,
    reconstruct,
    split,
)
from fedumm.seeding import derive_seed
from fedumm.validation import load_run_config
from tests.federation.test_server import _train, server

IDS = [f"site-{i}" for i in range(1, 6)]


def _updates(seed: int, ids=IDS) -> dict[str, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return {u: {"a": torch.randn(5, 3, generator=g), "b": torch.randn(7, generator=g)}
            for u in ids}  # fmt: skip


def _protocol(updates: dict, weights: dict, threshold: int, drop_after_masking=()):
    """One round between a ServerSession and ClientSessions; returns (sum, everything the
    server received, the sessions)."""
    rnd = 3
    clients = {u: ClientSession(u, rnd) for u in updates}
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
    request = secagg.unmask_request(sorted(masked))
    answers = {u: clients[u].unmask(request) for u in masked}
    seen = {"adverts": adverts, "shares": shares, "masked": masked, "answers": answers}
    return secagg.unmask(masked, answers), seen, clients


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
    noise = decode(y)
    assert noise["a"].abs().mean() > 1e9 and noise["b"].abs().mean() > 1e9
    # 2. The old attack: masks regenerated from the run seed, as the server could before.
    old = {k: (v - torch.randint(0, MODULUS, v.shape, generator=torch.Generator().manual_seed(
        derive_seed(0, 3, 0x5A)))) % MODULUS for k, v in y.items()}  # fmt: skip
    assert not torch.allclose(decode(old)["a"], planted["a"].double(), atol=1.0)
    # 3. What the server legitimately reconstructs for a survivor is its self-mask seed (from
    # the b shares); with it, the pairwise masks are still there.
    b_shares = [tuple((int(x), int(h, 16))) for x, h in
                (json.loads(a)["b"]["site-3"] for a in seen["answers"].values())]  # fmt: skip
    seed = reconstruct(b_shares[:3]).to_bytes(32, "big")
    assert seed == clients["site-3"].b_seed
    shapes = {k: v.shape for k, v in planted.items()}
    without_self = {k: (y[k] - m) % MODULUS for k, m in _pair_mask(seed, shapes).items()}
    assert not torch.allclose(decode(without_self)["a"], planted["a"].double(), atol=1.0)
    # 4. ...and no answer hands it a survivor's mask key: only dropped clients' are shared.
    assert all(json.loads(a)["s"] == {} for a in seen["answers"].values())
    # 5. The shares it routed are ciphertexts: no share of site-3's key is in clear.
    secret = str(int.from_bytes(clients["site-3"].s_private, "big"))
    assert all(secret not in blob.decode() for blob in seen["shares"].values())


def test_a_client_never_reveals_both_secrets_of_one_client_nor_answers_twice():
    updates, weights = _updates(2), dict.fromkeys(IDS, 1.0)
    _, _, clients = _protocol(updates, weights, threshold=3)
    greedy = json.dumps({"round": 3, "survivors": ["site-1"], "dropped": ["site-1"]}).encode()
    fresh = ClientSession("site-9", 3)
    with pytest.raises(ProtocolError, match="both secrets of one client"):
        fresh.unmask(greedy)
    again = json.dumps({"round": 3, "survivors": ["site-2"], "dropped": []}).encode()
    with pytest.raises(ProtocolError, match="asked twice"):
        clients["site-1"].unmask(again)  # it answered once in _protocol


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
    assert torch.allclose(decode(encode(values, 4.0))["w"], 4.0 * values["w"].double())


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

    late = ["federation.num_clients=4", "federation.clients_per_round=4", "threads=1",
            "federation.stragglers=0.5", "federation.round_deadline=3", "federation.rounds=3",
            "baselines.local=false", "baselines.centralized=false"]  # fmt: skip
    adapters = {}
    for name, secure in (("plain", "false"), ("secure", "true")):
        result = run_tiny(tmp_path / name, tiny_foundation, *late,
                          f"federation.secure_aggregation.enabled={secure}",
                          "federation.secure_aggregation.threshold=2")  # fmt: skip
        assert result.exit_code == 0, result.output
        adapters[name] = load_file(tmp_path / name / "global_adapter.safetensors")
    rounds = json.loads((tmp_path / "secure" / "results.json").read_text())["rounds"]
    assert all(len(r["late"]) == 2 and r["secagg_bytes"] > 0 for r in rounds)
    a, b = adapters["plain"], adapters["secure"]
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    assert max(float(v.abs().max()) for v in b.values()) < 5  # no mask left in it
