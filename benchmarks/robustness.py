"""Robustness and privacy benchmark: accuracy under each attack x each aggregator, and
accuracy against the privacy loss epsilon of client-level DP.

Runs two sweeps (configs/sweeps/robustness.yaml, configs/sweeps/privacy.yaml) with the ordinary
`fedumm sweep` machinery, so finished cells are reused when it is run again, and prints both
tables. Each sweep also writes sweep.md, sweep.csv and sweep.png under OUT.

    python benchmarks/robustness.py [-o runs/robustness-bench] [--set key=value ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fedumm.sweep import load_sweep, run_sweep

SWEEPS = Path(__file__).resolve().parent.parent / "configs" / "sweeps"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--out", type=Path, default=Path("runs/robustness-bench"))
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="override applied to every run, e.g. federation.rounds=2")  # fmt: skip
    args = parser.parse_args()

    attacks = run_sweep(load_sweep(SWEEPS / "robustness.yaml", args.overrides),
                        args.out / "attacks", progress=False)  # fmt: skip
    clean = {r["federation.strategy"]: r["vqa_accuracy"] for r in attacks
             if r["attack.kind"] == "none"}  # fmt: skip
    print("\nVQA accuracy (%) under attack (20% malicious clients); in brackets: change vs clean")
    rules = list(clean)
    names = [rule.split(",")[0].removeprefix("name=") for rule in rules]  # krum: f=2, m=8
    print(f"{'attack':<10}" + "".join(f"{n:>20}" for n in names))
    for kind in dict.fromkeys(r["attack.kind"] for r in attacks):
        cells = {r["federation.strategy"]: r["vqa_accuracy"] for r in attacks
                 if r["attack.kind"] == kind}  # fmt: skip
        print(f"{kind:<10}" + "".join(
            f"{cells[r]:>12.1f} ({cells[r] - clean[r]:+5.1f})" for r in rules))  # fmt: skip

    privacy = run_sweep(load_sweep(SWEEPS / "privacy.yaml", args.overrides),
                        args.out / "privacy", progress=False)  # fmt: skip
    print("\nClient-level DP (dp_fedavg): noise multiplier, epsilon at delta 1e-5, accuracy")
    for r in privacy:
        eps = "inf (no noise)" if r["epsilon"] is None else f"{r['epsilon']:.2f}"
        print(f"  z={r['federation.strategy.noise_multiplier']:<5} epsilon={eps:>15}  "
              f"VQA accuracy {r['vqa_accuracy']:5.1f}%")  # fmt: skip


if __name__ == "__main__":
    main()
