"""Every secure-aggregation message, mutated: each field of each phase's messages given another
type, size or value (missing keys, lists where dicts belong, keys of small order, huge or
negative numbers), whole blobs replaced by garbage, replayed from another round or addressed
to another client. Through the entry points every engine calls (`client_answer`, `upload`,
the ServerSession), each case must end in the exact aggregate of whoever survived, or in a
clean abort (ProtocolError from the server's unmask); never another exception, from the
server or from an honest client. Uploads are masked in fixed point (mod 2^64) or, as int8
compression sends them, as shared-scale integers mod 2^m (compression/masked.py).

The default selection tries 60 cases; the slow one 1,500."""

import base64
import json

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedumm.config import CodecConfig
from fedumm.federation import wire
from fedumm.federation.client import upload
from fedumm.federation.compression.masked import WORDS, MaskedUpload, SharedScale
from fedumm.federation.secure_aggregation import (
    ClientPolicy,
    ClientSession,
    ProtocolError,
    ServerSession,
    client_answer,
)
from fedumm.federation.update import ClientUpdate

IDS = ["site-1", "site-2", "site-3", "site-4"]
ROUND, THRESHOLD = 7, 3
PHASES = ("advert", "roster", "share", "inbox", "request", "answer")
ZERO_KEY = base64.b64encode(bytes(32)).decode()
VALUES = [
    None,
    True,
    0,
    -1,
    5,
    2**70,
    1.5,
    "",
    "x",
    ZERO_KEY,
    "A" * 44,
    [],
    {},
    [1, "x"],
    ["site-1"],
    {"site-1": "x"},
    [1, "0" * 131],
]


def _updates() -> dict:
    g = torch.Generator().manual_seed(0)
    return {u: {"a": torch.randn(3, 2, generator=g), "b": torch.randn(4, generator=g)} for u in IDS}


UPDATES = _updates()
WEIGHTS = {u: 10 * (i + 1) for i, u in enumerate(IDS)}
SHARED = SharedScale.of(CodecConfig(scheme="int8"), len(IDS), False, None, WEIGHTS.values())
ZERO = {k: torch.zeros_like(v) for k, v in UPDATES["site-1"].items()}


def _quantized(u: str) -> MaskedUpload:
    return MaskedUpload(SHARED, ZERO, {}, False, seed=IDS.index(u))


# what each client masks of its update as int8 (as a signed integer sum, exact)
WORDS_OF = {u: _quantized(u).encode(UPDATES[u], WEIGHTS[u])[0][WORDS].view(np.int64) for u in IDS}


def _paths(value, prefix=()):
    """Every path into a JSON value (the root included)."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*prefix, i))


def _mutated(blob: bytes, data, others: list[bytes]) -> bytes:
    """`blob` with one mutation drawn by hypothesis."""
    kind = data.draw(
        st.sampled_from(["field", "field", "field", "delete", "add", "garbage", "other"]),
        label="mutation",
    )
    if kind == "garbage":
        return data.draw(st.binary(max_size=64), label="garbage")
    if kind == "other":  # replayed from another round, or another client's
        return data.draw(st.sampled_from(others), label="other message")
    message = json.loads(blob)
    paths = [p for p in _paths(message) if p or kind == "add"]
    path = data.draw(st.sampled_from(paths), label="path")
    if not path:  # the root: add an unknown key
        return json.dumps({**message, "unexpected": 1}).encode()
    parent = message
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    if kind == "delete" and isinstance(parent, dict):
        del parent[last]
    elif kind == "add" and isinstance(parent[last], dict):
        parent[last]["site-9"] = data.draw(st.sampled_from(VALUES), label="added")
    else:
        parent[last] = data.draw(st.sampled_from(VALUES), label="value")
    return json.dumps(message).encode()


def _round(data) -> str:
    """One round with one message mutated; 'sum' or 'abort'."""
    phase = data.draw(st.sampled_from(PHASES), label="phase")
    target = data.draw(st.sampled_from(IDS), label="client")
    encoding = data.draw(st.sampled_from(["fixed point", "int8"]), label="encoding")
    policy = ClientPolicy(THRESHOLD)
    sessions: dict[str, ClientSession] = {}
    stale: dict[str, ClientSession] = {}
    replays = [client_answer(stale, u, ROUND - 1, "advertise", b"", policy) for u in IDS]

    def maybe(step: str, u: str, blob: bytes, others: list[bytes]) -> bytes:
        return _mutated(blob, data, others + replays) if (step, u) == (phase, target) else blob

    def ask(u: str, step: str, payload: bytes) -> bytes | None:
        try:
            return client_answer(sessions, u, ROUND, step, payload, policy)
        except ProtocolError:  # the client refuses: it counts as dropped
            return None

    server = ServerSession(ROUND, THRESHOLD)
    adverts = {u: client_answer(sessions, u, ROUND, "advertise", b"", policy) for u in IDS}
    adverts = {u: maybe("advert", u, b, list(adverts.values())) for u, b in adverts.items()}
    roster, listed = server.roster(adverts)
    shares = {u: ask(u, "share", maybe("roster", u, roster, [])) for u in listed}
    shares = {u: maybe("share", u, b, list(shares.values())) for u, b in shares.items() if b}
    inboxes = server.route(shares)
    masked = {}
    for u, inbox in inboxes.items():
        update = ClientUpdate(u, UPDATES[u], WEIGHTS[u], 1)
        quantized = _quantized(u) if encoding == "int8" else None
        mutated = maybe("inbox", u, inbox, list(inboxes.values()))
        up = upload(update, False, sessions[u], mutated, quantized)
        if up:
            masked[u] = wire.unpack(up)
    if len(masked) < THRESHOLD:
        return "abort"
    request = server.unmask_request(sorted(masked))
    answers = {u: ask(u, "unmask", maybe("request", u, request, [])) for u in masked}
    answers = {u: maybe("answer", u, b, list(answers.values())) for u, b in answers.items() if b}
    try:
        if encoding == "int8":
            words, _ = server.unmask_words(masked, answers, SHARED.ring)
        else:
            total, weight = server.unmask(masked, answers)
    except ProtocolError:
        return "abort"
    if encoding == "int8":
        expected = sum(WORDS_OF[u] for u in masked)
        assert np.array_equal(SHARED.ring.signed(words[WORDS]), expected), (phase, target)
        return "sum"
    assert weight == sum(WEIGHTS[u] for u in masked)
    for k in ("a", "b"):
        expected = sum(WEIGHTS[u] * UPDATES[u][k].double() for u in masked)
        assert torch.allclose(total[k], expected, atol=1e-5), (phase, target)
    return "sum"


@given(st.data())
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_every_mutated_message_ends_in_the_exact_sum_or_a_clean_abort(data):
    _round(data)


@pytest.mark.slow
@given(st.data())
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_every_mutated_message_many_cases(data):
    _round(data)


def test_an_unmutated_round_sums_exactly():
    class Untouched:  # no phase matches: nothing is mutated
        def draw(self, strategy, label=None):
            return self.given.get(label) or strategy.example()

    for encoding in ("fixed point", "int8"):
        untouched = Untouched()
        untouched.given = {"phase": "none", "client": "nobody", "encoding": encoding}
        assert _round(untouched) == "sum"
