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
from typing import Protocol

import numpy as np
from tqdm.auto import tqdm

from fedumm.evaluation.metrics import headlines
from fedumm.federation import secure_aggregation, wire
from fedumm.federation.client import ClientData
from fedumm.federation.strategies.base import Strategy
from fedumm.federation.update import ClientUpdate, Params, UpdateRejected, validate_update
from fedumm.seeding import derive_seed

log = logging.getLogger("fedumm")


class Transport(Protocol):
    """How the server reaches its clients; the one seam between the round loop and an engine."""

    def exchange(
        self, rnd: int, down: bytes, clients: list[ClientData], cohort: list[ClientData]
    ) -> list[tuple[ClientUpdate, bytes]]:
        """Send `down` to each of `clients` (the members of `cohort`, the round's sample, that
        do not drop out); return each answer that arrived: its update (without params) and
        the uploaded bytes. A client that fails is simply missing."""
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

    def to_dict(self) -> dict:
        return asdict(self)


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
        eval_every: int = 1,
        progress: bool = True,
        dropout: float = 0.0,
        min_clients: int = 1,
        max_update_norm: float | None = None,
        secure: bool = False,
        deadline: float | None = None,
        duration: Callable[[ClientData], float] | None = None,
    ):
        """`transport`: how the clients are reached. `dropout`: share of the sampled clients
        that fail each round (seeded simulation);
        `min_clients`: fewest valid updates a round may aggregate; `max_update_norm`: updates
        further than this from the global adapter are rejected; `secure`: clients upload
        pairwise-masked updates and the server only sees their sum (secure_aggregation.py);
        `deadline`: how long the server waits for uploads, on the simulated clock `duration`
        (a client's time for its local work): later ones are stragglers and are left out."""
        if deadline is not None and duration is None:
            raise ValueError("a round deadline needs a duration for each client's local work")
        if secure and not strategy.aggregates_weighted_mean:
            raise ValueError(strategy.secure_aggregation_refusal())
        if clients_per_round > len(clients):
            raise ValueError(f"clients_per_round ({clients_per_round}) > clients ({len(clients)})")
        self.clients = clients
        self.strategy = strategy
        self.transport = transport
        self.evaluate = evaluate
        self.clients_per_round = clients_per_round
        self.seed = seed
        self.eval_every = eval_every
        self.progress = progress
        self.dropout = dropout
        self.min_clients = min_clients
        self.max_update_norm = max_update_norm
        self.secure = secure
        self.deadline = deadline
        self.duration = duration

    def sample(self, rnd: int) -> list[ClientData]:
        rng = np.random.default_rng(derive_seed(self.seed, rnd, 0xC11E))
        chosen = rng.choice(len(self.clients), self.clients_per_round, replace=False)
        return [self.clients[i] for i in sorted(chosen)]

    def failing(self, rnd: int, sampled: list[ClientData]) -> set[str]:
        """The sampled clients that drop out of round `rnd` (after receiving the model)."""
        count = round(self.dropout * len(sampled))
        rng = np.random.default_rng(derive_seed(self.seed, rnd, 0xD0))
        return {sampled[i].client_id for i in rng.choice(len(sampled), count, replace=False)}

    def run_round(
        self, rnd: int, global_params: Params, evaluate: bool = True
    ) -> tuple[Params, RoundRecord]:
        start = time.perf_counter()
        sampled = self.sample(rnd)
        dropped = self.failing(rnd, sampled)
        late = set()
        if self.deadline is not None:  # stragglers: their uploads would arrive after the deadline
            late = {c.client_id for c in sampled
                    if c.client_id not in dropped and self.duration(c) > self.deadline}  # fmt: skip
            if late:
                log.info("round %d: %s missed the deadline", rnd, ", ".join(sorted(late)))
        down = wire.pack(self.strategy.broadcast(global_params))
        working = [c for c in sampled if c.client_id not in dropped | late]
        t0 = time.perf_counter()
        answers = self.transport.exchange(rnd, down, working, sampled)
        train_seconds = time.perf_counter() - t0
        arrived = {update.client_id for update, _ in answers}
        failed = [c.client_id for c in working if c.client_id not in arrived]
        if failed:
            log.warning("round %d: no answer from %s", rnd, ", ".join(failed))
            dropped |= set(failed)
        accepted, rejected, client_metrics, bytes_up = [], [], {}, 0
        for update, up in answers:
            client_metrics[update.client_id] = {**update.metrics, "steps": update.num_steps}
            bytes_up += len(up)
            try:
                update.params = self._receive(update, up)  # the server works on what it got
                self._validate(update, global_params)
            except UpdateRejected as e:
                log.warning("round %d: rejected update: %s", rnd, e)
                rejected.append({"client_id": update.client_id, "reason": str(e)})
                continue
            accepted.append(update)
        if len(accepted) < self.min_clients:
            raise RoundFailed(
                f"round {rnd}: {len(accepted)} valid update(s) of {len(sampled)} sampled "
                f"({len(dropped)} dropped out, {len(late)} too late, {len(rejected)} rejected), "
                f"fewer than "
                f"min_clients={self.min_clients}; the global model is unchanged"
            )
        if self.secure:
            accepted = [self._unmasked_mean(accepted, rejected, global_params, rnd)]
        global_params = self.strategy.aggregate(global_params, accepted)
        t0 = time.perf_counter()
        metrics = self.evaluate(global_params) if evaluate else {}
        eval_seconds = time.perf_counter() - t0
        record = RoundRecord(
            round=rnd,
            clients=[c.client_id for c in sampled],
            metrics=metrics,
            bytes_up=bytes_up,
            bytes_down=len(down) * len(sampled),
            seconds=time.perf_counter() - start,
            train_seconds=train_seconds,
            eval_seconds=eval_seconds,
            client_metrics=client_metrics,
            rejected=rejected,
            dropped=sorted(dropped),
            late=sorted(late),
        )
        return global_params, record

    @staticmethod
    def _receive(update: ClientUpdate, up: bytes) -> Params:
        try:
            return wire.unpack(up)
        except Exception as e:  # whatever the bytes were, they were not a message
            raise UpdateRejected(
                f"client {update.client_id}: upload is not a readable message ({e})"
            ) from None

    def _validate(self, update: ClientUpdate, global_params: Params) -> None:
        template = self.strategy.upload_template(global_params, update.client_id)
        if self.secure:  # masked uploads are fixed-point integers
            template = {k: v.long() for k, v in template.items()}
        validate_update(update, template, self.max_update_norm)

    def _unmasked_mean(self, masked: list[ClientUpdate], rejected: list, global_params: Params,
                       rnd: int) -> ClientUpdate:  # fmt: skip
        """The server's one view of a securely aggregated round: the weighted mean."""
        if rejected:
            raise RoundFailed(f"round {rnd}: a masked update was rejected, so the masks of the "
                              "others no longer cancel; the global model is unchanged")  # fmt: skip
        total = sum(u.num_samples for u in masked)
        summed = secure_aggregation.unmask_sum([u.params for u in masked])
        mean = {k: (summed[k] / total).to(global_params[k].dtype) for k in summed}
        steps = round(sum(u.num_steps for u in masked) / len(masked))
        return ClientUpdate("secure-aggregate", mean, total, steps)

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
        bar = tqdm(range(first_round, rounds + 1), desc="federated rounds", unit="round",
                   initial=first_round - 1, total=rounds, disable=not self.progress)  # fmt: skip
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
