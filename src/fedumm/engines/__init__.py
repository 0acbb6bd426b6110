"""Engines: where the clients of a federation run. Each is a `Transport` (how the server's round
loop reaches the clients) plus a launcher; `run_federation` picks the one a config names, and
`fedumm run`, `fedumm sweep` and `fedumm bench` all go through it.

- `embedded`: every client in this process, sharing one frozen base model.
- `flare`: NVIDIA FLARE's simulator or POC mode (real processes), or an exported job.
- `flower`: Flower's simulation runtime, or an exported app deployed with `flwr run`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fedumm.config import RunConfig
from fedumm.distributed import rank_devices
from fedumm.extras import check_installed
from fedumm.federation.checkpoint import CheckpointError, read_manifest
from fedumm.results import RunResult
from fedumm.runtime import OutOfMemory, resolve, worker_devices
from fedumm.validation import check


def run_federation(
    cfg: RunConfig, out_dir: Path, progress: bool = True, resume: bool = False, force: bool = False
) -> RunResult:
    """Run `cfg` (federation and baselines) on the engine it names; return the results.
    Devices the config names that this machine lacks, and optional parts it needs that are
    not installed, are refused before any work."""
    check(cfg, "the run's config")
    check_installed(cfg)
    resolve(cfg.runtime)
    worker_devices(cfg.runtime)
    rank_devices(cfg.runtime)
    out_dir = Path(out_dir)
    try:
        if cfg.engine == "flare":
            from fedumm.engines.flare import run_flare

            return run_flare(cfg, out_dir, resume)
        if cfg.engine == "flower":
            from fedumm.engines.flower import run_flower

            return run_flower(cfg, out_dir, resume)
        from fedumm.engines.embedded import run

        return run(cfg, out_dir, progress, resume, force)
    except torch.OutOfMemoryError as e:
        raise OutOfMemory(e, _resumable(out_dir)) from None


def _resumable(out_dir: Path) -> str:
    """How a run stopped mid-way continues: from its last checkpoint, if it has one."""
    try:
        done = read_manifest(out_dir)["round"]
    except CheckpointError:
        return "no round had finished, so there is no checkpoint to resume from"
    return (
        f"the checkpoint of round {done} is in {out_dir}: continue with `fedumm run --resume "
        f"{out_dir} --set runtime.micro_batch_size=N` (or the other settings)"
    )
