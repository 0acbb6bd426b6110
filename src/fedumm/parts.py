"""What a run builds from its config before any training: the foundation with its LoRA
adapters, the tasks, the clients' partition, the strategy. Every process that takes part builds
the same parts from the same config and seed: the server's and, under NVIDIA FLARE or Flower,
each client's (which then trains on its own data only)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from multiprocessing.connection import Connection
from pathlib import Path

import torch
from torch import nn

from fedumm.clients import Partition, split_clients
from fedumm.config import RunConfig
from fedumm.distributed import ClientProcesses, RankGroup, join, leave, shard_base
from fedumm.federation import wire
from fedumm.federation.adaptive_regularization import middle_layer_keys
from fedumm.federation.attacks import poison
from fedumm.federation.client import ClientData, Federated, local_schedule, local_update
from fedumm.federation.client_states import ClientStates
from fedumm.federation.compression import Compression
from fedumm.federation.identity import Identities
from fedumm.federation.secure_aggregation import ClientPolicy
from fedumm.federation.strategies import FederationContext, build_strategy
from fedumm.federation.strategies.base import Strategy
from fedumm.federation.update import ClientUpdate, Params
from fedumm.models import adapted
from fedumm.models import load as load_model
from fedumm.models.lora import initial_adapters, set_adapter
from fedumm.models.processor import Processor
from fedumm.runtime import Runtime, resolve
from fedumm.seeding import derive_seed, draw_share
from fedumm.tasks import Task, build_tasks
from fedumm.tasks import evaluate as evaluate_tasks
from fedumm.training import Learner

log = logging.getLogger("fedumm")


@dataclass
class RunParts:
    """A run's parts, and what a client does with them: train, evaluate."""

    cfg: RunConfig
    model: nn.Module
    processor: Processor
    rank: int
    fresh: dict[int, Params]  # rank -> fresh adapter, the same on every party
    tasks: dict[str, Task]
    partition: Partition
    strategy: Strategy
    client_states: ClientStates  # stays on each client (e.g. SCAFFOLD's control variate)
    compression: Compression  # what messages go through on the wire, both ways
    malicious: list[str]
    ranks: dict[str, int]  # client -> its own LoRA rank, where ranks differ
    runtime: Runtime  # where the model runs, in what precision
    seconds: dict[str, float]  # how long building it took: model, data, partition
    identities: Identities | None = None  # secure aggregation's signed keys: the sites'
    # runtime.client_devices: on rank 0, the client's other processes; on those, their place
    processes: ClientProcesses | None = None
    group: RankGroup | None = None

    @property
    def clients(self) -> list[ClientData]:
        return self.partition.clients

    @property
    def initial(self) -> Params:
        return self.fresh[self.rank]

    def secagg_policy(self, site: str) -> ClientPolicy:
        """What `site` accepts from the server in secure aggregation: its config's threshold,
        and with signed keys, its identity."""
        secure, fed = self.cfg.federation.secure_aggregation, self.cfg.federation
        return ClientPolicy(
            secure.survivors_needed(fed.sampled_per_round),
            secure.allow_minority,
            self.identities.of(site) if self.identities else None,
        )

    def client(self, site: str) -> ClientData:
        for c in self.clients:
            if c.client_id == site:
                return c
        raise ValueError(f"no client {site!r}: the partition has site-1..site-{len(self.clients)}")

    def evaluate(self, params: Params, image_grid: Path | None = None) -> dict:
        """Metrics of `params` on every task's test set; `image_grid`: where to draw the
        generated images (generation runs)."""
        set_adapter(self.model, params)
        grid = image_grid if "generation" in self.tasks else None
        return evaluate_tasks(
            self.tasks, self.model, self.processor, self.cfg.eval, grid, self.runtime
        )

    def evaluate_personal(self, params: Params, client: ClientData) -> dict:
        """Metrics of `client`'s own model (personalized strategies: part of it is the
        client's state) built from the global `params`. A sharded base evaluates on all of
        the client's processes at once."""
        state = self.client_states[client.client_id]
        sharded = self.cfg.runtime.client_sharding == "fsdp"

        def task():
            return ("evaluate", client.client_id, wire.pack(params), wire.pack(state))

        together = self._together(f"{client.client_id}'s evaluation", task)
        with together if sharded else contextlib.nullcontext():
            return self.evaluate(self.strategy.personal_adapter(params, state))

    def _together(self, what: str, task: Callable[[], tuple]):
        """A context for work every process of a client does at once (see ClientProcesses):
        on rank 0 with the others, on the others as they are; its value is the group."""
        if self.processes is None:
            return contextlib.nullcontext(self.group)
        return self.processes.together(what, task)

    def close(self) -> None:
        """Stop the client's other processes, if it has any."""
        if self.processes is not None:
            self.processes.close()

    def number(self, client: ClientData) -> int:
        """site-k's k: with the round, what seeds a client's training."""
        return self._numbers[client.client_id]

    @cached_property
    def _numbers(self) -> dict[str, int]:  # a lookup, not a scan of 100,000 clients
        return {c.client_id: k for k, c in enumerate(self.clients, start=1)}

    def train_client(self, client: ClientData, message: Params, rnd: int) -> ClientUpdate:
        """A client's local work in round `rnd`, seeded by the round and the client."""
        cfg, fed, cid = self.cfg, self.cfg.federation, client.client_id
        seed = derive_seed(cfg.seed, rnd, self.number(client))
        steps, lr = fed.steps_for(len(client.data)), fed.lr_at((rnd - 1) / fed.rounds)
        initial = self.fresh[self.ranks.get(cid, self.rank)]
        state = self.client_states[cid]

        def task():
            return ("train", rnd, cid, wire.pack(message), wire.pack(state))

        with self._together(f"{cid}'s training", task) as group:
            p = self.processor
            update = local_update(
                Learner(self.model, p.collate, p.loss, self.runtime, group),
                client,
                message,
                local_schedule(fed, steps, seed, lr),
                Federated.of(fed, self.strategy, state, initial),
            )
        if group is not None:
            update.metrics["processes"] = group.world
        if cid in self.malicious:
            attack = cfg.attack
            update.params = poison(update.params, message, attack.kind, attack.magnitude, seed)
        return update


def build_parts(cfg: RunConfig) -> RunParts:
    """Foundation + LoRA, tasks, the clients' partition, the strategy: all from `cfg` and its
    seed, so every process that builds them gets the same."""
    runtime = resolve(cfg.runtime)  # a device that is not there: refused before any work
    start = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    loaded = load_model(cfg.model, runtime)
    lora = cfg.lora
    model, rank = adapted(loaded, lora, cfg.seed), lora.r if lora else 0
    fresh = initial_adapters(model)
    reg = cfg.federation.adaptive_regularization
    if reg.enabled:  # refuse a layer range the model does not have before any work
        middle_layer_keys(list(fresh[rank]), loaded.num_layers, reg.skip_layers)
    seconds = {"model": time.perf_counter() - start}
    tasks = build_tasks(cfg, loaded.processor)
    seconds["data"] = time.perf_counter() - start - seconds["model"]
    _warn_of_skipped_images(tasks)
    split = split_clients(cfg, tasks)
    seconds["partition"] = time.perf_counter() - start - seconds["model"] - seconds["data"]
    ids = [c.client_id for c in split.clients]
    ranks = dict(zip(ids, (lora and lora.client_ranks) or ()))
    strategy = _strategy(cfg, len(ids), ranks)
    malicious = []
    if cfg.attack.kind != "none":
        malicious = draw_share(ids, cfg.attack.fraction, derive_seed(cfg.seed, 0xBAD))
    secure = cfg.federation.secure_aggregation
    identities = (
        Identities(secure.identities, ids) if secure.enabled and secure.signed_keys else None
    )
    return RunParts(
        cfg=cfg,
        model=model,
        processor=loaded.processor,
        rank=rank,
        fresh=fresh,
        tasks=tasks,
        partition=split,
        strategy=strategy,
        client_states=ClientStates(),
        compression=Compression(cfg.federation.compression, cfg.seed),
        malicious=malicious,
        ranks=ranks,
        runtime=runtime,
        seconds=seconds,
        identities=identities,
        processes=ClientProcesses(cfg.model_dump_json(), cfg.runtime, model, serve_rank)
        if cfg.runtime.client_processes > 1
        else None,
    )


def serve_rank(
    config_json: str,
    rank: int,
    devices: list[str],
    port: int,
    timeout: int,
    threads: int,
    conn: Connection,
) -> None:
    """Rank `rank` of a client trained by several processes (fedumm.distributed.Peers starts
    it): builds the parts rank 0 built, on its own device, joins the group, and trains (or,
    with a sharded base, evaluates) each client rank 0 names, on its share of each batch; its
    results stay here, as rank 0 holds the same. Ends when told to stop, when rank 0 is gone,
    or when the group fails (rank 0 then reports the client failed)."""
    try:
        torch.set_num_threads(threads)
        cfg = RunConfig.model_validate_json(config_json)
        runtime = cfg.runtime.model_copy(update={"device": devices[rank]})
        parts = build_parts(cfg.model_copy(update={"runtime": runtime}))
        conn.send(("ready",))
        join(rank, len(devices), port, [torch.device(d) for d in devices], timeout)
        sharded = cfg.runtime.client_sharding == "fsdp"
        parts.processes = None  # rank 0 has them
        parts.group = RankGroup(rank, len(devices), sharded, parts.runtime.device)
        if parts.group.sharded:
            shard_base(parts.model, parts.runtime.device)
        while (task := conn.recv())[0] != "stop":
            kind, *given = task
            if kind == "train":
                rnd, cid, message, state = given
                parts.client_states[cid] = wire.unpack(state)
                parts.train_client(parts.client(cid), wire.unpack(message), rnd)
            else:  # "evaluate"
                cid, params, state = given
                parts.client_states[cid] = wire.unpack(state)
                parts.evaluate_personal(wire.unpack(params), parts.client(cid))
            del parts.client_states[cid]  # rank 0 keeps it
    except (EOFError, KeyboardInterrupt):  # rank 0 is gone
        return
    except RuntimeError as e:  # the group failed: rank 0 says so, with this rank's exit code
        log.error("rank %d: %s", rank, str(e).strip().splitlines()[0] if str(e) else e)
        raise SystemExit(1) from None
    finally:
        leave()


def _strategy(cfg: RunConfig, num_clients: int, ranks: dict[str, int]) -> Strategy:
    """The configured strategy, told what it needs of the federation."""
    fed, lora = cfg.federation, cfg.lora
    context = FederationContext(
        num_clients,
        lora.alpha if lora else 1.0,
        ranks,
        cfg.seed,
        fed.seeded_privacy_noise,
        fed.client_sampling,
    )
    return build_strategy(fed.strategy.name, context, **fed.strategy.hyperparameters())


def _warn_of_skipped_images(tasks: dict[str, Task]) -> None:
    for name, task in tasks.items():
        skipped = task.summary().get("skipped_images")
        if skipped:
            log.warning(
                "%s: %d image(s) could not be decoded and were left out, e.g. %s",
                name,
                len(skipped),
                ", ".join(skipped[:3]),
            )
