"""Experiment tracking: a run's rounds, baselines, config, plots and adapter sent to TensorBoard
or MLflow, beside results.json (which stays the record fedumm itself reads).

The experiment calls a tracker at three moments: when the run starts (its config), after each
round (global metrics, each client's loss, bytes, seconds), and at the end (baselines, final
metrics, plots and adapter as artifacts). A sweep's cells are runs of their own.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from fedumm.config import TrackingConfig
from fedumm.evaluation.metrics import HEADLINES
from fedumm.results import Metrics, RoundResult, RunResult

STATE_FILE = "tracking.json"  # the MLflow run a resumed run continues
ARTIFACTS = ("report.md", "results.json")
SQLITE = "sqlite:///"


def flatten(tree: dict, prefix: str = "") -> dict[str, str | float | int | bool | None]:
    """{'federation': {'rounds': 4}} -> {'federation.rounds': 4}; lists become strings."""
    out: dict = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = str(value) if isinstance(value, list | tuple) else value
    return out


def metric_scalars(metrics: Metrics, prefix: str) -> dict[str, float]:
    """The headline metrics and their breakdowns (per family, tag, class) as named scalars."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[f"{prefix}/{key}"] = float(value)
    for key, (_, breakdown, _) in HEADLINES.items():
        if key in metrics and isinstance(metrics.get(breakdown), dict):
            for category, value in metrics[breakdown].items():
                out[f"{prefix}/{breakdown}/{category}"] = float(value)
    return out


def round_scalars(record: RoundResult) -> dict[str, float]:
    """One round's record (results.json's `rounds`) as named scalars."""
    record = RoundResult.of(record)
    out = metric_scalars(record.metrics, "global")
    for client, m in record.client_metrics.items():
        if m.loss is not None:
            out[f"client/{client}/loss"] = float(m.loss)
    out["traffic/bytes_up"] = float(record.bytes_up)
    out["traffic/bytes_down"] = float(record.bytes_down)
    out["time/round_seconds"] = float(record.seconds)
    out["time/train_seconds"] = float(record.train_seconds)
    return out


def end_scalars(results: RunResult) -> dict[str, float]:
    """The baselines' and the federation's final metrics, and the traffic totals."""
    results = RunResult.of(results)
    out = metric_scalars(results.final.metrics, "final")
    for name, baseline in results.baselines.present().items():
        out.update(metric_scalars(baseline.metrics, f"baseline/{name}"))
    out["traffic/total_bytes"] = float(results.communication.total_bytes)
    out["time/wall_seconds"] = float(results.wall_seconds)
    return out


class Tracker:
    """No tracking: the interface, doing nothing. A round and the results are typed (a
    RoundResult, a RunResult); their plain mappings are taken too."""

    def start(self, config: dict) -> None: ...

    def log_round(self, record: RoundResult) -> None: ...

    def finish(self, results: RunResult, out_dir: Path) -> None: ...

    def close(self, failed: bool = False) -> None: ...


class TensorBoardTracker(Tracker):
    """Event files in OUTDIR/tensorboard: scalars per round, the config as text, the plots as
    images. `tensorboard --logdir runs/` shows every run under runs/ side by side."""

    def __init__(self, out_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(Path(out_dir) / "tensorboard"))
        self.last_round = 0

    def start(self, config: dict) -> None:
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=2) + "\n```", 0)

    def log_round(self, record: RoundResult) -> None:
        self.last_round = RoundResult.of(record).round
        for name, value in round_scalars(record).items():
            self.writer.add_scalar(name, value, self.last_round)

    def finish(self, results: RunResult, out_dir: Path) -> None:
        import numpy as np
        from PIL import Image

        for name, value in end_scalars(results).items():
            self.writer.add_scalar(name, value, self.last_round)
        for png in sorted(Path(out_dir).glob("*.png")):
            with Image.open(png) as image:
                pixels = np.asarray(image.convert("RGB"))
            self.writer.add_image(png.stem, pixels, self.last_round, dataformats="HWC")
        self.writer.flush()

    def close(self, failed: bool = False) -> None:
        self.writer.close()


def mlflow_uri(cfg: TrackingConfig) -> str:
    """The tracking URI: the configured one, or a SQLite store in ./mlruns."""
    if cfg.mlflow_uri:
        return cfg.mlflow_uri
    folder = Path("mlruns").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return f"{SQLITE}{folder / 'mlflow.db'}"


class MLflowTracker(Tracker):
    """One MLflow run per fedumm run (named after its output folder): the config as params,
    metrics per round, the baselines and final metrics, and report, results, plots and adapter
    as artifacts. A resumed run continues its MLflow run (OUTDIR/tracking.json)."""

    def __init__(self, cfg: TrackingConfig, out_dir: Path, resume: bool):
        import mlflow

        for noisy in ("mlflow", "alembic"):  # their schema migrations log at INFO
            logging.getLogger(noisy).setLevel(logging.WARNING)
        self.out_dir = Path(out_dir)
        uri = mlflow_uri(cfg)
        self.client = mlflow.MlflowClient(uri)
        experiment = self.client.get_experiment_by_name(cfg.experiment)
        if experiment is None:  # a SQLite store keeps its artifacts beside it, not in the cwd
            local = uri.startswith(SQLITE) and (Path(uri[len(SQLITE) :]).parent / "artifacts")
            experiment_id = self.client.create_experiment(
                cfg.experiment, local.resolve().as_uri() if local else None
            )
        else:
            experiment_id = experiment.experiment_id
        state = self.out_dir / STATE_FILE
        self.resumed = resume and state.is_file()
        if self.resumed:
            self.run_id = json.loads(state.read_text())["mlflow_run_id"]
        else:
            run = self.client.create_run(experiment_id, run_name=self.out_dir.name)
            self.run_id = run.info.run_id
            state.write_text(json.dumps({"mlflow_run_id": self.run_id, "uri": uri}))

    def start(self, config: dict) -> None:
        if not self.resumed:  # params are written once; a resume may change only the runtime
            from mlflow.entities import Param

            params = [Param(k, str(v)) for k, v in flatten(config).items()]
            self.client.log_batch(self.run_id, params=params)

    def _metrics(self, scalars: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, v, now, step) for k, v in scalars.items()]
        for i in range(0, len(batch), 1000):  # MLflow's batch limit
            self.client.log_batch(self.run_id, metrics=batch[i : i + 1000])

    def log_round(self, record: RoundResult) -> None:
        self._metrics(round_scalars(record), RoundResult.of(record).round)

    def finish(self, results: RunResult, out_dir: Path) -> None:
        self._metrics(end_scalars(results), len(RunResult.of(results).rounds))
        out_dir = Path(out_dir)
        for path in [*(out_dir / name for name in ARTIFACTS), *sorted(out_dir.glob("*.png"))]:
            if path.is_file():
                self.client.log_artifact(self.run_id, str(path))
        for folder in ("adapter", "model"):
            if (out_dir / folder).is_dir():
                self.client.log_artifacts(self.run_id, str(out_dir / folder), folder)
        self.client.set_terminated(self.run_id, "FINISHED")
        self.run_id = None

    def close(self, failed: bool = False) -> None:
        if self.run_id is not None:  # the run stopped before its end
            self.client.set_terminated(self.run_id, "FAILED" if failed else "KILLED")


def open_tracker(cfg: TrackingConfig, out_dir: Path, resume: bool = False) -> Tracker:
    """The tracker `cfg` names (its library is checked installed before any work)."""
    if cfg.backend == "tensorboard":
        return TensorBoardTracker(out_dir)
    if cfg.backend == "mlflow":
        return MLflowTracker(cfg, out_dir, resume)
    return Tracker()
