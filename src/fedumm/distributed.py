"""One client trained by several processes (`runtime.client_devices`), as data parallelism.

Rank 0 is the client's own process, the one every engine talks to (the embedded engine's, a
FLARE site's, a Flower node's); at its first training it starts ranks 1..R-1 on this machine,
which build the same parts from the same config and take commands from rank 0 over a pipe. No
rank but 0 exchanges anything with the server: the others reach rank 0 only, through the
process group (gloo on the CPU or for ranks sharing a GPU, NCCL for one GPU each).

A step's batch is the same on every rank (the same seed draws it); rank r trains on its
contiguous share, weighted by its share of the batch's target tokens, and the adapter's
gradients are summed over the ranks in one flat all-reduce before clipping and the optimizer
step. So every rank takes the same step, and the step is the one-process step on the whole
batch, up to float summation order. This is DDP's arithmetic with its reduction after the
backward rather than overlapped with it: a LoRA gradient is small (33 MB for a 7B model), and
the token weighting, the strategies' loss terms (counted once, on rank 0) and gradient hooks
(SCAFFOLD's correction, on the summed gradient) stay exactly as in one process.

`fsdp` also shards the frozen base over the ranks with torch's `fully_shard` (one unit per
layer), the adapter left whole on every rank; every rank then runs each forward pass together,
so a rank with fewer micro-batches than another runs weightless ones to keep in step.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from multiprocessing.connection import Connection

import torch
import torch.distributed as dist

from fedumm.config import ConfigError, RuntimeConfig
from fedumm.runtime import resolve_device

log = logging.getLogger("fedumm")


class ClientFailed(RuntimeError):
    """A client's training could not finish: one of its processes died or stopped answering.
    The engine reports the client as dropped for the round; the next round starts new ones."""


def rank_devices(cfg: RuntimeConfig, key: str = "runtime") -> list[torch.device]:
    """The device of each process that trains one client, rank 0 (this process, on
    `runtime.device`) first; checked against this machine, so more processes than devices is
    refused naming the key. A count on a GPU gives each process the next GPU."""
    main = resolve_device(cfg.device, f"{key}.device")
    devices = cfg.client_devices
    if isinstance(devices, list):
        listed = [resolve_device(name, f"{key}.client_devices") for name in devices]
        if listed[0] != main:
            raise ConfigError(
                f"{key}.client_devices: rank 0 is the client's own process, on {key}.device "
                f"({main}), so the list starts with it, not {devices[0]}"
            )
        return listed
    count = devices or 1
    if main.type == "cuda" and count > 1:
        have, first = torch.cuda.device_count(), main.index or 0
        if first + count > have:
            raise ConfigError(
                f"{key}.client_devices: {count} processes, one GPU each from {main}, but this "
                f"machine has {have} GPU(s); to split a GPU between processes, list them "
                f"([{main}, {main}])"
            )
        return [torch.device("cuda", first + r) for r in range(count)]
    if main.type == "cpu" and count > (os.cpu_count() or 1):
        raise ConfigError(
            f"{key}.client_devices: {count} processes, but this machine has "
            f"{os.cpu_count()} CPU core(s): at most one process a core"
        )
    return [main] * count


def backend(devices: list[torch.device]) -> str:
    """NCCL when each rank has a GPU of its own; gloo on the CPU and for ranks sharing one."""
    distinct = len(set(devices)) == len(devices)
    return "nccl" if devices[0].type == "cuda" and distinct else "gloo"


@dataclass(frozen=True)
class RankGroup:
    """This process's place among the processes that train one client."""

    rank: int
    world: int
    sharded: bool  # fsdp: forward passes are collective, every rank runs as many
    device: torch.device = torch.device("cpu")  # this rank's (NCCL reduces on the GPU)

    def share(self, indices: list[int]) -> list[int]:
        """This rank's contiguous share of a batch (sizes differ by at most one, the larger
        first, so rank 0 always has a sample when the batch has one)."""
        base, extra = divmod(len(indices), self.world)
        start = self.rank * base + min(self.rank, extra)
        return indices[start : start + base + (self.rank < extra)]

    def most_pieces(self, indices: list[int], pieces: Callable[[list[int]], int]) -> int:
        """The most micro-batches any rank has for this batch (`pieces(share)` counts them)."""
        shares = [RankGroup(r, self.world, self.sharded).share(indices) for r in range(self.world)]
        return max(pieces(s) for s in shares)

    def total(self, count: int) -> int:
        """`count` summed over the ranks (a step's target tokens)."""
        t = torch.tensor([count], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return int(t.item())

    def sum_gradients(self, params: list[torch.nn.Parameter], loss: torch.Tensor) -> torch.Tensor:
        """Each parameter's gradient summed over the ranks, in place, in one flat all-reduce
        (a missing gradient counts as zero); returns `loss` summed likewise."""
        device = loss.device
        flat = torch.cat(
            [
                (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float()
                for p in params
            ]
            + [loss.detach().reshape(1).float()]
        ).to(device)
        dist.all_reduce(flat)
        offset = 0
        for p in params:
            n = p.numel()
            summed = flat[offset : offset + n].view_as(p).to(p.dtype)
            if p.grad is None:
                p.grad = summed.clone()
            else:
                p.grad.copy_(summed)
            offset += n
        return flat[-1].to(loss.dtype)


def shard_base(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The frozen base of `model` sharded over the group with `fully_shard`, a unit per layer
    (each child of a ModuleList) and one for the rest; the adapter (every trainable
    parameter) stays whole on each rank, on `device`."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    whole = {p for p in model.parameters() if p.requires_grad}
    for module in list(model.modules()):
        if isinstance(module, torch.nn.ModuleList):
            for layer in module:
                fully_shard(layer, mesh=mesh, ignored_params=whole)
    fully_shard(model, mesh=mesh, ignored_params=whole)
    for p in whole:
        p.data = p.data.to(device)
    return model


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join(rank: int, world: int, port: int, devices: list[torch.device], timeout: int) -> None:
    """This process into the client's process group, reached on 127.0.0.1:`port`."""
    if devices[rank].type == "cuda":
        torch.cuda.set_device(devices[rank])
    dist.init_process_group(
        backend(devices),
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=timeout),
    )


def leave() -> None:
    """Out of the process group (after a failure too: nothing waits on the dead)."""
    if dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


# A peer's main: (the config as JSON, its rank, the devices, the port, the group's timeout, its
# torch threads, the pipe its commands come through). It builds its parts, says "ready", joins
# the group (`join_as_peer`) and serves commands until "stop".
PeerMain = Callable[[str, int, list[str], int, int, int, Connection], None]


class Peers:
    """Rank 0's side: ranks 1..R-1 started on this machine, waited for until each has built
    its parts, then joined in one process group; `command` tells them what to run next. They
    are forked from a server process that has imported `main`'s module once (CUDA cannot be
    forked once initialised, and that server never initialises it), so a peer starts in a
    fraction of a second instead of importing torch and transformers again."""

    def __init__(self, config_json: str, devices: list[torch.device], timeout: int, main: PeerMain):
        self.threads = max(1, torch.get_num_threads() // len(devices))
        port = _free_port()
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([main.__module__])
        names = [str(d) for d in devices]
        self.pipes: list[Connection] = []
        self.processes: list[multiprocessing.Process] = []
        for rank in range(1, len(devices)):
            mine, theirs = context.Pipe()
            process = context.Process(
                target=main,
                name=f"fedumm-rank-{rank}",
                args=(config_json, rank, names, port, timeout, self.threads, theirs),
                daemon=True,
            )
            process.start()
            theirs.close()
            self.pipes.append(mine)
            self.processes.append(process)
        for rank, pipe in enumerate(self.pipes, start=1):
            try:
                if not pipe.poll(timeout):  # "ready": it built its parts
                    raise EOFError
                pipe.recv()
            except EOFError:
                self.close()
                why = (
                    f"rank {rank} did not start (waited up to runtime.client_timeout, {timeout} s)"
                )
                raise ClientFailed(self.why(why)) from None
        join(0, len(devices), port, devices, timeout)

    def command(self, *task) -> None:
        """Every peer starts `task` (then meets rank 0 in the process group)."""
        for rank, pipe in enumerate(self.pipes, start=1):
            try:
                pipe.send(task)
            except (BrokenPipeError, OSError):
                raise ClientFailed(self.why(f"rank {rank} is gone")) from None

    def why(self, what: str) -> str:
        """`what` went wrong, with each dead rank's exit code."""
        dead = [
            f"rank {r} exited with code {p.exitcode}"
            for r, p in enumerate(self.processes, start=1)
            if p.exitcode is not None
        ]
        return what + (f" ({'; '.join(dead)})" if dead else "")

    @contextlib.contextmanager
    def together(self, what: str) -> Iterator[None]:
        """Collective work; a rank that died, or did not answer within client_timeout, makes it
        ClientFailed, naming the rank."""
        try:
            yield
        except ClientFailed:
            raise
        except RuntimeError as e:  # gloo and NCCL report a lost peer so (DistBackendError too)
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ClientFailed(self.why(f"{what} failed across its processes: {first}")) from e

    def close(self) -> None:
        """Stop every peer and leave the group."""
        for pipe in self.pipes:
            with contextlib.suppress(BrokenPipeError, OSError):
                pipe.send(("stop",))
        for process in self.processes:
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()
                process.join(timeout=10)
        leave()
        self.pipes, self.processes = [], []


class ClientProcesses:
    """Rank 0's side of a client trained by several processes: the others started at its
    first task (and again after a failure, if the base is whole on each), every task run
    with them. `model` is rank 0's, sharded when they first start under fsdp."""

    def __init__(
        self, config_json: str, runtime: RuntimeConfig, model: torch.nn.Module, main: PeerMain
    ):
        self.config_json, self.runtime, self.model, self.main = config_json, runtime, model, main
        self.peers: Peers | None = None
        self.group: RankGroup | None = None
        self.lost: str | None = None  # why a sharded base cannot go on

    @contextlib.contextmanager
    def together(self, what: str, task: Callable[[], tuple]) -> Iterator[RankGroup]:
        """The peers told `task()`, then the work inside done with them, on their share of
        the machine's threads; one that dies or stops answering makes it ClientFailed."""
        if self.lost is not None:
            raise ClientFailed(self.lost)
        if self.peers is None:
            devices = rank_devices(self.runtime)
            self.peers = Peers(self.config_json, devices, self.runtime.client_timeout, self.main)
            sharded = self.runtime.client_sharding == "fsdp"
            self.group = RankGroup(0, len(devices), sharded, devices[0])
            if sharded:
                shard_base(self.model, devices[0])
        threads = torch.get_num_threads()
        try:
            self.peers.command(*task())
            torch.set_num_threads(self.peers.threads)
            with self.peers.together(what):
                yield self.group
        except ClientFailed as e:
            log.error("%s", e)
            self.close()
            if self.runtime.client_sharding == "fsdp":
                self.lost = f"{e}; its share of the sharded base is lost: restart the site"
            raise
        finally:
            torch.set_num_threads(threads)

    def close(self) -> None:
        if self.peers is not None:
            self.peers.close()
            self.peers, self.group = None, None
