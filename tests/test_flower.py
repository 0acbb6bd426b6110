"""The Flower engine: Flower's simulation runtime gives the embedded engine's adapter, bytes,
losses and scores for FedAvg, SCAFFOLD (control variates in the nodes' state) and FedSA-LoRA
(personalized: nodes score their own models); an exported app deployed with `flwr run` on a
local SuperLink and two SuperNodes, separate processes, all stopped afterwards."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from safetensors.torch import load_file

from fedumm.cli import app
from tests.tiny import TINY_RUN, run_tiny, runner

TWO_CLIENTS = ["federation.num_clients=2", "federation.clients_per_round=2", "threads=1",
               "baselines.local=false", "baselines.centralized=false"]  # fmt: skip


def _runs(tmp_path, foundation, *overrides):
    runs = {}
    for engine in ("embedded", "flower"):
        out = tmp_path / engine
        result = run_tiny(out, foundation, *TWO_CLIENTS, *overrides, cli=["--engine", engine])
        assert result.exit_code == 0, result.output
        runs[engine] = (json.loads((out / "results.json").read_text()),
                        load_file(out / "global_adapter.safetensors"))  # fmt: skip
    return runs


def _assert_same(runs):
    (embedded, a), (flower, b) = runs["embedded"], runs["flower"]
    assert flower["final"]["metrics"] == embedded["final"]["metrics"]
    assert a.keys() == b.keys() and len(a) > 0
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-5
    assert max(float(a[k].abs().max()) for k in a) > 1e-3  # the adapter did train
    for mine, theirs in zip(embedded["rounds"], flower["rounds"], strict=True):
        assert (mine["bytes_up"], mine["bytes_down"]) == (theirs["bytes_up"], theirs["bytes_down"])
        for site, metrics in mine["client_metrics"].items():
            assert theirs["client_metrics"][site]["loss"] == pytest.approx(metrics["loss"], 1e-6)
    pids = {m["pid"] for r in flower["rounds"] for m in r["client_metrics"].values()}
    assert os.getpid() not in pids  # the clients trained in Flower's worker processes


@pytest.mark.parametrize("strategy", ["fedavg", "scaffold", "fedsa_lora"])
def test_flower_simulation_matches_the_embedded_engine(tiny_foundation, tmp_path, strategy):
    _assert_same(_runs(tmp_path, tiny_foundation, f"federation.strategy.name={strategy}"))


def test_secure_aggregation_through_flower_messages(tiny_foundation, tmp_path):
    """The key protocol as Flower query messages; each node's session (keys, shares) kept in
    its context.state between the protocol's messages."""
    runs = _runs(tmp_path, tiny_foundation, "federation.secure_aggregation.enabled=true",
                 "federation.secure_aggregation.threshold=2")  # fmt: skip
    _assert_same(runs)
    for mine, theirs in zip(runs["embedded"][0]["rounds"], runs["flower"][0]["rounds"]):
        assert theirs["secagg_bytes"] == mine["secagg_bytes"] > 0


def test_a_partition_id_out_of_range_is_refused_naming_it():
    from flwr.app import Context, RecordDict

    from fedumm.config import RunConfig
    from fedumm.engines.flower import _site

    config = RunConfig.model_validate(
        {"federation": {"num_clients": 2, "clients_per_round": 2}}
    ).model_dump_json()
    context = Context(1, 1, {"partition-id": 2, "num-partitions": 3}, RecordDict(), {})
    with pytest.raises(ValueError, match=r"partition-id 2 is out of range: this federation has "
                                         r"2 sites, partition-id 0\.\.1"):  # fmt: skip
        _site(config, context)


def test_flower_without_flwr_is_refused_naming_the_extra(monkeypatch, tiny_foundation, tmp_path):
    from fedumm import extras

    monkeypatch.setattr(extras, "installed", lambda module: module != "flwr")
    result = run_tiny(tmp_path / "run", tiny_foundation, cli=["--engine", "flower"])
    assert result.exit_code == 2
    assert "engine: flower needs Flower" in result.output and "fedumm[flower]" in result.output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _flwr(*args, env, timeout=120):
    bin_dir = Path(sys.executable).parent
    return subprocess.run([str(bin_dir / "flwr"), *args], env=env, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def test_an_exported_app_runs_on_a_superlink_and_two_supernodes(tiny_foundation, tmp_path):
    """Deployment: `fedumm flower export`, a SuperLink and two SuperNodes started as a user
    would, `flwr run` of the exported app, results written by the ServerApp, all stopped."""
    results = tmp_path / "results"
    args = ["flower", "export", "configs/quickstart.yaml", "-o", str(tmp_path / "app"),
            "--results", str(results)]  # fmt: skip
    for item in [*TINY_RUN, f"model.foundation={tiny_foundation}", *TWO_CLIENTS,
                 "federation.strategy.name=scaffold", "baselines.zero_shot=false"]:  # fmt: skip
        args += ["--set", item]
    exported = runner.invoke(app, args)
    assert exported.exit_code == 0, exported.output
    assert "partition-id=K num-partitions=2" in exported.output

    home = tmp_path / "flwr_home"
    home.mkdir()
    link = _free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "127.0.0.1:{link}"\n'
        "insecure = true\n"
    )
    bin_dir = Path(sys.executable).parent  # Flower starts its own helpers by name
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0",
           "FLWR_DISABLE_UPDATE_CHECK": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}  # fmt: skip
    logs = tmp_path / "logs"
    logs.mkdir()
    commands = [[str(bin_dir / "flower-superlink"), "--insecure", "--port", str(link),
                 "--disable-runtime-dependency-installation"]]  # fmt: skip
    for k in range(2):
        commands.append([str(bin_dir / "flower-supernode"), "--insecure", "--superlink",
                         f"127.0.0.1:{link}", "--port", str(_free_port()), "--node-config",
                         f"partition-id={k} num-partitions=2"])  # fmt: skip
    processes = []
    for i, command in enumerate(commands):
        with open(logs / f"{i}.log", "w") as log:
            processes.append(
                subprocess.Popen(
                    command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
            )
    try:
        deadline = time.time() + 60
        while _flwr("ls", "local", env=env).returncode != 0:
            assert time.time() < deadline, (logs / "0.log").read_text()[-2000:]
            time.sleep(0.5)
        run = _flwr("run", str(tmp_path / "app"), "local", "--stream", env=env, timeout=600)
        listed = json.loads(_flwr("ls", "local", "--format", "json", env=env).stdout)
        status = listed["runs"][0]["status"]
        assert status == "finished:completed", run.stdout[-3000:] + run.stderr[-3000:]
        written = json.loads((results / "results.json").read_text())
        assert len(written["rounds"]) == 2
        pids = {m["pid"] for r in written["rounds"] for m in r["client_metrics"].values()}
        assert written["flower"]["server_pid"] not in pids and os.getpid() not in pids
        assert (results / "adapter" / "adapter_config.json").is_file()
    finally:
        family = []
        for p in reversed(processes):  # the SuperNodes first, then the SuperLink
            with contextlib.suppress(ProcessLookupError, psutil.NoSuchProcess):
                family += psutil.Process(p.pid).children(recursive=True) + [psutil.Process(p.pid)]
                os.killpg(p.pid, signal.SIGTERM)
        _, alive = psutil.wait_procs(family, timeout=30)
        for p in alive:
            p.kill()
    assert all(p.poll() is not None for p in processes)
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in family)
