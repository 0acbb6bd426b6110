"""The embedded engine: every client of the federation in this process, one after another, on
the one frozen base model they all share (clients differ only by their adapter); or, with
`runtime.devices`, a round's clients in parallel, one worker per device, each holding one base.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import traceback
from multiprocessing.connection import Connection
from pathlib import Path

import torch

from fedumm.config import RunConfig
from fedumm.distributed import ClientFailed
from fedumm.engines.site import Site
from fedumm.federation import wire
from fedumm.federation.client import ClientData
from fedumm.federation.secure_aggregation import ClientSession
from fedumm.federation.server import Transport
from fedumm.federation.update import ClientUpdate, Params
from fedumm.parts import RunParts, build_parts
from fedumm.recipe import run_experiment
from fedumm.results import RunResult
from fedumm.runtime import worker_devices

log = logging.getLogger("fedumm")


class InProcess:
    """The clients train here, in turn, each as a `Site` of the parts this process built (the
    base model they all share); under secure aggregation each client's session is kept here
    and it masks its upload as it would on its own machine."""

    def __init__(self, parts: RunParts):
        self.parts = parts
        self.clients = {c.client_id: c for c in parts.clients}
        self.sessions: dict[str, ClientSession] = {}  # each client's secure-aggregation state

    def site(self, cid: str) -> Site:
        return Site(self.parts, self.clients[cid], self.sessions)

    def exchange(
        self,
        rnd: int,
        down: bytes,
        clients: list[ClientData],
        inboxes: dict[str, bytes] | None = None,
    ) -> list[tuple[ClientUpdate, bytes]]:
        answers = []
        for client in clients:
            try:
                update = self.site(client.client_id).trained(rnd, down)
            except ClientFailed as e:  # one of its processes died: it is missing this round
                log.warning("round %d: %s failed: %s", rnd, client.client_id, e)
                continue
            answers.append((update, self.upload(rnd, down, update, inboxes)))
            update.params = {}
        return answers

    def upload(
        self, rnd: int, down: bytes, update: ClientUpdate, inboxes: dict[str, bytes] | None
    ) -> bytes:
        """What the site of `update` uploads of it: compressed, masked under secure
        aggregation, where `inboxes` holds each client's secrets for the round."""
        cid = update.client_id
        return self.site(cid).upload(rnd, down, update, None if inboxes is None else inboxes[cid])

    def secagg(self, rnd: int, phase: str, payloads: dict[str, bytes]) -> dict[str, bytes]:
        answers = {cid: self.site(cid).secagg(rnd, phase, p) for cid, p in payloads.items()}
        return {cid: answer for cid, answer in answers.items() if answer}  # empty: refused

    def evaluate_personal(self, params: Params, clients: list[ClientData]) -> list[dict]:
        message = wire.pack(params)
        return [self.site(c.client_id).evaluate(message) for c in clients]

    def close(self) -> None:
        self.sessions.clear()
        self.parts.close()


class DevicePool:
    """A round's clients trained in parallel: this process trains on the first device, one
    worker process on each other device, each worker holding its own base model. Clients are
    dealt to the devices in turn, in the round's order. A client's training depends only on
    what the server sent, its state and its seed (round, client), so the federation ends as on
    one device. Client state (SCAFFOLD's c_i, FedSA-LoRA's B) stays in this process and
    travels with the task to whichever worker trains the client."""

    def __init__(self, parts: RunParts, devices: list[torch.device]):
        self.local = InProcess(parts)
        context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
        threads = parts.cfg.threads or torch.get_num_threads()
        self.workers: list[tuple[torch.device, Connection, multiprocessing.Process]] = []
        for device in devices[1:]:
            mine, theirs = context.Pipe()
            process = context.Process(
                target=_serve,
                daemon=True,
                name=f"fedumm-{device}",
                args=(parts.cfg.model_dump_json(), str(device), threads, theirs),
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
        states = self.local.parts.client_states
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
                answers[cid] = (update, self.local.upload(rnd, down, update, inboxes))
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
        sites = InProcess(build_parts(cfg))
        held = sites.parts.client_states
        conn.send(("ready",))
        while True:
            task = conn.recv()
            if task[0] == "stop":
                return
            _, rnd, down, ids, states = task
            results = []
            for cid in ids:
                held[cid] = wire.unpack(states[cid])
                update = sites.site(cid).trained(rnd, down)
                meta = (cid, update.num_samples, update.num_steps, update.metrics)
                results.append((meta, wire.pack(update.params), wire.pack(held[cid])))
                del held[cid]  # the main process keeps it: a worker holds none
            conn.send(("ok", results))
    except (EOFError, KeyboardInterrupt):
        return
    except BaseException as e:
        conn.send(("error", type(e).__name__, str(e), traceback.format_exc()))


def connect(parts: RunParts) -> Transport:
    """The embedded engine's transport for a run's parts: in this process, or on a pool of
    device workers when `runtime.devices` names several."""
    devices = worker_devices(parts.cfg.runtime)
    if len(devices) > 1:
        return DevicePool(parts, devices)
    return InProcess(parts)


def run(
    cfg: RunConfig, out_dir: Path, progress: bool = True, resume: bool = False, force: bool = False
) -> RunResult:
    """`fedumm run` on the embedded engine."""
    return run_experiment(cfg, out_dir, connect, progress, resume, force)
