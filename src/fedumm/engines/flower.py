"""The Flower engine: the same federation as a Flower app, in Flower's simulation runtime or
deployed with `flwr run` on a SuperLink and its SuperNodes.

Server: a `ServerApp` whose main is our `run_experiment` with a `FlowerTransport` (the round
loop's `Transport`): each round's broadcast goes to the round's clients as Flower `train`
messages through the `Grid`, and their uploads come back as the replies; so fedumm's strategy
aggregates, not Flower's. Clients: a `ClientApp` whose messages a `Site` (engines/site.py)
answers for the SuperNode's partition id (site-1 is partition 0): in the simulation's own
process; in a deployment, where Flower starts a process per message, in a site worker per
SuperNode that builds the model once (`answer`, `serve_site_worker`; why and how:
engines/flower_node.py). What a strategy keeps on a client (SCAFFOLD's
c_i, FedSA-LoRA's B) and its secure-aggregation session live in the node's `context.state`
(tensors and JSON, no pickle), which Flower keeps between messages. Messages carry our
serialized tensors (`wire.pack`) as raw arrays of an `ArrayRecord`, so the bytes counted are
those of the embedded engine. Deployments (local, or exported) run with TLS and SuperNode
authentication: only SuperNodes whose public key was registered join.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from fedumm.config import RunConfig
from fedumm.engines.site import update_of
from fedumm.federation import wire
from fedumm.federation.client import ClientData, site_names
from fedumm.federation.update import ClientUpdate, Params
from fedumm.recipe import run_experiment
from fedumm.results import RunResult

log = logging.getLogger("fedumm")

# Flower reads these when it is imported: no telemetry, no update check, quiet logs.
for _name, _value in (
    ("FLWR_TELEMETRY_ENABLED", "0"),
    ("FLWR_DISABLE_UPDATE_CHECK", "1"),
    ("FLWR_LOG_LEVEL", "ERROR"),
    ("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0"),
    ("RAY_DEDUP_LOGS", "0"),
):
    os.environ.setdefault(_name, _value)

from flwr.app import ConfigRecord, Context, Message, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402

from fedumm.engines import flower_node  # noqa: E402
from fedumm.engines.flower_node import (  # noqa: E402
    CONFIG_KEY,
    OUT_KEY,
    SECAGG,
    SITE,
    UPLOAD,
    Blobs,
    Fields,
    blob,
    blob_bytes,
)


class FlowerTransport:
    """Exchange through the Flower `Grid`: one message per client of the round, the replies
    mapped back to sites by the messages they answer (a node that fails is missing)."""

    def __init__(self, grid: Grid, cfg: RunConfig):
        self.grid, self.timeout = grid, cfg.flower.round_timeout
        self.nodes = self._find_sites(
            site_names(cfg.federation.num_clients), cfg.flower.connect_timeout
        )

    def _find_sites(self, sites: list[str], timeout: int) -> dict[str, int]:
        """site -> node id: wait for the SuperNodes to connect, then ask each its site."""
        deadline = time.monotonic() + timeout
        while len(nodes := sorted(self.grid.get_node_ids())) < len(sites):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{len(nodes)} of {len(sites)} Flower SuperNodes connected "
                    f"within flower.connect_timeout ({timeout} s)"
                )
            time.sleep(0.2)
        asked = {node: RecordDict({"fedumm": ConfigRecord({"round": 0})}) for node in nodes}
        answers, errors = self._send(SITE, asked, 0)
        if errors:
            raise RuntimeError("SuperNodes refused to join: " + "; ".join(errors.values()))
        found: dict[str, int] = {}
        for node, content in answers.items():
            site = str(content["fedumm"]["site"])
            if site in found:
                raise RuntimeError(
                    f"two SuperNodes ({found[site]}, {node}) claim {site}: "
                    "give each its own partition-id"
                )
            found[site] = node
        missing = [s for s in sites if s not in found]
        if missing:
            raise RuntimeError(
                f"no SuperNode holds {', '.join(missing)} (partition-id {sites.index(missing[0])})"
            )
        return found

    def _send(
        self, message_type: str, contents: dict[int, RecordDict], rnd: int
    ) -> tuple[dict[int, RecordDict], dict[int, str]]:
        """(node -> reply content, node -> error) for one message to each node."""
        messages = [
            Message(content, dst_node_id=node, message_type=message_type, group_id=str(rnd))
            for node, content in contents.items()
        ]
        replies = self.grid.send_and_receive(messages, timeout=self.timeout)
        sent = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}
        answers, errors = {}, {}
        for reply in replies:
            node = sent.get(reply.metadata.reply_to_message_id)
            if node is None:
                continue
            if reply.has_error():
                errors[node] = f"node {node}: {reply.error.reason.strip().splitlines()[-1]}"
            else:
                answers[node] = reply.content
        return answers, errors

    def _ask(
        self, message_type: str, contents: dict[str, RecordDict], rnd: int
    ) -> dict[str, RecordDict]:
        """Each site's reply (a site that failed or stayed silent is missing, and logged)."""
        answers, errors = self._send(
            message_type, {self.nodes[s]: c for s, c in contents.items()}, rnd
        )
        site_of = {node: site for site, node in self.nodes.items()}
        for node, why in errors.items():
            log.warning("round %d: %s failed: %s", rnd, site_of[node], why)
        return {site_of[node]: content for node, content in answers.items()}

    def exchange(
        self,
        rnd: int,
        down: bytes,
        clients: list[ClientData],
        inboxes: dict[str, bytes] | None = None,
    ) -> list[tuple[ClientUpdate, bytes]]:
        contents = {}
        for c in clients:
            extra = {} if inboxes is None else {"inbox": inboxes[c.client_id]}
            contents[c.client_id] = RecordDict(
                {"message": blob(down), "fedumm": ConfigRecord({"round": rnd, **extra})}
            )
        answers = {}
        for site, content in self._ask("train", contents, rnd).items():
            try:
                meta = json.loads(str(content["fedumm"]["meta"]))
                answers[site] = (update_of(site, meta), blob_bytes(content[UPLOAD]))
            except (KeyError, TypeError, ValueError) as e:  # a malformed answer: as if it failed
                log.warning("round %d: unusable answer from %s: %r", rnd, site, e)
        return [answers[c.client_id] for c in clients if c.client_id in answers]

    def secagg(self, rnd: int, phase: str, payloads: dict[str, bytes]) -> dict[str, bytes]:
        contents = {
            site: RecordDict(
                {"fedumm": ConfigRecord({"round": rnd, "phase": phase, "payload": payload})}
            )
            for site, payload in payloads.items()
        }
        answers = {}
        for site, content in self._ask(SECAGG, contents, rnd).items():
            answer = bytes(content["fedumm"]["answer"])
            if answer:  # empty: the site refused the request
                answers[site] = answer
        return answers

    def evaluate_personal(self, params: Params, clients: list[ClientData]) -> list[dict]:
        message = blob(wire.pack(params))
        contents = {c.client_id: RecordDict({"message": message}) for c in clients}
        answers = self._ask("evaluate", contents, 0)
        missing = [c.client_id for c in clients if c.client_id not in answers]
        if missing:
            raise RuntimeError(f"no evaluation from {', '.join(missing)}")
        return [json.loads(str(answers[c.client_id]["fedumm"]["metrics"])) for c in clients]

    def close(self) -> None:
        return None  # Flower ends the run when the ServerApp's main returns


# ------------------------------------------------------------------------------ server app


def server_main(grid: Grid, cfg: RunConfig, out_dir: Path) -> dict:
    """The ServerApp's work: fedumm's recipe with the Flower transport; results.json in
    `out_dir` (an absolute path: a deployed ServerApp runs in the SuperLink's folder)."""
    return run_experiment(
        cfg,
        out_dir,
        lambda fl: FlowerTransport(grid, cfg),
        progress=False,
        engine_info={"flower": {"server_pid": os.getpid()}},
    )


def make_server_app(config: str | None = None, out_dir: str | None = None) -> ServerApp:
    """A ServerApp for `config` (RunConfig JSON) writing to `out_dir`; without them it reads
    both from the run config (`flwr run`: the exported app's pyproject.toml)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        cfg = RunConfig.model_validate_json(config or str(context.run_config[CONFIG_KEY]))
        server_main(grid, cfg, Path(out_dir or str(context.run_config[OUT_KEY])))

    return app


# ------------------------------------------------------------------------------ client app

_SITES: dict[tuple[str, str], object] = {}  # (config, site) -> Site, per process


def _site(config: str, partition: int):
    """The Site of partition `partition` (a SuperNode's partition-id), built once per
    process."""
    from fedumm.engines.site import Site

    cfg = RunConfig.model_validate_json(config)
    sites = site_names(cfg.federation.num_clients)
    if not 0 <= partition < len(sites):
        raise ValueError(
            f"partition-id {partition} is out of range: this federation has "
            f"{len(sites)} sites, partition-id 0..{len(sites) - 1}"
        )
    key = (config, sites[partition])
    if key not in _SITES:
        _SITES.clear()  # one federation per process at a time
        _SITES[key] = Site.build(cfg, sites[partition])
    return _SITES[key]


def _restore(site, state: bytes | None, sessions: str) -> None:
    """The site's state and secure-aggregation sessions as its node last left them (`state`
    None: the node's first message)."""
    from fedumm.federation.secure_aggregation import ClientSession

    site.state.clear()
    site.sessions.clear()
    if state is not None:
        site.state.update(wire.unpack(state))
        site.sessions.update(  # this node's own: {site: session JSON}
            {
                name: ClientSession.from_json(text, site.parts.secagg_policy(name))
                for name, text in json.loads(sessions).items()
            }
        )


def _keep(site) -> tuple[bytes, str]:
    """The site's state (tensors, `wire`) and sessions (JSON text: data, no code to run when
    read, unlike a pickle), for the node's context.state."""
    sessions = json.dumps({name: s.to_json() for name, s in site.sessions.items()})
    return wire.pack(site.state), sessions


def answer(fields: Fields, blobs: Blobs) -> tuple[Fields, Blobs]:
    """One message's work on this node's Site (as flower_node.request_of reads it from the
    message): the site's state restored from the node's before, and returned after."""
    site = _site(str(fields["config"]), int(fields["partition"]))
    _restore(site, blobs.get("state"), str(fields.get("sessions", "{}")))
    given, returned = _work(site, str(fields["kind"]), fields, blobs)
    state, sessions = _keep(site)
    return {**given, "sessions": sessions}, {**returned, "state": state}


def _work(site, kind: str, fields: Fields, blobs: Blobs) -> tuple[Fields, Blobs]:
    if kind == "train":
        meta, up = site.train(int(fields["round"]), blobs["message"], blobs.get("inbox"))
        return {"meta": json.dumps(meta)}, {UPLOAD: up}
    if kind == "evaluate":
        return {"metrics": json.dumps(site.evaluate(blobs["message"]))}, {}
    if kind == SECAGG:
        phase = str(fields["phase"])
        return {}, {"answer": site.secagg(int(fields["round"]), phase, blobs["payload"])}
    if kind == SITE:
        return {"site": site.name}, {}
    raise ValueError(f"unknown message type {kind!r}")


def make_client_app(config: str) -> ClientApp:
    """The ClientApp of Flower's simulation: the Site in its own process (Ray's workers live
    for the run). A deployment's is flower_node.client_app, forwarding to a site worker."""
    return flower_node.make_client_app(lambda context: answer, config)


def serve_site_worker(fd: int, supernode: int) -> None:
    """A SuperNode's site worker (flower_node): answers on the listening socket `fd` until
    the SuperNode `supernode` is gone, or a signal ends it."""
    logging.basicConfig(level=logging.WARNING, format="fedumm site worker: %(message)s")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    flower_node.serve(socket.socket(fileno=fd), supernode, answer)


# The components a deployed app names (fedumm flower export): config from the run config.
server_app = make_server_app()
client_app = flower_node.client_app  # apps exported before the site worker import it here


# ------------------------------------------------------------------------------ launchers


def run_flower(cfg: RunConfig, out_dir: Path, resume: bool = False) -> RunResult:
    """The federation on Flower (flower.env): in its simulation runtime (Ray), one SuperNode
    per site, each simulated client reserving flower.client_cpus; or deployed on this machine
    as separate processes. results.json in `out_dir`."""
    if resume:
        raise ValueError(
            "--resume under Flower: the nodes keep their state only for one run; "
            "resume with the embedded or FLARE engine"
        )
    deployed = cfg.flower.env == "deployment"
    if deployed and cfg.flower.certificates is not None:  # refused before any work
        certificate_folder(cfg.flower.certificates, site_names(cfg.federation.num_clients), True)
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").unlink(missing_ok=True)
    from fedumm.engines.site import with_identities

    cfg = with_identities(cfg, out_dir / "identities")  # signed keys: one identity per site
    if deployed:
        _run_deployment(cfg, out_dir)
    else:
        _run_simulation(cfg, out_dir)
    results = out_dir / "results.json"
    if not results.is_file():
        raise RuntimeError(f"the Flower run wrote no results to {out_dir}")
    return RunResult.load(results)


def _run_simulation(cfg: RunConfig, out_dir: Path) -> None:
    from flwr.simulation import run_simulation

    logging.getLogger("flwr").setLevel(logging.ERROR)  # its simulation logs at DEBUG, and warns
    # that run_simulation is deprecated (in favour of `flwr run`, the deployment path)
    threads = cfg.threads or max(1, int(cfg.flower.client_cpus))
    clients = cfg.model_copy(update={"threads": threads})
    run_simulation(
        server_app=make_server_app(cfg.model_dump_json(), str(out_dir)),
        client_app=make_client_app(clients.model_dump_json()),
        num_supernodes=cfg.federation.num_clients,
        backend_config={
            "client_resources": {"num_cpus": cfg.flower.client_cpus, "num_gpus": 0.0},
            "init_args": {
                "num_cpus": os.cpu_count() or 1,
                "logging_level": "ERROR",
                "log_to_driver": False,
            },
        },
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ------------------------------------------------------------------------------ certificates

CA, LINK_CERT, LINK_KEY = "ca.crt", "superlink.crt", "superlink.key"  # in a certificates folder


def write_certificates(folder: Path, hosts: list[str], sites: list[str], days: int = 365) -> Path:
    """What TLS and SuperNode authentication need, in `folder`, in the formats Flower reads: a CA
    (ca.crt); the SuperLink's certificate for `hosts` (names or IP addresses), signed by the CA,
    and its key (superlink.crt, superlink.key); each site's authentication key pair (site-K.key,
    site-K.pub: EC P-384, OpenSSH format). Private keys 0600 in a 0700 folder; the CA's own key
    is not kept, so nothing else can be signed with it."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from fedumm.federation.identity import issue_certificate, write_private

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    link_key = ec.generate_private_key(ec.SECP384R1())
    issuer = "fedumm Flower CA"
    ca_usage = ((_key_usage(signs_certificates=True), True),)
    ca = issue_certificate(issuer, ca_key.public_key(), issuer, ca_key, True, days, ca_usage)
    link = issue_certificate(
        hosts[0], link_key.public_key(), issuer, ca_key, False, days, _server_extensions(hosts)
    )
    pem = serialization.Encoding.PEM
    (folder / CA).write_bytes(ca.public_bytes(pem))
    (folder / LINK_CERT).write_bytes(link.public_bytes(pem))
    pkcs8 = serialization.PrivateFormat.PKCS8
    unencrypted = serialization.NoEncryption()
    write_private(folder / LINK_KEY, link_key.private_bytes(pem, pkcs8, unencrypted))
    for site in sites:
        key = ec.generate_private_key(ec.SECP384R1())
        openssh = serialization.PrivateFormat.OpenSSH
        write_private(folder / f"{site}.key", key.private_bytes(pem, openssh, unencrypted))
        public = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        (folder / f"{site}.pub").write_bytes(public + b"\n")
    return folder.resolve()


def _key_usage(signs_certificates: bool):
    """A CA's key signs certificates; the SuperLink's signs its TLS handshakes."""
    from cryptography import x509

    return x509.KeyUsage(
        digital_signature=not signs_certificates,
        key_encipherment=False,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        content_commitment=False,
        data_encipherment=False,
        key_agreement=False,
        encipher_only=False,
        decipher_only=False,
    )


def _server_extensions(hosts: list[str]) -> tuple:
    """The SuperLink certificate's extensions (critical or not): a TLS server for `hosts`."""
    import ipaddress

    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    def san(host: str) -> x509.GeneralName:
        try:
            return x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            return x509.DNSName(host)

    return (
        (_key_usage(signs_certificates=False), True),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
        (x509.SubjectAlternativeName([san(h) for h in dict.fromkeys(hosts)]), False),
    )


def certificate_folder(folder: str, sites: list[str], node_keys: bool) -> Path:
    """The folder flower.certificates names, checked to hold what a deployment reads: the CA,
    the SuperLink's certificate and key, each site's public key and (`node_keys`: a local
    deployment starts the SuperNodes) its private key."""
    from fedumm.config import ConfigError

    path = Path(folder).expanduser()
    if not path.is_dir():
        raise ConfigError(f"flower.certificates: {path} is not a folder")
    needed = [
        CA,
        LINK_CERT,
        LINK_KEY,
        *(f"{s}.pub" for s in sites),
        *(f"{s}.key" for s in sites if node_keys),
    ]
    for name in needed:
        if not (path / name).is_file():
            raise ConfigError(
                f"flower.certificates: {path / name} does not exist (the folder holds {CA}, "
                f"{LINK_CERT}, {LINK_KEY} and site-K.key / site-K.pub for each site, as "
                "`fedumm flower export` writes them)"
            )
    return path.resolve()


def superlink_command(certs: Path | None, host: str, port: int) -> list[str]:
    """flower-superlink on `host:port`: TLS with the certificates in `certs`, admitting only
    registered SuperNodes; `certs` None (flower.insecure): neither."""
    security = (
        ["--insecure"]
        if certs is None
        else [
            "--ssl-ca-certfile",
            str(certs / CA),
            "--ssl-certfile",
            str(certs / LINK_CERT),
            "--ssl-keyfile",
            str(certs / LINK_KEY),
            "--enable-supernode-auth",
        ]
    )
    return [
        "flower-superlink",
        *security,
        "--host",
        host,
        "--port",
        str(port),
        "--disable-runtime-dependency-installation",
    ]


def supernode_command(
    certs: Path | None, superlink: str, sites: list[str], index: int, port: int | None = None
) -> list[str]:
    """flower-supernode for site `index` (0: site-1) of `sites`: verifying the SuperLink's
    certificate against the CA in `certs`, signing its requests with the site's key;
    `port`: its local Runtime API's (Flower's default when None)."""
    site = sites[index]
    security = (
        ["--insecure"]
        if certs is None
        else [
            "--root-certificates",
            str(certs / CA),
            "--auth-supernode-private-key",
            str(certs / f"{site}.key"),
        ]
    )
    return [
        "flower-supernode",
        *security,
        "--superlink",
        superlink,
        *([] if port is None else ["--port", str(port)]),
        "--node-config",
        f"partition-id={index} num-partitions={len(sites)}",
    ]


# ------------------------------------------------------------------------ local deployment


class LocalDeployment:
    """Flower's deployment on this machine, as a user runs it on several: a SuperLink on
    127.0.0.1 and one SuperNode per site, each its own process group logging to HOME/logs;
    `flwr` configured in HOME (its connection: "local"). TLS, and only SuperNodes whose key was
    registered are admitted, unless flower.insecure; certificates and keys: flower.certificates,
    or generated in HOME/certificates. `stop` ends every process."""

    def __init__(self, cfg: RunConfig, home: Path):
        import fedumm

        self.cfg, self.home = cfg, Path(home)
        self.sites = site_names(cfg.federation.num_clients)
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.processes: dict[str, subprocess.Popen] = {}
        (self.home / "logs").mkdir(parents=True, exist_ok=True)
        if cfg.flower.insecure:
            self.certs = None
        elif cfg.flower.certificates is not None:
            self.certs = certificate_folder(cfg.flower.certificates, self.sites, node_keys=True)
        else:
            self.certs = write_certificates(
                self.home / "certificates", ["127.0.0.1", "localhost"], self.sites
            )
        security = (
            "insecure = true"
            if self.certs is None
            else f"root-certificates = {json.dumps(str(self.certs / CA))}"
        )
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "local"\n\n[superlink.local]\n'
            f'address = "{self.address}"\n{security}\n'
        )
        self.bin = Path(sys.executable).parent  # Flower starts its helpers by name
        source = str(Path(fedumm.__file__).resolve().parents[1])  # the nodes import this fedumm
        self.env = {
            **os.environ,
            "PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}",
            "FLWR_HOME": str(self.home),
            "PYTHONPATH": os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")])),
        }

    def start(self, name: str, command: list[str]) -> subprocess.Popen:
        """`command` (a Flower executable by name, then its arguments) as process `name`."""
        with open(self.home / "logs" / f"{name}.log", "w") as log_file:
            process = subprocess.Popen(
                [str(self.bin / command[0]), *command[1:]],
                env=self.env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes[name] = process
        return process

    def flwr(self, *args: str, timeout: float | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(self.bin / "flwr"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start_superlink(self) -> None:
        """The SuperLink, waited for until `flwr` reaches it."""
        if self.certs is None:
            log.warning(
                "flower.insecure: the SuperLink at %s runs without TLS and admits any "
                "SuperNode; whoever reaches it can join the federation and read its "
                "messages",
                self.address,
            )
        link = self.start("superlink", superlink_command(self.certs, "127.0.0.1", self.port))
        deadline = time.monotonic() + self.cfg.flower.connect_timeout
        while (listed := self.flwr("ls", "local")).returncode:
            if time.monotonic() > deadline or link.poll() is not None:
                raise RuntimeError(
                    f"the Flower SuperLink did not start; its log: "
                    f"{self.home / 'logs' / 'superlink.log'}; flwr ls: "
                    f"{(listed.stdout + listed.stderr).strip()[-500:]}"
                )
            time.sleep(0.5)

    def start_supernodes(self) -> None:
        """One SuperNode per site, its public key registered first (`flwr supernode
        register`), as only registered SuperNodes are admitted."""
        for i, site in enumerate(self.sites):
            if self.certs is not None:
                registered = self.flwr(
                    "supernode", "register", str(self.certs / f"{site}.pub"), "local"
                )
                if registered.returncode:
                    why = (registered.stdout + registered.stderr).strip()
                    raise RuntimeError(f"flwr supernode register {site}.pub failed: {why}")
            self.start(
                site, supernode_command(self.certs, self.address, self.sites, i, _free_port())
            )

    def stop(self) -> None:
        _stop(list(self.processes.values()))


def _run_deployment(cfg: RunConfig, out_dir: Path) -> None:
    """flower.env deployment: a `LocalDeployment` in OUT/flower runs the app `fedumm flower
    export` writes, started with `flwr run`; every process stopped after."""
    home = out_dir / "flower"
    shutil.rmtree(home, ignore_errors=True)
    app = export_app(cfg, home / "app", str(out_dir))
    deployment = LocalDeployment(cfg, home)
    try:
        deployment.start_superlink()
        deployment.start_supernodes()
        budget = cfg.flower.round_timeout * (cfg.federation.rounds + 2)
        run = deployment.flwr("run", str(app), "local", "--stream", timeout=budget)
        (home / "logs" / "serverapp.log").write_text(run.stdout + run.stderr)
        listed = deployment.flwr("ls", "local", "--format", "json")
        status = json.loads(listed.stdout)["runs"][0] if listed.returncode == 0 else {}
        if status.get("status") != "finished:completed":  # `flwr run` exits 0 even then
            raise RuntimeError(
                f"the Flower run ended {status.get('status', 'unknown')}: "
                f"{status.get('status-details', '')}; logs in {home / 'logs'}"
            )
    finally:
        deployment.stop()


def _stop(processes: list[subprocess.Popen]) -> None:
    """SIGTERM to each process group, SuperNodes first; what is left after 30 s is killed.
    A group holds what its process started, the SuperNode's site worker too, whose parent (a
    ClientApp) is gone."""
    import psutil

    family = []
    for p in reversed(processes):
        with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
            leader = psutil.Process(p.pid)
            family += {leader, *leader.children(recursive=True), *_group(p.pid)}
            os.killpg(p.pid, signal.SIGTERM)
    _, alive = psutil.wait_procs(family, timeout=30)
    for p in alive:
        p.kill()
    for p in processes:
        p.wait()


def _group(leader: int) -> list:
    """The processes of the process group `leader` leads, besides the leader."""
    import psutil

    members = []
    for p in psutil.process_iter():
        with contextlib.suppress(ProcessLookupError, psutil.Error):
            if p.pid != leader and os.getpgid(p.pid) == leader:
                members.append(p)
    return members


PYPROJECT = """\
# A Flower app running fedumm: `flwr run . <connection>` on a SuperLink whose SuperNodes were
# started with --node-config "partition-id=K num-partitions={k}" (K = 0..{last}: site-K+1),
# in an environment where fedumm is installed (pip install 'fedumm[flower]'); start the
# SuperLink with --disable-runtime-dependency-installation, or list fedumm below.
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "fedumm-app"
version = "1.0.0"
description = "fedumm: federated LoRA of a unified multimodal model"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "fedumm"

[tool.flwr.app.components]
serverapp = "fedumm_app:server_app"
clientapp = "fedumm_app:client_app"

[tool.flwr.app.config]
{out_key} = {out_dir}
{config_key} = {config}
"""


APP_MODULE = """\
\"\"\"The components of this Flower app, fedumm's. The ClientApp, which forwards each message to
its SuperNode's site worker, is loaded from its file: the process Flower starts per message then
imports Flower and that file only, not fedumm.engines (torch, the models).\"\"\"

import importlib.util
import sys
from pathlib import Path

import fedumm

_NODE = "fedumm.engines.flower_node"
if _NODE not in sys.modules:
    _path = Path(fedumm.__file__).parent / "engines" / "flower_node.py"
    _spec = importlib.util.spec_from_file_location(_NODE, _path)
    sys.modules[_NODE] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules[_NODE])
client_app = sys.modules[_NODE].client_app
__all__ = ["client_app", "server_app"]


def __getattr__(name):
    if name == "server_app":  # the ServerApp's process imports the engine
        from fedumm.engines.flower import server_app

        return server_app
    raise AttributeError(name)
"""


def export_app(cfg: RunConfig, app_dir: Path, out_dir: str) -> Path:
    """Write a Flower app folder that `flwr run` deploys: pyproject.toml (its run config holds
    the resolved config and where the server writes its results) and the two components."""
    app_dir = Path(app_dir)
    app_dir.mkdir(parents=True, exist_ok=True)
    k = cfg.federation.num_clients
    (app_dir / "pyproject.toml").write_text(
        PYPROJECT.format(
            k=k,
            last=k - 1,
            out_key=json.dumps(OUT_KEY),
            out_dir=json.dumps(out_dir),
            config_key=json.dumps(CONFIG_KEY),
            config=json.dumps(cfg.model_dump_json()),
        )
    )
    (app_dir / "fedumm_app.py").write_text(APP_MODULE)
    return app_dir


README = """\
# fedumm on Flower: {k} sites, TLS and SuperNode authentication

This Flower app runs fedumm's federation on a SuperLink at {address} and one SuperNode per site.
Every connection is encrypted (TLS: each SuperNode and `flwr` check the SuperLink's certificate
against ca.crt), and the SuperLink admits only SuperNodes whose public key was registered: a
SuperNode without a registered key is refused.

## Certificates and keys

{origin}

| file | goes to | secret |
|---|---|---|
| ca.crt | every machine (SuperLink, sites, where `flwr` runs) | no |
| superlink.crt, superlink.key | the SuperLink's machine | superlink.key |
| site-K.pub | where `flwr supernode register` runs | no |
| site-K.key | site K's machine, and no other | yes |

The commands below run from this folder; on another machine, give the paths there.

## 1. The SuperLink (on {host}, fedumm[flower] installed)

    {superlink}

## 2. Register each site's key (where `flwr` runs)

Add the connection to `$FLWR_HOME/config.toml` (default `~/.flwr/config.toml`):

    [superlink.fedumm]
    address = "{address}"
    root-certificates = "{ca}"

then:

{register}

## 3. Each site's SuperNode (on site K's machine, fedumm[flower] installed)

{supernodes}

## 4. The run

    flwr run . fedumm --stream

The ServerApp writes results.json to {results} on the SuperLink's machine.

## What this does not protect

The SuperLink's port also serves Flower's Control API (`flwr run`, `flwr supernode register`),
which open-source Flower does not authenticate: whoever reaches the port can register a key of
their own and join. Let only the sites' machines and yours reach it (a firewall, a VPN).
"""


def export_deployment(cfg: RunConfig, out: Path, results: str, host: str, port: int) -> Path:
    """`fedumm flower export`: the app in `out`; unless flower.certificates names your own, the
    certificates and keys for a SuperLink at `host:port` in out/certificates; and out/README.md
    with the commands that start the SuperLink and SuperNodes with TLS and SuperNode
    authentication. Returns the README's path."""
    import shlex

    from fedumm.config import ConfigError

    if cfg.flower.insecure:
        raise ConfigError(
            "flower.insecure: an exported app runs across machines, with TLS and "
            "SuperNode authentication; unset it"
        )
    sites = site_names(cfg.federation.num_clients)
    out = Path(out)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if cfg.flower.certificates is not None:
        certs = certificate_folder(cfg.flower.certificates, sites, node_keys=False)
        shown, origin = certs, f"Your own, in {certs} (flower.certificates)."
    else:
        certs = write_certificates(out / "certificates", [host, "localhost", "127.0.0.1"], sites)
        shown = Path("certificates")
        origin = (
            f"Written by `fedumm flower export` in certificates/: the SuperLink's "
            f"certificate is for {host}, valid for a year; the CA's own key was not "
            "kept."
        )
    export_app(cfg, out, results)
    loopback = host in ("127.0.0.1", "localhost", "::1")
    bind = host if loopback else ("::" if ":" in host else "0.0.0.0")
    listed = "\n".join  # one indented command per line
    (out / "README.md").write_text(
        README.format(
            k=len(sites),
            address=address,
            origin=origin,
            host=host,
            results=results,
            superlink=shlex.join(superlink_command(shown, bind, port)),
            ca=certs / CA,
            register=listed(
                f"    flwr supernode register {shlex.quote(str(shown / f'{s}.pub'))} fedumm"
                for s in sites
            ),
            supernodes=listed(
                f"    {shlex.join(supernode_command(shown, address, sites, i))}"
                for i in range(len(sites))
            ),
        )
    )
    return out / "README.md"


if __name__ == "__main__":  # flower_node starts this machine's fork server of site workers so
    flower_node.serve_forks(socket.socket(fileno=int(sys.argv[1])), serve_site_worker)
