"""Embedded engine vs NVIDIA FLARE (simulator, POC) vs Flower (simulation, local deployment) on
the same job: wall time and peak memory.

Each run is `fedumm run` in a fresh process; memory is the peak, sampled every 0.2 s, of the
summed resident memory of every process of the run: the command, its children, and the FLARE
server and client processes (found by the run's folder in their command line), Ray's and
Flower's processes (children of the command). The embedded engine shares one base model between
all clients; FLARE and Flower load the model once per client process (Flower's deployment:
once per message, in a fresh ClientApp process).

    python benchmarks/engine_comparison.py [--clients 2 4 8]
        [--engines embedded sim poc flower flower-deploy] [-o runs/engines]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
from as_measured import QUICKSTART_AS_MEASURED

JOB = [
    "data.train_samples=2000",
    "data.test_samples=200",
    "federation.rounds=3",
    "federation.local_steps=20",
    "eval.every=1",
    "baselines.zero_shot=false",
    "baselines.local=false",
    "baselines.centralized=false",
    "threads=1",
    "checkpoint_every=0",
    *QUICKSTART_AS_MEASURED,
]
CONFIG = Path(__file__).resolve().parent.parent / "configs" / "quickstart.yaml"


def run_processes(root: psutil.Process, marker: str) -> list[psutil.Process]:
    """The command's process tree plus every process whose command line names `marker`."""
    found = {root.pid: root}
    with contextlib.suppress(psutil.NoSuchProcess):
        found.update({p.pid: p for p in root.children(recursive=True)})
    for p in psutil.process_iter(["cmdline"]):
        if marker in " ".join(p.info["cmdline"] or []):
            found[p.pid] = p
    return list(found.values())


def measure(engine: str, clients: int, out: Path) -> dict:
    if out.exists():
        shutil.rmtree(out)
    flags = {
        "embedded": [],
        "sim": ["--engine", "flare"],
        "poc": ["--engine", "flare", "--flare-env", "poc"],
        "flower": ["--engine", "flower"],
        "flower-deploy": ["--engine", "flower", "--set", "flower.env=deployment"],
    }[engine]
    sets = [*JOB, f"federation.num_clients={clients}", f"federation.clients_per_round={clients}"]
    command = [
        sys.executable,
        "-m",
        "fedumm.cli",
        "run",
        str(CONFIG),
        "-o",
        str(out),
        "--quiet",
        *flags,
        *(a for s in sets for a in ("--set", s)),
    ]
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    root, peak, processes = psutil.Process(proc.pid), 0, set()
    while proc.poll() is None:
        rss = 0
        for p in run_processes(root, str(out)):
            try:
                rss += p.memory_info().rss
                processes.add(p.pid)
            except psutil.Error:
                pass
        peak = max(peak, rss)
        time.sleep(0.2)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{engine} with {clients} clients failed; rerun: {' '.join(command)}")
    from fedumm.results import RunResult

    final = RunResult.load(out / "results.json").final.metrics
    return {
        "engine": engine,
        "clients": clients,
        "wall_s": wall,
        "peak_mb": peak / 2**20,
        "processes": len(processes),
        "accuracy": final["vqa_accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[2, 4, 8])
    engines = ["embedded", "sim", "poc", "flower", "flower-deploy"]
    parser.add_argument("--engines", nargs="+", default=engines, choices=engines)
    parser.add_argument("-o", "--out", type=Path, default=Path("runs/engines"))
    args = parser.parse_args()
    rows = []
    print(f"{'engine':<14}{'clients':>8}{'wall s':>9}{'peak MB':>10}{'processes':>11}{'VQA %':>8}")
    for clients in args.clients:
        for engine in args.engines:
            row = measure(engine, clients, args.out.resolve() / f"{engine}-{clients}")
            rows.append(row)
            print(
                f"{engine:<14}{clients:>8}{row['wall_s']:>9.1f}{row['peak_mb']:>10.0f}"
                f"{row['processes']:>11}{row['accuracy']:>8.1f}",
                flush=True,
            )
    (args.out / "engines.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
