"""The server side of a federation: the round loop every engine runs.

Per round: sample clients, send each what the strategy broadcasts, let them train, receive their
uploads, validate each against the strategy's template, aggregate with the strategy, evaluate.
Every message is really serialized (`wire.pack`), so the byte counts are measured, not estimated.
The server knows nothing about models or where clients run: it calls the strategy and
`evaluate`, and a `Transport` carries the bytes to the clients and back (`fedumm.engines`: in
this process, on device workers, through NVIDIA FLARE).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from fedumm.evaluation.metrics import headlines
from fedumm.federation import wire
from fedumm.federation.client import ClientData
from fedumm.federation.compression import CodecError, Compression
from fedumm.federation.compression.masked import WORDS, SharedScale
from fedumm.federation.secure_aggregation import WEIGHT, ProtocolError, ServerSession
from fedumm.federation.strategies.base import Strategy
from fedumm.federation.update import (
    Claims,
    ClientUpdate,
    Params,
    UpdateRejected,
    validate_update,
)
from fedumm.privacy_random import PrivacyRandom
from fedumm.seeding import derive_seed
from fedumm.training import nonfinite

log = logging.getLogger("fedumm")


class Transport(Protocol):
    """How the server reaches its clients; the one seam between the round loop and an engine."""

    def exchange(
        self,
        rnd: int,
        down: bytes,
        clients: list[ClientData],
        inboxes: dict[str, bytes] | None = None,
    ) -> list[tuple[ClientUpdate, bytes]]:
        """Send `down` to each of `clients` (with its secure-aggregation inbox, if any); return
        each answer that arrived: its update (without params) and the uploaded bytes (masked
        under secure aggregation). A client that fails is simply missing."""
        ...

    def secagg(self, rnd: int, phase: str, payloads: dict[str, bytes]) -> dict[str, bytes]:
        """One round trip of secure aggregation's key protocol ('advertise', 'share',
        'unmask'): each client gets its payload and answers with bytes; one that fails, or
        whose answer is refused, is missing."""
        ...

    def evaluate_personal(self, params: Params, clients: list[ClientData]) -> list[dict]:
        """Each of `clients`' metrics for its own model built from the global `params`
        (personalized strategies keep part of the model on the client)."""
        ...

    def close(self) -> None:
        """Release what the transport holds (worker processes, connections)."""
        ...


class RoundFailed(RuntimeError):
    """Fewer valid updates arrived than a round needs; the global model was not changed."""


@dataclass
class RoundRecord:
    round: int
    clients: list[str]
    metrics: dict
    bytes_up: int
    bytes_down: int
    seconds: float
    train_seconds: float
    eval_seconds: float
    client_metrics: dict[str, dict] = field(default_factory=dict)
    rejected: list[dict] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    late: list[str] = field(default_factory=list)
    aborted: str | None = None  # why the round left the global model as it was
    secagg_bytes: int = 0  # of bytes_up + bytes_down: secure aggregation's key protocol

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class RoundRules:
    """How the server treats a round besides sampling: simulated faults, what it admits, and
    secure aggregation."""

    dropout: float = 0.0  # share of the sampled clients that fail (seeded simulation)
    min_clients: int = 1  # fewest valid updates a round may aggregate; fewer stops the run
    max_update_norm: float | None = None  # reject updates further than this from the global
    deadline: float | None = None  # how long the server waits, on the simulated clock...
    duration: Callable[[ClientData], float] | None = None  # ...of a client's local work
    claims: Claims = field(default_factory=Claims)  # what a client may claim of its work
    equal_weights: bool = False  # weigh every client the same, whatever it claims
    secure_threshold: int | None = None  # secure aggregation, with this many survivors needed
    secure_root: bytes | None = None  # signed keys: the root every site's certificate chains to


class Server:
    """The round loop: sampling, validation, aggregation, evaluation, fault handling."""

    def __init__(
        self,
        clients: list[ClientData],
        strategy: Strategy,
        transport: Transport,
        evaluate: Callable[[Params], dict],
        clients_per_round: int,
        seed: int,
        rules: RoundRules | None = None,
        eval_every: int = 1,
        progress: bool = True,
        sampling: str = "random",
        private_sampling: bool = False,
        compression: Compression | None = None,
    ):
        """`transport`: how the clients are reached; `rules`: faults, admission and secure
        aggregation (secure_aggregation.py: the server then learns only the sum); `sampling`:
        how a round's clients are drawn (`sample`), from operating-system randomness with
        `private_sampling` (client-level DP's amplification by sampling needs draws nobody
        can predict); `compression`: what the messages go through on the wire (none: plain)."""
        if sampling not in ("random", "cyclic"):
            raise ValueError(f"client sampling {sampling!r} is neither 'random' nor 'cyclic'")
        if private_sampling and sampling != "random":
            raise ValueError("private sampling draws clients at random; cyclic is predictable")
        self.private_sampling = private_sampling
        rules = rules or RoundRules()
        if rules.deadline is not None and rules.duration is None:
            raise ValueError("a round deadline needs a duration for each client's local work")
        if rules.secure_threshold is not None and not strategy.aggregates_weighted_mean:
            raise ValueError(strategy.secure_aggregation_refusal())
        if clients_per_round > len(clients):
            raise ValueError(f"clients_per_round ({clients_per_round}) > clients ({len(clients)})")
        self.clients = clients
        self.strategy = strategy
        self.transport = transport
        self.evaluate = evaluate
        self.clients_per_round = clients_per_round
        self.sampling = sampling
        self.seed = seed
        self.rules = rules
        self.eval_every = eval_every
        self.progress = progress
        self.compression = compression or Compression()

    @property
    def secure(self) -> bool:
        return self.rules.secure_threshold is not None

    @cached_property
    def shared_scale(self) -> SharedScale | None:
        """Under secure aggregation with int8 / int4 uploads, the scale and modulus every
        client quantizes its change into (compression/masked.py), from what the server and
        the clients alike know: the clients per round and the largest weight one may have."""
        if not self.secure:
            return None
        sizes = (len(c.data) for c in self.clients)
        equal, cap = self.rules.equal_weights, self.rules.claims.max_samples
        upload = self.compression.upload_cfg
        return SharedScale.of(upload, self.clients_per_round, equal, cap, sizes)

    def sample(self, rnd: int) -> list[ClientData]:
        """Round `rnd`'s clients (rounds count from 1), a function of the seed and the round
        only, so a resumed run draws what the uninterrupted one did. `random`: drawn
        uniformly. `cyclic`: the next slice of a seeded shuffle of every client, reshuffled
        each cycle, so each trains once every ceil(clients / per round) rounds; a cycle's
        last, short slice is topped up at random from the cycle's others. Private: drawn
        uniformly by the operating system (not reproducible, nor predictable)."""
        n, k = len(self.clients), self.clients_per_round
        if self.private_sampling:
            return [self.clients[i] for i in PrivacyRandom().choice(n, k)]
        rng = np.random.default_rng(derive_seed(self.seed, rnd, 0xC11E))
        if self.sampling == "random":
            chosen = rng.choice(n, k, replace=False)
        else:
            cycle, slot = divmod(rnd - 1, -(-n // k))
            order = np.random.default_rng(derive_seed(self.seed, cycle, 0xC7C1E)).permutation(n)
            chosen = order[slot * k : (slot + 1) * k]
            if len(chosen) < k:
                extra = rng.choice(order[: slot * k], k - len(chosen), replace=False)
                chosen = np.concatenate([chosen, extra])
        return [self.clients[i] for i in sorted(chosen)]

    def failing(self, rnd: int, sampled: list[ClientData]) -> set[str]:
        """The sampled clients that drop out of round `rnd` (after receiving the model)."""
        count = round(self.rules.dropout * len(sampled))
        rng = np.random.default_rng(derive_seed(self.seed, rnd, 0xD0))
        return {sampled[i].client_id for i in rng.choice(len(sampled), count, replace=False)}

    def run_round(
        self, rnd: int, global_params: Params, evaluate: bool = True
    ) -> tuple[Params, RoundRecord]:
        start = time.perf_counter()
        sampled = self.sample(rnd)
        record = RoundRecord(rnd, [c.client_id for c in sampled], {}, 0, 0, 0.0, 0.0, 0.0)
        dropped = self.failing(rnd, sampled)
        late = self._late(rnd, sampled, dropped)
        secagg = inboxes = None
        if self.secure:  # keys and shares before the task: dropping out later is recoverable
            secagg, inboxes = self._secure_setup(rnd, sampled, record)
            dropped |= {c.client_id for c in sampled} - set(inboxes)
        sent = self.strategy.broadcast(global_params)
        down = self.compression.pack_broadcast(sent, rnd)
        working = [c for c in sampled if c.client_id not in dropped | late]
        t0 = time.perf_counter()
        answers = self.transport.exchange(rnd, down, working, inboxes)
        record.train_seconds = time.perf_counter() - t0
        record.bytes_down += len(down) * len(sampled)
        arrived = {update.client_id for update, _ in answers}
        failed = [c.client_id for c in working if c.client_id not in arrived]
        if failed:
            log.warning("round %d: no answer from %s", rnd, ", ".join(failed))
            dropped |= set(failed)
        reference = self.strategy.upload_reference(sent)  # what a compressed upload adds to
        accepted = self._accepted(rnd, answers, global_params, reference, record)
        record.dropped, record.late = sorted(dropped), sorted(late)
        if len(accepted) < self.rules.min_clients:
            raise RoundFailed(
                f"round {rnd}: {len(accepted)} valid update(s) of {len(sampled)} sampled "
                f"({len(dropped)} dropped out, {len(late)} too late, {len(record.rejected)} "
                f"rejected), fewer than min_clients={self.rules.min_clients}; the global model "
                "is unchanged"
            )
        global_params = self._aggregate(rnd, global_params, accepted, secagg, record, reference)
        t0 = time.perf_counter()
        record.metrics = self.evaluate(global_params) if evaluate else {}
        record.eval_seconds = time.perf_counter() - t0
        record.seconds = time.perf_counter() - start
        return global_params, record

    def _late(self, rnd: int, sampled: list[ClientData], dropped: set[str]) -> set[str]:
        """Stragglers: the clients whose uploads would come after the round's deadline."""
        rules = self.rules
        if rules.deadline is None:
            return set()
        late = {
            c.client_id
            for c in sampled
            if c.client_id not in dropped and rules.duration(c) > rules.deadline
        }
        if late:
            log.info("round %d: %s missed the deadline", rnd, ", ".join(sorted(late)))
        return late

    def _accepted(
        self, rnd: int, answers: list, global_params: Params, reference: Params, record: RoundRecord
    ) -> list[ClientUpdate]:
        """The updates that decode (a compressed one as its change added to `reference`) and
        pass validation; the others are recorded as rejected."""
        accepted = []
        for update, up in answers:
            record.client_metrics[update.client_id] = {**update.metrics, "steps": update.num_steps}
            record.bytes_up += len(up)
            try:
                template = self.strategy.upload_template(global_params, update.client_id)
                update.params = self._receive(update, up, reference, template)  # what it got
                self._validate(update, template)
            except UpdateRejected as e:
                log.warning("round %d: rejected update: %s", rnd, e)
                record.rejected.append({"client_id": update.client_id, "reason": str(e)})
                continue
            if self.rules.equal_weights:
                update.num_samples = 1
            accepted.append(update)
        return accepted

    def _aggregate(
        self,
        rnd: int,
        global_params: Params,
        accepted: list,
        secagg,
        record: RoundRecord,
        reference: Params | None = None,
    ) -> Params:
        """The strategy's new global model; the old one where the round aborts (a protocol
        failure under secure aggregation, or a non-finite result). `reference`: what a
        quantized masked upload is a change from."""
        try:
            if secagg is not None:
                accepted = [
                    self._unmasked_mean(secagg, accepted, global_params, rnd, record, reference)
                ]
            new_params = self.strategy.aggregate(global_params, accepted)
            self._check_finite(new_params)
            return new_params
        except (ProtocolError, UpdateRejected) as e:
            record.aborted = str(e)
            log.error("round %d aborted, the global model stays as it was: %s", rnd, e)
            return global_params

    def _secure_setup(self, rnd: int, sampled: list[ClientData], record: RoundRecord):
        """Rounds 0 and 1 of the protocol: keys advertised, shares routed. Returns the session
        and each sharing client's inbox (who is missing from it dropped before masking)."""
        secagg = ServerSession(rnd, self.rules.secure_threshold, self.rules.secure_root)
        ids = [c.client_id for c in sampled]
        adverts = self.transport.secagg(rnd, "advertise", {cid: b"" for cid in ids})
        roster, listed = secagg.roster(adverts)
        shares = self.transport.secagg(rnd, "share", {cid: roster for cid in listed})
        inboxes = secagg.route(shares)  # they travel with the task
        up = sum(map(len, adverts.values())) + sum(map(len, shares.values()))
        down = len(roster) * len(listed) + sum(map(len, inboxes.values()))
        record.bytes_up, record.bytes_down = record.bytes_up + up, record.bytes_down + down
        record.secagg_bytes += up + down
        return secagg, inboxes

    def _receive(
        self, update: ClientUpdate, up: bytes, reference: Params, template: Params
    ) -> Params:
        """The tensors of `update`'s upload `up`: masked under secure aggregation; compressed
        ones decoded as changes from `reference`, checked against `template`."""
        if not up:
            raise UpdateRejected(
                f"client {update.client_id} withdrew its update (it could not mask or encode "
                "it: see its log)"
            )
        try:
            if self.secure:
                return wire.unpack(up)
            return self.compression.unpack_upload(up, reference, template)
        except CodecError as e:
            raise UpdateRejected(
                f"client {update.client_id}: malformed compressed upload: {e}"
            ) from None
        except Exception as e:  # whatever the bytes were, they were not a message
            raise UpdateRejected(
                f"client {update.client_id}: upload is not a readable message ({e})"
            ) from None

    def _validate(self, update: ClientUpdate, template: Params) -> None:
        """`update` against the strategy's `template` (as the masked form it takes under
        secure aggregation)."""
        shared = self.shared_scale
        if shared is not None:  # one flat vector of integers mod 2^m, the weight last
            template = shared.template(template)
        elif self.secure:  # masked uploads are fixed-point integers, with the weight beside
            template = {
                **{k: v.long() for k, v in template.items()},
                WEIGHT: torch.zeros(1, dtype=torch.long),
            }
        validate_update(update, template, self.rules.max_update_norm, self.rules.claims)
        if shared is not None and not shared.ring.holds(update.params[WORDS]):
            raise UpdateRejected(
                f"client {update.client_id}: a masked word is not below 2^{shared.ring.bits}"
            )

    @staticmethod
    def _check_finite(params: Params) -> None:
        bad = nonfinite(params)
        if bad:
            raise UpdateRejected(
                f"the aggregate has NaN or infinite values in {len(bad)} tensor(s), e.g. {bad[0]!r}"
            )

    def _unmasked_mean(
        self,
        secagg: ServerSession,
        masked: list[ClientUpdate],
        global_params: Params,
        rnd: int,
        record: RoundRecord,
        reference: Params | None = None,
    ) -> ClientUpdate:
        """Round 3 of the protocol: the survivors' shares remove every mask; the server's one
        view of the round is the weighted mean of the survivors' updates, divided by the sum of
        the weights they masked (not by what they claim: the server never sees a weight).
        Quantized uploads (int8 / int4) are changes: their mean is added to `reference`."""
        survivors = [u.client_id for u in masked]
        if len(survivors) < secagg.threshold:
            raise ProtocolError(
                f"{len(survivors)} masked uploads survived, fewer than the "
                f"threshold {secagg.threshold}"
            )
        request = secagg.unmask_request(survivors)
        answers = self.transport.secagg(rnd, "unmask", {cid: request for cid in survivors})
        up, down = sum(map(len, answers.values())), len(request) * len(survivors)
        record.bytes_up, record.bytes_down = record.bytes_up + up, record.bytes_down + down
        record.secagg_bytes += up + down
        uploads, shared = {u.client_id: u.params for u in masked}, self.shared_scale
        if shared is not None:
            words, _ = secagg.unmask_words(uploads, answers, shared.ring)
            template = self.strategy.upload_template(global_params, survivors[0])
            mean, total = shared.mean(words[WORDS], template, reference or {})
        else:
            summed, total = secagg.unmask(uploads, answers)
            if not total > 0:
                raise ProtocolError(
                    f"the survivors' weights sum to {total:g}, not a positive number"
                )
            mean = {k: summed[k] / total for k in summed}
        mean = {k: v.to(global_params[k].dtype) for k, v in mean.items()}
        steps = round(sum(u.num_steps for u in masked) / len(masked))
        return ClientUpdate("secure-aggregate", mean, max(1, round(total)), steps)

    def run(
        self,
        global_params: Params,
        rounds: int,
        first_round: int = 1,
        after_round: Callable[[RoundRecord, Params], None] | None = None,
    ) -> tuple[Params, list[RoundRecord]]:
        """Rounds `first_round`..`rounds` (a resumed run starts later); `after_round` sees each
        finished round (checkpointing hooks in there)."""
        records = []
        bar = tqdm(
            range(first_round, rounds + 1),
            desc="federated rounds",
            unit="round",
            initial=first_round - 1,
            total=rounds,
            disable=not self.progress,
        )
        for rnd in bar:
            evaluate = rnd == rounds or rnd % self.eval_every == 0
            global_params, record = self.run_round(rnd, global_params, evaluate)
            records.append(record)
            if after_round is not None:
                after_round(record, global_params)
            shown = {k.split("_")[0]: f"{record.metrics[k]:.1f}" for k in headlines(record.metrics)}
            if shown:
                bar.set_postfix(shown)
        return global_params, records
