"""Each supported Hugging Face family through the normal `fedumm run` path, on a tiny random
model built from config objects and loaded by path: parameters, adapter vs full fine-tuning
bytes per round (measured from the serialized messages), wall time, and VQA accuracy.

The tiny models start random, so accuracy here shows that they learn through the federation,
not how a pretrained model would do; the published sizes (adapter vs full, counted from the real
architectures) are in the README. Prints a markdown table.

    python benchmarks/hf_families.py [--rounds 5] [--families llava qwen2_vl ...]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from fedumm.config import load_config
from fedumm.engines import run_federation
from fedumm.models.architectures import TINY, build_random
from fedumm.results import RunResult


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=list(TINY), choices=list(TINY))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    overrides = [
        "data.train_samples=2000",
        "data.test_samples=200",
        "federation.num_clients=4",
        "federation.clients_per_round=4",
        f"federation.rounds={args.rounds}",
        "federation.local_steps=20",
        "eval.every=1",
        "federation.batch_size=16",
        "federation.lr=0.01",
        "baselines.lr=null",
        "federation.lr_decay=none",  # as measured
        "federation.client_weights=partition",
        "partition.alpha=0.5",
        f"threads={args.threads}" if args.threads else "threads=null",
    ]
    print(
        "| family | parameters | LoRA parameters | adapter MB/round | full MB/round | ratio "
        "| zero-shot | local | federated | centralized | seconds |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for family in args.families:
            path = build_random(family, Path(tmp) / family)
            cfg = load_config("configs/quickstart.yaml", [*overrides, f"model.name_or_path={path}"])
            start = time.perf_counter()
            results = RunResult.of(run_federation(cfg, Path(tmp) / f"run-{family}", progress=False))
            seconds = time.perf_counter() - start
            comm, base = results.communication, results.baselines
            accuracy = [
                scores.metrics["vqa_accuracy"]
                for scores in (base.zero_shot, base.local, results.final, base.centralized)
            ]
            print(
                f"| {family} | {comm.total_parameters:,} | {comm.trainable_parameters:,} "
                f"| {comm.adapter_bytes_per_round / 1e6:.3f} "
                f"| {comm.full_finetune_bytes_per_round / 1e6:.2f} | {comm.ratio:.0f}x | "
                + " | ".join(f"{a:.1f}" for a in accuracy)
                + f" | {seconds:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
