"""The NVIDIA FLARE engine: the same federation on FLARE's simulator, in POC mode, or exported
as a job for a provisioned deployment.

Server: `FedummController`, a FLARE `ModelController` whose `run()` is our `run_experiment`
with a `FlareTransport` (the round loop's `Transport`): each round's broadcast goes out as one
FLARE task to the round's clients and their uploads come back as the task's results. Clients:
`flare_client.py`, a Client API script that builds the same `RunParts` from the config and
trains its own site's share.
Both sides therefore run our code (strategy, validation, local training); FLARE only moves the
bytes. A message is our serialized tensors (`wire.pack`) inside `FLModel.params`, so only the
adapter travels, from the first round on, and bytes are counted as in the embedded engine.

Resume: each site keeps its state (SCAFFOLD's c_i, FedSA-LoRA's B) on its own disk
(flare_client.SiteState). Every training task tells it the round of the server's latest
checkpoint, so it keeps the file a resume from there needs; a resumed job tells each site the
checkpoint's round and the last round up to it the server has the site's answer of, so the
site restores that state or refuses, naming the missing file, and the job stops.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nvflare.app_common.abstract.fl_model import FLModel
from nvflare.app_common.workflows.model_controller import ModelController

from fedumm.config import RunConfig
from fedumm.engines.flare_client import (
    CONFIG_NAME,
    ERROR,
    FAILED,
    KEEP_FROM,
    RESUMED,
    SECAGG,
    TRAINED,
)
from fedumm.engines.site import site_config, update_of, with_identities
from fedumm.federation import checkpoint, wire
from fedumm.federation.client import ClientData, site_names
from fedumm.federation.update import ClientUpdate, Params
from fedumm.recipe import run_experiment
from fedumm.results import RunResult
from fedumm.runtime import resolve_device

CLIENT_SCRIPT = Path(__file__).with_name("flare_client.py")
TASK = "train"
EVALUATE = "validate"  # FLARE's default name for an evaluation task
FAILURE = "flare_failure.txt"  # written by the server when the federation fails
SHUTDOWN_GRACE = 60  # seconds FLARE may take to end after the server wrote its results


class SiteRefused(RuntimeError):
    """A site answered a task with a refusal (e.g. it lacks the state a resume needs)."""


def last_trained(records: list[dict]) -> dict[str, int]:
    """Each site's last round in `records` (a checkpoint's) the server has its answer of: the
    site wrote its state of that round before it answered."""
    return {site: r["round"] for r in records for site in r["client_metrics"]}


class FlareTransport:
    """Exchange through the controller: a round's task goes to its clients (one task for all,
    or one each when each gets its own secure-aggregation inbox); answers come back as the
    tasks' results. `out_dir` holds the checkpoints (`checkpoint_every` rounds apart, 0:
    none); with `resume`, the job continues from the one there."""

    def __init__(
        self,
        controller: ModelController,
        timeout: int,
        out_dir: Path | None = None,
        checkpoint_every: int = 0,
        resume: bool = False,
    ):
        self.controller = controller
        self.timeout = timeout
        self.out_dir, self.checkpoint_every = out_dir, checkpoint_every
        self.resumed, self.trained = 0, {}
        if resume:
            ck = checkpoint.load(out_dir)
            self.resumed, self.trained = ck.round, last_trained(ck.records)

    def _state_meta(self, sites: list[str]) -> dict:
        """What a site needs to restore its state at its first task (`SiteState.before`)."""
        if not self.resumed:
            return {RESUMED: 0}
        return {RESUMED: self.resumed, TRAINED: {s: self.trained.get(s, 0) for s in sites}}

    def keep_from(self, rnd: int) -> int:
        """The round whose site state a resume may still need, as of round `rnd`: the latest
        checkpoint's (0: none yet), read from disk, where it is durable before round `rnd` is
        sent; without checkpoints, `rnd` (a site keeps its newest state only)."""
        if not self.checkpoint_every:
            return rnd
        try:
            return int(checkpoint.read_manifest(self.out_dir)["round"])
        except checkpoint.CheckpointError:
            return 0  # every file is kept

    def _ask(self, task_name: str, tasks: dict[str, FLModel]) -> dict[str, FLModel]:
        """Send each site its task; the answers by site (a silent site is missing)."""
        if not tasks:
            return {}
        first = next(iter(tasks.values()))
        if all(task is first for task in tasks.values()):  # the same task for all: one send
            results = self.controller.send_model_and_wait(
                task_name=task_name, targets=list(tasks), data=first, timeout=self.timeout
            )
            results = {result.meta["client_name"]: result for result in results}
        else:
            results = self._ask_each(task_name, tasks)
        refusals = [
            f"{site}: {r.meta[ERROR]}"
            for site, r in results.items()
            if r.meta and r.meta.get(ERROR)
        ]
        if refusals:
            raise SiteRefused("; ".join(refusals))
        return results

    def _ask_each(self, task_name: str, tasks: dict[str, FLModel]) -> dict[str, FLModel]:
        """Each site its own task, all at once; the answers by site."""
        results, lock = {}, threading.Lock()

        def collect(result: FLModel) -> None:
            with lock:
                results[result.meta["client_name"]] = result

        for site, task in tasks.items():
            self.controller.send_model(
                task_name=task_name,
                data=task,
                targets=[site],
                timeout=self.timeout,
                callback=collect,
            )
        deadline = time.monotonic() + self.timeout + 10
        while self.controller.get_num_standing_tasks() and time.monotonic() < deadline:
            time.sleep(0.05)
        with lock:
            return dict(results)

    def exchange(
        self,
        rnd: int,
        down: bytes,
        clients: list[ClientData],
        inboxes: dict[str, bytes] | None = None,
    ) -> list[tuple[ClientUpdate, bytes]]:
        told = {KEEP_FROM: self.keep_from(rnd), **self._state_meta([c.client_id for c in clients])}
        shared = FLModel(params={"message": down}, current_round=rnd, meta=told)
        tasks = {
            c.client_id: shared
            if inboxes is None
            else FLModel(
                params={"message": down, "inbox": inboxes[c.client_id]},
                current_round=rnd,
                meta=dict(told),
            )
            for c in clients
        }
        answers = {}
        for site, result in self._ask(TASK, tasks).items():
            meta = result.meta
            if meta and meta.get(FAILED):
                self.controller.warning(f"round {rnd}: {site} failed: {meta[FAILED]}")
                continue
            try:
                answers[site] = (update_of(site, meta), bytes(result.params["upload"]))
            except (KeyError, TypeError, ValueError) as e:  # a malformed answer: as if it failed
                self.controller.warning(f"round {rnd}: unusable answer from {site}: {e!r}")
        return [answers[c.client_id] for c in clients if c.client_id in answers]

    def secagg(self, rnd: int, phase: str, payloads: dict[str, bytes]) -> dict[str, bytes]:
        tasks = {
            site: FLModel(params={"payload": payload}, current_round=rnd)
            for site, payload in payloads.items()
        }
        answers = {}
        for site, result in self._ask(SECAGG + phase, tasks).items():
            answer = result.params.get("answer") if result.params else None
            if answer:  # an empty answer: the site refused the request
                answers[site] = bytes(answer)
        return answers

    def evaluate_personal(self, params: Params, clients: list[ClientData]) -> list[dict]:
        """Each client's metrics for its own model (personalized strategies: a part of it
        never leaves the client), from one evaluation task."""
        meta = self._state_meta([c.client_id for c in clients])
        task = FLModel(params={"message": wire.pack(params)}, meta=meta)
        answers = self._ask(EVALUATE, {c.client_id: task for c in clients})
        missing = [c.client_id for c in clients if c.client_id not in answers]
        if missing:
            raise RuntimeError(f"no evaluation from {', '.join(missing)}")
        return [answers[c.client_id].meta["metrics"] for c in clients]

    def close(self) -> None:
        return None  # FLARE ends the job; nothing of ours to release


class FedummController(ModelController):
    """FLARE's server workflow running fedumm's recipe; `config` is the resolved RunConfig as
    JSON (so the job carries it), `out_dir` where results.json and the report are written."""

    def __init__(self, config: str, out_dir: str, round_timeout: int = 600, resume: bool = False):
        super().__init__()
        self.config = config
        self.out_dir = out_dir
        self.round_timeout = round_timeout
        self.resume = resume

    def run(self) -> None:
        cfg = RunConfig.model_validate_json(self.config)
        out = Path(self.out_dir)
        transport = FlareTransport(self, self.round_timeout, out, cfg.checkpoint_every, self.resume)
        try:
            info = {"flare": {"env": cfg.flare.env, "server_pid": os.getpid()}}
            run_experiment(
                cfg, out, lambda fl: transport, progress=False, resume=self.resume, engine_info=info
            )
        except Exception as e:  # the command that started the job reports it
            (out / FAILURE).write_text(f"{type(e).__name__}: {e}")
            raise


@contextmanager
def _beside_client_script() -> Iterator[None]:
    """FLARE resolves a job's relative script paths against the working folder when it
    packages the job; the client script is referenced by name so the job runs anywhere."""
    here = Path.cwd()
    os.chdir(CLIENT_SCRIPT.parent)
    try:
        yield
    finally:
        os.chdir(here)


def build_job(cfg: RunConfig, out_dir: str, config_file: Path, resume: bool = False):
    """A FLARE FedJob: our controller on the server, the client script and the config on every
    site. Build and package it (deploy, export) inside `_beside_client_script()`. With `resume`
    the server continues from the checkpoint in `out_dir` (and the sites from their state)."""
    from nvflare.job_config.api import FedJob
    from nvflare.job_config.script_runner import FrameworkType, ScriptRunner

    sites = site_names(cfg.federation.num_clients)
    job = FedJob(name="fedumm", min_clients=len(sites))  # every site joins before the start
    controller = FedummController(cfg.model_dump_json(), out_dir, cfg.flare.round_timeout, resume)
    job.to_server(controller)
    for site in sites:
        # Relative: FLARE copies the script into each site's custom folder and runs that copy.
        job.to(ScriptRunner(script=CLIENT_SCRIPT.name, framework=FrameworkType.RAW), site)
        job.add_file_to(str(config_file), site)
    return job


def _write_config(cfg: RunConfig, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CONFIG_NAME
    path.write_text(cfg.model_dump_json(indent=2))
    return path


def run_flare(cfg: RunConfig, out_dir: Path, resume: bool = False) -> RunResult:
    """Run the federation under FLARE (cfg.flare.env); return the results the server wrote.
    The FLARE workspace (logs of every site) is OUT/flare; the sites keep their state in
    OUT/flare/state (unless flare.state_dir says otherwise). With `resume`, a killed run
    continues: the server from its checkpoint, each site from its state of that round.
    Simulator and POC sites run on this machine: the devices they are given must be here."""
    for site in site_names(cfg.federation.num_clients):
        resolve_device(site_config(cfg, site).runtime.device, f"flare.site_devices ({site})")
    out_dir = Path(out_dir).resolve()
    workspace = out_dir / "flare"
    if cfg.flare.state_dir is None:
        cfg = cfg.model_copy(
            update={"flare": cfg.flare.model_copy(update={"state_dir": str(workspace / "state")})}
        )
    if resume:
        from fedumm.federation.checkpoint import read_manifest

        read_manifest(out_dir)  # a missing checkpoint is refused before FLARE starts
    for old in workspace.glob("*") if workspace.exists() else []:
        if not (resume and old == Path(cfg.flare.state_dir)):  # what the sites kept stays
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    sites = site_names(cfg.federation.num_clients)
    poc = cfg.flare.env == "poc"  # POC sites sign with their provisioned kits, as deployed
    cfg = with_identities(cfg, workspace / (POC_KITS if poc else "identities"), write=not poc)
    config_file = _write_config(cfg, workspace / "job_input")
    for stale in ("results.json", FAILURE):
        (out_dir / stale).unlink(missing_ok=True)
    with _beside_client_script():
        job = build_job(cfg, str(out_dir), config_file, resume)
        try:
            if cfg.flare.env == "sim":
                _run_simulator(job, sites, workspace, out_dir)
            else:
                _run_poc(job, sites, workspace / "poc", cfg, out_dir)
        except RuntimeError as e:  # the server's own files say more than FLARE's "failed"
            ended = [name for name in ("results.json", FAILURE) if (out_dir / name).is_file()]
            if not ended:
                raise RuntimeError(_failure_report(out_dir, workspace, str(e))) from None
    results = out_dir / "results.json"
    if not results.is_file():
        raise RuntimeError(_failure_report(out_dir, workspace))
    return RunResult.load(results)


POC_KITS = Path("poc") / "example_project" / "prod_00"  # where FLARE's POC provisions its kits


def _failure_report(out_dir: Path, workspace: Path, why: str | None = None) -> str:
    """Why a FLARE job left no results (the server's failure file, or `why`), and what it
    left: the last good checkpoint, which `fedumm run --resume` continues."""
    from fedumm.federation.checkpoint import CheckpointError, read_manifest

    failure = out_dir / FAILURE
    if why is None:
        why = failure.read_text() if failure.is_file() else "the job ended without results"
    try:
        kept = (
            f"the last good global adapter (round {read_manifest(out_dir)['round']}) is "
            f"in the checkpoint in {out_dir} (fedumm run --resume {out_dir})"
        )
    except CheckpointError:
        kept = "no round finished, so there is no global adapter to keep"
    return f"FLARE job failed: {why}; {kept}; the sites' logs: {workspace}"


def _run_simulator(job, sites: list[str], workspace: Path, out_dir: Path) -> None:
    from nvflare.recipe.sim_env import SIMULATOR_WORKSPACE_ROOT_ENV_VAR, SimEnv

    os.environ.pop(SIMULATOR_WORKSPACE_ROOT_ENV_VAR, None)
    done = threading.Event()

    def watchdog() -> None:  # the simulator has been seen to hang at its own shutdown
        while not done.wait(1.0):
            if any((out_dir / name).is_file() for name in ("results.json", FAILURE)):
                if not done.wait(SHUTDOWN_GRACE):
                    _wait_gone(workspace, timeout=0)
                return

    threading.Thread(target=watchdog, daemon=True).start()
    try:
        # One simulator thread per client: with fewer, FLARE restarts a client's script whenever
        # another client takes its turn, and state kept on the client (SCAFFOLD's c_i) is lost.
        SimEnv(clients=sites, num_threads=len(sites), workspace_root=str(workspace)).deploy(job)
    finally:
        done.set()


def _run_poc(job, sites: list[str], workspace: Path, cfg: RunConfig, out_dir: Path) -> None:
    """FLARE's POC mode: provision a server and one client per site on this machine, start
    them as separate processes, submit the job through the admin API, wait for the server's
    results (or its death: POC restarts a dead server without the job), stop them all."""
    from nvflare.recipe import poc_env

    os.environ["NVFLARE_POC_WORKSPACE"] = str(workspace)
    env = poc_env.PocEnv(num_clients=len(sites), clients=sites)
    poc_env.prepare_poc_provision(
        clients=sites,
        number_of_clients=len(sites),
        workspace=env.poc_workspace,
        docker_image=None,
        use_he=False,
        project_conf_path="",
        examples_dir=None,
    )
    _check_ports_free(workspace / "project.yml")
    kits = workspace.parent / POC_KITS
    if cfg.federation.secure_aggregation.identities == str(kits) and not kits.is_dir():
        raise RuntimeError(
            f"FLARE's POC provisioning wrote no startup kits at {kits}, where "
            "the signed secure-aggregation keys expect them"
        )
    try:
        poc_env._start_poc(
            poc_workspace=env.poc_workspace, gpu_ids=[], excluded=[env.username], services_list=[]
        )
        time.sleep(poc_env.SERVICE_START_TIMEOUT)
        server = next(workspace.glob("*/prod_00/server"))
        env._get_session_manager().submit_job(job)
        budget = cfg.flare.round_timeout * (cfg.federation.rounds + 2)
        deadline, first = time.monotonic() + budget, _server_pid(server)
        while not any((out_dir / name).is_file() for name in ("results.json", FAILURE)):
            now = _server_pid(server)
            first = first or now
            if now and now != first:  # POC's daemon restarts a dead server, without the job
                raise RuntimeError(f"the FLARE server process ({first}) died during the job")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the FLARE job wrote no results within {budget} s "
                    "(flare.round_timeout x (rounds + 2))"
                )
            time.sleep(0.5)
    finally:
        env.stop()
        _wait_gone(workspace)


def _wait_gone(workspace: Path, timeout: float = SHUTDOWN_GRACE) -> None:
    """Every process of this FLARE run (its workspace in its command line) ended; what lingers
    past `timeout` is killed."""
    import psutil

    mine = []
    for p in psutil.process_iter(["cmdline"]):
        if str(workspace) in " ".join(p.info["cmdline"] or []):
            mine.append(p)
    _, alive = psutil.wait_procs(mine, timeout=timeout)
    for p in alive:
        p.kill()


def _server_pid(server: Path) -> str:
    pid = server / "pid.fl"
    return pid.read_text().strip() if pid.is_file() else ""


def _check_ports_free(project_file: Path) -> None:
    """The POC server's ports must be free, or its start fails deep inside FLARE."""
    import yaml

    project = yaml.safe_load(project_file.read_text())
    server = next(p for p in project["participants"] if p.get("type") == "server")
    for key in ("fed_learn_port", "admin_port"):
        if key not in server:
            continue
        with socket.socket() as probe:
            # a port left in TIME_WAIT by a POC that just stopped is free for the next server
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", int(server[key])))
            except OSError:
                raise RuntimeError(
                    f"port {server[key]} ({key} of the FLARE POC server, {project_file}) is "
                    "already in use: stop what holds it (another POC: nvflare poc stop) and retry"
                ) from None


def export_job(cfg: RunConfig, job_dir: Path, out_dir: str) -> Path:
    """Write a FLARE job folder for a provisioned deployment (`nvflare job submit -j`): the
    server writes its results to `out_dir` on the server machine."""
    job_dir = Path(job_dir).resolve()
    staging = _write_config(cfg, job_dir / ".staging")
    with _beside_client_script():
        job = build_job(cfg, out_dir, staging)
        job.export_job(str(job_dir))
    shutil.rmtree(job_dir / ".staging")
    return job_dir / job.name
