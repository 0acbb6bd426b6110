"""The client side of the FLARE engine: a FLARE Client API script, run on every site.

It runs a `Site` (engines/site.py) from the config shipped beside it and hands it each task:
training, secure aggregation's key protocol, a personalized model's evaluation. State a strategy
keeps on the client (SCAFFOLD's control variate, FedSA-LoRA's B) lives in this process, and on
the site's disk after every round it trains (`SiteState`), kept back to the server's latest
checkpoint, so a resumed job continues each site from that checkpoint's round.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import nvflare.client as flare
from nvflare.app_common.abstract.fl_model import FLModel
from safetensors.torch import load_file, save_file

from fedumm.config import RunConfig
from fedumm.distributed import ClientFailed
from fedumm.engines.site import Site

log = logging.getLogger("fedumm")

CONFIG_NAME = "fedumm_config.json"
SECAGG = "secagg_"  # + phase: the tasks of secure aggregation's key protocol
# Fault injection for tests and drills: "site-2@3" makes site-2's process die at round 3, at
# whatever task comes first; "site-2@3:train" at round 3's training task.
CRASH_ENV = "FEDUMM_FLARE_CRASH"
# What the server tells the sites in a task's meta (engines/flare.py, FlareTransport):
KEEP_FROM = "fedumm_keep_from"  # train: the round of its latest checkpoint (what to keep)
RESUMED = "fedumm_resumed"  # the round of the checkpoint the job resumed from; 0: a fresh job
TRAINED = "fedumm_trained"  # resumed: site -> its last round up to then the server has an
# answer of (0: none), so the site must have a state at least that new
ERROR = "fedumm_error"  # in an answer: the site refuses the task, and why
FAILED = "fedumm_failed"  # in an answer: the site's training failed (it is dropped), and why


class StateMissing(RuntimeError):
    """A resumed site lacks the state file of a round the server's checkpoint depends on."""


def shipped_config() -> RunConfig:
    """The config in the job's custom folder, which FLARE puts on sys.path."""
    for folder in [Path.cwd(), *map(Path, sys.path)]:
        if (folder / CONFIG_NAME).is_file():
            return RunConfig.model_validate_json((folder / CONFIG_NAME).read_text())
    raise FileNotFoundError(f"{CONFIG_NAME} is in none of: the working folder, sys.path")


class SiteState:
    """What a site keeps between rounds (SCAFFOLD's c_i, FedSA-LoRA's B), also on disk after
    every round it trains (`state-00007.safetensors`), so a resumed job continues each site
    where the server's checkpoint is.

    A resume from the checkpoint of round c needs the site's newest file at or before c (the
    last round up to c it trained). So after each round the site deletes only files older than
    its newest at or before `keep_from`, the server's latest checkpoint (the server says which
    in every training task): a checkpoint every k rounds keeps at most about k files. Files
    after a resumed job's checkpoint are from the run that was stopped, and are deleted when
    the resumed job first asks for the state."""

    def __init__(self, folder: Path, state: dict):
        self.folder, self.state = folder, state
        self.restored = False

    def _file(self, rnd: int) -> Path:
        return self.folder / f"state-{rnd:05d}.safetensors"

    def _rounds(self) -> list[int]:
        """The rounds of the files on disk, oldest first."""
        return sorted(int(p.stem.split("-")[1]) for p in self.folder.glob("state-*.safetensors"))

    def before(self, resumed: int, trained: int = 0) -> None:
        """At the first task that uses the state: a fresh job (`resumed` 0) starts empty, with
        an empty folder; a job resumed from the checkpoint of round `resumed` restores the
        newest file up to that round, which must be at least as new as round `trained` (the
        last one before then the server has the site's answer of), or `StateMissing`."""
        if self.restored:
            return
        rounds = self._rounds()
        if resumed:
            upto = [r for r in rounds if r <= resumed]
            if trained and (not upto or upto[-1] < trained):
                raise StateMissing(
                    f"{self.folder.name} cannot resume after round {resumed}: its state file "
                    f"{self._file(trained)} is missing (it trained in round {trained}; "
                    f"the state files there: {', '.join(map(str, rounds)) or 'none'}); "
                    "refusing to continue it from another state"
                )
            if upto:
                self.state.clear()
                self.state.update(load_file(self._file(upto[-1])))
            rounds = [r for r in rounds if r > resumed]  # the stopped run's: not this job's
        for rnd in rounds:
            self._file(rnd).unlink()
        self.restored = True

    def after(self, rnd: int, keep_from: int) -> None:
        """The state after training round `rnd` on disk; files older than the newest at or
        before round `keep_from` (what a resume from there needs) deleted."""
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self._file(rnd).with_suffix(".tmp")
        save_file({k: v.contiguous() for k, v in self.state.items()}, tmp)
        os.replace(tmp, self._file(rnd))
        rounds = self._rounds()
        needed = max((r for r in rounds if r <= keep_from), default=0)
        for old in rounds:
            if old < needed:
                self._file(old).unlink()


def main() -> None:
    flare.init()
    site = Site.build(shipped_config(), flare.get_site_name())
    kept = SiteState(Path(site.cfg.flare.state_dir or "fedumm_state") / site.name, site.state)
    while flare.is_running():
        task = flare.receive()
        if task is None:
            break
        name, rnd, meta = flare.get_task_name(), task.current_round, task.meta or {}
        if os.environ.get(CRASH_ENV) in (f"{site.name}@{rnd}", f"{site.name}@{rnd}:{name}"):
            os._exit(3)  # as abrupt as a crash: no answer, no goodbye
        if name.startswith(SECAGG):
            answer = site.secagg(rnd, name[len(SECAGG) :], bytes(task.params["payload"]))
            flare.send(FLModel(params={"answer": answer}))
            continue
        try:  # training and a personalized evaluation use the state
            kept.before(int(meta.get(RESUMED, 0)), int(meta.get(TRAINED, {}).get(site.name, 0)))
        except StateMissing as e:  # the server stops the job with this reason
            log.error("%s", e)
            flare.send(FLModel(params={}, meta={ERROR: str(e)}))
            continue
        if flare.is_evaluate():
            metrics = site.evaluate(bytes(task.params["message"]))
            flare.send(FLModel(params={}, meta={"metrics": metrics}))
        else:
            inbox = task.params.get("inbox")
            try:
                answer, up = site.train(
                    rnd, bytes(task.params["message"]), None if inbox is None else bytes(inbox)
                )
            except ClientFailed as e:  # one of its processes died: dropped this round
                log.error("%s", e)
                flare.send(FLModel(params={}, meta={FAILED: str(e)}))
                continue
            kept.after(rnd, int(meta.get(KEEP_FROM, 0)))  # none said: keep every file
            flare.send(FLModel(params={"upload": up}, meta=answer))


if __name__ == "__main__":
    main()
