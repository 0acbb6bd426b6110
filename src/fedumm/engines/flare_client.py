"""The client side of the FLARE engine: a FLARE Client API script, run on every site.

It builds the same Federation as the server from the config shipped beside it, takes its own
site's share of the data, and answers each round's task with `Federation.train_client`, the
local training the embedded engine runs, so every algorithm behaves the same under both engines.
State a strategy keeps on the client (SCAFFOLD's control variate, FedSA-LoRA's B) lives in this
process; so a personalized model is evaluated here, on the server's request.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nvflare.client as flare
from nvflare.app_common.abstract.fl_model import FLModel

from fedumm.config import RunConfig
from fedumm.experiment import build_federation
from fedumm.federation import wire
from fedumm.federation.client import site_names, upload

CONFIG_NAME = "fedumm_config.json"
# Fault injection for tests and drills: "site-2@3" makes site-2's process die at round 3.
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


def main() -> None:
    flare.init()
    cfg = site_config(shipped_config(), flare.get_site_name())
    fl = build_federation(cfg)
    client = fl.client(flare.get_site_name())
    me = fl.clients.index(client)
    while flare.is_running():
        task = flare.receive()
        if task is None:
            break
        if flare.is_evaluate():  # a personalized strategy's own model, scored here
            metrics = fl.evaluate_personal(wire.unpack(task.params["message"]), client)
            flare.send(FLModel(params={}, meta={"metrics": metrics}))
            continue
        rnd = task.current_round
        if os.environ.get(CRASH_ENV) == f"{client.client_id}@{rnd}":
            os._exit(3)  # as abrupt as a crash: no answer, no goodbye
        cohort = [fl.clients.index(fl.client(site)) for site in task.meta["cohort"]]
        update = fl.train_client(client, wire.unpack(task.params["message"]), rnd)
        up = upload(update, cfg.federation.secure_aggregation, cfg.seed, rnd, me, cohort)
        flare.send(FLModel(params={"upload": up}, meta={
            "num_samples": update.num_samples, "num_steps": update.num_steps,
            "metrics": {**update.metrics, "pid": os.getpid(), "device": str(fl.runtime.device)},
        }))  # fmt: skip


if __name__ == "__main__":
    main()
