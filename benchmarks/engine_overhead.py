"""Embedded-engine benchmark: overhead, memory scaling with clients, client throughput.

Prints, measured in this one run (compare ratios, not absolute seconds, on a shared machine):
  (a) engine overhead = wall time of a round / (clients' pure local training + evaluation time),
      target <= 1.05;
  (b) peak RSS of a 16-client run / peak RSS of a 1-client run with the same per-client work,
      target <= 1.3 (one frozen base model is shared by every simulated client);
  (c) client training throughput in samples/s.
Each configuration runs in a fresh process so peak RSS is its own.

    python benchmarks/engine_overhead.py [--rounds 3] [--samples-per-client 200]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile

from as_measured import QUICKSTART_AS_MEASURED


def child(num_clients: int, rounds: int, per_client: int, threads: int) -> dict:
    from fedumm.config import load_config
    from fedumm.engines import run_federation
    from fedumm.results import RunResult

    overrides = [
        f"federation.num_clients={num_clients}",
        f"federation.clients_per_round={num_clients}",
        f"federation.rounds={rounds}",
        "federation.local_steps=20",
        "eval.every=1",
        f"data.train_samples={num_clients * per_client}",
        "partition.scheme=iid",
        "baselines.zero_shot=false",
        "baselines.local=false",
        "baselines.centralized=false",
        f"threads={threads}",
        *QUICKSTART_AS_MEASURED,
    ]
    cfg = load_config("configs/quickstart.yaml", overrides)
    with tempfile.TemporaryDirectory() as out:
        results = RunResult.of(run_federation(cfg, out, progress=False))
    rounds_ = results.rounds[1:]  # round 1 pays one-off warm-up costs
    clients = [m for r in rounds_ for m in r.client_metrics.values()]
    train = sum(m.train_seconds for m in clients)
    samples = sum(m.steps for m in clients) * cfg.federation.batch_size
    return {
        "clients": num_clients,
        "round_seconds": sum(r.seconds for r in rounds_),
        "pure_seconds": train + sum(r.eval_seconds for r in rounds_),
        "samples_per_second": samples / train,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples-per-client", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.rounds, args.samples_per_client, args.threads)))
        return
    runs = {}
    for n in (1, 16):
        cmd = [
            sys.executable,
            __file__,
            "--child",
            str(n),
            "--rounds",
            str(args.rounds),
            "--samples-per-client",
            str(args.samples_per_client),
            "--threads",
            str(args.threads),
        ]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        runs[n] = json.loads(out.strip().splitlines()[-1])
    one, many = runs[1], runs[16]
    overhead = many["round_seconds"] / many["pure_seconds"]
    rss_ratio = many["peak_rss_mb"] / one["peak_rss_mb"]
    print(
        f"rounds measured: {args.rounds - 1} (after a warm-up round), "
        f"{args.samples_per_client} samples per client, {args.threads} thread(s)"
    )
    print(
        f"(a) engine overhead, 16 clients: {many['round_seconds']:.2f} s in rounds / "
        f"{many['pure_seconds']:.2f} s local training + evaluation = {overhead:.3f} "
        f"(target <= 1.05) {'OK' if overhead <= 1.05 else 'MISSED'}"
    )
    print(
        f"(b) peak RSS: 1 client {one['peak_rss_mb']:.0f} MB, 16 clients "
        f"{many['peak_rss_mb']:.0f} MB, ratio {rss_ratio:.3f} "
        f"(target <= 1.3) {'OK' if rss_ratio <= 1.3 else 'MISSED'}"
    )
    print(
        f"(c) client training throughput: {many['samples_per_second']:.0f} samples/s "
        f"(1-client run: {one['samples_per_second']:.0f} samples/s)"
    )


if __name__ == "__main__":
    main()
