"""One federated experiment from a RunConfig: the recipe `fedumm run` executes.

Components are composed explicitly, in the order a reader would explain them: data, partition,
foundation + LoRA, baselines (zero-shot, local-only, centralized), federation, results.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from fedumm.config import PartitionConfig, RunConfig, without_retired
from fedumm.data import partition
from fedumm.data.modality import IMAGE_TEXT, MODALITIES, assign_modalities, modality_counts
from fedumm.evaluation.metrics import spread
from fedumm.federation import checkpoint, wire
from fedumm.federation.adaptive_regularization import middle_layer_keys
from fedumm.federation.attacks import poison
from fedumm.federation.client import ClientData, local_update, site_names
from fedumm.federation.client_states import ClientStates
from fedumm.federation.identity import Identities
from fedumm.federation.secure_aggregation import ClientPolicy
from fedumm.federation.server import RoundRules, Server, Transport
from fedumm.federation.strategies import FederationContext, build_strategy
from fedumm.federation.strategies.base import Strategy
from fedumm.federation.strategies.dp_fedavg import privacy_spent
from fedumm.federation.update import Claims, ClientUpdate, Params
from fedumm.models import adapted, identity, load_processor
from fedumm.models import load as load_model
from fedumm.models.hf import RANDOM_MARK
from fedumm.models.lora import full_state, initial_adapters, set_adapter
from fedumm.models.processor import Encoded, Processor
from fedumm.partition_report import SUMMARY_CLIENTS, plot_partitions
from fedumm.report import dump_json, write_report
from fedumm.runtime import Runtime, resolve, worker_devices
from fedumm.seeding import derive_seed, draw_share
from fedumm.tasks import ClassificationTask, Task, build_tasks
from fedumm.tasks import evaluate as evaluate_tasks
from fedumm.tracking import Tracker, open_tracker
from fedumm.trained import save_run_model

log = logging.getLogger("fedumm")


def split_pool(
    cfg: PartitionConfig, labels: list[str], num_clients: int, rng: np.random.Generator
) -> tuple[list[np.ndarray], dict]:
    """One task's pool split over `num_clients` by the configured scheme, and what the split
    had to repair to give every client `min_samples` (Dirichlet only; else empty)."""
    if cfg.scheme == "iid":
        return partition.iid(len(labels), num_clients, rng), {}
    if cfg.scheme == "quantity":
        parts = partition.quantity_skew(
            len(labels),
            num_clients,
            rng,
            cfg.quantity_law,
            cfg.alpha,
            cfg.power_exponent,
            cfg.min_samples,
        )
        return parts, {}
    if cfg.scheme == "shards":
        return partition.pathological_shards(labels, num_clients, cfg.shards_per_client, rng), {}
    return partition.dirichlet_label_skew(labels, num_clients, cfg.alpha, rng, cfg.min_samples)


@dataclass
class Partition:
    """How the data is spread: each client's samples, and where they came from."""

    clients: list[ClientData]
    indices: dict[str, list[np.ndarray]]  # task -> per client, indices into the task's pool
    modalities: list[np.ndarray] | None  # per client, what each classification sample keeps
    pooled: list[Encoded]  # every pool as the clients hold it: the centralized baseline's data
    repaired: dict[str, dict]  # task -> what its split moved to give every client min_samples


def split_clients(cfg: RunConfig, tasks: dict[str, Task]) -> Partition:
    """Each task's pool split over the clients that hold it (by its own label); a client's
    data is the union of its shares. Classification samples then keep the modalities the
    configured scenario gives them (partition.modality)."""
    k = cfg.federation.num_clients
    data: list[list[Encoded]] = [[] for _ in range(k)]
    indices: dict[str, list[np.ndarray]] = {}
    modalities, pooled, repaired = None, [], {}
    for number, (name, task) in enumerate(tasks.items()):
        holders = [i for i in range(k) if cfg.holds(i, name)]
        stream = (0xDA7A,) if number == 0 else (0xDA7A, number)  # first: as before tasks existed
        rng = np.random.default_rng(derive_seed(cfg.seed, *stream))
        shares, note = split_pool(cfg.partition, task.labels, len(holders), rng)
        if note.get("repaired_clients"):
            repaired[name] = note
        train = task.train
        if name == "classification":
            modalities, train = _apply_modalities(cfg, task, holders, shares)
        indices[name] = [np.array([], dtype=int) for _ in range(k)]
        for i, share in zip(holders, shares):
            indices[name][i] = share
            data[i].extend(train[j] for j in share)
        pooled.extend(train)
    clients = [ClientData(site, d) for site, d in zip(site_names(k), data)]
    return Partition(clients, indices, modalities, pooled, repaired)


def _apply_modalities(
    cfg: RunConfig, task: ClassificationTask, holders: list[int], shares: list[np.ndarray]
) -> tuple[list[np.ndarray], list[Encoded]]:
    """Per client, the modality each of its samples keeps; and the pool encoded that way."""
    m = cfg.partition.modality
    rng = np.random.default_rng(derive_seed(cfg.seed, 0x40DA))
    kept = assign_modalities(
        m.scenario,
        [len(s) for s in shares],
        rng,
        m.drop_probability,
        m.image_only_clients,
        m.presence_probability,
    )
    per_client = [np.array([], dtype=str) for _ in range(cfg.federation.num_clients)]
    pool = np.full(len(task.labels), IMAGE_TEXT, dtype=object)
    for i, share, codes in zip(holders, shares, kept):
        per_client[i] = codes
        pool[share] = codes
    return per_client, task.train_as(pool)


@dataclass
class Federation:
    """What a run builds from its config: the same in every process that takes part, the
    server's and, under NVIDIA FLARE, each client's (which then trains on its own data only)."""

    cfg: RunConfig
    model: nn.Module
    processor: Processor
    rank: int
    fresh: dict[int, Params]  # rank -> fresh adapter, the same on every party
    tasks: dict[str, Task]
    partition: Partition
    strategy: Strategy
    client_states: ClientStates  # stays on each client (e.g. SCAFFOLD's control variate)
    malicious: list[str]
    ranks: dict[str, int]  # client -> its own LoRA rank, where ranks differ
    runtime: Runtime  # where the model runs, in what precision
    seconds: dict[str, float]  # how long building it took: model, data, partition
    identities: Identities | None = None  # secure aggregation's signed keys: the sites'

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
        client's state) built from the global `params`."""
        state = self.client_states[client.client_id]
        return self.evaluate(self.strategy.personal_adapter(params, state))

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
        update = local_update(
            self.model,
            client,
            message,
            fed,
            seed,
            self.processor.collate,
            self.strategy,
            self.client_states[cid],
            self.fresh[self.ranks.get(cid, self.rank)],
            lr=fed.lr_at((rnd - 1) / fed.rounds),
            runtime=self.runtime,
            loss_fn=self.processor.loss,
        )
        if cid in self.malicious:
            attack = cfg.attack
            update.params = poison(update.params, message, attack.kind, attack.magnitude, seed)
        return update


def build_federation(cfg: RunConfig) -> Federation:
    """Foundation + LoRA, tasks, the clients' partition, the strategy: all from `cfg` and its
    seed, so every process that builds it gets the same."""
    runtime = resolve(cfg.runtime)  # a device that is not there: refused before any work
    start = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    loaded = load_model(cfg.model, runtime)
    processor, lora = loaded.processor, cfg.lora
    model, rank = adapted(loaded, lora, cfg.seed), lora.r if lora else 0
    fresh = initial_adapters(model)
    reg = cfg.federation.adaptive_regularization
    if reg.enabled:  # refuse a layer range the model does not have before any work
        middle_layer_keys(list(fresh[rank]), loaded.num_layers, reg.skip_layers)
    seconds = {"model": time.perf_counter() - start}
    tasks = build_tasks(cfg, processor)
    seconds["data"] = time.perf_counter() - start - seconds["model"]
    for name, task in tasks.items():
        skipped = task.summary().get("skipped_images")
        if skipped:
            log.warning(
                "%s: %d image(s) could not be decoded and were left out, e.g. %s",
                name,
                len(skipped),
                ", ".join(skipped[:3]),
            )
    split = split_clients(cfg, tasks)
    seconds["partition"] = time.perf_counter() - start - seconds["model"] - seconds["data"]
    clients = split.clients
    ids = [c.client_id for c in clients]
    ranks = dict(zip(ids, (lora and lora.client_ranks) or ()))
    fed = cfg.federation
    context = FederationContext(
        len(clients),
        lora.alpha if lora else 1.0,
        ranks,
        cfg.seed,
        fed.seeded_privacy_noise,
        fed.client_sampling,
    )
    strategy = build_strategy(fed.strategy.name, context, **fed.strategy.hyperparameters())
    malicious = []
    if cfg.attack.kind != "none":
        malicious = draw_share(ids, cfg.attack.fraction, derive_seed(cfg.seed, 0xBAD))
    secure = fed.secure_aggregation
    identities = (
        Identities(secure.identities, ids) if secure.enabled and secure.signed_keys else None
    )
    return Federation(
        cfg,
        model,
        processor,
        rank,
        fresh,
        tasks,
        split,
        strategy,
        ClientStates(),
        malicious,
        ranks,
        runtime,
        seconds,
        identities,
    )


Connect = Callable[[Federation], Transport]


def run_experiment(
    cfg: RunConfig,
    out_dir: Path,
    connect: Connect,
    progress: bool = True,
    resume: bool = False,
    force: bool = False,
    engine_info: dict | None = None,
) -> dict:
    """Run zero-shot, federated, local-only and centralized, write results; return them.

    `connect` gives the transport through which the server reaches the clients (the engine:
    `fedumm.engines`). With `resume`, continue from the checkpoint in `out_dir` (its config
    must equal `cfg` unless `force`); the results are those an uninterrupted run would have
    written. `engine_info`: what the engine adds to results.json (e.g. its server's pid)."""
    start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fl = build_federation(cfg)
    transport = connect(fl)
    tracker, failed = open_tracker(cfg.tracking, out_dir, resume), True
    try:
        results = _run(
            fl, out_dir, transport, tracker, progress, resume, force, start, engine_info or {}
        )
        failed = False
        return results
    finally:
        tracker.close(failed)
        transport.close()


def _run(
    fl: Federation,
    out_dir: Path,
    transport: Transport,
    tracker: Tracker,
    progress: bool,
    resume: bool,
    force: bool,
    start: float,
    engine_info: dict,
) -> dict:
    cfg = fl.cfg
    model, processor, tasks, clients = fl.model, fl.processor, fl.tasks, fl.clients
    strategy, client_states, initial = fl.strategy, fl.client_states, fl.initial
    fed = cfg.federation
    ids = [c.client_id for c in clients]
    slow = set(draw_share(ids, fed.stragglers, derive_seed(cfg.seed, 0x510)))
    client_states.keep_on_disk(out_dir / "client_states")  # memory: the sampled clients' only

    def duration(client: ClientData) -> float:
        """Simulated time of a client's local work, in nominal steps."""
        steps = fed.steps_for(len(client.data))
        return steps * (fed.straggler_slowdown if client.client_id in slow else 1.0)

    def evaluate_adapter(params, grid: str | None = None) -> dict:
        """Metrics of `params` on every task; `grid` names a PNG of generated images to write."""
        return fl.evaluate(params, out_dir / f"generated_{grid}.png" if grid else None)

    def evaluate(params) -> dict:
        if not strategy.personalized:
            return evaluate_adapter(params)
        # Each client's own model on the test set, averaged: what a personalized method delivers.
        return spread([{"metrics": m} for m in transport.evaluate_personal(params, clients)])

    def train_alone(client: ClientData, steps: int, seed: int, bar, grid=None) -> dict:
        """Plain local training from the fresh adapter (the baselines do not federate)."""
        update = local_update(
            model,
            client,
            initial,
            fed,
            seed,
            processor.collate,
            steps=steps,
            on_step=lambda step, loss: bar.update(),
            lr=lambda step: fed.lr_at(step / steps, cfg.baselines.lr),
            runtime=fl.runtime,
            loss_fn=processor.loss,
        )
        return evaluate_adapter(update.params, grid)

    results: dict = {
        "config": cfg.model_dump(),
        "model": {"family": processor.family_name, **identity(cfg.model)},
        "runtime": fl.runtime.describe(),
        "baselines": {},
    }
    tracker.start(results["config"])
    random = getattr(model.config, RANDOM_MARK, None)
    if random:  # `fedumm random-model`: the report says so
        results["model"]["random_weights"] = random
    if cfg.runtime.devices is not None:  # the round's clients trained in parallel on these
        results["runtime"]["devices"] = [str(d) for d in worker_devices(cfg.runtime)]
    if fl.malicious:
        results["attack"] = {
            "kind": cfg.attack.kind,
            "magnitude": cfg.attack.magnitude,
            "clients": fl.malicious,
        }
    rounds: list[dict] = []
    global_params, first_round = initial, 1
    if resume:
        ck = checkpoint.load(out_dir)
        if not _same_run(ck.config, cfg) and not force:
            raise checkpoint.CheckpointError(
                f"{out_dir} was run with another config; resume with the same config (or force it)"
            )
        global_params, first_round, rounds = ck.global_params, ck.round + 1, ck.records
        strategy.load_state_dict(ck.strategy_state)
        client_states.restore(ck.client_states)
        results["baselines"] = ck.extra["baselines"]
        torch.set_rng_state(ck.rng_state)
        log.info("resuming %s after round %d", out_dir, ck.round)
    elif cfg.baselines.zero_shot:
        results["baselines"]["zero_shot"] = {"metrics": evaluate_adapter(initial, "zero_shot")}

    def after_round(record, params) -> None:
        rounds.append(record.to_dict())
        tracker.log_round(rounds[-1])
        every = cfg.checkpoint_every
        if every and (record.round % every == 0 or record.round == fed.rounds):
            states = client_states.snapshot()
            checkpoint.save(
                out_dir,
                checkpoint.Checkpoint(
                    record.round,
                    results["config"],
                    params,
                    strategy.state_dict(),
                    states,
                    rounds,
                    {"baselines": results["baselines"]},
                ),
            )
            client_states.pinned(states)

    secure = fed.secure_aggregation
    rules = RoundRules(
        dropout=fed.dropout,
        min_clients=fed.min_clients,
        max_update_norm=fed.max_update_norm,
        deadline=fed.round_deadline,
        duration=duration,
        claims=_claims(fed, clients),
        equal_weights=fed.client_weights == "equal",
        secure_threshold=secure.survivors_needed(fed.sampled_per_round) if secure.enabled else None,
        secure_root=fl.identities.root if fl.identities else None,
    )
    private = (
        fed.strategy.name == "dp_fedavg"
        and not fed.seeded_privacy_noise
        and fed.client_sampling == "random"
    )  # (cyclic is accounted with q = 1)
    server = Server(
        clients,
        strategy,
        transport,
        evaluate,
        fed.sampled_per_round,
        cfg.seed,
        rules,
        cfg.eval.every,
        progress,
        fed.client_sampling,
        private,
    )
    final_params, _ = server.run(global_params, fed.rounds, first_round, after_round)
    if "generation" in tasks:  # the federated model's pictures, next to the baselines'
        set_adapter(model, final_params)
        with fl.runtime.autocast():
            tasks["generation"].evaluate(
                model, processor, cfg.eval, out_dir / "generated_federated.png"
            )
    results["rounds"] = rounds
    results["final"] = {"metrics": rounds[-1]["metrics"]}
    if fed.dp_sgd.enabled:
        results["dp_sgd"] = _sample_level_privacy(fed, clients, rounds)
    results.update(strategy.summary(fed.sampled_per_round))

    if cfg.baselines.local:
        if len(clients) > 1000:  # cross-device populations: hours of training nobody asked for
            log.warning(
                "the local-only baseline trains each of the %d clients alone; "
                "baselines.local=false skips it",
                len(clients),
            )
        # Each client alone, for the steps it spends in the federation on average: it is
        # sampled in a share sampled/num_clients of the rounds (all of them by default).
        share = fed.sampled_per_round / fed.num_clients
        budgets = [math.ceil(fed.rounds * share * fed.steps_for(len(c.data))) for c in clients]
        with tqdm(
            total=sum(budgets), desc="local-only baseline", unit="step", disable=not progress
        ) as bar:
            per_client = []
            for c, steps in zip(clients, budgets):
                seed = derive_seed(cfg.seed, 0, fl.number(c))
                grid = "local_" + c.client_id if c is clients[0] else None
                per_client.append(
                    {"client_id": c.client_id, "metrics": train_alone(c, steps, seed, bar, grid)}
                )
        results["baselines"]["local"] = {"metrics": spread(per_client), "clients": per_client}

    if cfg.baselines.centralized:
        # Equal compute: as many steps of the same batch size as all federated clients took.
        pooled = ClientData("centralized", fl.partition.pooled)
        steps = sum(m["steps"] for r in rounds for m in r["client_metrics"].values())
        with tqdm(
            total=steps, desc="centralized baseline", unit="step", disable=not progress
        ) as bar:
            results["baselines"]["centralized"] = {
                "metrics": train_alone(
                    pooled, steps, derive_seed(cfg.seed, 0xCE), bar, "centralized"
                )
            }

    results["communication"] = _communication(initial, full_state(model), rounds)
    results["partition"] = _partition_summary(cfg, tasks, fl.partition)
    results["data"] = {name: task.summary() for name, task in tasks.items()}
    results["wall_seconds"] = time.perf_counter() - start
    results["setup_seconds"] = fl.seconds  # where the time before round 1 went
    results.update(engine_info)
    (out_dir / "results.json").write_text(dump_json(results))
    (out_dir / "global_adapter.safetensors").write_bytes(wire.pack(final_params))
    personal = ()
    if strategy.personalized and cfg.engine == "embedded":  # under FLARE it stays on the sites
        # every client that trained (one that never did holds the global model), one at a time
        personal = (
            (cid, strategy.personal_adapter(final_params, client_states[cid]))
            for cid in list(client_states)
        )
    save_run_model(model, processor, cfg, final_params, out_dir, personal)
    write_report(results, out_dir)
    tracker.finish(results, out_dir)
    return results


def _claims(fed, clients: list[ClientData]) -> Claims:
    """What a client may claim of its work (federation.client_weights): the server knows the
    partition, or caps the claims, or weighs every client the same."""
    sizes = {c.client_id: len(c.data) for c in clients}
    if fed.client_weights == "partition":
        return Claims(samples=sizes.__getitem__, max_steps=lambda cid: fed.steps_for(sizes[cid]))
    if fed.client_weights == "capped":
        most = fed.steps_for(fed.max_claimed_samples)
        return Claims(max_samples=fed.max_claimed_samples, max_steps=lambda cid: most)
    return Claims(max_steps=None if fed.local_epochs else lambda cid: fed.local_steps)


def _same_run(stored: dict, cfg: RunConfig) -> bool:
    """Whether a checkpoint's config is `cfg`, up to where and how the model runs (`runtime`)
    and where its numbers are tracked: a run stopped for lack of memory resumes with settings
    that need less."""
    try:
        before = RunConfig.model_validate(without_retired(stored))
    except ValueError:
        return False
    where = {"runtime", "tracking"}
    return before.model_dump(exclude=where) == cfg.model_dump(exclude=where)


def _sample_level_privacy(fed, clients: list[ClientData], records: list[dict]) -> dict:
    """Each client's (epsilon, delta) after the DP-SGD steps it took, sampling rate B / n."""
    dp = fed.dp_sgd
    steps = {c.client_id: 0 for c in clients}
    for r in records:
        for cid, m in r["client_metrics"].items():
            steps[cid] += m["steps"]
    sizes = {c.client_id: len(c.data) for c in clients}
    epsilon = {
        cid: privacy_spent(
            dp.noise_multiplier, min(1.0, fed.batch_size / sizes[cid]), n, dp.target_delta
        )
        if n
        else 0.0
        for cid, n in steps.items()
    }

    def finite(e: float) -> float | None:  # None: no guarantee (no noise)
        return e if math.isfinite(e) else None

    return {
        "clip_norm": dp.clip_norm,
        "noise_multiplier": dp.noise_multiplier,
        "delta": dp.target_delta,
        "epsilon": finite(max(epsilon.values())),
        "per_client": {
            cid: {"steps": steps[cid], "epsilon": finite(e)} for cid, e in epsilon.items()
        },
    }


def _communication(adapter: dict, full: dict, records: list) -> dict:
    """Measured adapter traffic against what full fine-tuning would serialize for the same
    messages: one full model down and one up for every client of every round."""
    full_bytes = wire.num_bytes(full)
    per_round = float(np.mean([r["bytes_up"] + r["bytes_down"] for r in records]))
    full_per_round = float(np.mean([2 * full_bytes * len(r["clients"]) for r in records]))
    return {
        "adapter_message_bytes": wire.num_bytes(adapter),
        "full_model_message_bytes": full_bytes,
        "adapter_bytes_per_round": per_round,
        "full_finetune_bytes_per_round": full_per_round,
        "ratio": full_per_round / per_round,
        "total_bytes": int(sum(r["bytes_up"] + r["bytes_down"] for r in records)),
        "trainable_parameters": sum(v.numel() for v in adapter.values()),
        "total_parameters": sum(v.numel() for v in full.values()),
    }


def _partition_summary(cfg: RunConfig, tasks: dict[str, Task], split: Partition) -> dict:
    """Per client and task: samples, label counts, modalities kept. Up to SUMMARY_CLIENTS
    clients one object each (easy to read); beyond, arrays (compact at 100,000 clients)."""
    keys = {
        "vqa": cfg.partition.key,
        "generation": cfg.partition.generation_key,
        "classification": "class",
    }
    counts = {
        name: partition.label_counts(t.labels, split.indices[name]) for name, t in tasks.items()
    }
    kept = None
    if split.modalities is not None:
        kept = np.array([list(modality_counts(m).values()) for m in split.modalities])
    summary = {
        "scheme": cfg.partition.scheme,
        "alpha": cfg.partition.alpha if cfg.partition.scheme == "dirichlet" else None,
        "description": cfg.partition.describe(),
        "keys": {name: keys[name] for name in tasks},
        "labels": {name: c.labels for name, c in counts.items()},
    }
    if split.repaired:  # a Dirichlet draw that left clients short was mended: say how much
        summary["repaired"] = {
            name: {"clients": note["repaired_clients"], "samples_moved": note["moved_samples"]}
            for name, note in split.repaired.items()
        }
    if split.modalities is not None:
        summary["modality"] = cfg.partition.modality.describe()
    sizes = [len(c.data) for c in split.clients]
    if len(sizes) > SUMMARY_CLIENTS:
        summary["client_arrays"] = {
            "samples": sizes,
            "label_counts": {
                name: {
                    "client": c.client.tolist(),
                    "label": c.label.tolist(),
                    "count": c.count.tolist(),
                }
                for name, c in counts.items()
            },
        }
        if kept is not None:
            summary["client_arrays"]["modalities"] = dict(zip(MODALITIES, kept.T.tolist()))
        return summary
    clients = []
    for i, c in enumerate(split.clients):
        shares = {}
        for name, held in counts.items():
            row = held.rows([i])[0]
            histogram = {held.labels[j]: int(row[j]) for j in np.flatnonzero(row)}
            shares[name] = {"samples": int(row.sum()), "label_histogram": histogram}
        if kept is not None:
            shares["classification"]["modalities"] = dict(zip(MODALITIES, kept[i].tolist()))
        clients.append({"client_id": c.client_id, "samples": sizes[i], "tasks": shares})
    summary["clients"] = clients
    return summary


def write_partition(cfg: RunConfig, out_dir: Path) -> dict:
    """The partition a run with `cfg` would use, without training: partition.json (per client
    and task: samples, label histogram, modalities kept) and its heatmaps."""

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tasks = build_tasks(cfg, load_processor(cfg.model))
    summary = _partition_summary(cfg, tasks, split_clients(cfg, tasks))
    (out_dir / "partition.json").write_text(dump_json(summary))
    plot_partitions(summary, out_dir)
    return summary
