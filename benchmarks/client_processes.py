"""One client trained by 1 or 2 processes (runtime.client_devices) on the same global batch:
seconds a step, memory per process, and the base's bytes each process holds (ddp: all of it,
fsdp: its shard), through the code a run uses (`RunParts.train_client`).

On the CPU the settings share the machine's cores: one process with every core's threads, and
two processes with half each (what `client_devices: 2` gives them), so the table says what
splitting a client costs or saves on this machine; on GPUs (`--device cuda`) the second process
gets the second GPU, or, with `--split`, shares the first.

Each setting: a warm-up round (which also starts the peers), then `--rounds` timed rounds of
`--steps` local steps on batches of `--batch`; adapters are compared with the one-process
run's (SGD, so the difference is float summation order only). The model: the quick start's
built-in foundation, or with `--width W --layers L` a bigger built-in model (random weights,
a pretraining of one step), or with `--preset` a published architecture's shapes with random
weights; both built once into runs/bench-models/.

    python benchmarks/client_processes.py [--device cpu|cuda] [--split]
        [--width 512 --layers 8 | --preset NAME] [--rounds 3] [--steps 10] [--batch 32]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import psutil
import torch

from fedumm.config import PretrainConfig, load_config
from fedumm.models.architectures import PUBLISHED, build_random
from fedumm.parts import build_parts
from fedumm.pretraining import pretrain

MODELS = Path("runs/bench-models")


def model_overrides(preset: str | None, width: int | None, layers: int) -> list[str]:
    """The config keys that pick the model: a random model of `preset`'s shapes, or a built-in
    model `width` wide and `layers` deep, built once."""
    if preset is not None:
        folder = MODELS / preset
        if not (folder / "config.json").is_file():
            build_random(PUBLISHED[preset].family, folder, preset)
        return [f"model.name_or_path={folder.resolve()}"]
    if width is None:
        return []
    folder = MODELS / f"umm-{width}x{layers}"
    if not (folder / "config.json").is_file():
        shape = dict(hidden_size=width, intermediate_size=4 * width, num_layers=layers)
        small = dict(steps=1, train_samples=64, test_samples=8, codebook_images=60)
        pretrain(PretrainConfig(**shape, **small, num_heads=8, batch_size=16), folder)
    return [f"model.foundation={folder.resolve()}"]


def base_bytes(model: torch.nn.Module) -> int:
    """Bytes of the frozen weights this process holds (a sharded parameter: its shard)."""
    total = 0
    for p in model.parameters():
        if not p.requires_grad:
            local = p.to_local() if hasattr(p, "to_local") else p
            total += local.numel() * local.element_size()
    return total


def measure(overrides: list[str], rounds: int, reference: dict | None) -> dict:
    cfg = load_config("configs/quickstart.yaml", overrides)
    parts = build_parts(cfg)
    client = parts.clients[0]
    me = psutil.Process()
    try:
        parts.train_client(client, parts.initial, 1)  # warm-up; starts the peers
        seconds = []
        for rnd in range(2, 2 + rounds):
            start = time.perf_counter()
            update = parts.train_client(client, parts.initial, rnd)
            seconds.append((time.perf_counter() - start) / update.num_steps)
        running = parts.processes.peers if parts.processes else None
        peers = [psutil.Process(p.pid) for p in running.processes] if running else []
        rss = [me.memory_info().rss] + [p.memory_info().rss for p in peers]
        row = {
            "processes": 1 + len(peers),
            "seconds_per_step": min(seconds),
            "rss_mb_per_process": [round(r / 2**20) for r in rss],
            "base_mb_rank0": round(base_bytes(parts.model) / 2**20, 2),
            "threads_per_process": running.threads if running else torch.get_num_threads(),
            "params": update.params,
        }
        if reference is not None:
            row["largest_difference"] = max(
                float((update.params[k] - reference[k]).abs().max()) for k in reference
            )
        return row
    finally:
        parts.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--split", action="store_true", help="two processes on one GPU")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--preset", choices=list(PUBLISHED), default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("-o", "--out", default="docs/results/client_processes")
    args = parser.parse_args()
    two = "[cuda:0, cuda:0]" if args.split else "2"
    cpus = os.cpu_count() or 1
    common = [
        *model_overrides(args.preset, args.width, args.layers),
        f"threads={cpus}",
        f"runtime.device={args.device}",
        f"federation.local_steps={args.steps}",
        f"federation.batch_size={args.batch}",
        "federation.optimizer=sgd",
        "engine=flare",  # fsdp shards a site's base; only the parts are built here
    ]
    settings = {
        "1 process": [],
        "2 processes, ddp": [f"runtime.client_devices={two}"],
        "2 processes, fsdp": [f"runtime.client_devices={two}", "runtime.client_sharding=fsdp"],
    }
    if args.device == "cpu":
        settings = {"1 process, 1 thread": ["threads=1"], **settings}
    rows, reference = {}, None
    for name, extra in settings.items():
        row = measure(common + extra, args.rounds, reference)
        if name == "1 process":
            reference = row["params"]
        del row["params"]
        rows[name] = row
        print(name, json.dumps(row), flush=True)
    one = rows["1 process"]["seconds_per_step"]
    lines = [
        "| setting | processes x threads | s / step | vs 1 process | RSS MB per process | "
        "base MB on rank 0 | largest difference from 1 process |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['processes']} x {r['threads_per_process']} | "
            f"{r['seconds_per_step']:.3f} | {r['seconds_per_step'] / one:.2f}x | "
            f"{' + '.join(map(str, r['rss_mb_per_process']))} | {r['base_mb_rank0']} | "
            f"{r.get('largest_difference', 0):.1e} |"
        )
    table = "\n".join(lines)
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = torch.cuda.get_device_name() if args.device.startswith("cuda") else None
    record = {"device": args.device, "gpu": machine, "cpus": os.cpu_count(), "rows": rows}
    name = args.device.split(":")[0] + (f"-umm-{args.width}x{args.layers}" if args.width else "")
    name += f"-{args.preset}" if args.preset else ""
    record["table"] = table
    (out / f"{name}.json").write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
