"""How long each partitioner takes to split 100,000 labelled samples over 16 clients.

Labels are drawn from 30 classes with a skewed frequency (as VQA answers are); best of 3 runs,
seeded. Prints seconds per scheme and the smallest and largest client.

    python benchmarks/partition.py [--samples 100000] [--clients 16]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from fedumm.data import partition


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    frequency = 1.0 / np.arange(1, 31)
    labels = rng.choice(30, args.samples, p=frequency / frequency.sum()).astype(str)
    k = args.clients
    schemes = {
        "iid": lambda r: partition.iid(len(labels), k, r),
        "dirichlet alpha=0.1": lambda r: partition.dirichlet_label_skew(labels, k, 0.1, r, 20),
        "dirichlet alpha=1.0": lambda r: partition.dirichlet_label_skew(labels, k, 1.0, r, 20),
        "quantity (power law)": lambda r: partition.quantity_skew(
            len(labels), k, r, "power", 0.5, 1.5, 20
        ),  # fmt: skip
        "shards (2 per client)": lambda r: partition.pathological_shards(labels, k, 2, r),
    }
    print(f"{args.samples:,} samples, {k} clients")
    print(f"{'scheme':<24}{'seconds':>9}{'smallest':>10}{'largest':>9}")
    for name, split in schemes.items():
        best = float("inf")
        for seed in range(3):
            start = time.perf_counter()
            parts = split(np.random.default_rng(seed))
            best = min(best, time.perf_counter() - start)
        assert sum(len(p) for p in parts) == args.samples
        sizes = [len(p) for p in parts]
        print(f"{name:<24}{best:>9.3f}{min(sizes):>10,}{max(sizes):>9,}")


if __name__ == "__main__":
    main()
