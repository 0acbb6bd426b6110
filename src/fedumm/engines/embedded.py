"""The embedded engine: every client of the federation in this process, one after another, on
the one frozen base model they all share (clients differ only by their adapter); or, with
`runtime.devices`, a round's clients in parallel, one worker per device, each holding one base.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path

import torch

from fedumm.config import RunConfig
from fedumm.federation import wire
from fedumm.federation.client import ClientData, upload
from fedumm.federation.secure_aggregation import (
    ClientPolicy,
    ClientSession,
    ProtocolError,
    client_answer,
)
from fedumm.federation.server import Transport
from fedumm.federation.update import ClientUpdate, Params
from fedumm.parts import RunParts, build_parts
from fedumm.recipe import run_experiment
from fedumm.runtime import worker_devices

log = logging.getLogger("fedumm")

TrainClient = Callable[[ClientData, Params, int], ClientUpdate]


class InProcess:
    """The clients train here, in turn, by `train_client`; under secure aggregation each keeps
    its session (keys, shares) here and masks its upload as it would on its own machine."""

    def __init__(
        self,
        train_client: TrainClient,
        clients: list[ClientData],
        equal_weights: bool = False,
        evaluate_personal: Callable[[Params, ClientData], dict] | None = None,
        policy: Callable[[str], ClientPolicy] | None = None,
    ):
        """`policy(client)`: what that client accepts from the server in secure aggregation
        (default: a threshold of 2 and more than half the roster, unsigned keys)."""
        self.train_client = train_client
        self.policy = policy or (lambda client: ClientPolicy())
        self.all_clients = clients
        self.equal_weights = equal_weights
        self._evaluate_personal = evaluate_personal
        self.sessions: dict[str, ClientSession] = {}  # each client's secure-aggregation state

    def finish(self, update: ClientUpdate, inboxes: dict[str, bytes] | None) -> bytes:
        """The client's upload of its trained `update` (masked under secure aggregation)."""
        if inboxes is None:
            return upload(update)
        cid = update.client_id
        return upload(update, self.equal_weights, self.sessions[cid], inboxes[cid])

    def exchange(
        self,
        rnd: int,
        down: bytes,
        clients: list[ClientData],
        inboxes: dict[str, bytes] | None = None,
    ) -> list[tuple[ClientUpdate, bytes]]:
        answers = []
        for client in clients:
            update = self.train_client(client, wire.unpack(down), rnd)
            answers.append((update, self.finish(update, inboxes)))
            update.params = {}
        return answers

    def secagg(self, rnd: int, phase: str, payloads: dict[str, bytes]) -> dict[str, bytes]:
        answers = {}
        for cid, payload in payloads.items():
            try:
                answers[cid] = client_answer(
                    self.sessions, cid, rnd, phase, payload, self.policy(cid)
                )
            except ProtocolError as e:  # the client refuses the request: it counts as dropped
                log.warning(
                    "secure aggregation round %d: %s did not answer %s: %s", rnd, cid, phase, e
                )
        return answers

    def evaluate_personal(self, params: Params, clients: list[ClientData]) -> list[dict]:
        if self._evaluate_personal is None:
            raise ValueError("this transport was built without personal evaluation")
        return [self._evaluate_personal(params, c) for c in clients]

    def close(self) -> None:
        self.sessions.clear()


def _in_process(fl: RunParts) -> InProcess:
    return InProcess(
        fl.train_client,
        fl.clients,
        fl.cfg.federation.client_weights == "equal",
        fl.evaluate_personal,
        fl.secagg_policy,
    )


class DevicePool:
    """A round's clients trained in parallel: this process trains on the first device, one
    worker process on each other device, each worker holding its own base model. Clients are
    dealt to the devices in turn, in the round's order. A client's training depends only on
    what the server sent, its state and its seed (round, client), so the federation ends as on
    one device. Client state (SCAFFOLD's c_i, FedSA-LoRA's B) stays in this process and
    travels with the task to whichever worker trains the client."""

    def __init__(self, fl: RunParts, devices: list[torch.device]):
        self.fl = fl
        self.local = _in_process(fl)
        context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
        threads = fl.cfg.threads or torch.get_num_threads()
        self.workers: list[tuple[torch.device, Connection, multiprocessing.Process]] = []
        for device in devices[1:]:
            mine, theirs = context.Pipe()
            process = context.Process(
                target=_serve,
                daemon=True,
                name=f"fedumm-{device}",
                args=(fl.cfg.model_dump_json(), str(device), threads, theirs),
            )
            process.start()
            theirs.close()
            self.workers.append((device, mine, process))
        self.ready = False

    def _answer(self, device: torch.device, conn: Connection):
        """The worker's next message, or its failure raised here."""
        try:
            kind, *payload = conn.recv()
        except EOFError:
            raise RuntimeError(f"the worker on {device} died (see its output above)") from None
        if kind == "error":
            name, message, trace = payload
            log.error("worker on %s:\n%s", device, trace)
            if name == "OutOfMemoryError":
                raise torch.OutOfMemoryError(f"on {device}: {message}")
            raise RuntimeError(f"the worker on {device} failed: {name}: {message}")
        return payload

    def exchange(
        self,
        rnd: int,
        down: bytes,
        clients: list[ClientData],
        inboxes: dict[str, bytes] | None = None,
    ) -> list[tuple[ClientUpdate, bytes]]:
        if not self.ready:  # workers build their federation while this process starts
            for device, conn, _ in self.workers:
                self._answer(device, conn)
            self.ready = True
        shares = [clients[i :: len(self.workers) + 1] for i in range(len(self.workers) + 1)]
        states = self.fl.client_states
        for (_, conn, _), share in zip(self.workers, shares[1:]):
            conn.send(
                (
                    "train",
                    rnd,
                    down,
                    [c.client_id for c in share],
                    {c.client_id: wire.pack(states[c.client_id]) for c in share},
                )
            )
        answers = dict(
            zip(
                (c.client_id for c in shares[0]), self.local.exchange(rnd, down, shares[0], inboxes)
            )
        )
        for device, conn, _ in self.workers:  # a worker is its clients' accelerator: the
            (results,) = self._answer(device, conn)  # client masks here, where its keys are
            for (cid, samples, steps, metrics), params, state in results:
                states[cid] = wire.unpack(state)
                update = ClientUpdate(cid, wire.unpack(params), samples, steps, metrics)
                answers[cid] = (update, self.local.finish(update, inboxes))
                update.params = {}
        return [answers[c.client_id] for c in clients]

    def secagg(self, rnd: int, phase: str, payloads: dict[str, bytes]) -> dict[str, bytes]:
        return self.local.secagg(rnd, phase, payloads)

    def evaluate_personal(self, params: Params, clients: list[ClientData]) -> list[dict]:
        return self.local.evaluate_personal(params, clients)

    def close(self) -> None:
        for _, conn, process in self.workers:
            with contextlib.suppress(BrokenPipeError, OSError):  # a worker already gone
                conn.send(("stop",))
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()
        self.workers = []


def _serve(config: str, device: str, threads: int, conn: Connection) -> None:
    """A device worker: builds the federation on `device`, then trains the clients it is sent
    until told to stop. Failures go back to the main process, which raises them."""
    try:
        torch.set_num_threads(threads)
        cfg = RunConfig.model_validate_json(config)
        cfg.runtime.device, cfg.runtime.devices = device, None
        fl = build_parts(cfg)
        conn.send(("ready",))
        while True:
            task = conn.recv()
            if task[0] == "stop":
                return
            _, rnd, down, ids, states = task
            results = []
            for cid in ids:
                fl.client_states[cid] = wire.unpack(states[cid])
                update = fl.train_client(fl.client(cid), wire.unpack(down), rnd)
                meta = (cid, update.num_samples, update.num_steps, update.metrics)
                results.append((meta, wire.pack(update.params), wire.pack(fl.client_states[cid])))
                del fl.client_states[cid]  # the main process keeps it: a worker holds none
            conn.send(("ok", results))
    except (EOFError, KeyboardInterrupt):
        return
    except BaseException as e:
        conn.send(("error", type(e).__name__, str(e), traceback.format_exc()))


def connect(fl: RunParts) -> Transport:
    """The embedded engine's transport for a built federation: in this process, or on a pool
    of device workers when `runtime.devices` names several."""
    devices = worker_devices(fl.cfg.runtime)
    if len(devices) > 1:
        return DevicePool(fl, devices)
    return _in_process(fl)


def run(
    cfg: RunConfig, out_dir: Path, progress: bool = True, resume: bool = False, force: bool = False
) -> dict:
    """`fedumm run` on the embedded engine."""
    return run_experiment(cfg, out_dir, connect, progress, resume, force)
