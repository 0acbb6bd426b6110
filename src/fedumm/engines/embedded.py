"""The embedded engine: every client of the federation in this process, one after another, on
the one frozen base model they all share (clients differ only by their adapter)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fedumm.config import RunConfig
from fedumm.experiment import Federation, run_experiment
from fedumm.federation import wire
from fedumm.federation.client import ClientData, upload
from fedumm.federation.server import Transport
from fedumm.federation.update import ClientUpdate, Params

TrainClient = Callable[[ClientData, Params, int], ClientUpdate]


class InProcess:
    """The clients train here, in turn, by `train_client`; under secure aggregation each
    masks its upload as it would on its own machine."""

    def __init__(
        self,
        train_client: TrainClient,
        clients: list[ClientData],
        secure: bool = False,
        seed: int = 0,
        evaluate_personal: Callable[[Params, ClientData], dict] | None = None,
    ):
        self.train_client = train_client
        self.all_clients = clients
        self.secure = secure
        self.seed = seed
        self._evaluate_personal = evaluate_personal

    def exchange(
        self, rnd: int, down: bytes, clients: list[ClientData], cohort: list[ClientData]
    ) -> list[tuple[ClientUpdate, bytes]]:
        peers = [self.all_clients.index(c) for c in cohort]
        answers = []
        for client in clients:
            update = self.train_client(client, wire.unpack(down), rnd)
            me = self.all_clients.index(client)
            answers.append((update, upload(update, self.secure, self.seed, rnd, me, peers)))
            update.params = {}
        return answers

    def evaluate_personal(self, params: Params, clients: list[ClientData]) -> list[dict]:
        if self._evaluate_personal is None:
            raise ValueError("this transport was built without personal evaluation")
        return [self._evaluate_personal(params, c) for c in clients]

    def close(self) -> None:
        return None


def connect(fl: Federation) -> Transport:
    """The embedded engine's transport for a built federation."""
    return InProcess(fl.train_client, fl.clients, fl.cfg.federation.secure_aggregation,
                     fl.cfg.seed, fl.evaluate_personal)  # fmt: skip


def run(cfg: RunConfig, out_dir: Path, progress: bool = True, resume: bool = False,
        force: bool = False) -> dict:  # fmt: skip
    """`fedumm run` on the embedded engine."""
    return run_experiment(cfg, out_dir, connect, progress, resume, force)
