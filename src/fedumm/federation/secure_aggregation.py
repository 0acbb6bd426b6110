"""Secure aggregation (Bonawitz et al., CCS 2017, "Practical Secure Aggregation for Privacy-
Preserving Machine Learning"), the honest-but-curious protocol, with dropout recovery.

Per round, among the n sampled clients, with threshold t (2 <= t <= n):
  0. advertise: client u makes two X25519 key pairs, (c_u, C_u) to encrypt its shares and
     (s_u, S_u) for its pairwise masks, and sends C_u, S_u. The server's roster U1: who answered.
  1. share: u draws a self-mask seed b_u, splits s_u and b_u into Shamir shares (threshold t,
     over the prime field 2^521 - 1), and sends share_v to each v in U1, encrypted with AES-GCM
     under a key agreed from c_u and C_v (the server only routes ciphertexts). U2: who sent.
  2. mask: with the task, v receives the ciphertexts addressed to it. It uploads, in fixed point
     (2^24 fractional bits, mod 2^62),
         y_v = q(n_v * theta_v) + PRG(b_v) + sum_{u in U2, u > v} PRG(s_uv) - sum_{u < v} PRG(s_uv)
     where s_uv is agreed from s_v and S_u (X25519 + HKDF) and PRG is AES-256-CTR keyed by it,
     never by anything the server knows. U3: whose masked upload arrived (in time, valid).
  3. unmask: if |U3| >= t, each u in U3 is asked for its shares of b_v for v in U3 and of s_v for
     the v in U2 that dropped after sharing (U2 \\ U3): never both for one v. With t of them the
     server reconstructs those secrets and removes the self-masks of the survivors and the
     pairwise masks the survivors made with the dropped, leaving q(sum n_v theta_v) exactly.
Fewer than t survivors, or fewer than t unmasking answers, aborts the round: nothing is learnt
and the global model stays. A message that is malformed, names another round or client, or
fails authentication is refused with a log line, and its sender is treated as dropped.

What it guarantees: the server (and anything it receives) learns the sum over U3 only; with
fewer than t colluding clients it learns nothing about an honest client's update. It does not
protect against a server that lies about who dropped (the malicious-server protocol adds
signatures and a consistency round), nor against clients that send poison (robust rules need
the individual updates, which is exactly what is hidden). Every client masks with every other
(complete graph, O(n^2) key agreements); SecAgg+'s sparse graph (Bell et al., CCS 2020) is not
implemented.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
from dataclasses import dataclass, field

import numpy as np
import torch

from fedumm.federation.update import Params

log = logging.getLogger("fedumm")

MODULUS = 2**62  # fixed-point values and masks live in Z / 2^62; sums of two fit an int64
SCALE = 2**24  # fractional bits of the fixed-point encoding
PRIME = 2**521 - 1  # Shamir's field: larger than any 32-byte secret


class ProtocolError(ValueError):
    """A secure-aggregation message that cannot be used; its sender counts as dropped."""


# ------------------------------------------------------------------------------ primitives


def _x25519():
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    return X25519PrivateKey


def _raw(public) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _private_bytes(private) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                 serialization.NoEncryption())  # fmt: skip


def agree(private_raw: bytes, public_raw: bytes, context: str) -> bytes:
    """A 32-byte key from X25519 key agreement, bound to `context` by HKDF-SHA256."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    private = _x25519().from_private_bytes(private_raw)
    shared = private.exchange(X25519PublicKey.from_public_bytes(public_raw))
    return HKDF(hashes.SHA256(), 32, salt=None, info=context.encode()).derive(shared)


def prg(key: bytes, shape: torch.Size, stream: int) -> torch.Tensor:
    """Uniform int64 values in [0, MODULUS) from AES-256-CTR keyed by `key` (stream: which
    tensor of the message, so each gets its own keystream)."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    count = int(np.prod(shape)) if len(shape) else 1
    nonce = stream.to_bytes(16, "big")
    encryptor = Cipher(algorithms.AES(key), modes.CTR(nonce)).encryptor()
    words = np.frombuffer(encryptor.update(bytes(8 * count)), dtype=np.uint64)
    return torch.from_numpy((words >> np.uint64(2)).astype(np.int64)).reshape(shape)


def encode(params: Params, weight: float) -> Params:
    """q(weight * params): fixed point, mod MODULUS."""
    return {k: torch.round(v.double() * weight * SCALE).long() % MODULUS for k, v in params.items()}


def decode(total: Params) -> Params:
    """The signed real values of fixed-point sums (float64)."""
    out = {}
    for k, v in total.items():
        v = v % MODULUS
        out[k] = torch.where(v >= MODULUS // 2, v - MODULUS, v).double() / SCALE
    return out


def split(secret: int, n: int, t: int) -> list[tuple[int, int]]:
    """Shamir shares (x, f(x)) for x = 1..n of `secret`, any t of which reconstruct it."""
    coefficients = [secret, *(secrets.randbelow(PRIME) for _ in range(t - 1))]
    return [(x, sum(c * pow(x, i, PRIME) for i, c in enumerate(coefficients)) % PRIME)
            for x in range(1, n + 1)]  # fmt: skip


def reconstruct(shares: list[tuple[int, int]]) -> int:
    """f(0) by Lagrange interpolation from distinct shares."""
    total = 0
    for j, (xj, yj) in enumerate(shares):
        num, den = 1, 1
        for m, (xm, _) in enumerate(shares):
            if m != j:
                num = num * -xm % PRIME
                den = den * (xj - xm) % PRIME
        total = (total + yj * num * pow(den, -1, PRIME)) % PRIME
    return total


def _pack(message: dict) -> bytes:
    return json.dumps(message, sort_keys=True, separators=(",", ":")).encode()


def _unpack(blob: bytes, rnd: int, what: str) -> dict:
    try:
        message = json.loads(blob)
    except (ValueError, TypeError) as e:
        raise ProtocolError(f"{what} is not a protocol message ({e})") from None
    if not isinstance(message, dict) or message.get("round") != rnd:
        got = message.get("round") if isinstance(message, dict) else None
        raise ProtocolError(f"{what} is for round {got}, not {rnd} (replayed or malformed)")
    return message


def _hex(value: int) -> str:
    """A field element in fixed width, so every message of a round has a known size."""
    return format(value, "0131x")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str, size: int | None, what: str) -> bytes:
    try:
        data = base64.b64decode(text, validate=True)
    except (ValueError, TypeError):
        raise ProtocolError(f"{what} is not base64") from None
    if size is not None and len(data) != size:
        raise ProtocolError(f"{what} has {len(data)} bytes, expected {size}")
    return data


def _pair_context(rnd: int, a: str, b: str) -> str:
    low, high = sorted((a, b))
    return f"fedumm-secagg|{rnd}|mask|{low}|{high}"


def _pair_mask(key: bytes, shapes: dict[str, torch.Size]) -> Params:
    return {k: prg(key, shape, i) for i, (k, shape) in enumerate(sorted(shapes.items()))}


# ------------------------------------------------------------------------------ client side


@dataclass
class ClientSession:
    """One client's side of one round: its keys, its self-mask seed, the shares it holds."""

    me: str
    round: int
    c_private: bytes = field(default_factory=lambda: _private_bytes(_x25519().generate()))
    s_private: bytes = field(default_factory=lambda: _private_bytes(_x25519().generate()))
    b_seed: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    roster: dict[str, dict[str, bytes]] = field(default_factory=dict)  # U1: public keys
    held: dict[str, dict] = field(default_factory=dict)  # sender -> its shares for me
    peers: list[str] = field(default_factory=list)  # U2, as the server said
    answered: bool = False  # unmasking answers at most once a round

    def _public(self, private: bytes) -> bytes:
        return _raw(_x25519().from_private_bytes(private).public_key())

    def advertise(self) -> bytes:
        return _pack({"round": self.round, "client": self.me,
                      "c_pk": _b64(self._public(self.c_private)),
                      "s_pk": _b64(self._public(self.s_private))})  # fmt: skip

    def share(self, roster_blob: bytes) -> bytes:
        """Encrypted Shamir shares of s_u and b_u for every other client of the roster."""
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        roster = _unpack(roster_blob, self.round, "the roster")
        t, keys = roster["threshold"], roster["keys"]
        self.roster = {u: {k: _unb64(v, 32, f"{u}'s {k}") for k, v in pk.items()}
                       for u, pk in keys.items()}  # fmt: skip
        ids = sorted(self.roster)
        s_shares = split(int.from_bytes(self.s_private, "big"), len(ids), t)
        b_shares = split(int.from_bytes(self.b_seed, "big"), len(ids), t)
        out = {}
        for v, s_share, b_share in zip(ids, s_shares, b_shares):
            plain = _pack({"from": self.me, "to": v, "s": [s_share[0], _hex(s_share[1])],
                           "b": [b_share[0], _hex(b_share[1])]})  # fmt: skip
            if v == self.me:  # my own shares stay with me
                self.held[v] = json.loads(plain)
                continue
            key = agree(self.c_private, self.roster[v]["c_pk"], f"fedumm-secagg|{self.round}|enc")
            nonce = secrets.token_bytes(12)
            aad = f"fedumm-secagg|{self.round}|{self.me}|{v}".encode()
            out[v] = _b64(nonce + AESGCM(key).encrypt(nonce, plain, aad))
        return _pack({"round": self.round, "client": self.me, "to": out})

    def receive(self, inbox_blob: bytes) -> None:
        """The shares addressed to me, and U2 (whom to mask with); a share that fails
        authentication is dropped with a log line: I just cannot help reconstruct its sender."""
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        inbox = _unpack(inbox_blob, self.round, "the inbox")
        self.peers = sorted(inbox["peers"])
        for u, blob in inbox["from"].items():
            try:
                data = _unb64(blob, None, f"{u}'s share")
                key = agree(self.c_private, self.roster[u]["c_pk"],
                            f"fedumm-secagg|{self.round}|enc")  # fmt: skip
                aad = f"fedumm-secagg|{self.round}|{u}|{self.me}".encode()
                plain = json.loads(AESGCM(key).decrypt(data[:12], data[12:], aad))
                if plain.get("from") != u or plain.get("to") != self.me:
                    raise ProtocolError("its sender or recipient is not the one it came as")
                self.held[u] = plain
            except (ProtocolError, InvalidTag, KeyError, ValueError) as e:
                log.warning("secure aggregation round %d: %s refused the share from %s: %s",
                            self.round, self.me, u, e or "authentication failed")  # fmt: skip

    def mask(self, params: Params, weight: float) -> Params:
        """y = q(weight * params) + PRG(b) + the pairwise masks with U2 (not the server's)."""
        shapes = {k: v.shape for k, v in params.items()}
        y = encode(params, weight)
        for k, m in _pair_mask(self.b_seed, shapes).items():
            y[k] = (y[k] + m) % MODULUS
        for u in self.peers:
            if u == self.me:
                continue
            context = _pair_context(self.round, self.me, u)
            key = agree(self.s_private, self.roster[u]["s_pk"], context)
            sign = 1 if self.me < u else -1
            for k, m in _pair_mask(key, shapes).items():
                y[k] = (y[k] + sign * m) % MODULUS
        return y

    def unmask(self, request_blob: bytes) -> bytes:
        """My shares of b_v for the survivors and of s_v for the dropped, never both for one v,
        and only once a round."""
        request = _unpack(request_blob, self.round, "the unmasking request")
        survivors, dropped = set(request["survivors"]), set(request["dropped"])
        if survivors & dropped or self.answered:
            raise ProtocolError("asked for both secrets of one client, or asked twice")
        self.answered = True
        return _pack({
            "round": self.round, "client": self.me,
            "b": {v: self.held[v]["b"] for v in sorted(survivors) if v in self.held},
            "s": {v: self.held[v]["s"] for v in sorted(dropped) if v in self.held},
        })  # fmt: skip


PHASES = ("advertise", "share", "unmask")


def client_answer(sessions: dict[str, ClientSession], me: str, rnd: int, phase: str,
                  payload: bytes) -> bytes:  # fmt: skip
    """A client's answer in a key-protocol phase; `sessions` (client -> its session) is
    wherever that client's state lives (this process, or its own under FLARE)."""
    if phase == "advertise":
        sessions[me] = ClientSession(me, rnd)
        return sessions[me].advertise()
    session = sessions.get(me)
    if session is None or session.round != rnd:
        raise ProtocolError(f"{me} has no keys for round {rnd}")
    if phase == "share":
        return session.share(payload)
    if phase == "unmask":
        return session.unmask(payload)
    raise ProtocolError(f"unknown secure-aggregation phase {phase!r}; phases: {PHASES}")


# ------------------------------------------------------------------------------ server side


class ServerSession:
    """The server's side of one round: it routes ciphertexts and learns only the sum."""

    def __init__(self, rnd: int, threshold: int):
        self.round, self.threshold = rnd, threshold
        self.keys: dict[str, dict[str, str]] = {}  # U1
        self.sharers: list[str] = []  # U2

    def roster(self, adverts: dict[str, bytes]) -> tuple[bytes, list[str]]:
        """The roster U1 of the valid advertisements (the others are refused and logged)."""
        for u, blob in sorted(adverts.items()):
            try:
                message = _unpack(blob, self.round, f"{u}'s keys")
                if message.get("client") != u:
                    raise ProtocolError(f"{u}'s keys claim to be {message.get('client')!r}'s")
                for k in ("c_pk", "s_pk"):
                    _unb64(message[k], 32, f"{u}'s {k}")
                self.keys[u] = {"c_pk": message["c_pk"], "s_pk": message["s_pk"]}
            except (ProtocolError, KeyError, TypeError) as e:
                log.warning("secure aggregation round %d: refused %s: %s", self.round, u, e)
        blob = _pack({"round": self.round, "threshold": self.threshold, "keys": self.keys})
        return blob, sorted(self.keys)

    def route(self, shares: dict[str, bytes]) -> dict[str, bytes]:
        """Each client's inbox: the ciphertexts addressed to it by U2, and U2."""
        expected = set(self.keys)
        routed: dict[str, dict[str, str]] = {}
        for u, blob in sorted(shares.items()):
            try:
                message = _unpack(blob, self.round, f"{u}'s shares")
                to = message.get("to")
                if message.get("client") != u or not isinstance(to, dict):
                    raise ProtocolError(f"{u}'s shares are not from {u}")
                if set(to) != expected - {u}:
                    raise ProtocolError(f"{u} shared with {sorted(to)}, not the roster")
                routed[u] = to
            except (ProtocolError, TypeError) as e:
                log.warning("secure aggregation round %d: refused %s: %s", self.round, u, e)
        self.sharers = sorted(routed)
        return {v: _pack({"round": self.round, "peers": self.sharers,
                          "from": {u: to[v] for u, to in routed.items() if u != v}})
                for v in self.sharers}  # fmt: skip

    def unmask_request(self, survivors: list[str]) -> bytes:
        dropped = sorted(set(self.sharers) - set(survivors))
        return _pack({"round": self.round, "survivors": sorted(survivors), "dropped": dropped})

    def unmask(self, masked: dict[str, Params], answers: dict[str, bytes]) -> Params:
        """sum over the survivors of weight * update (float64), from their masked uploads and
        at least `threshold` unmasking answers; ProtocolError if the round must abort."""
        survivors = sorted(masked)
        dropped = sorted(set(self.sharers) - set(survivors))
        b_shares: dict[str, list] = {v: [] for v in survivors}
        s_shares: dict[str, list] = {v: [] for v in dropped}
        valid = 0
        for u, blob in sorted(answers.items()):
            try:
                message = _unpack(blob, self.round, f"{u}'s unmasking answer")
                if message.get("client") != u:
                    raise ProtocolError(f"{u}'s answer is not from {u}")
                for kind, into in (("b", b_shares), ("s", s_shares)):
                    for v, (x, y) in message[kind].items():
                        if v in into:
                            into[v].append((int(x), int(y, 16)))
                valid += 1
            except (ProtocolError, KeyError, TypeError, ValueError) as e:
                log.warning("secure aggregation round %d: refused %s: %s", self.round, u, e)
        if valid < self.threshold:
            raise ProtocolError(f"{valid} unmasking answers, fewer than the threshold "
                                f"{self.threshold}")  # fmt: skip
        shapes = {k: v.shape for k, v in next(iter(masked.values())).items()}
        total = {k: sum(m[k] for m in masked.values()) % MODULUS for k in shapes}
        for v in survivors:
            seed = self._secret(b_shares[v], v, "self-mask seed")
            for k, m in _pair_mask(seed, shapes).items():
                total[k] = (total[k] - m) % MODULUS
        for v in dropped:
            s_private = self._secret(s_shares[v], v, "mask key")
            for u in survivors:
                key = agree(s_private, _unb64(self.keys[u]["s_pk"], 32, "key"),
                            _pair_context(self.round, u, v))  # fmt: skip
                sign = 1 if u < v else -1  # what u added for the pair (u, v)
                for k, m in _pair_mask(key, shapes).items():
                    total[k] = (total[k] - sign * m) % MODULUS
        return decode(total)

    def _secret(self, shares: list, v: str, what: str) -> bytes:
        if len({x for x, _ in shares}) < self.threshold:
            raise ProtocolError(f"{len(shares)} shares of {v}'s {what}, fewer than the "
                                f"threshold {self.threshold}")  # fmt: skip
        unique = list(dict(shares).items())[: self.threshold]
        return reconstruct(unique).to_bytes(32, "big")
