"""The Flower engine: Flower's simulation runtime gives the embedded engine's adapter, bytes,
losses and scores for FedAvg, SCAFFOLD (control variates in the nodes' state) and FedSA-LoRA
(personalized: nodes score their own models); an exported app deployed with `flwr run` on a
local SuperLink and two SuperNodes, separate processes, all stopped afterwards."""

import contextlib
import json
import os
import time

import psutil
import pytest
from safetensors.torch import load_file

from fedumm.cli import app
from tests.tiny import run_tiny, runner

SITES = ["site-1", "site-2"]
TWO_CLIENTS = [
    "federation.num_clients=2",
    "federation.clients_per_round=2",
    "threads=1",
    "baselines.local=false",
    "baselines.centralized=false",
]


def _runs(tmp_path, foundation, *overrides):
    runs = {}
    for engine in ("embedded", "flower"):
        out = tmp_path / engine
        result = run_tiny(out, foundation, *TWO_CLIENTS, *overrides, cli=["--engine", engine])
        assert result.exit_code == 0, result.output
        runs[engine] = (
            json.loads((out / "results.json").read_text()),
            load_file(out / "global_adapter.safetensors"),
        )
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


# By default FedSA-LoRA (personalized scoring); FedAvg is matched by the secure aggregation
# test and SCAFFOLD's node state by the deployment test below, so those two cases are slow.
@pytest.mark.parametrize(
    "strategy",
    [
        pytest.param("fedavg", marks=pytest.mark.slow),
        pytest.param("scaffold", marks=pytest.mark.slow),
        "fedsa_lora",
    ],
)
def test_flower_simulation_matches_the_embedded_engine(tiny_foundation, tmp_path, strategy):
    _assert_same(_runs(tmp_path, tiny_foundation, f"federation.strategy.name={strategy}"))


def test_secure_aggregation_through_flower_messages(tiny_foundation, tmp_path):
    """The key protocol as Flower query messages, keys signed with the sites' identities; each
    node's session (keys, shares) kept in its context.state between the protocol's messages
    and restored under the site's own policy. Uploads int8 into the masked field with error
    feedback (its residual in the node's state), the broadcast fp16: the same bytes and
    results as the embedded engine."""
    identities = tmp_path / "identities"  # the same certificates, so the same bytes
    assert runner.invoke(app, ["identities", str(identities), "--sites", "2"]).exit_code == 0
    runs = _runs(
        tmp_path,
        tiny_foundation,
        "federation.secure_aggregation.enabled=true",
        "federation.secure_aggregation.threshold=2",
        "federation.secure_aggregation.signed_keys=true",
        f"federation.secure_aggregation.identities={identities}",
        "federation.compression.upload.scheme=int8",
        "federation.compression.upload.error_feedback=true",
        "federation.compression.broadcast.scheme=fp16",
    )
    _assert_same(runs)
    for mine, theirs in zip(runs["embedded"][0]["rounds"], runs["flower"][0]["rounds"]):
        assert theirs["secagg_bytes"] == mine["secagg_bytes"] > 0


def test_a_partition_id_out_of_range_is_refused_naming_it():
    from fedumm.config import RunConfig
    from fedumm.engines.flower import _site

    config = RunConfig.model_validate(
        {"federation": {"num_clients": 2, "clients_per_round": 2}}
    ).model_dump_json()
    with pytest.raises(
        ValueError,
        match=r"partition-id 2 is out of range: this federation has "
        r"2 sites, partition-id 0\.\.1",
    ):
        _site(config, 2)


def test_flower_without_flwr_is_refused_naming_the_extra(monkeypatch, tiny_foundation, tmp_path):
    from fedumm import extras

    monkeypatch.setattr(extras, "installed", lambda module: module != "flwr")
    result = run_tiny(tmp_path / "run", tiny_foundation, cli=["--engine", "flower"])
    assert result.exit_code == 2
    assert "engine: flower needs Flower" in result.output and "fedumm[flower]" in result.output


def test_node_state_is_kept_as_json_not_pickle():
    """A node's context.state holds its secure-aggregation sessions (private keys among them)
    as JSON text, which reading runs no code from (a pickle would); they come back equal,
    and its strategy state too."""
    from types import SimpleNamespace

    import torch

    from fedumm.engines.flower import _keep, _restore
    from fedumm.federation.secure_aggregation import ClientPolicy, ClientSession

    session = ClientSession(
        "site-1",
        3,
        ClientPolicy(2),
        threshold=2,
        peers=["site-1", "site-2"],
        roster={"site-2": {"c_pk": bytes(range(32))}},
    )
    site = SimpleNamespace(state={"c_i": torch.arange(4.0)}, sessions={"site-1": session})
    state, stored = _keep(site)
    assert isinstance(stored, str)  # text, not a pickle's bytes
    assert json.loads(json.loads(stored)["site-1"])["me"] == "site-1"
    sites_own = SimpleNamespace(secagg_policy=lambda name: ClientPolicy(2))  # from its config
    back = SimpleNamespace(state={"stale": torch.zeros(1)}, sessions={}, parts=sites_own)
    _restore(back, state, stored)
    assert back.sessions == {"site-1": session}  # its policy the site's, never the stored one
    assert "policy" not in json.loads(json.loads(stored)["site-1"])
    assert back.state.keys() == {"c_i"} and torch.equal(back.state["c_i"], torch.arange(4.0))
    _restore(back, None, "")  # a node's first message: nothing kept yet
    assert back.state == {} and back.sessions == {}


def test_a_killed_site_worker_fails_its_message_and_the_next_starts_another():
    """The deployed ClientApp's forward to its SuperNode's site worker (started on demand, on a
    socket in a 0700 folder): the worker killed mid-message fails that message at once (the
    server counts the site dropped), not a hang; the next message starts a new worker, which
    answers (here: refusing a partition out of range); it exits when its SuperNode does. Workers
    are forked by one fork server per machine (torch and fedumm imported once), which exits
    after its last worker."""
    import signal
    import stat
    import subprocess

    from fedumm.config import RunConfig
    from fedumm.engines.flower_node import SITE, forward, socket_folder

    supernode = subprocess.Popen(["sleep", "600"])  # stands in for the SuperNode's process
    config = RunConfig.model_validate(
        {"federation": {"num_clients": 2, "clients_per_round": 2}}
    ).model_dump_json()
    ask = {"kind": SITE, "partition": 0, "config": config, "round": 0}

    def worker(of: int) -> psutil.Process:  # a worker: forked by the fork server, our child
        deadline, path = time.time() + 30, str(socket_folder() / f"site-worker-{of}.sock")
        while time.time() < deadline:
            for p in psutil.Process().children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    if p.ppid() != os.getpid() and any(
                        c.laddr == path for c in p.net_connections(kind="unix")
                    ):
                        return p
            time.sleep(0.05)
        raise AssertionError("no site worker started")

    other = subprocess.Popen(["sleep", "600"])  # a second SuperNode on this machine
    try:
        from concurrent.futures import ThreadPoolExecutor

        with pytest.raises(RuntimeError, match="partition-id 5 is out of range"):
            forward({**ask, "partition": 5}, {}, other.pid)  # starts the fork server
        server = psutil.Process(worker(other.pid).ppid())
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(forward, ask, {}, supernode.pid)
            first = worker(supernode.pid)
            assert first.ppid() == server.pid  # forked by the one server
            first.send_signal(signal.SIGKILL)
            with pytest.raises(RuntimeError, match="site worker of SuperNode .* failed"):
                pending.result(timeout=10)
        first.wait(5)
        folder = socket_folder()
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        with pytest.raises(RuntimeError, match="partition-id 5 is out of range"):
            forward({**ask, "partition": 5}, {}, supernode.pid)
        second = worker(supernode.pid)
        assert second.pid != first.pid
        assert second.ppid() == server.pid  # the server outlived the killed worker
        other.kill()
        other.wait()
        sock = folder / f"site-worker-{supernode.pid}.sock"
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        supernode.kill()
        supernode.wait()
        second.wait(10)  # gone with its SuperNode
        assert not sock.exists()
        server.wait(10)  # the fork server, after its last worker
    finally:
        supernode.kill()
        other.kill()
        for p in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if "fedumm.engines.flower" in p.cmdline():
                    p.kill()


def _recorded(monkeypatch, cfg, home):
    """A LocalDeployment whose processes and `flwr` calls are recorded, not run."""
    import subprocess

    from fedumm.engines.flower import LocalDeployment

    deployment, calls = LocalDeployment(cfg, home), []
    monkeypatch.setattr(deployment, "start", lambda name, command: calls.append(command))
    monkeypatch.setattr(
        deployment,
        "flwr",
        lambda *args, **kw: (
            calls.append(["flwr", *args]) or subprocess.CompletedProcess(args, 0, "", "")
        ),
    )
    deployment.start_superlink()
    deployment.start_supernodes()
    return deployment, calls


def test_a_deployment_runs_with_tls_and_supernode_authentication(monkeypatch, tmp_path, caplog):
    """flower.env deployment: the SuperLink serves TLS with a certificate fedumm made for
    127.0.0.1 and admits only registered SuperNodes; each site's key is registered, then its
    SuperNode starts verifying the SuperLink against the CA and signing with its key; `flwr`
    trusts the CA; private keys 0600. --insecure only under flower.insecure, with a warning."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key

    from fedumm.config import RunConfig

    cfg = RunConfig.model_validate({"federation": {"num_clients": 2, "clients_per_round": 2}})
    deployment, calls = _recorded(monkeypatch, cfg, tmp_path / "flower")
    certs = tmp_path / "flower" / "certificates"
    assert deployment.certs == certs.resolve()
    superlink, *rest = calls
    assert superlink[0] == "flower-superlink" and "--insecure" not in superlink
    for flag, file in (
        ("--ssl-ca-certfile", "ca.crt"),
        ("--ssl-certfile", "superlink.crt"),
        ("--ssl-keyfile", "superlink.key"),
    ):
        assert superlink[superlink.index(flag) + 1] == str(certs / file)
    assert "--enable-supernode-auth" in superlink
    assert rest[0] == ["flwr", "ls", "local"]  # waited for the SuperLink
    for i, site in enumerate(["site-1", "site-2"]):
        register, node = rest[1 + 2 * i : 3 + 2 * i]
        assert register == ["flwr", "supernode", "register", str(certs / f"{site}.pub"), "local"]
        assert node[0] == "flower-supernode" and "--insecure" not in node
        assert node[node.index("--root-certificates") + 1] == str(certs / "ca.crt")
        assert node[node.index("--auth-supernode-private-key") + 1] == str(certs / f"{site}.key")
        assert node[node.index("--node-config") + 1] == f"partition-id={i} num-partitions=2"
        key = load_ssh_private_key((certs / f"{site}.key").read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert {f.name: f.stat().st_mode & 0o777 for f in certs.iterdir() if f.suffix == ".key"} == {
        "superlink.key": 0o600,
        "site-1.key": 0o600,
        "site-2.key": 0o600,
    }
    ca = x509.load_pem_x509_certificate((certs / "ca.crt").read_bytes())
    link = x509.load_pem_x509_certificate((certs / "superlink.crt").read_bytes())
    link.verify_directly_issued_by(ca)
    names = link.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    toml = (tmp_path / "flower" / "config.toml").read_text()
    assert f'root-certificates = "{certs / "ca.crt"}"' in toml and "insecure" not in toml

    insecure = cfg.model_copy(update={"flower": cfg.flower.model_copy(update={"insecure": True})})
    with caplog.at_level("WARNING", logger="fedumm"):
        _, calls = _recorded(monkeypatch, insecure, tmp_path / "insecure")
    assert [c[1] for c in calls if c[0].startswith("flower-")] == ["--insecure"] * 3
    assert not any("register" in c for c in calls)
    assert "runs without TLS and admits any SuperNode" in caplog.text
    assert not (tmp_path / "insecure" / "certificates").exists()


def test_the_deployment_refuses_supernodes_without_a_registered_key(tmp_path):
    """The SuperLink fedumm starts, with two registered SuperNodes online: a SuperNode without
    a key, one with a key nobody registered, and one without TLS all fail to join and exit;
    the SuperLink logs why, and lists only the two sites."""
    from fedumm.config import RunConfig
    from fedumm.engines.flower import (
        LocalDeployment,
        _free_port,
        supernode_command,
        write_certificates,
    )

    cfg = RunConfig.model_validate({"federation": {"num_clients": 2, "clients_per_round": 2}})
    deployment = LocalDeployment(cfg, tmp_path / "flower")
    stranger = write_certificates(tmp_path / "stranger", ["127.0.0.1"], ["site-1"])
    try:
        deployment.start_superlink()
        deployment.start_supernodes()
        signed = supernode_command(deployment.certs, deployment.address, deployment.sites, 0)
        at = signed.index("--auth-supernode-private-key")
        before, after = signed[:at], signed[at + 2 :]
        intruders = {
            "no-key": before + after,
            "unregistered-key": [*before, signed[at], str(stranger / "site-1.key"), *after],
            "no-tls": ["flower-supernode", "--insecure", "--superlink", deployment.address],
        }
        started = {
            name: deployment.start(
                name, [*command, "--port", str(_free_port()), "--max-retries", "1"]
            )
            for name, command in intruders.items()
        }
        for name, process in started.items():
            assert process.wait(timeout=120) != 0, name
            log = (tmp_path / "flower" / "logs" / f"{name}.log").read_text()
            assert "Failed to initialize the connection to the SuperLink" in log, name
        superlink = (tmp_path / "flower" / "logs" / "superlink.log").read_text()
        assert "[/v1/fleet/register-node][ApiError" in superlink  # no key: no self-registration
        assert "No SuperNode found with the given public key" in superlink  # unregistered key
        deadline, online = time.time() + 60, []
        while len(online) < 2 and time.time() < deadline:
            listed = deployment.flwr("supernode", "ls", "local", "--format", "json")
            online = [n for n in json.loads(listed.stdout)["nodes"] if n["status"] == "online"]
            time.sleep(0.5)
        assert len(online) == 2  # the registered sites joined; nobody else
        assert len(json.loads(listed.stdout)["nodes"]) == 2
    finally:
        deployment.stop()


def test_export_writes_an_app_that_flwr_run_deploys(tmp_path):
    import subprocess
    import sys
    import zipfile
    from pathlib import Path

    import tomllib

    result = runner.invoke(
        app,
        [
            "flower",
            "export",
            "configs/quickstart.yaml",
            "-o",
            str(tmp_path / "app"),
            "--results",
            "/srv/fedumm/results",
            "--superlink",
            "link.example.org:9443",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "partition-id=K num-partitions=8" in result.output
    assert str(tmp_path / "app" / "README.md") in result.output
    # TLS and SuperNode authentication: the certificate for the SuperLink's host, a key pair
    # per site, and the commands that use them, none with --insecure.
    certs = tmp_path / "app" / "certificates"
    from cryptography import x509

    link = x509.load_pem_x509_certificate((certs / "superlink.crt").read_bytes())
    names = link.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "link.example.org" in names.get_values_for_type(x509.DNSName)
    assert {f.name for f in certs.glob("site-*.key")} == {f"site-{k}.key" for k in range(1, 9)}
    assert {(f.stat().st_mode & 0o777) for f in certs.glob("*.key")} == {0o600}
    readme = (tmp_path / "app" / "README.md").read_text()
    assert "insecure" not in readme
    assert (
        "flower-superlink --ssl-ca-certfile certificates/ca.crt --ssl-certfile "
        "certificates/superlink.crt --ssl-keyfile certificates/superlink.key "
        "--enable-supernode-auth --host 0.0.0.0 --port 9443"
    ) in readme
    assert "flwr supernode register certificates/site-8.pub fedumm" in readme
    assert (
        "flower-supernode --root-certificates certificates/ca.crt "
        "--auth-supernode-private-key certificates/site-8.key --superlink "
        "link.example.org:9443 --node-config 'partition-id=7 num-partitions=8'"
    ) in readme
    # `flwr run` ships the app as a FAB: no key or certificate travels in it.
    flwr = Path(sys.executable).parent / "flwr"
    built = subprocess.run(
        [str(flwr), "build", "--app", str(tmp_path / "app")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (fab,) = tmp_path.glob("*.fab")
    assert sorted(zipfile.ZipFile(fab).namelist()) == [
        ".info/CONTENT",
        "README.md",
        "fedumm_app.py",
        "pyproject.toml",
    ]
    loaded = subprocess.run(  # what the process Flower starts per message imports
        [
            sys.executable,
            "-c",
            "import sys; import fedumm_app; fedumm_app.client_app; "
            "print(sorted(m for m in ('torch', 'fedumm.engines') if m in sys.modules))",
        ],
        cwd=tmp_path / "app",
        capture_output=True,
        text=True,
    )
    assert loaded.stdout.strip() == "[]", loaded.stdout + loaded.stderr
    project = tomllib.loads((tmp_path / "app" / "pyproject.toml").read_text())["tool"]["flwr"]
    assert project["app"]["components"] == {
        "serverapp": "fedumm_app:server_app",
        "clientapp": "fedumm_app:client_app",
    }
    config = json.loads(project["app"]["config"]["fedumm-config"])
    assert config["engine"] == "flower" and config["federation"]["num_clients"] == 8
    assert project["app"]["config"]["out-dir"] == "/srv/fedumm/results"
    result = runner.invoke(app, ["flower", "export", "configs/quickstart.yaml", "--results", "r"])
    assert result.exit_code == 2 and "give an absolute path" in result.output


# Two processes per site (slow: 21 s more of imports; by default tests/test_client_processes.py)
@pytest.mark.parametrize("processes", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_a_deployment_on_a_superlink_and_two_supernodes(tiny_foundation, tmp_path, processes):
    """flower.env deployment: the exported app started with `flwr run` on a SuperLink and two
    SuperNodes, separate processes (a fresh ClientApp process per message, forwarding to the
    SuperNode's site worker, which built the model once: every round's training ran in the
    same process), all stopped after, site workers included; the same adapter as the embedded
    engine, SCAFFOLD's c_i kept by the SuperNodes; with `processes` 2, each site trained by
    two processes (runtime.client_devices), the worker being rank 0, the one that answers
    Flower."""
    runs, start = {}, time.time()
    for engine, extra in (("embedded", []), ("flower", ["flower.env=deployment"])):
        out = tmp_path / engine
        result = run_tiny(
            out,
            tiny_foundation,
            *TWO_CLIENTS,
            "federation.strategy.name=scaffold",
            "baselines.zero_shot=false",
            f"runtime.client_devices={processes}",
            *extra,
            cli=["--engine", engine],
        )
        assert result.exit_code == 0, result.output
        runs[engine] = (
            json.loads((out / "results.json").read_text()),
            load_file(out / "global_adapter.safetensors"),
        )
    _assert_same(runs)
    rounds = runs["flower"][0]["rounds"]
    trained_in = {site: {r["client_metrics"][site]["pid"] for r in rounds} for site in SITES}
    assert all(len(pids) == 1 for pids in trained_in.values()), trained_in  # built once
    assert len({pid for pids in trained_in.values() for pid in pids}) == 2  # a worker per site
    trained_by = {m.get("processes", 1) for r in rounds for m in r["client_metrics"].values()}
    assert trained_by == {processes}
    home = tmp_path / "flower" / "flower"
    assert (home / "logs" / "site-2.log").is_file()
    assert "root-certificates" in (home / "config.toml").read_text()  # TLS, fedumm's own CA
    assert (home / "certificates" / "site-2.key").is_file()  # the nodes' authentication keys
    names = ("flower-super", "flwr-serverapp", "flwr-clientapp", "fedumm.engines.flower")
    flower = [  # and a site worker's fork server for its peers, orphaned if it outlived it
        p
        for p in psutil.process_iter(["cmdline", "create_time", "status", "ppid"])
        if p.info["create_time"] >= start
        and p.info["status"] != psutil.STATUS_ZOMBIE
        and (
            any(n in " ".join(p.info["cmdline"] or []) for n in names)
            or "forkserver" in " ".join(p.info["cmdline"] or [])
            and p.info["ppid"] == 1
        )
    ]
    assert not flower, [p.info["cmdline"] for p in flower]


def test_your_own_certificates_are_checked_and_used(tmp_path):
    """flower.certificates: the export's commands use your folder (and write no keys of their
    own); a file it lacks is refused naming the key and the path, before any work, by the
    export and by a deployment. flower.insecure is for local debugging: no export, no
    certificates."""
    from pydantic import ValidationError

    from fedumm.config import ConfigError, RunConfig
    from fedumm.engines.flower import run_flower, write_certificates

    mine = write_certificates(tmp_path / "mine", ["link.example.org"], ["site-1", "site-2"])
    two = ["--set", "federation.num_clients=2", "--set", "federation.clients_per_round=2"]

    def export(out, *settings):
        return runner.invoke(
            app,
            [
                "flower",
                "export",
                "configs/quickstart.yaml",
                "-o",
                str(out),
                "--superlink",
                "link.example.org:9443",
                *two,
                *(a for s in settings for a in ("--set", s)),
            ],
        )

    result = export(tmp_path / "app", f"flower.certificates={mine}")
    assert result.exit_code == 0, result.output
    readme = (tmp_path / "app" / "README.md").read_text()
    assert f"--ssl-certfile {mine / 'superlink.crt'}" in readme
    assert f"--auth-supernode-private-key {mine / 'site-2.key'}" in readme
    assert not (tmp_path / "app" / "certificates").exists()

    (mine / "site-2.pub").unlink()
    result = export(tmp_path / "app2", f"flower.certificates={mine}")
    assert result.exit_code == 2
    assert f"flower.certificates: {mine / 'site-2.pub'} does not exist" in result.output
    assert not (tmp_path / "app2").exists()
    cfg = RunConfig.model_validate(
        {
            "federation": {"num_clients": 2, "clients_per_round": 2},
            "engine": "flower",
            "flower": {"env": "deployment", "certificates": str(mine)},
        }
    )
    with pytest.raises(ConfigError, match=f"flower.certificates: {mine / 'site-2.pub'} does"):
        run_flower(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()

    with pytest.raises(ValidationError, match="certificates with insecure"):
        cfg.flower.model_validate({"insecure": True, "certificates": str(mine)})
    result = export(tmp_path / "app3", "flower.insecure=true")
    assert result.exit_code == 2 and "flower.insecure: an exported app" in result.output
    assert not (tmp_path / "app3").exists()
