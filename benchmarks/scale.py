"""Cross-device scale: the same federation over 10 to 100,000 simulated clients on one machine.

Every population shares one data set (120,000 ShapesWorld VQA samples, Dirichlet(0.5) over the
answer, min_samples 1) and one round: 10 clients sampled, 5 local steps of batch 1 (at 100,000
clients most hold 1 or 2 samples: a larger batch would make their steps cheaper than those of
10 large clients, and the comparison unfair), evaluation only after the last round, no
baselines. So what grows with the population is the partition,
the per-client bookkeeping, the reports and plots, and SCAFFOLD's per-client state: exactly
what the benchmark is for. Each cell is `fedumm run` in a fresh process; it prints

- set-up: building the model, the data, the partition (results.json's setup_seconds),
- s/round: the median wall time of a round without its evaluation, rounds 2 to the last,
- overhead: of that, the median time outside the clients' training (sampling, messages,
  aggregation, bookkeeping, checkpoint): the part that could grow with the population,
- after: evaluation of the final model, results, report and plots,
- peak RSS: the process's maximum resident memory (getrusage),
- results / plots: bytes of results.json (the partition summary inside) and of every PNG.

    python benchmarks/scale.py [--clients 10 1000 10000 100000] [--strategies fedavg scaffold]
        [--samples 120000] [--rounds 11] [--seed 0] [-o runs/scale]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from as_measured import QUICKSTART_AS_MEASURED

from fedumm.results import RunResult

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "quickstart.yaml"


def job(clients: int, strategy: str, samples: int, rounds: int, seed: int) -> list[str]:
    return [
        f"seed={seed}",
        f"data.train_samples={samples}",
        "data.test_samples=200",
        "partition.min_samples=1",
        f"federation.num_clients={clients}",
        "federation.clients_per_round=10",
        f"federation.rounds={rounds}",
        "federation.local_steps=5",
        "federation.batch_size=1",
        f"federation.strategy.name={strategy}",
        f"eval.every={rounds}",
        "baselines.zero_shot=false",
        "baselines.local=false",
        "baselines.centralized=false",
        "threads=1",
        "checkpoint_every=1",
        *QUICKSTART_AS_MEASURED,
    ]


def child(out: str, sets: list[str]) -> None:
    """One cell, in this process: the run, then its peak memory on stdout."""
    from fedumm.cli import app

    args = ["run", str(CONFIG), "-o", out, "--quiet", *(a for s in sets for a in ("--set", s))]
    try:
        app(args, standalone_mode=False)
    finally:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        print(json.dumps({"peak_rss": peak}))


def measure(clients: int, strategy: str, args, out: Path) -> dict:
    if out.exists():
        shutil.rmtree(out)
    sets = job(clients, strategy, args.samples, args.rounds, args.seed)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--child", str(out), *sets], capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{clients} clients, {strategy} failed:\n{proc.stderr[-3000:]}")
    peak = json.loads(proc.stdout.strip().splitlines()[-1])["peak_rss"]
    res = RunResult.load(out / "results.json")
    setup = res.setup_seconds.total
    rounds = [r.seconds - r.eval_seconds for r in res.rounds][1:]
    overhead = [r.seconds - r.eval_seconds - r.train_seconds for r in res.rounds][1:]
    repaired = res.partition.repaired.get("vqa")
    return {
        "clients": clients,
        "strategy": strategy,
        "wall": wall,
        "setup": setup,
        "partition": res.setup_seconds.partition,
        "data": res.setup_seconds.data,
        "round": statistics.median(rounds),
        "overhead": statistics.median(overhead),
        "after": res.wall_seconds - setup - sum(r.seconds for r in res.rounds),
        "peak_rss": peak,
        "results_bytes": (out / "results.json").stat().st_size,
        "plot_bytes": sum(p.stat().st_size for p in out.glob("*.png")),
        "state_files": len(list(out.glob("client_states/*"))),
        "repaired": repaired.clients if repaired else 0,
    }


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        return child(sys.argv[2], sys.argv[3:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 1000, 10_000, 100_000])
    parser.add_argument("--strategies", nargs="+", default=["fedavg", "scaffold"])
    parser.add_argument("--samples", type=int, default=120_000)
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--out", type=Path, default=Path("runs/scale"))
    args = parser.parse_args()
    rows = []
    header = (
        f"{'clients':>8} {'strategy':<9}{'set-up s':>9}{'of which partition':>19}"
        f"{'s/round':>8}{'overhead ms':>12}{'after s':>8}{'peak RSS GB':>12}"
        f"{'results MB':>11}{'plots MB':>9}{'repaired':>9}"
    )
    print(header)
    for strategy in args.strategies:
        for k in args.clients:
            r = measure(k, strategy, args, args.out / f"{strategy}-{k}")
            rows.append(r)
            print(
                f"{k:>8,} {strategy:<9}{r['setup']:>9.1f}{r['partition']:>19.1f}"
                f"{r['round']:>8.2f}{r['overhead'] * 1e3:>12.1f}{r['after']:>8.1f}"
                f"{r['peak_rss'] / 1e9:>12.2f}"
                f"{r['results_bytes'] / 1e6:>11.2f}{r['plot_bytes'] / 1e6:>9.2f}"
                f"{r['repaired']:>9,}",
                flush=True,
            )
    (args.out / "scale.json").write_text(json.dumps(rows, indent=2))
    for strategy in args.strategies:
        cells = {r["clients"]: r for r in rows if r["strategy"] == strategy}
        low, high = cells[min(cells)], cells[max(cells)]
        rss = high["peak_rss"] / low["peak_rss"]
        print(
            f"{strategy}: s/round {max(cells):,} vs {min(cells):,} clients: "
            f"{high['round'] / low['round']:.2f}x (overhead {high['overhead'] * 1e3:.1f} vs "
            f"{low['overhead'] * 1e3:.1f} ms); peak RSS {rss:.2f}x; "
            f"set-up at {max(cells):,}: {high['setup']:.1f} s"
        )


if __name__ == "__main__":
    main()
