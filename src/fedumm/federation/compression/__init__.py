"""Compressed messages (issue 38): what a run's broadcasts and uploads go through on the wire.

Uploads travel as the change from what the client received (the strategy says which of its
upload's tensors have such a reference: `Strategy.upload_reference`, and which must travel
exactly: `Strategy.exact_upload`), so a lossy codec only perturbs a round's change, and the
server adds it back to its own exact copy. Error feedback keeps each client's residual in its
state (`RESIDUAL` keys), which every engine already carries and checkpoints. The broadcast is
the model itself. Every random draw (stochastic rounding) is seeded by the run seed, the round
and the client, so a run reproduces on every engine.
"""

from __future__ import annotations

import torch

from fedumm.config import CodecConfig, CompressionConfig
from fedumm.federation import wire
from fedumm.federation.compression import message
from fedumm.federation.compression.base import Codec, CodecError
from fedumm.federation.compression.blockwise import Blockwise
from fedumm.federation.compression.cast import Cast
from fedumm.federation.compression.sign import Sign
from fedumm.federation.compression.topk import TopK
from fedumm.federation.update import Params
from fedumm.seeding import derive_seed

__all__ = ["Codec", "CodecError", "Compression", "build_codec", "RESIDUAL"]

RESIDUAL = "compression/residual/"  # a client's state keys holding error feedback's residual
BROADCAST_STREAM, UPLOAD_STREAM = 0xB0CA57, 0xC0DE


def build_codec(cfg: CodecConfig) -> Codec | None:
    """The codec `cfg` names; None for `none` (plain wire messages)."""
    stochastic = cfg.rounding == "stochastic"
    if cfg.scheme == "none":
        return None
    if cfg.scheme in ("fp16", "bf16"):
        return Cast(cfg.scheme)
    if cfg.scheme in ("int8", "int4"):
        return Blockwise(int(cfg.scheme[3:]), cfg.block_size, stochastic)
    if cfg.scheme == "sign":
        return Sign(cfg.block_size)
    values = cfg.values
    inner = (
        Blockwise(int(values[3:]), cfg.block_size, stochastic)
        if values.startswith("int")
        else Cast(values)
    )
    return TopK(cfg.fraction, inner)


class Compression:
    """A run's two directions: `pack_broadcast` / `unpack_broadcast` on the server and the
    clients, `pack_upload` / `unpack_upload` on the clients and the server."""

    def __init__(self, cfg: CompressionConfig | None = None, seed: int = 0):
        cfg = cfg or CompressionConfig()
        self.upload_cfg, self.seed = cfg.upload, seed
        self.down, self.up = build_codec(cfg.broadcast), build_codec(cfg.upload)

    @property
    def compresses_uploads(self) -> bool:
        return self.up is not None

    @property
    def error_feedback(self) -> bool:
        return self.upload_cfg.error_feedback

    def _generator(self, *path: int) -> torch.Generator:
        return torch.Generator().manual_seed(derive_seed(self.seed, *path))

    def pack_broadcast(self, params: Params, rnd: int) -> bytes:
        if self.down is None:
            return wire.pack(params)
        blob, _ = message.encode(params, self.down, self._generator(rnd, BROADCAST_STREAM))
        return blob

    def unpack_broadcast(self, blob: bytes) -> Params:
        return wire.unpack(blob) if self.down is None else message.decode(blob, self.down)

    def pack_upload(
        self,
        upload: Params,
        reference: Params,
        exact: frozenset[str],
        state: Params,
        rnd: int,
        client_number: int,
    ) -> bytes:
        """A client's `upload`: the tensors in `exact` as they are, the others as their change
        from `reference` (0 where it has none) through the codec; with error feedback, plus
        the residual kept in `state`, which keeps what the codec dropped this time."""
        if self.up is None:
            return wire.pack(upload)
        changes = {}
        for k, v in upload.items():
            if k in exact:
                continue
            change = v.float() - reference[k].float() if k in reference else v.float()
            if self.error_feedback and RESIDUAL + k in state:
                change = change + state[RESIDUAL + k]
            changes[k] = change
        blob, decoded = message.encode(
            changes,
            self.up,
            self._generator(rnd, client_number, UPLOAD_STREAM),
            {k: upload[k] for k in exact if k in upload},
            frozenset(changes) & frozenset(reference),
            decoded=self.error_feedback,
        )
        if self.error_feedback:
            state.update({RESIDUAL + k: changes[k] - decoded[k] for k in changes})
        return blob

    def unpack_upload(
        self, blob: bytes, reference: Params, template: Params | None = None
    ) -> Params:
        """The values a client sent, in `template`'s dtypes where it names them (CodecError if
        `blob` is not a well-formed message, or declares tensors `template` does not have)."""
        if self.up is None:
            return wire.unpack(blob)
        return message.decode(blob, self.up, reference, template)
