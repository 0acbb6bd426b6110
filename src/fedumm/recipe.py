"""The recipe `fedumm run` executes: one federated run from a RunConfig, in phases.

`FederatedRun.run` calls them in the order a reader would explain a run: `setup` (the run's
parts, the engine's transport, the tracker), then `resume` from a checkpoint or the `zero_shot`
baseline, the federated `rounds`, the `local_baseline` and the `centralized_baseline` at equal
compute, and `finish` (results.json, the adapter, the report). Each phase is small and can be
called on its own (tests/test_recipe.py does).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from fedumm.clients import partition_summary
from fedumm.config import RunConfig, without_retired
from fedumm.evaluation.metrics import spread
from fedumm.federation import checkpoint, wire
from fedumm.federation.client import ClientData, local_schedule, local_update
from fedumm.federation.server import RoundRecord, RoundRules, Server, Transport
from fedumm.federation.strategies.dp_fedavg import privacy_spent
from fedumm.federation.update import Claims, Params
from fedumm.models import identity
from fedumm.models.hf import RANDOM_MARK
from fedumm.models.lora import full_state, set_adapter
from fedumm.parts import RunParts, build_parts
from fedumm.report import write_report
from fedumm.results import Baselines, LocalBaseline, RoundResult, RunResult, Scores
from fedumm.runtime import worker_devices
from fedumm.seeding import derive_seed, draw_share
from fedumm.tracking import Tracker, open_tracker
from fedumm.trained import save_run_model
from fedumm.training import Learner

log = logging.getLogger("fedumm")

Connect = Callable[[RunParts], Transport]


class FederatedRun:
    """One run's state between its phases: the parts, the transport to the clients, the
    results so far (written into `results`, read from the typed `baselines` and `records`),
    and the global adapter."""

    def __init__(
        self,
        cfg: RunConfig,
        out_dir: Path,
        connect: Connect,
        progress: bool = True,
        engine_info: dict | None = None,
    ):
        """`connect` gives the transport through which the server reaches the clients (the
        engine: `fedumm.engines`); `engine_info`: what the engine adds to results.json."""
        self.cfg, self.out_dir, self.connect = cfg, Path(out_dir), connect
        self.progress, self.engine_info = progress, engine_info or {}
        self.results: dict = {}  # results.json's sections, in its order: RunResult at the end
        self.baselines = Baselines()
        self.records: list[RoundResult] = []  # one per round
        self.first_round = 1

    def run(self, resume: bool = False, force: bool = False) -> RunResult:
        """Every phase in turn; with `resume`, continue from the checkpoint in the output
        folder (its config must equal this one unless `force`): the results are those an
        uninterrupted run would have written."""
        start = time.perf_counter()
        self.setup(resume)
        failed = True
        try:
            if resume:
                self.resume(force)
            else:
                self.zero_shot()
            self.rounds()
            self.local_baseline()
            self.centralized_baseline()
            result = self.finish(time.perf_counter() - start)
            failed = False
        finally:
            self.tracker.close(failed)
            self.transport.close()
        return result

    def setup(self, resume: bool = False) -> None:
        """The parts, the transport, the tracker; the results' header (config, model, where it
        runs, the attack if any)."""
        cfg = self.cfg
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.parts = parts = build_parts(cfg)
        self.transport = self.connect(parts)
        self.tracker: Tracker = open_tracker(cfg.tracking, self.out_dir, resume)
        self.params: Params = parts.initial
        ids = [c.client_id for c in parts.clients]
        fed = cfg.federation
        self.slow = set(draw_share(ids, fed.stragglers, derive_seed(cfg.seed, 0x510)))
        parts.client_states.keep_on_disk(self.out_dir / "client_states")  # the sampled only
        self.config_dump = cfg.model_dump()
        model = {"family": parts.processor.family_name, **identity(cfg.model)}
        random = getattr(parts.model.config, RANDOM_MARK, None)
        if random:  # `fedumm random-model`: the report says so
            model["random_weights"] = random
        runtime = parts.runtime.describe()
        if cfg.runtime.devices is not None:  # the round's clients trained in parallel on these
            runtime["devices"] = [str(d) for d in worker_devices(cfg.runtime)]
        self.results = {
            "config": self.config_dump,
            "model": model,
            "runtime": runtime,
            "baselines": self.baselines,
        }
        self.tracker.start(self.config_dump)
        if parts.malicious:
            attack = cfg.attack
            self.results["attack"] = {
                "kind": attack.kind,
                "magnitude": attack.magnitude,
                "clients": parts.malicious,
            }

    def resume(self, force: bool = False) -> None:
        """The global adapter, the rounds so far, the strategy's and the clients' state, the
        baselines and the random state, from the output folder's checkpoint."""
        ck = checkpoint.load(self.out_dir)
        if not _same_run(ck.config, self.cfg) and not force:
            raise checkpoint.CheckpointError(
                f"{self.out_dir} was run with another config; "
                "resume with the same config (or force it)"
            )
        self.params, self.first_round = ck.global_params, ck.round + 1
        self.records = [RoundResult.from_dict(r, "the checkpoint's rounds") for r in ck.records]
        self.parts.strategy.load_state_dict(ck.strategy_state)
        self.parts.client_states.restore(ck.client_states)
        self.baselines = self.results["baselines"] = Baselines.from_dict(ck.extra["baselines"])
        torch.set_rng_state(ck.rng_state)
        log.info("resuming %s after round %d", self.out_dir, ck.round)

    def zero_shot(self) -> None:
        """The foundation with its fresh adapter, before any training."""
        if self.cfg.baselines.zero_shot:
            metrics = self._evaluate(self.parts.initial, "zero_shot")
            self.baselines.zero_shot = Scores(metrics=metrics)

    def rounds(self) -> None:
        """The federation: the server runs the rounds left through the transport; a checkpoint
        every `checkpoint_every` rounds and after the last."""
        cfg, parts, fed = self.cfg, self.parts, self.cfg.federation
        private = (  # the server draws clients from the OS (cyclic is accounted with q = 1)
            fed.strategy.name == "dp_fedavg"
            and not fed.seeded_privacy_noise
            and fed.client_sampling == "random"
        )
        server = Server(
            parts.clients,
            parts.strategy,
            self.transport,
            self._evaluate_global,
            fed.sampled_per_round,
            cfg.seed,
            self._round_rules(),
            cfg.eval.every,
            self.progress,
            fed.client_sampling,
            private,
            parts.compression,
        )
        self.params, _ = server.run(self.params, fed.rounds, self.first_round, self._after_round)
        if "generation" in parts.tasks:  # the federated model's pictures, next to the baselines'
            set_adapter(parts.model, self.params)
            with parts.runtime.autocast():
                grid = self.out_dir / "generated_federated.png"
                parts.tasks["generation"].evaluate(parts.model, parts.processor, cfg.eval, grid)
        self.results["rounds"] = self.records
        self.results["final"] = Scores(metrics=self.records[-1].metrics)
        if fed.dp_sgd.enabled:
            self.results["dp_sgd"] = sample_level_privacy(fed, parts.clients, self.records)
        self.results.update(parts.strategy.summary(fed.sampled_per_round))

    def local_baseline(self) -> None:
        """Each client alone, for the steps it spends in the federation on average: it is
        sampled in a share sampled/num_clients of the rounds (all of them by default)."""
        cfg, parts, fed = self.cfg, self.parts, self.cfg.federation
        if not cfg.baselines.local:
            return
        clients = parts.clients
        if len(clients) > 1000:  # cross-device populations: hours of training nobody asked for
            log.warning(
                "the local-only baseline trains each of the %d clients alone; "
                "baselines.local=false skips it",
                len(clients),
            )
        share = fed.sampled_per_round / fed.num_clients
        budgets = [math.ceil(fed.rounds * share * fed.steps_for(len(c.data))) for c in clients]
        per_client = []
        with self._bar(sum(budgets), "local-only baseline") as bar:
            for c, steps in zip(clients, budgets):
                seed = derive_seed(cfg.seed, 0, parts.number(c))
                grid = "local_" + c.client_id if c is clients[0] else None
                metrics = self._train_alone(c, steps, seed, bar, grid)
                per_client.append({"client_id": c.client_id, "metrics": metrics})
        local = {"metrics": spread(per_client), "clients": per_client}
        self.baselines.local = LocalBaseline.from_dict(local)

    def centralized_baseline(self) -> None:
        """Every client's data pooled, for as many steps of the same batch size as all the
        federated clients took: equal compute."""
        if not self.cfg.baselines.centralized:
            return
        pooled = ClientData("centralized", self.parts.partition.pooled)
        steps = sum(m.steps for r in self.records for m in r.client_metrics.values())
        with self._bar(steps, "centralized baseline") as bar:
            seed = derive_seed(self.cfg.seed, 0xCE)
            metrics = self._train_alone(pooled, steps, seed, bar, "centralized")
        self.baselines.centralized = Scores(metrics=metrics)

    def finish(self, wall_seconds: float) -> RunResult:
        """What the run leaves behind: results.json (with traffic, partition, data and
        timings), the global adapter, the trained model's folder, report.md and its plots."""
        cfg, parts, out = self.cfg, self.parts, self.out_dir
        results = self.results
        results["communication"] = communication(
            parts.initial, full_state(parts.model), self.records
        )
        results["partition"] = partition_summary(cfg, parts.tasks, parts.partition)
        results["data"] = {name: task.summary() for name, task in parts.tasks.items()}
        results["wall_seconds"] = wall_seconds
        results["setup_seconds"] = parts.seconds  # where the time before round 1 went
        results.update(self.engine_info)
        typed = RunResult.from_dict(results)
        (out / "results.json").write_text(typed.dump())
        (out / "global_adapter.safetensors").write_bytes(wire.pack(self.params))
        save_run_model(parts.model, parts.processor, cfg, self.params, out, self._personal())
        write_report(typed, out)
        self.tracker.finish(typed, out)
        return typed

    def _personal(self):
        """Each trained client's own adapter, one at a time, where a personalized strategy
        keeps part of it on the client (under FLARE and Flower it stays on the sites)."""
        strategy, states = self.parts.strategy, self.parts.client_states
        if not (strategy.personalized and self.cfg.engine == "embedded"):
            return ()
        # every client that trained (one that never did holds the global model)
        return ((cid, strategy.personal_adapter(self.params, states[cid])) for cid in list(states))

    def _after_round(self, record: RoundRecord, params: Params) -> None:
        self.records.append(RoundResult.from_dict(record.to_dict()))
        self.tracker.log_round(self.records[-1])
        every, last = self.cfg.checkpoint_every, self.cfg.federation.rounds
        if every and (record.round % every == 0 or record.round == last):
            states = self.parts.client_states.snapshot()
            ck = checkpoint.Checkpoint(
                record.round,
                self.config_dump,
                params,
                self.parts.strategy.state_dict(),
                states,
                [r.to_dict() for r in self.records],
                {"baselines": self.baselines.to_dict()},
            )
            checkpoint.save(self.out_dir, ck)
            self.parts.client_states.pinned(states)

    def _round_rules(self) -> RoundRules:
        """What the server enforces in each round: dropouts, deadlines, the clients' claims,
        the norm bound, secure aggregation's threshold and root of trust."""
        fed, parts = self.cfg.federation, self.parts
        secure = fed.secure_aggregation
        return RoundRules(
            dropout=fed.dropout,
            min_clients=fed.min_clients,
            max_update_norm=fed.max_update_norm,
            deadline=fed.round_deadline,
            duration=self._duration,
            claims=claims(fed, parts.clients),
            equal_weights=fed.client_weights == "equal",
            secure_threshold=secure.survivors_needed(fed.sampled_per_round)
            if secure.enabled
            else None,
            secure_root=parts.identities.root if parts.identities else None,
        )

    def _duration(self, client: ClientData) -> float:
        """Simulated time of a client's local work, in nominal steps."""
        fed = self.cfg.federation
        steps = fed.steps_for(len(client.data))
        return steps * (fed.straggler_slowdown if client.client_id in self.slow else 1.0)

    def _evaluate(self, params: Params, grid: str | None = None) -> dict:
        """Metrics of `params` on every task; `grid` names a PNG of generated images to write."""
        return self.parts.evaluate(params, self.out_dir / f"generated_{grid}.png" if grid else None)

    def _evaluate_global(self, params: Params) -> dict:
        """The global model's metrics; under a personalized strategy each client's own model on
        the test set, averaged: what such a method delivers."""
        if not self.parts.strategy.personalized:
            return self._evaluate(params)
        personal = self.transport.evaluate_personal(params, self.parts.clients)
        return spread([{"metrics": m} for m in personal])

    def _train_alone(self, client: ClientData, steps: int, seed: int, bar, grid=None) -> dict:
        """Plain local training from the fresh adapter (the baselines do not federate)."""
        cfg, parts, fed = self.cfg, self.parts, self.cfg.federation
        update = local_update(
            Learner(parts.model, parts.processor.collate, parts.processor.loss, parts.runtime),
            client,
            parts.initial,
            local_schedule(
                fed, steps, seed, lambda step: fed.lr_at(step / steps, cfg.baselines.lr)
            ),
            on_step=lambda step, loss: bar.update(),
        )
        return self._evaluate(update.params, grid)

    def _bar(self, total: int, desc: str) -> tqdm:
        return tqdm(total=total, desc=desc, unit="step", disable=not self.progress)


def run_experiment(
    cfg: RunConfig,
    out_dir: Path,
    connect: Connect,
    progress: bool = True,
    resume: bool = False,
    force: bool = False,
    engine_info: dict | None = None,
) -> dict:
    """Run zero-shot, federated, local-only and centralized; write the results, return them."""
    return FederatedRun(cfg, out_dir, connect, progress, engine_info).run(resume, force)


def claims(fed, clients: list[ClientData]) -> Claims:
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


def sample_level_privacy(fed, clients: list[ClientData], records: list[RoundResult]) -> dict:
    """Each client's (epsilon, delta) after the DP-SGD steps it took, sampling rate B / n."""
    dp = fed.dp_sgd
    steps = {c.client_id: 0 for c in clients}
    for r in records:
        for cid, m in r.client_metrics.items():
            steps[cid] += m.steps
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


def communication(adapter: dict, full: dict, records: list[RoundResult]) -> dict:
    """Measured adapter traffic against what full fine-tuning would serialize for the same
    messages: one full model down and one up for every client of every round."""
    full_bytes = wire.num_bytes(full)
    per_round = float(np.mean([r.bytes_up + r.bytes_down for r in records]))
    full_per_round = float(np.mean([2 * full_bytes * len(r.clients) for r in records]))
    return {
        "adapter_message_bytes": wire.num_bytes(adapter),
        "full_model_message_bytes": full_bytes,
        "adapter_bytes_per_round": per_round,
        "full_finetune_bytes_per_round": full_per_round,
        "ratio": full_per_round / per_round,
        "total_bytes": int(sum(r.bytes_up + r.bytes_down for r in records)),
        "trainable_parameters": sum(v.numel() for v in adapter.values()),
        "total_parameters": sum(v.numel() for v in full.values()),
    }
