"""Secure aggregation (Bonawitz et al., CCS 2017, "Practical Secure Aggregation for Privacy-
Preserving Machine Learning"), with dropout recovery, and clients that check the server.

Per round, among the n sampled clients, with threshold t (n/2 < t <= n):
  0. advertise: client u makes two X25519 key pairs, (c_u, C_u) to encrypt its shares and
     (s_u, S_u) for its pairwise masks, and sends C_u, S_u (signed with its site identity in
     the signed-key mode: identity.py). The server's roster U1: who answered.
  1. share: u checks the roster (its own keys unchanged, t at least its configured threshold
     and more than half the roster, every key valid, and signed by its site in the signed
     mode), draws a self-mask seed b_u, splits s_u and b_u into Shamir shares (threshold t,
     over the prime field 2^521 - 1), and sends share_v to each v in U1, encrypted with
     AES-GCM under a key agreed from c_u and C_v (the server only routes ciphertexts). U2: who
     sent.
  2. mask: with the task, v receives the ciphertexts addressed to it and U2 (at least t, all
     of the roster). It uploads, in the ring of integers mod 2^m (`Ring`),
         y_v = x_v + PRG(b_v) + sum_{u in U2, u > v} PRG(s_uv) - sum_{u < v} PRG(s_uv)
     where s_uv is agreed from s_v and S_u (X25519 + HKDF) and PRG is AES-256-CTR keyed by it,
     one counter range per tensor (never by anything the server knows), each 64-bit word
     reduced mod 2^m (uniform there: 2^m divides 2^64). x_v is [w_v * theta_v, w_v], where
     w_v is the weight it gives its update, which travels masked beside it (so the server
     divides by the weights actually used), in one of two encodings:
       - fixed point (`encode`): 2^24 fractional bits, m = 64, int64 words on the wire;
       - shared-scale integers (federation/compression/masked.py, upload compression int8 or
         int4): w_v * q_v with q_v in [-L, L] the change from what v received quantized with
         one scale for every client, and m the fewest bits that hold L * W (W: the most the
         round's weights can sum to), so no sum can wrap; the words travel in the smallest
         integer container that holds m bits (2 clients of equal weight: int8 in 9 bits, int16
         words, a quarter of fixed point's bytes; int4 in 5 bits, int8 words, an eighth).
     A client whose update has a non-finite value, or one too large for the sum of n to stay
     in range (fixed point), or a weight or value outside what the modulus was sized for
     (integers), withdraws: it sends nothing and is recovered as dropped.
     U3: whose masked upload arrived (in time, valid).
  3. unmask: if |U3| >= t, each u in U3 is asked for its shares of b_v for v in U3 and of s_v for
     the v in U2 that dropped after sharing (U2 \\ U3): never both for one v, only for members
     of U2, once. With t of them the server reconstructs those secrets and removes the
     self-masks of the survivors and the pairwise masks the survivors made with the dropped,
     leaving sum x_v mod 2^m exactly: q(sum w_v theta_v) and q(sum w_v) in fixed point, or
     sum w_v q_v and sum w_v, which the server reads as signed m-bit integers, checks against
     L * sum w_v (a sum outside it was not made by clients within range) and scales back.
Fewer than t survivors, or fewer than t unmasking answers, aborts the round: nothing is learnt
and the global model stays. A message that is malformed (any field of the wrong type, size or
range), names another round or client, or fails authentication is refused with a log line
naming its sender, who is treated as dropped; no message makes the server or an honest client
raise anything but ProtocolError (tests/federation/test_secure_aggregation_fuzz.py).

What it guarantees: the server (and anything it receives) learns the sum over U3 only; with
fewer than t colluding clients it learns nothing about an honest client's update. With signed
keys, a server that substitutes a client's keys is caught. It does not protect against a
server that tells different clients different stories about who dropped (the malicious
protocol's consistency round), nor against clients that send poison or inflate their weight
(the server sees neither a client's update nor its weight: `client_weights: equal` makes every
honest client use 1; under int8 / int4 the sum of the weights must be at most W and every
summed value within L times it, or the round aborts, which bounds but does not stop a lying
client). Every client masks with every other (complete graph, O(n^2) key agreements);
SecAgg+'s sparse graph (Bell et al., CCS 2020) is not implemented.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch

from fedumm.federation.identity import Identity, IdentityError, verify
from fedumm.federation.update import Params

log = logging.getLogger("fedumm")

SCALE = 2**24  # fractional bits of the fixed-point encoding; values and masks live mod 2^64
RANGE = 2.0**39  # |sum of weighted values| the encoding holds: 2^63 / SCALE
PRIME = 2**521 - 1  # Shamir's field: larger than any 32-byte secret
WEIGHT = "secure_aggregation.weight"  # the masked upload's entry for the client's weight
KEY_BYTES = 32
PUBLIC = ("c_pk", "s_pk", "b_commit")  # what a client advertises (and signs)
SHARE_HEX = 131  # hex digits of a field element (fixed width: every share has one size)


class ProtocolError(ValueError):
    """A secure-aggregation message that cannot be used; its sender counts as dropped."""


# the integer containers a masked word travels in, by width in bits
CONTAINERS = {8: torch.int8, 16: torch.int16, 32: torch.int32, 64: torch.int64}


@dataclass(frozen=True)
class Ring:
    """The integers mod 2^bits, where masked words live and add up. Words are computed as
    uint64 (numpy's wrapping arithmetic is mod 2^64, a multiple of 2^bits) and reduced on the
    way out; on the wire each is the unsigned residue in [0, 2^bits), in the smallest signed
    integer container of at least `bits` bits (its bit pattern: int16 for 9 to 16 bits)."""

    bits: int

    def __post_init__(self):
        if not 1 <= self.bits <= 64:
            raise ValueError(f"a ring of 2^{self.bits}: masked words have 1 to 64 bits")

    @classmethod
    def holding(cls, bound: int) -> Ring:
        """The smallest ring whose signed residues [-2^(bits-1), 2^(bits-1)) hold every
        integer of magnitude at most `bound`: a sum inside it never wraps."""
        bits = int(bound).bit_length() + 1
        if bits > 64:
            raise ValueError(f"sums up to {bound} need {bits} bits, more than 64")
        return cls(bits)

    @property
    def width(self) -> int:
        """Bits of the container a word travels in."""
        return next(w for w in CONTAINERS if w >= self.bits)

    @property
    def dtype(self) -> torch.dtype:
        return CONTAINERS[self.width]

    def reduce(self, words: np.ndarray) -> np.ndarray:
        """uint64 `words` mod 2^bits."""
        return words if self.bits == 64 else words & np.uint64((1 << self.bits) - 1)

    def to_wire(self, words: np.ndarray, shape: tuple) -> torch.Tensor:
        """uint64 `words`, reduced, in the container (`shape`)."""
        size = self.width // 8
        contained = self.reduce(words).astype(f"u{size}").view(f"i{size}")
        return torch.from_numpy(contained).reshape(shape)

    def from_wire(self, tensor: torch.Tensor) -> np.ndarray:
        """A masked tensor's words as uint64 (its container's bit pattern, unsigned)."""
        unsigned = f"u{self.width // 8}"
        return tensor.contiguous().numpy().view(unsigned).reshape(-1).astype(np.uint64)

    def holds(self, tensor: torch.Tensor) -> bool:
        """Whether every word of `tensor` is a residue of this ring (below 2^bits)."""
        return self.bits == self.width or not bool((self.from_wire(tensor) >> self.bits).any())

    def signed(self, words: np.ndarray) -> np.ndarray:
        """uint64 `words` as the signed residues in [-2^(bits-1), 2^(bits-1)) (int64)."""
        if self.bits == 64:
            return words.view(np.int64)
        v = self.reduce(words).astype(np.int64)
        return np.where(v >= 1 << (self.bits - 1), v - (1 << self.bits), v)


FIXED_POINT = Ring(64)  # `encode`'s words: 2^24 fractional bits, mod 2^64


@dataclass(frozen=True)
class ClientPolicy:
    """What a client accepts from the server: at least `threshold` survivors per round (its
    own config's), more than half of the roster unless `allow_minority`; with `identity`, it
    signs its keys, and checks every peer's against the root it trusts."""

    threshold: int = 2
    allow_minority: bool = False
    identity: Identity | None = None


# ------------------------------------------------------------------------------ primitives


def _x25519():
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    return X25519PrivateKey


def _raw(public) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _private_bytes(private) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def _new_private() -> bytes:
    return _private_bytes(_x25519().generate())


def agree(private_raw: bytes, public_raw: bytes, context: str) -> bytes:
    """A 32-byte key from X25519 key agreement, bound to `context` by HKDF-SHA256;
    ProtocolError for a public key of small order (its shared secret would be all zeros)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    private = _x25519().from_private_bytes(private_raw)
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(public_raw))
    except ValueError as e:
        raise ProtocolError(f"a public key of small order ({e})") from None
    return HKDF(hashes.SHA256(), 32, salt=None, info=context.encode()).derive(shared)


def prg(key: bytes, count: int, stream: int) -> np.ndarray:
    """`count` uniform 64-bit words from AES-256-CTR keyed by `key`. `stream` (which tensor of
    the message) is the counter block's high 64 bits and the block number its low 64, so no
    two tensors of one message ever share a keystream block (a shared block would let anyone
    who knows one tensor's values read another's)."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    nonce = stream.to_bytes(8, "big") + bytes(8)
    encryptor = Cipher(algorithms.AES(key), modes.CTR(nonce)).encryptor()
    return np.frombuffer(encryptor.update(bytes(8 * count)), dtype=np.uint64).copy()


def encode(params: Params, weight: float, bound: float = RANGE) -> dict[str, np.ndarray]:
    """q(weight * params) in fixed point, as uint64 (mod 2^64), with the weight itself under
    WEIGHT; ProtocolError if a value is not finite or not below `bound` in magnitude (it
    would wrap around and corrupt the sum without anyone seeing it)."""
    out = {}
    for k, v in [*params.items(), (WEIGHT, torch.ones(1))]:
        x = v.detach().double().cpu() * weight
        if not bool(torch.isfinite(x).all()):
            raise ProtocolError(
                f"{k!r} has NaN or infinite values: an update that cannot be masked"
            )
        top = float(x.abs().max()) if x.numel() else 0.0
        if top >= bound:
            raise ProtocolError(
                f"{k!r} has a value of {top:.3g}, outside the +-{bound:.3g} the masked sum can hold"
            )
        out[k] = torch.round(x * SCALE).long().numpy().view(np.uint64).reshape(-1)
    return out


def decode(total: dict[str, np.ndarray], shapes: dict[str, tuple]) -> Params:
    """The signed real values (float64) of fixed-point sums mod 2^64."""
    return {
        k: torch.from_numpy(v.view(np.int64).astype(np.float64) / SCALE).reshape(shapes[k])
        for k, v in total.items()
    }


def split(secret: int, n: int, t: int) -> list[tuple[int, int]]:
    """Shamir shares (x, f(x)) for x = 1..n of `secret`, any t of which reconstruct it."""
    coefficients = [secret, *(secrets.randbelow(PRIME) for _ in range(t - 1))]
    return [
        (x, sum(c * pow(x, i, PRIME) for i, c in enumerate(coefficients)) % PRIME)
        for x in range(1, n + 1)
    ]


def reconstruct(shares: list[tuple[int, int]]) -> int:
    """f(0) by Lagrange interpolation from shares with distinct x."""
    total = 0
    for j, (xj, yj) in enumerate(shares):
        num, den = 1, 1
        for m, (xm, _) in enumerate(shares):
            if m != j:
                num = num * -xm % PRIME
                den = den * (xj - xm) % PRIME
        total = (total + yj * num * pow(den, -1, PRIME)) % PRIME
    return total


def _masks(key: bytes, shapes: dict[str, tuple]) -> dict[str, np.ndarray]:
    """One keystream per tensor (in the message's sorted order), each its own counter range."""
    ordered = enumerate(sorted(shapes.items()))
    return {k: prg(key, int(np.prod(shape)), i) for i, (k, shape) in ordered}


def _pair_context(rnd: int, a: str, b: str) -> str:
    low, high = sorted((a, b))
    return f"fedumm-secagg|{rnd}|mask|{low}|{high}"


# ------------------------------------------------------------------------------ messages


def _pack(message: dict) -> bytes:
    return json.dumps(message, sort_keys=True, separators=(",", ":")).encode()


def _unpack(blob: bytes, rnd: int, what: str) -> dict:
    try:
        message = json.loads(blob)
    except (ValueError, TypeError, RecursionError) as e:
        raise ProtocolError(f"{what} is not a protocol message ({e})") from None
    if not isinstance(message, dict) or message.get("round") != rnd:
        got = message.get("round") if isinstance(message, dict) else None
        raise ProtocolError(f"{what} is for round {got!r}, not {rnd} (replayed or malformed)")
    return message


def _get(message: dict, key: str, kind: type, what: str):
    """message[key], which must be a `kind` (a bool is no int here)."""
    value = message.get(key) if isinstance(message, dict) else None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProtocolError(f"{what}: {key!r} is {type(value).__name__}, expected {kind.__name__}")
    return value


def _names(value, what: str) -> list[str]:
    """A list of distinct client names."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ProtocolError(f"{what} is not a list of client names")
    if len(set(value)) != len(value):
        raise ProtocolError(f"{what} names a client twice")
    return sorted(value)


def _hex(value: int) -> str:
    """A field element in fixed width, so every message of a round has a known size."""
    return format(value, f"0{SHARE_HEX}x")


def _share(value, n: int, what: str) -> tuple[int, int]:
    """A share [x, f(x) in hex] with 1 <= x <= n and f(x) in the field."""
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not isinstance(value[0], int)
        or isinstance(value[0], bool)
        or not isinstance(value[1], str)
    ):
        raise ProtocolError(f"{what} is not a share [x, hex]")
    x, text = value
    if not 1 <= x <= n or len(text) != SHARE_HEX:
        raise ProtocolError(f"{what} has x = {x} (1..{n}) or {len(text)} hex digits")
    try:
        y = int(text, 16)
    except ValueError:
        raise ProtocolError(f"{what} is not hexadecimal") from None
    if y >= PRIME:
        raise ProtocolError(f"{what} is outside the field")
    return x, y


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text, size: int | None, what: str) -> bytes:
    if not isinstance(text, str):
        raise ProtocolError(f"{what} is {type(text).__name__}, not base64 text")
    try:
        data = base64.b64decode(text, validate=True)
    except (ValueError, TypeError):
        raise ProtocolError(f"{what} is not base64") from None
    if size is not None and len(data) != size:
        raise ProtocolError(f"{what} has {len(data)} bytes, expected {size}")
    return data


def _commit(seed: bytes) -> bytes:
    """SHA-256 of a self-mask seed: lets the server check the seed it reconstructs (a wrong
    share would otherwise give a wrong sum), reveals nothing of a 256-bit seed."""
    import hashlib

    return hashlib.sha256(b"fedumm-secagg-b|" + seed).digest()


def _signed_part(rnd: int, client: str, keys: dict) -> bytes:
    return _pack(
        {
            "round": rnd,
            "client": client,
            **{k: keys[k] for k in PUBLIC},
            "purpose": "fedumm-secagg-keys",
        }
    )


def _check_keys(u: str, keys, rnd: int, root: bytes | None) -> dict[str, str]:
    """u's advertised keys: two valid X25519 public keys (not of small order), and with a
    trusted `root`, a certificate for u and u's signature over them."""
    if not isinstance(keys, dict):
        raise ProtocolError(f"{u}'s keys are not a record")
    for k in ("c_pk", "s_pk"):
        agree(_new_private(), _unb64(keys.get(k), KEY_BYTES, f"{u}'s {k}"), "check")
    _unb64(keys.get("b_commit"), KEY_BYTES, f"{u}'s b_commit")
    checked = {k: keys[k] for k in PUBLIC}
    if root is not None:
        cert, sig = keys.get("cert"), keys.get("sig")
        if not isinstance(cert, str):
            raise ProtocolError(f"{u}'s keys are not signed (signed keys are required)")
        try:
            verify(
                root,
                u,
                cert.encode(),
                _signed_part(rnd, u, keys),
                _unb64(sig, None, f"{u}'s signature"),
            )
        except IdentityError as e:
            raise ProtocolError(str(e)) from None
        checked.update(cert=cert, sig=sig)
    return checked


def _jsonable(value):
    """bytes -> {"b64": ...}, recursively (the session's keys and secrets)."""
    if isinstance(value, bytes):
        return {"b64": _b64(value)}
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _unjsonable(value):
    if isinstance(value, dict):
        if set(value) == {"b64"}:
            return _unb64(value["b64"], None, "a saved secret")
        return {k: _unjsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unjsonable(v) for v in value]
    return value


# ------------------------------------------------------------------------------ client side


@dataclass
class ClientSession:
    """One client's side of one round: its keys, its self-mask seed, the shares it holds."""

    me: str
    round: int
    policy: ClientPolicy = field(default_factory=ClientPolicy)
    c_private: bytes = field(default_factory=_new_private)
    s_private: bytes = field(default_factory=_new_private)
    b_seed: bytes = field(default_factory=lambda: secrets.token_bytes(KEY_BYTES))
    threshold: int = 0  # t, as the roster said (and this client accepted)
    roster: dict[str, dict[str, bytes]] = field(default_factory=dict)  # U1: public keys
    held: dict[str, dict] = field(default_factory=dict)  # sender -> its shares for me
    peers: list[str] = field(default_factory=list)  # U2, as the server said
    answered: bool = False  # unmasking answers at most once a round

    def _public(self, private: bytes) -> bytes:
        return _raw(_x25519().from_private_bytes(private).public_key())

    def _keys(self) -> dict[str, str]:
        return {
            "c_pk": _b64(self._public(self.c_private)),
            "s_pk": _b64(self._public(self.s_private)),
            "b_commit": _b64(_commit(self.b_seed)),
        }

    def advertise(self) -> bytes:
        keys = self._keys()
        identity = self.policy.identity
        if identity is not None:
            keys["cert"] = identity.certificate_pem.decode()
            keys["sig"] = _b64(identity.sign(_signed_part(self.round, self.me, keys)))
        return _pack({"round": self.round, "client": self.me, **keys})

    def share(self, roster_blob: bytes) -> bytes:
        """Encrypted Shamir shares of s_u and b_u for every other client of the roster, once
        the roster passes this client's checks."""
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        roster = _unpack(roster_blob, self.round, "the roster")
        t = _get(roster, "threshold", int, "the roster")
        keys = _get(roster, "keys", dict, "the roster")
        n = len(keys)
        if t < self.policy.threshold:
            raise ProtocolError(
                f"the server asks for threshold {t}, below this site's {self.policy.threshold}"
            )
        if t > n or (2 * t <= n and not self.policy.allow_minority):
            raise ProtocolError(
                f"threshold {t} for a roster of {n}: it must be more than half "
                "of it and at most all of it"
            )
        mine = keys.get(self.me)
        if not isinstance(mine, dict) or {k: mine.get(k) for k in PUBLIC} != self._keys():
            raise ProtocolError(f"the roster does not carry {self.me}'s own keys")
        root = self.policy.identity.root_pem if self.policy.identity else None
        checked = {u: _check_keys(u, pk, self.round, root) for u, pk in keys.items()}
        self.threshold = t
        self.roster = {
            u: {k: _unb64(pk[k], KEY_BYTES, k) for k in ("c_pk", "s_pk")}
            for u, pk in checked.items()
        }
        ids = sorted(self.roster)
        s_shares = split(int.from_bytes(self.s_private, "big"), len(ids), t)
        b_shares = split(int.from_bytes(self.b_seed, "big"), len(ids), t)
        out = {}
        for v, s_share, b_share in zip(ids, s_shares, b_shares):
            plain = _pack(
                {
                    "from": self.me,
                    "to": v,
                    "s": [s_share[0], _hex(s_share[1])],
                    "b": [b_share[0], _hex(b_share[1])],
                }
            )
            if v == self.me:  # my own shares stay with me
                self.held[v] = json.loads(plain)
                continue
            key = agree(self.c_private, self.roster[v]["c_pk"], f"fedumm-secagg|{self.round}|enc")
            nonce = secrets.token_bytes(12)
            aad = f"fedumm-secagg|{self.round}|{self.me}|{v}".encode()
            out[v] = _b64(nonce + AESGCM(key).encrypt(nonce, plain, aad))
        return _pack({"round": self.round, "client": self.me, "to": out})

    def receive(self, inbox_blob: bytes) -> None:
        """The shares addressed to me, and U2 (whom to mask with): ProtocolError unless U2 is
        of the roster, holds me and at least t clients. A share that fails authentication is
        dropped with a log line: I just cannot help reconstruct its sender."""
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        if not self.roster:
            raise ProtocolError(f"{self.me} got an inbox before sharing")
        inbox = _unpack(inbox_blob, self.round, "the inbox")
        peers = _names(inbox.get("peers"), "the inbox's peers")
        senders = _get(inbox, "from", dict, "the inbox")
        if not set(peers) <= set(self.roster) or self.me not in peers:
            raise ProtocolError("the inbox's peers are not of the roster, or leave me out")
        if len(peers) < self.threshold:
            raise ProtocolError(f"{len(peers)} peers, fewer than the threshold {self.threshold}")
        self.peers = peers
        me = sorted(self.roster).index(self.me) + 1  # my x in every share
        for u, blob in senders.items():
            try:
                if u not in peers or u == self.me:
                    raise ProtocolError("it is not from a peer")
                data = _unb64(blob, None, f"{u}'s share")
                key = agree(
                    self.c_private, self.roster[u]["c_pk"], f"fedumm-secagg|{self.round}|enc"
                )
                aad = f"fedumm-secagg|{self.round}|{u}|{self.me}".encode()
                plain = json.loads(AESGCM(key).decrypt(data[:12], data[12:], aad))
                if plain.get("from") != u or plain.get("to") != self.me:
                    raise ProtocolError("its sender or recipient is not the one it came as")
                for kind in ("s", "b"):
                    if _share(plain.get(kind), len(self.roster), f"{u}'s {kind}")[0] != me:
                        raise ProtocolError(f"its {kind} share is not for x = {me}")
                self.held[u] = plain
            except (ProtocolError, InvalidTag, ValueError, TypeError, AttributeError) as e:
                log.warning(
                    "secure aggregation round %d: %s refused the share from %s: %s",
                    self.round,
                    self.me,
                    u,
                    e or "authentication failed",
                )

    def mask(self, params: Params, weight: float) -> Params:
        """y = q([weight * params, weight]) + PRG(b) + the pairwise masks with U2, in fixed
        point (int64 on the wire); ProtocolError (withdraw: I count as dropped) for values
        that cannot be masked."""
        if not self.peers:
            raise ProtocolError(f"{self.me} was given no peers to mask with")
        dims = {k: tuple(v.shape) for k, v in params.items()}
        return self.mask_words(encode(params, weight, RANGE / len(self.roster)), dims)

    def mask_words(
        self,
        words: dict[str, np.ndarray],
        dims: dict[str, tuple] | None = None,
        ring: Ring = FIXED_POINT,
    ) -> Params:
        """y = words + PRG(b) + the pairwise masks with U2, mod 2^ring.bits, in the ring's
        container; `words`: flat uint64 (each the residue of a signed value mod 2^64), `dims`:
        tensors' shapes on the wire (flat where not named). That the words' sum stays in the
        ring is the caller's to see to (`encode`; compression/masked.py)."""
        if not self.peers:
            raise ProtocolError(f"{self.me} was given no peers to mask with")
        y = {k: v.astype(np.uint64) for k, v in words.items()}  # a copy: the masks add in place
        shapes = {k: v.shape for k, v in y.items()}
        for k, m in _masks(self.b_seed, shapes).items():
            y[k] += m
        for u in self.peers:
            if u == self.me:
                continue
            key = agree(
                self.s_private, self.roster[u]["s_pk"], _pair_context(self.round, self.me, u)
            )
            for k, m in _masks(key, shapes).items():
                if self.me < u:
                    y[k] += m
                else:
                    y[k] -= m
        return {k: ring.to_wire(v, (dims or {}).get(k, v.shape)) for k, v in y.items()}

    def unmask(self, request_blob: bytes) -> bytes:
        """My shares of b_v for the survivors and of s_v for the dropped, never both for one v,
        only for the peers I masked with, with me among at least t survivors, and once."""
        request = _unpack(request_blob, self.round, "the unmasking request")
        survivors = _names(request.get("survivors"), "the survivors")
        dropped = _names(request.get("dropped"), "the dropped")
        if self.answered or not self.peers:
            raise ProtocolError("asked twice, or before masking")
        if set(survivors) & set(dropped) or set(survivors) | set(dropped) != set(self.peers):
            raise ProtocolError("survivors and dropped do not split the peers I masked with")
        if self.me not in survivors or len(survivors) < self.threshold:
            raise ProtocolError(
                f"{len(survivors)} survivors (me among them?), threshold {self.threshold}"
            )
        self.answered = True
        return _pack(
            {
                "round": self.round,
                "client": self.me,
                "b": {v: self.held[v]["b"] for v in survivors if v in self.held},
                "s": {v: self.held[v]["s"] for v in dropped if v in self.held},
            }
        )

    def to_json(self) -> str:
        """The session as JSON (bytes as base64), for an engine that keeps a client's state
        between messages (Flower's context.state): plain data, nothing that runs code when read,
        and no policy (the site's own, with its identity key, is given back on loading)."""
        data = {k: v for k, v in asdict(self).items() if k != "policy"}
        return json.dumps(_jsonable(data), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, policy: ClientPolicy) -> ClientSession:
        """The session `to_json` wrote, under the site's `policy` (a session never decides
        what it accepts from what was stored); ProtocolError if the text is not one."""
        try:
            data = {**_unjsonable(json.loads(text)), "policy": policy}
            return cls(**{f.name: data[f.name] for f in fields(cls)})
        except (ValueError, TypeError, KeyError) as e:
            raise ProtocolError(f"not a saved secure-aggregation session ({e})") from None


PHASES = ("advertise", "share", "unmask")


def client_answer(
    sessions: dict[str, ClientSession],
    me: str,
    rnd: int,
    phase: str,
    payload: bytes,
    policy: ClientPolicy | None = None,
) -> bytes:
    """A client's answer in a key-protocol phase; `sessions` (client -> its session) is
    wherever that client's state lives (this process, or its own under FLARE)."""
    if phase == "advertise":
        sessions[me] = ClientSession(me, rnd, policy or ClientPolicy())
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
    """The server's side of one round: it routes ciphertexts and learns only the sum. With
    `root` (the signed-key mode) it also refuses keys its clients would refuse."""

    def __init__(self, rnd: int, threshold: int, root: bytes | None = None):
        self.round, self.threshold, self.root = rnd, threshold, root
        self.keys: dict[str, dict[str, str]] = {}  # U1
        self.sharers: list[str] = []  # U2

    def _refuse(self, u: str, e: Exception) -> None:
        log.warning("secure aggregation round %d: refused %s: %s", self.round, u, e)

    def roster(self, adverts: dict[str, bytes]) -> tuple[bytes, list[str]]:
        """The roster U1 of the valid advertisements (the others are refused and logged)."""
        for u, blob in sorted(adverts.items()):
            try:
                message = _unpack(blob, self.round, f"{u}'s keys")
                if message.get("client") != u:
                    raise ProtocolError(f"{u}'s keys claim to be {message.get('client')!r}'s")
                self.keys[u] = _check_keys(u, message, self.round, self.root)
            except ProtocolError as e:
                self._refuse(u, e)
        blob = _pack({"round": self.round, "threshold": self.threshold, "keys": self.keys})
        return blob, sorted(self.keys)

    def route(self, shares: dict[str, bytes]) -> dict[str, bytes]:
        """Each client's inbox: the ciphertexts addressed to it by U2, and U2."""
        expected = set(self.keys)
        routed: dict[str, dict[str, str]] = {}
        for u, blob in sorted(shares.items()):
            try:
                message = _unpack(blob, self.round, f"{u}'s shares")
                to = _get(message, "to", dict, f"{u}'s shares")
                if u not in expected or message.get("client") != u:
                    raise ProtocolError(f"{u}'s shares are not from {u} of the roster")
                if set(to) != expected - {u}:
                    raise ProtocolError(f"{u} shared with {sorted(to)}, not the roster")
                for v, blob in to.items():
                    _unb64(blob, None, f"{u}'s share for {v}")
                routed[u] = to
            except ProtocolError as e:
                self._refuse(u, e)
        self.sharers = sorted(routed)
        return {
            v: _pack(
                {
                    "round": self.round,
                    "peers": self.sharers,
                    "from": {u: to[v] for u, to in routed.items() if u != v},
                }
            )
            for v in self.sharers
        }

    def unmask_request(self, survivors: list[str]) -> bytes:
        dropped = sorted(set(self.sharers) - set(survivors))
        return _pack({"round": self.round, "survivors": sorted(survivors), "dropped": dropped})

    def unmask(self, masked: dict[str, Params], answers: dict[str, bytes]) -> tuple[Params, float]:
        """(sum over the survivors of weight * update (float64), sum of their weights), from
        their masked fixed-point uploads and at least `threshold` unmasking answers;
        ProtocolError if the round must abort."""
        total, shapes = self.unmask_words(masked, answers)
        if WEIGHT not in total:
            raise ProtocolError("the masked uploads carry no weight")
        summed = decode(total, shapes)
        return summed, float(summed.pop(WEIGHT).sum())

    def unmask_words(
        self, masked: dict[str, Params], answers: dict[str, bytes], ring: Ring = FIXED_POINT
    ) -> tuple[dict[str, np.ndarray], dict[str, tuple]]:
        """(The sum over the survivors of their words mod 2^ring.bits, flat uint64 per tensor,
        and each tensor's shape), every mask removed; ProtocolError if the round must abort
        (uploads that are not all of one layout in the ring's container, too few answers,
        shares that do not reconstruct what their owner committed to)."""
        survivors = sorted(masked)
        if not set(survivors) <= set(self.sharers):
            raise ProtocolError(
                f"masked uploads from {sorted(set(survivors) - set(self.sharers))}"
                ", who shared no keys this round"
            )
        dropped = sorted(set(self.sharers) - set(survivors))
        b_shares, s_shares = self._collect_shares(survivors, dropped, answers)
        total, shapes = _sum_masked(masked, survivors, ring)
        for v in survivors:
            self._remove_self_mask(total, shapes, v, b_shares[v])
        for v in dropped:
            self._remove_pair_masks(total, shapes, v, s_shares[v], survivors)
        return {k: ring.reduce(v) for k, v in total.items()}, shapes

    def _collect_shares(
        self, survivors: list[str], dropped: list[str], answers: dict[str, bytes]
    ) -> tuple[dict[str, dict], dict[str, dict]]:
        """The survivors' shares of b_v (survivors) and of s_v (dropped) from the answers
        that parse whole; at least `threshold` of them."""
        n = len(self.keys)
        b_shares: dict[str, dict] = {v: {} for v in survivors}
        s_shares: dict[str, dict] = {v: {} for v in dropped}
        valid = 0
        for u, blob in sorted(answers.items()):
            try:
                message = _unpack(blob, self.round, f"{u}'s unmasking answer")
                if u not in survivors or message.get("client") != u:
                    raise ProtocolError(f"{u}'s answer is not from a survivor named {u}")
                parsed = []
                for kind, into in (("b", b_shares), ("s", s_shares)):
                    for v, share in _get(message, kind, dict, f"{u}'s answer").items():
                        if v not in into:
                            raise ProtocolError(f"{u} answered with {kind} of {v}, not asked")
                        parsed.append((into[v], _share(share, n, f"{u}'s {kind} of {v}")))
                for into, (x, y) in parsed:  # all of an answer, or none of it
                    into.setdefault(x, y)
                valid += 1
            except ProtocolError as e:
                self._refuse(u, e)
        if valid < self.threshold:
            raise ProtocolError(
                f"{valid} unmasking answers, fewer than the threshold {self.threshold}"
            )
        return b_shares, s_shares

    def _remove_self_mask(self, total: dict, shapes: dict, v: str, shares: dict) -> None:
        """Subtract survivor v's self-mask, once its seed matches v's commitment."""
        seed = self._secret(shares, v, "self-mask seed")
        if _commit(seed) != _unb64(self.keys[v]["b_commit"], KEY_BYTES, "commitment"):
            raise ProtocolError(
                f"the shares of {v}'s self-mask seed do not reconstruct "
                "the seed it committed to (a wrong share)"
            )
        for k, m in _masks(seed, shapes).items():
            total[k] -= m

    def _remove_pair_masks(
        self, total: dict, shapes: dict, v: str, shares: dict, survivors: list[str]
    ) -> None:
        """Cancel what each survivor u added for the pair (u, v) with dropped v, once v's
        reconstructed mask key matches the key it advertised."""
        s_private = self._secret(shares, v, "mask key")
        public = _raw(_x25519().from_private_bytes(s_private).public_key())
        if public != _unb64(self.keys[v]["s_pk"], KEY_BYTES, "key"):
            raise ProtocolError(
                f"the shares of {v}'s mask key do not reconstruct the key "
                "it advertised (a wrong share)"
            )
        for u in survivors:
            key = agree(
                s_private,
                _unb64(self.keys[u]["s_pk"], KEY_BYTES, "key"),
                _pair_context(self.round, u, v),
            )
            for k, m in _masks(key, shapes).items():
                if u < v:
                    total[k] -= m
                else:
                    total[k] += m

    def _secret(self, shares: dict[int, int], v: str, what: str) -> bytes:
        if len(shares) < self.threshold:
            raise ProtocolError(
                f"{len(shares)} shares of {v}'s {what}, fewer than the threshold {self.threshold}"
            )
        value = reconstruct(list(shares.items())[: self.threshold])
        if value >= 2 ** (8 * KEY_BYTES):
            raise ProtocolError(f"the shares of {v}'s {what} do not reconstruct a key")
        return value.to_bytes(KEY_BYTES, "big")


def _sum_masked(masked: dict[str, Params], survivors: list[str], ring: Ring) -> tuple[dict, dict]:
    """The survivors' masked uploads summed mod 2^64 (reduced mod 2^ring.bits by the caller),
    and the shapes every one must have, in the ring's container."""
    first = masked[survivors[0]]
    shapes = {k: tuple(v.shape) for k, v in first.items()}
    total = {k: np.zeros(int(np.prod(s)), dtype=np.uint64) for k, s in shapes.items()}
    expected = {k: (s, ring.dtype) for k, s in shapes.items()}
    for u in survivors:
        if {k: (tuple(v.shape), v.dtype) for k, v in masked[u].items()} != expected:
            raise ProtocolError(
                f"{u}'s masked upload differs in keys, shapes or integer type from "
                f"{survivors[0]}'s, or is not in {ring.dtype} words"
            )
        for k in shapes:
            total[k] += ring.from_wire(masked[u][k])
    return total, shapes
