"""Embedded engine vs NVIDIA FLARE (simulator, POC) vs Flower (simulation, local deployment) on
the same job: wall time and peak memory.

Each run is `fedumm run` in a fresh process; memory is the peak, sampled every 0.2 s, of the
summed resident memory of every process of the run: the command, its children, and the FLARE
server and client processes (found by the run's folder in their command line), Ray's and
Flower's processes (children of the command, and the process groups they lead: a SuperNode's
site worker outlives the ClientApp that started it). The embedded engine shares one base model
between all clients; FLARE and Flower load the model once per client process (Flower's
deployment: once per SuperNode, in its site worker). For Flower's deployment it also reports the
peak per SuperNode: the summed resident memory of its process group (the SuperNode, its
SuperExec, the ClientApp of the message, the site worker), the largest of the sites; and, after
the table, what a message costs besides its work: the imports of a fresh flwr-clientapp process
and of the ClientApp it loads (the forwarder, and the old in-process ClientApp).

    python benchmarks/engine_comparison.py [--clients 2 4 8]
        [--engines embedded sim poc flower flower-deploy] [-o runs/engines]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
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
    """The command's process tree plus every process whose command line names `marker`, and
    the members of the process groups these lead."""
    found = {root.pid: root}
    with contextlib.suppress(psutil.NoSuchProcess):
        found.update({p.pid: p for p in root.children(recursive=True)})
    everyone = list(psutil.process_iter(["cmdline"]))
    for p in everyone:
        if marker in " ".join(p.info["cmdline"] or []):
            found[p.pid] = p
    for p in everyone:
        with contextlib.suppress(OSError):
            if os.getpgid(p.pid) in found:
                found[p.pid] = p
    return list(found.values())


def worker_of(p: psutil.Process) -> int | None:
    """The SuperNode whose site worker `p` is (it listens on site-worker-PID.sock), if any."""
    for c in p.net_connections(kind="unix"):
        name = Path(c.laddr or "").name
        if name.startswith("site-worker-") and name.endswith(".sock"):
            with contextlib.suppress(ValueError):
                return int(name[len("site-worker-") : -len(".sock")])
    return None


def supernode_memory(processes: list[psutil.Process]) -> dict[int, int]:
    """SuperNode pid -> summed resident memory of its process group (the SuperNode, its
    SuperExec, the message's ClientApp) and its site worker (forked by the machine's fork
    server, which is shared by the SuperNodes and counted in none)."""
    rss: dict[int, int] = {}
    nodes = set()
    for p in processes:
        with contextlib.suppress(psutil.Error, OSError):
            if "flower-supernode" in " ".join(p.cmdline()[:2]):
                nodes.add(p.pid)
    for p in processes:
        with contextlib.suppress(psutil.Error, OSError):
            node = worker_of(p)
            if node is None and "fedumm.engines.flower" not in " ".join(p.cmdline()):
                node = os.getpgid(p.pid)
            if node in nodes:
                rss[node] = rss.get(node, 0) + p.memory_info().rss
    return rss


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
    root, peak, node_peak, processes = psutil.Process(proc.pid), 0, 0, set()
    while proc.poll() is None:
        rss = 0
        found = run_processes(root, str(out))
        for p in found:
            try:
                rss += p.memory_info().rss
                processes.add(p.pid)
            except psutil.Error:
                pass
        peak = max(peak, rss)
        node_peak = max(node_peak, *supernode_memory(found).values(), 0)
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
        "supernode_peak_mb": node_peak / 2**20,
        "processes": len(processes),
        "accuracy": final["vqa_accuracy"],
    }


def import_cost(code: str, repeats: int = 3) -> tuple[float, float]:
    """(median wall s, resident MB at the end) of a fresh Python running `code`: what a
    process Flower starts per message pays before its work."""
    report = "; import psutil; print(psutil.Process().memory_info().rss)"
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", code + report], capture_output=True, text=True, check=True
        )
        rss = int(done.stdout.split()[-1])
        runs.append((time.perf_counter() - start, rss / 2**20))
    return sorted(runs)[repeats // 2]


MESSAGE_COSTS = {
    "flwr-clientapp's own imports": "import flwr.supernode.runtime.run_clientapp",
    "+ the forwarder (fedumm_app)": "import flwr.supernode.runtime.run_clientapp, sys; "
    "sys.path.insert(0, 'app'); import fedumm_app; fedumm_app.client_app",
    "+ the old ClientApp (fedumm.engines.flower)": "import flwr.supernode.runtime.run_clientapp; "
    "import fedumm.engines.flower",
}


def message_costs(out: Path) -> None:
    """What a message costs Flower's fresh process before its work, printed."""
    from fedumm.engines.flower import APP_MODULE

    (out / "app").mkdir(parents=True, exist_ok=True)
    (out / "app" / "fedumm_app.py").write_text(APP_MODULE)  # what `fedumm flower export` writes
    print(f"\n{'a fresh process importing':<46}{'wall s':>8}{'RSS MB':>9}")
    for what, code in MESSAGE_COSTS.items():
        wall, mb = import_cost(code.replace("'app'", repr(str(out / "app"))))
        print(f"{what:<46}{wall:>8.2f}{mb:>9.0f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[2, 4, 8])
    engines = ["embedded", "sim", "poc", "flower", "flower-deploy"]
    parser.add_argument("--engines", nargs="+", default=engines, choices=engines)
    parser.add_argument("-o", "--out", type=Path, default=Path("runs/engines"))
    args = parser.parse_args()
    rows, began = [], time.perf_counter()
    print(
        f"{'engine':<14}{'clients':>8}{'wall s':>9}{'peak MB':>10}{'per node MB':>13}"
        f"{'processes':>11}{'VQA %':>8}"
    )
    for clients in args.clients:
        for engine in args.engines:
            row = measure(engine, clients, args.out.resolve() / f"{engine}-{clients}")
            rows.append(row)
            node = f"{row['supernode_peak_mb']:.0f}" if engine == "flower-deploy" else "-"
            print(
                f"{engine:<14}{clients:>8}{row['wall_s']:>9.1f}{row['peak_mb']:>10.0f}"
                f"{node:>13}{row['processes']:>11}{row['accuracy']:>8.1f}",
                flush=True,
            )
    if "flower-deploy" in args.engines:
        message_costs(args.out.resolve() / "message-cost")
    print(f"\n{time.perf_counter() - began:.0f} s in all")
    (args.out / "engines.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
