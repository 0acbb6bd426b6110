"""The NVIDIA FLARE engine: the same federation on FLARE's simulator, in POC mode, or exported
as a job for a provisioned deployment.

Server: `FedummController`, a FLARE `ModelController` whose `run()` is our `run_experiment`
with a `FlareTransport`: each round's broadcast goes out as one FLARE task to the round's
clients and their uploads come back as the task's results. Clients: `flare_client.py`, a Client
API script that builds the same `Federation` from the config and trains its own site's share.
Both sides therefore run our code (strategy, validation, local training); FLARE only moves the
bytes. A message is our serialized tensors (`wire.pack`) inside `FLModel.params`, so only the
adapter travels, from the first round on, and bytes are counted as in the embedded engine.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from nvflare.app_common.abstract.fl_model import FLModel
from nvflare.app_common.workflows.model_controller import ModelController

from fedumm.config import RunConfig
from fedumm.federation.client import ClientData
from fedumm.federation.flare_client import CONFIG_NAME  # beside the script on every site
from fedumm.federation.update import ClientUpdate

CLIENT_SCRIPT = Path(__file__).with_name("flare_client.py")
TASK = "train"


class FlareTransport:
    """Exchange through the controller: one FLARE task per round, answers from its results."""

    def __init__(self, controller: ModelController, timeout: int):
        self.controller = controller
        self.timeout = timeout

    def exchange(
        self, rnd: int, down: bytes, clients: list[ClientData], cohort: list[ClientData]
    ) -> list[tuple[ClientUpdate, bytes]]:
        if not clients:
            return []
        task = FLModel(params={"message": down}, current_round=rnd,
                       meta={"cohort": [c.client_id for c in cohort]})  # fmt: skip
        results = self.controller.send_model_and_wait(
            task_name=TASK, targets=[c.client_id for c in clients], data=task,
            timeout=self.timeout,
        )  # fmt: skip
        answers = {}
        for result in results:
            meta = result.meta
            site = meta["client_name"]
            try:
                update = ClientUpdate(site, {}, int(meta["num_samples"]), int(meta["num_steps"]),
                                      dict(meta.get("metrics", {})))  # fmt: skip
                answers[site] = (update, bytes(result.params["upload"]))
            except (KeyError, TypeError, ValueError) as e:  # a malformed answer: as if it failed
                self.controller.warning(f"round {rnd}: unusable answer from {site}: {e!r}")
        return [answers[c.client_id] for c in clients if c.client_id in answers]


class FedummController(ModelController):
    """FLARE's server workflow running fedumm's recipe; `config` is the resolved RunConfig as
    JSON (so the job carries it), `out_dir` where results.json and the report are written."""

    def __init__(self, config: str, out_dir: str, round_timeout: int = 600):
        super().__init__()
        self.config = config
        self.out_dir = out_dir
        self.round_timeout = round_timeout

    def run(self) -> None:
        from fedumm.experiment import run_experiment

        cfg = RunConfig.model_validate_json(self.config)
        transport = FlareTransport(self, self.round_timeout)
        run_experiment(cfg, Path(self.out_dir), progress=False, transport=transport)


def build_job(cfg: RunConfig, out_dir: Path, config_file: Path):
    """A FLARE FedJob: our controller on the server, the client script on every site."""
    from nvflare.job_config.api import FedJob
    from nvflare.job_config.script_runner import FrameworkType, ScriptRunner

    k = cfg.federation.num_clients
    job = FedJob(name="fedumm", min_clients=min(k, cfg.federation.min_clients))
    controller = FedummController(cfg.model_dump_json(), str(out_dir.resolve()),
                                  cfg.flare.round_timeout)  # fmt: skip
    job.to_server(controller)
    for i in range(1, k + 1):
        site = f"site-{i}"
        job.to(ScriptRunner(script=str(CLIENT_SCRIPT), framework=FrameworkType.RAW), site)
        job.add_file_to(str(config_file), site)
    return job


def _allow_fedumm(local_dir: Path) -> None:
    """Let FLARE instantiate our components: its default class allow-list names FLARE's own
    classes only; add the `fedumm.` prefix (a deployment's admin does the same in each site's
    local/resources.json)."""
    from nvflare.app_common.default_component_policy import DEFAULT_CLASS_ALLOW_LIST
    from nvflare.app_common.widgets.component_path_authorizer import CLASS_ALLOW_LIST

    local_dir.mkdir(parents=True, exist_ok=True)
    resources = {"format_version": 2, CLASS_ALLOW_LIST: [*DEFAULT_CLASS_ALLOW_LIST, "fedumm."]}
    (local_dir / "resources.json").write_text(json.dumps(resources, indent=2))


def _write_config(cfg: RunConfig, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CONFIG_NAME
    path.write_text(cfg.model_dump_json(indent=2))
    return path


def run_flare(cfg: RunConfig, out_dir: Path) -> dict:
    """Run the federation under FLARE (cfg.flare.env); return the results the server wrote."""
    if cfg.flare.env != "sim":
        raise ValueError(f"flare.env {cfg.flare.env!r} is not supported yet; use 'sim'")
    from nvflare.recipe.sim_env import SimEnv

    out_dir = Path(out_dir).resolve()
    workspace = out_dir / "flare"
    job = build_job(cfg, out_dir, _write_config(cfg, workspace / "job_input"))
    _allow_fedumm(workspace / job.name / "local")
    # One simulator thread per client: with fewer, FLARE restarts a client's script whenever
    # another client takes its turn, and state kept on the client (SCAFFOLD's c_i) is lost.
    k = cfg.federation.num_clients
    env = SimEnv(clients=[f"site-{i}" for i in range(1, k + 1)], num_threads=k,
                 workspace_root=str(workspace))  # fmt: skip
    (out_dir / "results.json").unlink(missing_ok=True)
    os.environ.pop("NVFLARE_SIMULATOR_WORKSPACE_ROOT", None)
    env.deploy(job)
    results = out_dir / "results.json"
    if not results.is_file():
        raise RuntimeError(f"the FLARE job ended without results; its logs: {workspace / job.name}")
    return json.loads(results.read_text())


def export_job(cfg: RunConfig, job_dir: Path, out_dir: str) -> Path:
    """Write a FLARE job folder to submit to a deployment (`nvflare job submit -j`)."""
    job_dir = Path(job_dir)
    staging = _write_config(cfg, job_dir / ".fedumm")
    job = build_job(cfg, Path(out_dir), staging)
    job.export_job(str(job_dir))
    return job_dir / job.name
