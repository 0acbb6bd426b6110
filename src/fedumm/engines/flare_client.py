"""The client side of the FLARE engine: a FLARE Client API script, run on every site.

It runs a `Site` (engines/site.py) from the config shipped beside it and hands it each task:
training, secure aggregation's key protocol, a personalized model's evaluation. State a strategy
keeps on the client (SCAFFOLD's control variate, FedSA-LoRA's B) lives in this process, and on
the site's disk after every round, so a resumed job continues from it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nvflare.client as flare
from nvflare.app_common.abstract.fl_model import FLModel
from safetensors.torch import load_file, save_file

from fedumm.config import RunConfig
from fedumm.engines.site import Site

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
    site = Site(shipped_config(), flare.get_site_name())
    kept = SiteState(Path(site.cfg.flare.state_dir or "fedumm_state") / site.name, site.state)
    while flare.is_running():
        task = flare.receive()
        if task is None:
            break
        name, rnd = flare.get_task_name(), task.current_round
        if os.environ.get(CRASH_ENV) in (f"{site.name}@{rnd}", f"{site.name}@{rnd}:{name}"):
            os._exit(3)  # as abrupt as a crash: no answer, no goodbye
        if name.startswith(SECAGG):
            answer = site.secagg(rnd, name[len(SECAGG) :], bytes(task.params["payload"]))
            flare.send(FLModel(params={"answer": answer}))
        elif flare.is_evaluate():
            metrics = site.evaluate(bytes(task.params["message"]))
            flare.send(FLModel(params={}, meta={"metrics": metrics}))
        else:
            kept.before(rnd)
            inbox = task.params.get("inbox")
            meta, up = site.train(rnd, bytes(task.params["message"]),
                                  None if inbox is None else bytes(inbox))  # fmt: skip
            kept.after(rnd)
            flare.send(FLModel(params={"upload": up}, meta=meta))


if __name__ == "__main__":
    main()
