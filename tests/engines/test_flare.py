"""The NVIDIA FLARE engine: the same job through FLARE's simulator gives the embedded engine's
adapter, for FedAvg, SCAFFOLD (control variates live in the client processes) and FedSA-LoRA
(personalized: clients score their own models); POC with real processes; faults; export."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import psutil
import pytest
import torch
from safetensors.torch import load_file

from fedumm.cli import app
from fedumm.config import RunConfig
from fedumm.engines.flare import last_trained
from fedumm.engines.flare_client import CRASH_ENV, SiteState, StateMissing
from fedumm.engines.site import site_config
from tests.tiny import TINY_RUN, run_tiny, runner, wait_for_checkpoint

TWO_CLIENTS = [
    "federation.num_clients=2",
    "federation.clients_per_round=2",
    "threads=1",
    "baselines.local=false",
    "baselines.centralized=false",
]
SECURE = [
    *TWO_CLIENTS,
    "federation.num_clients=3",
    "federation.clients_per_round=3",
    "federation.secure_aggregation.enabled=true",
    "federation.secure_aggregation.threshold=2",
]


# By default FedSA-LoRA (personalized scoring); FedAvg is matched (masked) by the POC test and
# SCAFFOLD's client states by the resume-after-kill test, so those two cases are slow.
@pytest.mark.parametrize(
    "strategy",
    [
        pytest.param("fedavg", marks=pytest.mark.slow),
        pytest.param("scaffold", marks=pytest.mark.slow),
        "fedsa_lora",
    ],
)
def test_flare_simulator_matches_the_embedded_engine(tiny_foundation, tmp_path, strategy):
    """Under compressed messages (int4 uploads with error feedback, a bf16 broadcast: the
    top-k case and the sites' residual files are in test_compression_engines.py, slow).
    SCAFFOLD's case (slow) trains each client on two processes (runtime.client_devices: only
    rank 0, the site, talks to FLARE's server; by default tests/test_client_processes.py and
    Flower's deployment test run them)."""
    runs = {}
    compressed = [
        "federation.compression.upload.scheme=int4",
        "federation.compression.upload.error_feedback=true",
        "federation.compression.broadcast.scheme=bf16",
    ]
    if strategy == "scaffold":
        compressed.append("runtime.client_devices=2")
    for engine in ("embedded", "flare"):
        out = tmp_path / engine
        name = f"federation.strategy.name={strategy}"
        where = ["flare.site_devices={site-1: cpu, site-2: cpu}"] if engine == "flare" else []
        result = run_tiny(
            out, tiny_foundation, *TWO_CLIENTS, name, *compressed, *where, cli=["--engine", engine]
        )
        assert result.exit_code == 0, result.output
        runs[engine] = (
            json.loads((out / "results.json").read_text()),
            load_file(out / "global_adapter.safetensors"),
        )
    (embedded, a), (flare, b) = runs["embedded"], runs["flare"]
    # FedSA-LoRA's B stays on the clients: FLARE asks them to score their own models.
    assert flare["final"]["metrics"] == embedded["final"]["metrics"]
    assert a.keys() == b.keys() and len(a) > 0
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-5
    assert max(float(a[k].abs().max()) for k in a) > 1e-3  # the adapter did train
    for mine, theirs in zip(embedded["rounds"], flare["rounds"]):
        assert mine["bytes_up"] == theirs["bytes_up"] and mine["bytes_down"] == theirs["bytes_down"]
        for site, metrics in mine["client_metrics"].items():
            assert theirs["client_metrics"][site]["loss"] == pytest.approx(metrics["loss"], 1e-6)
            assert theirs["client_metrics"][site]["device"] == "cpu"  # flare.site_devices
            if strategy == "scaffold":
                assert theirs["client_metrics"][site]["processes"] == 2  # client_devices
    # Only adapters travel, from round 1 on: no message carries the base model.
    full = flare["communication"]["full_model_message_bytes"]
    assert all(r["bytes_down"] < full for r in flare["rounds"])
    assert (tmp_path / "flare" / "report.md").is_file()
    assert (tmp_path / "flare" / "flare" / "fedumm" / "server" / "log.txt").is_file()


def test_an_unknown_engine_is_refused(tiny_foundation, tmp_path):
    result = run_tiny(tmp_path / "b", tiny_foundation, cli=["--engine", "ftp"])
    assert result.exit_code == 2
    assert "engine: Input should be 'embedded', 'flare' or 'flower'" in result.output


def test_poc_mode_runs_real_processes_and_stops_them(tiny_foundation, tmp_path):
    """FedAvg under secure aggregation through POC (a server and a client per site, as
    separate processes; the key protocol as FLARE tasks between them, each site signing its
    keys with its provisioned startup kit), the model sent down compressed (int8, seeded
    stochastic rounding: federation.compression) and the uploads int8 into the masked field:
    the unsigned embedded run's adapter, model bytes, client losses and scores; nothing left
    running."""
    runs = {}
    signed = ["federation.secure_aggregation.signed_keys=true"]
    down = [
        "federation.compression.broadcast.scheme=int8",
        "federation.compression.upload.scheme=int8",
    ]
    for engine, env, extra in (("embedded", [], []), ("flare", ["--flare-env", "poc"], signed)):
        out = tmp_path / engine
        result = run_tiny(
            out, tiny_foundation, *SECURE, *down, *extra, cli=["--engine", engine, *env]
        )
        assert result.exit_code == 0, result.output
        runs[engine] = json.loads((out / "results.json").read_text())
    a = load_file(tmp_path / "embedded" / "global_adapter.safetensors")
    b = load_file(tmp_path / "flare" / "global_adapter.safetensors")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-5
    embedded, flare = runs["embedded"], runs["flare"]
    assert flare["config"]["federation"]["compression"]["broadcast"]["scheme"] == "int8"
    assert flare["config"]["federation"]["compression"]["upload"]["scheme"] == "int8"
    assert flare["final"]["metrics"] == embedded["final"]["metrics"]
    assert flare["baselines"]["zero_shot"] == embedded["baselines"]["zero_shot"]
    for mine, theirs in zip(embedded["rounds"], flare["rounds"]):
        model = lambda r: r["bytes_up"] + r["bytes_down"] - r["secagg_bytes"]  # noqa: E731
        assert model(mine) == model(theirs)
        assert theirs["secagg_bytes"] > mine["secagg_bytes"] > 0  # certificates and signatures
        assert mine["metrics"] == theirs["metrics"]
        for site, metrics in mine["client_metrics"].items():
            assert theirs["client_metrics"][site]["loss"] == pytest.approx(metrics["loss"], 1e-6)
    clients = {site: m["pid"] for r in flare["rounds"] for site, m in r["client_metrics"].items()}
    server = flare["flare"]["server_pid"]
    assert flare["flare"]["env"] == "poc" and len({*clients.values(), server, os.getpid()}) == 5
    assert not any(psutil.pid_exists(pid) for pid in [*clients.values(), server])
    assert not [
        p
        for p in psutil.process_iter(["cmdline"])
        if "nvflare" in " ".join(p.info["cmdline"] or [])
    ]


def test_export_writes_a_job_a_deployment_can_run(tmp_path):
    result = runner.invoke(
        app,
        [
            "flare",
            "export",
            "configs/quickstart.yaml",
            "-o",
            str(tmp_path),
            "--set",
            "federation.num_clients=3",
            "--set",
            "federation.clients_per_round=3",
            "--set",
            "flare.site_devices=[cuda:0, cuda:1]",
            "--results",
            "/srv/fedumm/run1",
        ],
    )
    assert result.exit_code == 0, result.output
    job = tmp_path / "fedumm"
    meta = json.loads((job / "meta.json").read_text())
    sites = {f"app_site-{i}": [f"site-{i}"] for i in (1, 2, 3)}
    assert meta["deploy_map"] == {"app_server": ["server"], **sites}
    server = json.loads((job / "app_server" / "config" / "config_fed_server.json").read_text())
    controller = server["workflows"][0]
    assert controller["path"] == "fedumm.engines.flare.FedummController"
    assert controller["args"]["out_dir"] == "/srv/fedumm/run1"
    shipped = json.loads(controller["args"]["config"])
    assert shipped["federation"]["num_clients"] == 3 and shipped["engine"] == "flare"
    # Each site's device travels in the job; sites take them in turn (site-3 shares cuda:0).
    cfg = RunConfig.model_validate(shipped)
    devices = [site_config(cfg, f"site-{i}").runtime.device for i in (1, 2, 3)]
    assert devices == ["cuda:0", "cuda:1", "cuda:0"]
    for i in (1, 2, 3):
        custom = job / f"app_site-{i}" / "custom"
        assert (custom / "flare_client.py").is_file()
        assert json.loads((custom / "fedumm_config.json").read_text()) == shipped
        client = (job / f"app_site-{i}" / "config" / "config_fed_client.json").read_text()
        assert '"task_script_path": "flare_client.py"' in client  # relative: runs anywhere


def test_a_crashed_client_does_not_hang_the_job(tiny_foundation, tmp_path, monkeypatch):
    monkeypatch.setenv(CRASH_ENV, "site-2@2")  # site-2's process dies when round 2 starts
    # Round 1's wait includes the sites' start-up (model and data): 10-12 s on a slow 2-core
    # machine, where a 12 s timeout once dropped both sites; round 2 waits it out for site-2.
    crash = [*TWO_CLIENTS, "flare.round_timeout=25", "federation.min_clients=1"]
    result = run_tiny(tmp_path / "on", tiny_foundation, *crash, cli=["--engine", "flare"])
    assert result.exit_code == 0, result.output
    rounds = json.loads((tmp_path / "on" / "results.json").read_text())["rounds"]
    assert sorted(rounds[0]["client_metrics"]) == ["site-1", "site-2"]
    assert list(rounds[1]["client_metrics"]) == ["site-1"] and rounds[1]["dropped"] == ["site-2"]


@pytest.mark.slow  # the round loop's min_clients rule itself: tests/federation/test_server.py
def test_a_crash_that_leaves_too_few_clients_stops_the_job(tiny_foundation, tmp_path, monkeypatch):
    """Needing both clients, the job stops with the reason and keeps round 1's adapter."""
    monkeypatch.setenv(CRASH_ENV, "site-2@2")
    strict = [*TWO_CLIENTS, "flare.round_timeout=12", "federation.min_clients=2"]
    result = run_tiny(tmp_path / "off", tiny_foundation, *strict, cli=["--engine", "flare"])
    assert result.exit_code == 1
    assert "FLARE job failed: RoundFailed: round 2: 1 valid update(s) of 2 sampled" in result.output
    assert "the last good global adapter (round 1) is in the checkpoint" in result.output


def test_a_flare_projects_startup_kits_are_site_identities(tmp_path):
    """The certificates FLARE provisions (RSA, issued by the project's root, common name = the
    site) sign secure aggregation's keys; another site's kit does not pass as this one."""
    from nvflare.recipe import poc_env

    from fedumm.federation.identity import Identities, IdentityError, load_identity, verify

    sites = ["site-1", "site-2", "site-3"]
    poc_env.prepare_poc_provision(
        clients=sites, number_of_clients=3, workspace=str(tmp_path), docker_image=None
    )
    kits = tmp_path / "example_project" / "prod_00"
    one, two = load_identity(kits, "site-1"), load_identity(kits, "site-2")
    verify(one.root_pem, "site-1", one.certificate_pem, b"keys", one.sign(b"keys"))
    with pytest.raises(IdentityError, match="is \\['site-2'\\]'s"):
        verify(one.root_pem, "site-1", two.certificate_pem, b"keys", two.sign(b"keys"))
    with pytest.raises(IdentityError, match="not site-1's"):
        verify(one.root_pem, "site-1", one.certificate_pem, b"keys", two.sign(b"keys"))
    server_only = tmp_path / "server-machine"  # the server's machine holds its own kit only
    shutil.copytree(kits / "server", server_only / "server")
    assert Identities(server_only, sites).root == Identities(kits, sites).root == one.root_pem


def test_poc_refuses_a_port_in_use(tiny_foundation, tmp_path):
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past an old TIME_WAIT
        squatter.bind(("127.0.0.1", 8002))  # the POC server's port
        squatter.listen()
        result = run_tiny(
            tmp_path / "poc",
            tiny_foundation,
            *TWO_CLIENTS,
            cli=["--engine", "flare", "--flare-env", "poc"],
        )
    assert result.exit_code == 1
    assert "port 8002 (fed_learn_port of the FLARE POC server" in result.output
    assert "already in use" in result.output


def test_site_devices_are_checked_and_named(tiny_foundation, tmp_path):
    from fedumm.config import ConfigError, load_config

    cfg = load_config(None, ["flare.site_devices={site-2: cuda:7}", "engine=flare"])
    assert site_config(cfg, "site-1").runtime.device == "auto"  # unnamed: runtime.device
    assert site_config(cfg, "site-2").runtime.device == "cuda:7"
    with pytest.raises(ConfigError, match="flare.site_devices names site-9, which is not a site"):
        load_config(None, ["flare.site_devices={site-9: cpu}"])
    with pytest.raises(ConfigError, match="flare.site_devices: Value error, unknown device 'gpu0'"):
        load_config(None, ["flare.site_devices=[gpu0]"])
    # A simulator site on a GPU this machine lacks: refused before FLARE starts.
    missing = f"cuda:{torch.cuda.device_count()}"
    result = run_tiny(
        tmp_path / "sim",
        tiny_foundation,
        *TWO_CLIENTS,
        f"flare.site_devices={{site-2: '{missing}'}}",
        cli=["--engine", "flare"],
    )
    assert result.exit_code == 2
    assert f"flare.site_devices (site-2): '{missing}' asked for" in result.output
    assert not (tmp_path / "sim" / "flare").exists()


@pytest.mark.slow  # by default through POC: test_poc_mode_runs_real_processes_and_stops_them
def test_secure_aggregation_across_flare_processes(tiny_foundation, tmp_path):
    """The key protocol as FLARE tasks between the simulator's processes: the embedded
    engine's adapter and bytes."""
    runs = {}
    for engine in ("embedded", "flare"):
        result = run_tiny(tmp_path / engine, tiny_foundation, *SECURE, cli=["--engine", engine])
        assert result.exit_code == 0, result.output
        runs[engine] = (
            json.loads((tmp_path / engine / "results.json").read_text()),
            load_file(tmp_path / engine / "global_adapter.safetensors"),
        )
    (embedded, a), (flare, b) = runs["embedded"], runs["flare"]
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-5
    for mine, theirs in zip(embedded["rounds"], flare["rounds"]):
        assert theirs["secagg_bytes"] == mine["secagg_bytes"] > 0
        assert (theirs["bytes_up"], theirs["bytes_down"]) == (mine["bytes_up"], mine["bytes_down"])


@pytest.mark.slow  # dropouts after masking, unmasked from shares: tests/federation (embedded)
def test_a_flare_site_that_dies_after_masking_still_counts(tiny_foundation, tmp_path, monkeypatch):
    """A site that dies after masking (before it hands over its shares): its update still
    counts, unmasked from the others' shares; the next round it is dropped."""
    monkeypatch.setenv(CRASH_ENV, "site-2@2:secagg_unmask")
    crash = [*SECURE, "flare.round_timeout=20", "federation.rounds=3"]
    result = run_tiny(tmp_path / "crash", tiny_foundation, *crash, cli=["--engine", "flare"])
    assert result.exit_code == 0, result.output
    rounds = json.loads((tmp_path / "crash" / "results.json").read_text())["rounds"]
    assert "site-2" in rounds[1]["client_metrics"] and rounds[1]["aborted"] is None
    assert rounds[2]["dropped"] == ["site-2"] and rounds[2]["aborted"] is None  # gone


def _flare_command(out, foundation, *overrides):
    args = [
        sys.executable,
        "-m",
        "fedumm.cli",
        "run",
        "configs/quickstart.yaml",
        "-o",
        str(out),
        "--quiet",
        "--engine",
        "flare",
    ]
    for item in [*TINY_RUN, f"model.foundation={foundation}", *overrides]:
        args += ["--set", item]
    return args


def test_a_killed_flare_run_resumes_to_the_uninterrupted_result(tiny_foundation, tmp_path):
    """SIGKILL to the whole simulator (server and site processes) after round 2 of 4; then
    `fedumm run --resume`: the server continues from its checkpoint, each site (SCAFFOLD's
    control variate) from its own state of that round; the adapter is the one of a run never
    interrupted."""
    longer = [*TWO_CLIENTS, "federation.rounds=4", "federation.strategy.name=scaffold"]
    clean = run_tiny(tmp_path / "clean", tiny_foundation, *longer)
    assert clean.exit_code == 0, clean.output
    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        _flare_command(killed, tiny_foundation, *longer),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_checkpoint(proc, killed, 2)
    assert proc.poll() is None, "the run finished before it could be killed"
    tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for p in tree:  # the simulator's server and sites run in sessions of their own
        p.send_signal(signal.SIGKILL)
    psutil.wait_procs(tree, timeout=30)
    proc.wait()
    assert not (killed / "results.json").exists()
    assert json.loads((killed / "checkpoint.json").read_text())["round"] < 4
    assert list((killed / "flare" / "state" / "site-1").glob("state-*.safetensors"))

    _assert_resumes_to(killed, tmp_path / "clean", rounds=4)


@pytest.mark.slow  # the retention and refusal rules: test_site_state_* below, without FLARE
def test_a_flare_run_stopped_rounds_after_its_checkpoint_resumes_each_site_from_it(
    tiny_foundation, tmp_path, monkeypatch
):
    """SCAFFOLD checkpointed every 5 rounds; site-2 dies at round 9, so the job stops with the
    checkpoint of round 5 while the sites have trained up to round 8 (site-1: 9). Each site
    still has its control variate of round 5; resumed without one file, the job is refused
    naming it; with it, the adapter is the one of a run never interrupted."""
    longer = [
        *TWO_CLIENTS,
        "federation.rounds=10",
        "federation.strategy.name=scaffold",
        "checkpoint_every=5",
        "federation.min_clients=2",
        "flare.round_timeout=25",
    ]  # round 1's wait includes the sites' start-up
    clean = run_tiny(tmp_path / "clean", tiny_foundation, *longer)
    assert clean.exit_code == 0, clean.output
    killed = tmp_path / "killed"
    monkeypatch.setenv(CRASH_ENV, "site-2@9")
    stopped = run_tiny(killed, tiny_foundation, *longer, cli=["--engine", "flare"])
    monkeypatch.delenv(CRASH_ENV)
    assert stopped.exit_code == 1 and "RoundFailed: round 9" in stopped.output, stopped.output
    assert json.loads((killed / "checkpoint.json").read_text())["round"] == 5
    state = killed / "flare" / "state"
    assert (state / "site-1" / "state-00009.safetensors").is_file()  # trained past round 5

    needed = state / "site-1" / "state-00005.safetensors"
    aside = needed.rename(tmp_path / needed.name)
    refused = runner.invoke(app, ["run", "--resume", str(killed), "--quiet"])
    assert refused.exit_code == 1
    assert f"site-1 cannot resume after round 5: its state file {needed} is missing" in (
        refused.output
    )
    assert not (killed / "results.json").exists()
    aside.rename(needed)

    _assert_resumes_to(killed, tmp_path / "clean", rounds=10)


def _assert_resumes_to(killed, clean, rounds: int) -> None:
    """`fedumm run --resume` of the run in `killed` ends as the uninterrupted run in `clean`:
    the same adapter (1e-5), rounds 1..`rounds`, and every client's loss in every round."""
    result = runner.invoke(app, ["run", "--resume", str(killed), "--quiet"])
    assert result.exit_code == 0, result.output
    a = load_file(clean / "global_adapter.safetensors")
    b = load_file(killed / "global_adapter.safetensors")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-5
    resumed = json.loads((killed / "results.json").read_text())
    reference = json.loads((clean / "results.json").read_text())
    assert [r["round"] for r in resumed["rounds"]] == list(range(1, rounds + 1))
    for mine, theirs in zip(reference["rounds"], resumed["rounds"]):
        for site, m in mine["client_metrics"].items():
            assert theirs["client_metrics"][site]["loss"] == pytest.approx(m["loss"], 1e-6)


def _site_rounds(folder) -> list[int]:
    return sorted(int(p.stem.split("-")[1]) for p in folder.glob("state-*.safetensors"))


def _train(kept: SiteState, rnd: int, keep_from: int) -> None:
    """A round's training as the site does it: the state changed, then kept."""
    kept.state["c"] = torch.full((2,), float(rnd))
    kept.after(rnd, keep_from)


def test_site_state_keeps_back_to_the_checkpoint_and_resumes_from_it(tmp_path):
    """Checkpoints every 5 rounds (as the server says them: the latest before each round),
    the job stopped in round 9: the sites keep their state of round 5, and a resumed job
    restores it, dropping the stopped run's later files."""
    folder = tmp_path / "site-1"
    kept = SiteState(folder, {})
    kept.before(resumed=0)
    for rnd in range(1, 10):
        _train(kept, rnd, keep_from=5 * ((rnd - 1) // 5))
    assert _site_rounds(folder) == [5, 6, 7, 8, 9]
    again = SiteState(folder, {})
    again.before(resumed=5, trained=5)
    assert again.state["c"].tolist() == [5.0, 5.0]
    assert _site_rounds(folder) == [5]
    _train(again, 6, keep_from=5)
    assert _site_rounds(folder) == [5, 6]
    _train(again, 11, keep_from=10)  # not sampled in 7-10: a resume from 10 needs round 6
    assert _site_rounds(folder) == [6, 11]
    _train(again, 12, keep_from=11)
    assert _site_rounds(folder) == [11, 12]


def test_site_state_of_a_site_that_skipped_rounds(tmp_path):
    """Sampled in rounds 1 and 3 only, checkpoint 5: its file of round 3 is the one kept and
    restored; one that never trained before the checkpoint resumes empty."""
    folder = tmp_path / "site-2"
    kept = SiteState(folder, {})
    for rnd, keep_from in ((1, 0), (3, 0), (7, 5), (8, 5)):
        _train(kept, rnd, keep_from)
    assert _site_rounds(folder) == [3, 7, 8]
    again = SiteState(folder, {})
    again.before(resumed=5, trained=3)
    assert again.state["c"].tolist() == [3.0, 3.0]
    fresh = SiteState(tmp_path / "site-3", {})
    fresh.before(resumed=5, trained=0)
    assert fresh.state == {}


def test_site_state_refuses_to_resume_without_the_file_it_needs(tmp_path):
    folder = tmp_path / "site-1"
    kept = SiteState(folder, {})
    for rnd in (1, 2, 3, 4, 5, 6):
        _train(kept, rnd, keep_from=rnd)  # keeps the newest only: as without checkpoints
    missing = folder / "state-00005.safetensors"
    with pytest.raises(
        StateMissing,
        match=f"site-1 cannot resume after round 5: its state file {missing} is missing",
    ):
        SiteState(folder, {}).before(resumed=5, trained=5)
    (folder / "state-00006.safetensors").unlink()
    with pytest.raises(StateMissing, match="the state files there: none"):
        SiteState(folder, {}).before(resumed=5, trained=4)
    assert SiteState(folder, {}).before(resumed=5, trained=0) is None  # never trained: empty


def test_site_state_of_a_fresh_job_starts_empty(tmp_path):
    """A fresh job ignores what an earlier job left in the folder, and deletes it."""
    folder = tmp_path / "site-1"
    _train(SiteState(folder, {}), 4, keep_from=0)
    kept = SiteState(folder, {})
    kept.before(resumed=0)
    assert kept.state == {} and _site_rounds(folder) == []


def test_the_server_knows_each_sites_last_answered_round():
    records = [
        {"round": 1, "client_metrics": {"site-1": {}, "site-2": {}}},
        {"round": 2, "client_metrics": {"site-1": {}}},
        {"round": 3, "client_metrics": {}},
    ]
    assert last_trained(records) == {"site-1": 2, "site-2": 1}


@pytest.mark.slow
def test_a_killed_poc_server_resumes_to_the_uninterrupted_result(tiny_foundation, tmp_path):
    """POC: the FLARE server process killed after round 2 of 4; the job fails, fedumm stops
    every POC process; `fedumm run --resume` provisions again and continues from the
    server's checkpoint and each site's state."""
    longer = [
        *TWO_CLIENTS,
        "federation.rounds=4",
        "federation.strategy.name=scaffold",
        "flare.round_timeout=20",
    ]
    clean = run_tiny(tmp_path / "clean", tiny_foundation, *longer)
    assert clean.exit_code == 0, clean.output
    killed = tmp_path / "killed"
    command = _flare_command(killed, tiny_foundation, *longer, "flare.env=poc")
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for_checkpoint(proc, killed, 2)
    servers = [
        p
        for p in psutil.process_iter(["cmdline"])
        if "nvflare.private.fed.app.server" in " ".join(p.info["cmdline"] or [])
    ]
    assert servers, f"no POC server process found; the run said: {proc.communicate()[1][-2000:]}"
    for p in servers:
        p.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 1 and "FLARE job failed" in err
    assert not (killed / "results.json").exists()

    result = runner.invoke(app, ["run", "--resume", str(killed), "--quiet"])
    assert result.exit_code == 0, result.output
    a = load_file(tmp_path / "clean" / "global_adapter.safetensors")
    b = load_file(killed / "global_adapter.safetensors")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-5
    assert not [
        p
        for p in psutil.process_iter(["cmdline"])
        if "nvflare" in " ".join(p.info["cmdline"] or [])
    ]
