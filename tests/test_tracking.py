"""Experiment tracking, read back from what the backends wrote: TensorBoard's event files and
MLflow's store hold every round, the baselines, the config and the artifacts."""

import json

import pytest

from fedumm.config import RunConfig
from fedumm.results import RunResult
from tests.tiny import run_tiny

QUICK = ["baselines.local=false", "threads=1"]


def test_tensorboard_event_files_hold_every_round_and_the_baselines(tiny_foundation, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    result = run_tiny(out, tiny_foundation, "tracking=tensorboard", *QUICK)
    assert result.exit_code == 0, result.output
    results = RunResult.load(out / "results.json")
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    scalars = events.Tags()["scalars"]
    accuracy = [(e.step, e.value) for e in events.Scalars("global/vqa_accuracy")]
    expected = [(r.round, r.metrics["vqa_accuracy"]) for r in results.rounds]
    assert accuracy == [(s, pytest.approx(v)) for s, v in expected]
    for r in results.rounds:
        for client, m in r.client_metrics.items():
            logged = {e.step: e.value for e in events.Scalars(f"client/{client}/loss")}
            assert logged[r.round] == pytest.approx(m.loss)
    assert {
        "traffic/bytes_up",
        "time/round_seconds",
        "baseline/zero_shot/vqa_accuracy",
        "baseline/centralized/vqa_accuracy",
        "final/vqa_accuracy",
    } <= set(scalars)
    assert "accuracy" in events.Tags()["images"]
    assert "config" in "".join(events.Tags()["tensors"])  # the config, as text


def test_mlflow_holds_the_rounds_params_and_artifacts_and_a_resume_continues_the_run(
    tiny_foundation, tmp_path
):
    import mlflow

    out, uri = tmp_path / "run", f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    (tmp_path / "store").mkdir()
    result = run_tiny(
        out,
        tiny_foundation,
        "tracking.backend=mlflow",
        "federation.rounds=3",
        f"tracking.mlflow_uri={uri}",
        *QUICK,
    )
    assert result.exit_code == 0, result.output
    results = RunResult.load(out / "results.json")
    assert (tmp_path / "store" / "artifacts").is_dir()  # beside the store, not in the cwd
    client = mlflow.MlflowClient(uri)
    run_id = json.loads((out / "tracking.json").read_text())["mlflow_run_id"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params["federation.rounds"] == "3"
    assert run.data.params["lora.r"] == "2"
    history = client.get_metric_history(run_id, "global/vqa_accuracy")
    assert [(m.step, m.value) for m in history] == [
        (r.round, pytest.approx(r.metrics["vqa_accuracy"])) for r in results.rounds
    ]
    assert run.data.metrics["baseline/zero_shot/vqa_accuracy"] == pytest.approx(
        results.baselines.zero_shot.metrics["vqa_accuracy"]
    )
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"report.md", "results.json", "accuracy.png", "adapter"} <= artifacts
    assert {a.path for a in client.list_artifacts(run_id, "adapter")} >= {
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
    }

    # the run extended by one round (resumed from its last checkpoint) logs into the same run
    from fedumm.cli import app
    from tests.tiny import runner

    result = runner.invoke(
        app, ["run", "--resume", str(out), "--quiet", "--force", "--set", "federation.rounds=4"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads((out / "tracking.json").read_text())["mlflow_run_id"] == run_id
    steps = [m.step for m in client.get_metric_history(run_id, "global/vqa_accuracy")]
    assert steps == [1, 2, 3, 4]
    assert client.get_run(run_id).info.status == "FINISHED"


def test_tracking_config_short_form_and_a_missing_library_is_refused(monkeypatch, tmp_path):
    from fedumm import extras
    from fedumm.config import ConfigError, TrackingConfig
    from fedumm.tracking import mlflow_uri

    monkeypatch.chdir(tmp_path)
    assert mlflow_uri(TrackingConfig()) == f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"

    assert RunConfig.model_validate({"tracking": "mlflow"}).tracking.backend == "mlflow"
    with pytest.raises(ValueError, match="tracking.backend"):
        RunConfig.model_validate({"tracking": "wandb"})
    monkeypatch.setattr(extras, "installed", lambda module: module != "mlflow")
    cfg = RunConfig.model_validate({"tracking": "mlflow"})
    with pytest.raises(ConfigError, match=r"tracking: mlflow needs MLflow.*fedumm\[mlflow\]"):
        extras.check_installed(cfg)


def test_a_sweep_logs_every_cell_as_its_own_mlflow_run(tiny_foundation, tmp_path):
    import mlflow

    from tests.test_sweep import _rows, _sweep, _write_sweep

    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    path = _write_sweep(tmp_path, tiny_foundation, "  partition.alpha: [0.1, 1.0]\n")
    out = tmp_path / "out"
    result = _sweep(
        path,
        out,
        "--set",
        "baselines.centralized=false",
        "--set",
        "tracking.backend=mlflow",
        "--set",
        f"tracking.mlflow_uri={uri}",
    )
    assert result.exit_code == 0, result.output
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("fedumm").experiment_id])
    cells = {r["cell"]: float(r["vqa_accuracy"]) for r in _rows(out)}
    assert {r.info.run_name: r.data.metrics["final/vqa_accuracy"] for r in runs} == cells
    assert {r.data.params["partition.alpha"] for r in runs} == {"0.1", "1.0"}
