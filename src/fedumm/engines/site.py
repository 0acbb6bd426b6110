"""A client site as every engine runs it: it answers the server's three kinds of request (local
training and its upload, secure aggregation's key protocol, a personalized model's evaluation)
with the same code under every engine, so every algorithm behaves the same under each; the
engine only delivers the bytes. Under FLARE and Flower a site is a process of its own that
builds the same RunParts as the server from the config and uses only its own share of the data;
the embedded engine runs its clients as sites of the parts it built once.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from fedumm.config import RunConfig
from fedumm.federation import wire
from fedumm.federation.client import ClientData, site_names, upload
from fedumm.federation.compression import UPLOAD_STREAM, CodecError
from fedumm.federation.compression.masked import MaskedUpload, SharedScale
from fedumm.federation.secure_aggregation import ClientSession, ProtocolError, client_answer
from fedumm.federation.update import ClientUpdate, Params
from fedumm.parts import RunParts, build_parts
from fedumm.seeding import derive_seed

log = logging.getLogger("fedumm")


def site_config(cfg: RunConfig, site: str) -> RunConfig:
    """The config as `site` runs it: on its own device (flare.site_devices)."""
    sites = site_names(cfg.federation.num_clients)
    if site not in sites:
        raise ValueError(f"site {site!r} is not one of this job's sites: site-1..{sites[-1]}")
    device = cfg.flare.site_device(site, sites.index(site), cfg.runtime.device)
    return cfg.model_copy(
        update={"runtime": cfg.runtime.model_copy(update={"device": device, "devices": None})}
    )


def with_identities(cfg: RunConfig, folder: Path, write: bool = True) -> RunConfig:
    """The config a multi-process run hands its sites: with signed secure-aggregation keys and
    no identities folder named, `folder` (written now with an identity per site, unless
    `write` is False: FLARE's POC provisions its own kits there)."""
    secure = cfg.federation.secure_aggregation
    if not (secure.enabled and secure.signed_keys) or secure.identities:
        return cfg
    if write:
        from fedumm.federation.identity import write_identities

        write_identities(folder, site_names(cfg.federation.num_clients))
    secure = secure.model_copy(update={"identities": str(folder)})
    fed = cfg.federation.model_copy(update={"secure_aggregation": secure})
    return cfg.model_copy(update={"federation": fed})


def update_of(site: str, meta: dict) -> ClientUpdate:
    """What the server reads of `site`'s answer to a training task (the meta `Site.train`
    returns, carried by the engine); KeyError, TypeError or ValueError if it is not one."""
    return ClientUpdate(
        site, {}, int(meta["num_samples"]), int(meta["num_steps"]), dict(meta.get("metrics", {}))
    )


class Site:
    """One client: its round's work on `parts` (its state there: SCAFFOLD's c_i, FedSA-LoRA's
    B) and its secure-aggregation session, kept in `sessions` (client -> session): its own, or
    the one dict the embedded engine keeps for all its clients."""

    def __init__(
        self,
        parts: RunParts,
        client: ClientData,
        sessions: dict[str, ClientSession] | None = None,
    ):
        self.parts, self.client = parts, client
        self.sessions = {} if sessions is None else sessions

    @classmethod
    def build(cls, cfg: RunConfig, site: str) -> Site:
        """`site` in a process of its own (FLARE, Flower): its parts built from `cfg`, on the
        site's device."""
        parts = build_parts(site_config(cfg, site))
        return cls(parts, parts.client(site))

    @property
    def name(self) -> str:
        return self.client.client_id

    @property
    def cfg(self) -> RunConfig:
        return self.parts.cfg

    @property
    def state(self) -> Params:
        return self.parts.client_states[self.name]

    def received(self, message: bytes) -> Params:
        """The server's `message` (compressed or not) as tensors."""
        return self.parts.compression.unpack_broadcast(message)

    def trained(self, rnd: int, message: bytes) -> ClientUpdate:
        """Round `rnd`'s local training from the server's `message`."""
        return self.parts.train_client(self.client, self.received(message), rnd)

    def upload(
        self, rnd: int, message: bytes, update: ClientUpdate, inbox: bytes | None = None
    ) -> bytes:
        """What leaves the site of its `update` trained from `message`: compressed as the
        change from what it received (federation.compression), masked under secure
        aggregation, where `inbox` holds the round's secrets for this site (int8 / int4: the
        change quantized to one scale all sites share goes into the masks as integers)."""
        session = self.sessions.get(self.name) if inbox is not None else None
        if session is None and not self.parts.compression.compresses_uploads:
            return wire.pack(update.params)
        if session is None:
            strategy = self.parts.strategy
            exact = frozenset(k for k in update.params if k.startswith(strategy.exact_prefixes))
            reference = strategy.upload_reference(self.received(message))
            number = self.parts.number(self.client)
            try:
                return self.parts.compression.pack_upload(
                    update.params, reference, exact, self.state, rnd, number
                )
            except CodecError as e:  # withdraw (e.g. a value fp16 cannot hold): counted dropped
                log.warning("round %d: %s withdraws its update: %s", rnd, self.name, e)
                return b""
        fed = self.cfg.federation
        shared = SharedScale.of_run(fed, (len(c.data) for c in self.parts.clients))
        quantized = None
        if shared is not None:  # int8 / int4: the change, quantized, goes into the masks
            reference = self.parts.strategy.upload_reference(self.received(message))
            seed = derive_seed(self.cfg.seed, rnd, self.parts.number(self.client), UPLOAD_STREAM)
            ef = fed.compression.upload.error_feedback
            quantized = MaskedUpload(shared, reference, self.state, ef, seed)
        return upload(update, fed.client_weights == "equal", session, inbox, quantized)

    def train(self, rnd: int, message: bytes, inbox: bytes | None = None) -> tuple[dict, bytes]:
        """Training and upload as an engine carries them between processes: (what the server
        is told of the update, the upload)."""
        update = self.trained(rnd, message)
        up = self.upload(rnd, message, update, inbox)
        meta = {
            "num_samples": update.num_samples,
            "num_steps": update.num_steps,
            "metrics": {
                **update.metrics,
                "pid": os.getpid(),
                "device": str(self.parts.runtime.device),
            },
        }
        return meta, up

    def secagg(self, rnd: int, phase: str, payload: bytes) -> bytes:
        """This site's answer in the key protocol; empty: it refuses the request (the server
        then counts it as dropped)."""
        try:
            policy = self.parts.secagg_policy(self.name)
            return client_answer(self.sessions, self.name, rnd, phase, payload, policy)
        except ProtocolError as e:
            log.warning("secure aggregation round %d: %s refused %s: %s", rnd, self.name, phase, e)
            return b""

    def evaluate(self, message: bytes) -> dict:
        """A personalized strategy's model of this site (its part never leaves it), scored."""
        return self.parts.evaluate_personal(wire.unpack(message), self.client)
