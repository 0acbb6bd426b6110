"""The client side of the FLARE engine: a FLARE Client API script, run on every site.

It builds the same Federation as the server from the config shipped beside it, takes its own
site's share of the data, and answers each round's task with `Federation.train_client`, the
local training the embedded engine runs, so every algorithm behaves the same under both engines.
State a strategy keeps on the client (SCAFFOLD's control variate, FedSA-LoRA's B) lives in this
process, and on the site's disk after every round (a resumed job continues from it); so a
personalized model is evaluated here, on the server's request. Under secure aggregation the
site's keys and shares live here too, and the key protocol's tasks are answered here.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nvflare.client as flare
from nvflare.app_common.abstract.fl_model import FLModel
from safetensors.torch import load_file, save_file

from fedumm.config import RunConfig
from fedumm.experiment import build_federation
from fedumm.federation import wire
from fedumm.federation.client import site_names, upload
from fedumm.federation.secure_aggregation import ClientSession, ProtocolError, client_answer

CONFIG_NAME = "fedumm_config.json"
SECAGG = "secagg_"  # + phase: the tasks of secure aggregation's key protocol
# Fault injection for tests and drills: "site-2@3" makes site-2's process die at round 3, at
# whatever task comes first; "site-2@3:train" at round 3's training task.
CRASH_ENV = "FEDUMM_FLARE_CRASH"


def shipped_config() -> RunConfig:
    """The config in the job's custom folder, which FLARE puts on sys.path."""
    for folder in [Path.cwd(), *map(Path, sys.path)]:
        if (folder / CONFIG_NAME).is_file():
            return RunConfig.model_validate_json((folder / CONFIG_NAME).read_text())
    raise FileNotFoundError(f"{CONFIG_NAME} is in none of: the working folder, sys.path")


def site_config(cfg: RunConfig, site: str) -> RunConfig:
    """The config as `site` runs it: on its own device (flare.site_devices)."""
    sites = site_names(cfg.federation.num_clients)
    if site not in sites:
        raise ValueError(f"site {site!r} is not one of this job's sites: site-1..{sites[-1]}")
    device = cfg.flare.site_device(site, sites.index(site), cfg.runtime.device)
    return cfg.model_copy(update={"runtime": cfg.runtime.model_copy(
        update={"device": device, "devices": None})})  # fmt: skip


class SiteState:
    """What a site keeps between rounds (SCAFFOLD's c_i, FedSA-LoRA's B), also on disk after
    every round, so a resumed job continues each site where the server's checkpoint is."""

    KEEP = 3  # rounds of state kept on disk

    def __init__(self, folder: Path, state: dict):
        self.folder, self.state = folder, state
        self.restored = False

    def _file(self, rnd: int) -> Path:
        return self.folder / f"state-{rnd:05d}.safetensors"

    def before(self, rnd: int) -> None:
        """The first task this process gets, round `rnd`: restore the state the site had
        after the last round before it (a fresh job has none)."""
        if self.restored:
            return
        self.restored = True
        earlier = sorted(p for p in self.folder.glob("state-*.safetensors")
                         if int(p.stem.split("-")[1]) < rnd)  # fmt: skip
        if earlier:
            self.state.clear()
            self.state.update(load_file(earlier[-1]))

    def after(self, rnd: int) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self._file(rnd).with_suffix(".tmp")
        save_file({k: v.contiguous() for k, v in self.state.items()}, tmp)
        os.replace(tmp, self._file(rnd))
        for old in sorted(self.folder.glob("state-*.safetensors"))[: -self.KEEP]:
            old.unlink()


def main() -> None:
    flare.init()
    cfg = site_config(shipped_config(), flare.get_site_name())
    fl = build_federation(cfg)
    client = fl.client(flare.get_site_name())
    equal = cfg.federation.client_weights == "equal"
    sessions: dict[str, ClientSession] = {}  # this site's secure-aggregation state
    kept = SiteState(Path(cfg.flare.state_dir or "fedumm_state") / client.client_id,
                     fl.client_states[client.client_id])  # fmt: skip
    while flare.is_running():
        task = flare.receive()
        if task is None:
            break
        name, rnd = flare.get_task_name(), task.current_round
        if os.environ.get(CRASH_ENV) in (f"{client.client_id}@{rnd}",
                                         f"{client.client_id}@{rnd}:{name}"):  # fmt: skip
            os._exit(3)  # as abrupt as a crash: no answer, no goodbye
        if name.startswith(SECAGG):
            try:
                answer = client_answer(sessions, client.client_id, rnd, name[len(SECAGG) :],
                                       bytes(task.params["payload"]))  # fmt: skip
            except ProtocolError as e:  # refused: the server counts this site as dropped
                print(f"secure aggregation round {rnd}: refused {name}: {e}", file=sys.stderr)
                answer = b""
            flare.send(FLModel(params={"answer": answer}))
            continue
        if flare.is_evaluate():  # a personalized strategy's own model, scored here
            metrics = fl.evaluate_personal(wire.unpack(task.params["message"]), client)
            flare.send(FLModel(params={}, meta={"metrics": metrics}))
            continue
        kept.before(rnd)
        update = fl.train_client(client, wire.unpack(task.params["message"]), rnd)
        kept.after(rnd)
        inbox = task.params.get("inbox")
        session = sessions.get(client.client_id) if inbox is not None else None
        up = upload(update, 1 if equal else update.num_samples, session,
                    None if inbox is None else bytes(inbox))  # fmt: skip
        flare.send(FLModel(params={"upload": up}, meta={
            "num_samples": update.num_samples, "num_steps": update.num_steps,
            "metrics": {**update.metrics, "pid": os.getpid(), "device": str(fl.runtime.device)},
        }))  # fmt: skip


if __name__ == "__main__":
    main()
