"""A Flower SuperNode's side of fedumm: the ClientApp, and the site worker a deployment forwards
each message to, so that the frozen base and the site's data are built once per SuperNode.

Why a worker: Flower (1.42, isolation=subprocess) starts a fresh `flwr-clientapp` process for
every message, which pulls one task and exits; a ClientApp that builds its `Site` (importing
torch and fedumm's models, building the base and the partition) paid that build per message:
at 8 clients 230 s and 8.9 GB against 68 s in Flower's simulation (docs/results/engines.md).
Sharing a memory-mapped base and caching the partition on disk would make the build cheaper
but not free: each message would still import torch and fedumm's engines (about 10 s of CPU
and 450 MB here). So the deployed ClientApp is a thin forwarder: it imports only Flower, psutil
and this file (the exported app loads it by path, past `fedumm.engines`, which imports torch),
and hands the message to a long-lived worker, one per SuperNode, holding the Site. A message
then costs Flower's own process start plus the forward.

The worker: started by the first message of its SuperNode, listening on a Unix-domain socket
in a folder only this user can enter (0700; the socket 0600), which the ClientApp binds and
passes on, so a connection made before the worker is up waits in the socket's backlog. It is
forked by one fork server per machine, which imported torch and fedumm once: on a machine
hosting several SuperNodes (a local deployment: all of them) each worker then costs its
model and data, not another 8 s of imports. The fork server is started by the first message
that needs it, in that SuperNode's process group, and exits after its last worker. A worker
exits when its SuperNode is gone (it polls the pid it was started for) and answers one message
at a time.
A worker that dies fails the message it was serving (the server counts the site as dropped);
the next message starts a new one. The socket carries frames of JSON and raw bytes, never a
pickle. The site's state and secure-aggregation sessions stay where Flower keeps a node's
state, the node's `context.state`: they travel with each message to the worker and back
(`wire.pack` bytes and JSON text), so a new worker resumes where the last one left off, and
the worker holds nothing that Flower does not. A site training on several processes would
start them from the worker, once.

In Flower's simulation the ClientApp runs the same work in its own process (Ray's workers live
for the run, so the Site is built once per worker there already).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

CONFIG_KEY, OUT_KEY = "fedumm-config", "out-dir"  # the app's run config
SITE, SECAGG = "query.site", "query.secagg"  # message types besides train and evaluate
STATE = "fedumm"  # the node's context.state record
UPLOAD = "upload"  # the one reply part that travels as an array (Flower chunks arrays)
FORK_SERVER = "site-worker-server.sock"  # where this machine's fork server of workers listens

Fields = dict[str, int | str]  # JSON values of a request or reply
Blobs = dict[str, bytes]  # its raw parts
Answer = Callable[[Fields, Blobs], tuple[Fields, Blobs]]  # one message's work on the site


def blob(data: bytes) -> ArrayRecord:
    """Bytes as one raw array: Flower sends arrays in chunks, so a large adapter travels."""
    return ArrayRecord({"bytes": Array(dtype="uint8", shape=(len(data),), stype="raw", data=data)})


def blob_bytes(record: ArrayRecord) -> bytes:
    return bytes(record["bytes"].data)


def request_of(msg: Message, context: Context, config: str) -> tuple[Fields, Blobs]:
    """A message as the site's work reads it: its type, the node's partition, the config, the
    message's values and bytes, and the node's state as Flower kept it (absent the first
    time)."""
    fields: Fields = {
        "kind": msg.metadata.message_type,
        "partition": int(context.node_config.get("partition-id", -1)),
        "config": config,
    }
    blobs = {name: blob_bytes(record) for name, record in msg.content.array_records.items()}
    for name, value in msg.content.config_records.get("fedumm", {}).items():
        if isinstance(value, bytes):
            blobs[name] = value
        else:
            fields[name] = value
    record = context.state.get(STATE)
    if record is not None:
        blobs["state"], fields["sessions"] = bytes(record["state"]), str(record["sessions"])
    return fields, blobs


def reply_to(msg: Message, context: Context, fields: Fields, blobs: Blobs) -> Message:
    """The work's answer as the reply to `msg`; the site's state back into context.state."""
    context.state[STATE] = ConfigRecord(
        {"state": blobs.pop("state"), "sessions": str(fields.pop("sessions"))}
    )
    content = RecordDict()
    if UPLOAD in blobs:
        content[UPLOAD] = blob(blobs.pop(UPLOAD))
    content["fedumm"] = ConfigRecord({**fields, **blobs})
    return Message(content, reply_to=msg)


def make_client_app(answer_for: Callable[[Context], Answer], config: str | None = None):
    """A ClientApp whose every message is answered by `answer_for(context)`; `config`
    (RunConfig JSON), or without it the run config's."""
    app = ClientApp()

    def handle(msg: Message, context: Context) -> Message:
        given = config or str(context.run_config[CONFIG_KEY])
        fields, blobs = answer_for(context)(*request_of(msg, context, given))
        return reply_to(msg, context, fields, blobs)

    app.train()(handle)
    app.evaluate()(handle)
    for query in (SECAGG, SITE):
        app.query(query.split(".")[1])(handle)
    return app


# ------------------------------------------------------------------------------- framing


def send(sock: socket.socket, fields: Fields, blobs: Blobs) -> None:
    """One frame: a JSON header (the fields, each blob's size), then the blobs' bytes."""
    sizes = {name: len(data) for name, data in blobs.items()}
    header = json.dumps({"fields": fields, "sizes": sizes}).encode()
    sock.sendall(struct.pack(">Q", len(header)) + header)
    for data in blobs.values():
        sock.sendall(data)


def receive(sock: socket.socket) -> tuple[Fields, Blobs]:
    (size,) = struct.unpack(">Q", _exactly(sock, 8))
    header = json.loads(_exactly(sock, size))
    return header["fields"], {name: _exactly(sock, n) for name, n in header["sizes"].items()}


def _exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray(size)
    view, got = memoryview(data), 0
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            raise ConnectionError("the site worker closed the connection")
        got += n
    return bytes(data)


# ------------------------------------------------------------------ the ClientApp's side


def socket_folder() -> Path:
    """Where the workers' sockets live: a folder of this user's that nobody else can enter
    (refused if it is anyone else's, a link, or open to others)."""
    folder = Path(tempfile.gettempdir()) / f"fedumm-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700)
    found = os.lstat(folder)
    if not stat.S_ISDIR(found.st_mode) or found.st_uid != os.getuid() or found.st_mode & 0o077:
        raise PermissionError(f"{folder} must be a folder of this user's, mode 0700")
    return folder


def supernode_pid() -> int:
    """The SuperNode this ClientApp serves: the nearest process up the tree that runs
    flower-supernode (under isolation=subprocess, the parent of the SuperExec that started
    this process); else the parent."""
    for process in psutil.Process().parents():
        with contextlib.suppress(psutil.Error):
            if any("flower-supernode" in part for part in process.cmdline()[:2]):
                return process.pid
    return os.getppid()


def forward(fields: Fields, blobs: Blobs, supernode: int) -> tuple[Fields, Blobs]:
    """The answer of `supernode`'s site worker (started first if none listens); a worker that
    fails or dies fails the message (RuntimeError)."""
    with _connect(socket_folder() / f"site-worker-{supernode}.sock", supernode) as sock:
        try:
            send(sock, fields, blobs)
            fields, blobs = receive(sock)
        except OSError as e:  # ConnectionError among them: the worker died mid-message
            raise RuntimeError(f"the site worker of SuperNode {supernode} failed: {e}") from e
    if "error" in fields:
        raise RuntimeError(str(fields["error"]))
    return fields, blobs


def _connect(path: Path, supernode: int) -> socket.socket:
    """A connection to the worker at `path`; none listening: a new worker, on a socket bound
    here and handed to it (a lock keeps two messages from starting two)."""
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with contextlib.suppress(OSError):
            return _dial(path)
        with _listening(path) as listener:
            _fork_worker(listener.fileno(), supernode)
        return _dial(path)  # waits in the backlog until the worker accepts


@contextlib.contextmanager
def _listening(path: Path) -> Iterator[socket.socket]:
    """A Unix socket listening at `path` (a dead process's file there replaced), mode 0600."""
    path.unlink(missing_ok=True)
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))
        path.chmod(0o600)
        listener.listen()
        yield listener


def _fork_worker(fd: int, supernode: int) -> None:
    """A site worker for `supernode`, serving the listening socket `fd`: forked by this
    machine's fork server, which imported torch and fedumm once for every SuperNode here (it
    is started first if none listens, and exits after its last worker)."""
    path = socket_folder() / FORK_SERVER
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            server = _dial(path)
        except OSError:
            with _listening(path) as listener:
                subprocess.Popen(
                    [sys.executable, "-m", "fedumm.engines.flower", str(listener.fileno())],
                    stdin=subprocess.DEVNULL,
                    pass_fds=(listener.fileno(),),
                )
            server = _dial(path)
    with server:
        socket.send_fds(server, [str(supernode).encode()], [fd])
        if server.recv(1) != b"1":
            raise RuntimeError(f"the fork server at {path} did not start a site worker")


def _dial(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.connect(str(path))
    except OSError:
        sock.close()
        raise
    return sock


def forwarding(context: Context) -> Answer:
    """A deployed ClientApp's answer: the SuperNode's site worker's."""
    supernode = supernode_pid()
    return lambda fields, blobs: forward(fields, blobs, supernode)


# The ClientApp a deployed app names (`fedumm flower export`): config from the run config.
client_app = make_client_app(forwarding)


# -------------------------------------------------------------------- the worker's side


def serve(listener: socket.socket, supernode: int, answer: Answer) -> None:
    """Answer the messages arriving on `listener`, one at a time, until SuperNode `supernode`
    is gone; the socket's file removed on the way out."""
    path = Path(listener.getsockname())
    threading.Thread(target=_exit_with, args=(supernode, path), daemon=True).start()
    try:
        while True:
            connection, _ = listener.accept()
            with connection:
                try:
                    request = receive(connection)
                except (OSError, ValueError):
                    continue  # a ClientApp gone before it asked
                try:
                    reply = answer(*request)
                except Exception as e:  # noqa: BLE001 - the message fails, the worker goes on
                    reply = ({"error": f"{type(e).__name__}: {e}"}, {})
                with contextlib.suppress(OSError):
                    send(connection, *reply)
    finally:
        path.unlink(missing_ok=True)


def serve_forks(
    listener: socket.socket, start: Callable[[int, int], None], idle: float = 60
) -> None:
    """This machine's fork server: for each request (a SuperNode's pid and the listening socket
    its worker is to serve), fork a process that runs `start(fd, supernode)`. Exits once its
    last worker has exited (or after `idle` seconds if none was ever asked for), its socket
    removed under the lock the ClientApps take, so that none is left waiting on it."""
    path, began = Path(listener.getsockname()), time.monotonic()
    workers: set[int] = set()
    forked = False
    listener.settimeout(0.5)
    while True:
        workers -= {p for p in workers if os.waitpid(p, os.WNOHANG)[0]}
        if not workers and (forked or time.monotonic() - began > idle):
            with open(path.with_suffix(".lock"), "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                listener.setblocking(False)
                try:  # one asked while the last worker exited: serve it
                    connection, _ = listener.accept()
                except BlockingIOError:
                    path.unlink(missing_ok=True)
                    return
                listener.settimeout(0.5)
        else:
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
        workers.add(_fork(listener, connection, start))
        forked = True


def _fork(listener: socket.socket, connection: socket.socket, start) -> int:
    """A worker forked for the request on `connection`; its pid."""
    with connection:
        connection.settimeout(10)
        message, fds, _, _ = socket.recv_fds(connection, 32, 1)
        pid = os.fork()
        if pid == 0:  # the worker
            listener.close()
            connection.close()
            try:
                start(fds[0], int(message))
            finally:
                os._exit(0)
        os.close(fds[0])
        connection.sendall(b"1")
        return pid


def _exit_with(supernode: int, path: Path, every: float = 0.5) -> None:
    """Exit this process once the SuperNode `supernode` has exited (or is a zombie)."""
    try:
        process = psutil.Process(supernode)
        while process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
            time.sleep(every)
    except psutil.Error:
        pass
    path.unlink(missing_ok=True)
    os._exit(0)
