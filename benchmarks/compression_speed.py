"""What compressing an upload costs next to a round: the client's pack (its change from the
broadcast through the codec, with error feedback the residual kept) and the server's unpack
(decode, plus the reference), timed through the code a run uses (`Compression.pack_upload` /
`unpack_upload`), for every setting of `fedumm bench compression`.

On an adapter of LLaVA-1.5-7B's shapes (LoRA r=8 on the language model's q/k/v/o: 256 tensors,
8,388,608 values, 33.6 MB in fp32; random normal values) and, for reference, on the quick
start's (the built-in model, r=4 on every linear and lm_head: 43,280 values). Median of
`--repeats` calls, at each of `--threads`. The round it is compared with: a 7B client's local
training, `--local-steps` x `--step-seconds` (default: 10 steps, the quick start's, of 0.428 s:
benchmarks/gpu.py's (b) on an H100, 18.70 samples/s at batch 8, docs/results/gpu.md), plus
sending the broadcast (fp32) and the upload (fp32, or compressed) over a 100 Mbit/s and a
1 Gbit/s link.

With `--device cuda` the adapter and the reference sit on the GPU, as a client's do after
training; a run's codecs work on the CPU (the message is built there), so the time includes
the copy, with the GPU synchronized before each clock.

    python benchmarks/compression_speed.py [--device cpu|cuda] [--threads 1 2] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from fedumm.config import CompressionConfig
from fedumm.federation.compression import Compression
from fedumm.paper_sweeps import compression_settings, load_bench, published_adapter

LINKS = {"100 Mbit/s": 100e6 / 8, "1 Gbit/s": 1e9 / 8}  # bytes a second


def quickstart_shapes() -> dict[str, tuple[int, ...]]:
    """The quick start's adapter: LoRA of configs/quickstart.yaml on the built-in model."""
    from fedumm.config import RunConfig, read_yaml, validate
    from fedumm.models import adapted, load

    cfg = validate(read_yaml(Path("configs/quickstart.yaml")), RunConfig, "quickstart")
    model = adapted(load(cfg.model), cfg.lora, 0)
    return {
        n.replace(".default", ""): tuple(p.shape)
        for n, p in model.named_parameters()
        if p.requires_grad
    }


def timed(fn, sync) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def measure(shapes: dict, upload, device: str, repeats: int) -> dict:
    """Median seconds of one pack and one unpack of an upload of `shapes`, and its bytes."""
    g = torch.Generator().manual_seed(0)
    reference = {k: torch.randn(s, generator=g).to(device) for k, s in shapes.items()}
    upload_values = {k: v + 0.01 * torch.randn_like(v) for k, v in reference.items()}
    server_reference = {k: v.cpu() for k, v in reference.items()}
    codec = Compression(CompressionConfig(upload=upload), seed=0)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    state: dict = {}
    blob = b""

    def pack(rnd: int = 1):
        nonlocal blob
        blob = codec.pack_upload(upload_values, reference, frozenset(), state, rnd, 0)

    pack(0)  # warm-up; with error feedback, the residual exists from here on
    codec.unpack_upload(blob, server_reference)
    packs, unpacks = [], []
    for i in range(repeats):
        packs.append(timed(lambda i=i: pack(i + 1), sync))
        unpacks.append(timed(lambda: codec.unpack_upload(blob, server_reference), sync))
    return {
        "pack_s": statistics.median(packs),
        "unpack_s": statistics.median(unpacks),
        "bytes": len(blob),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--local-steps", type=int, default=10)
    parser.add_argument("--step-seconds", type=float, default=0.428)
    parser.add_argument(
        "--adapters", nargs="+", default=["llava-1.5-7b", "quickstart"], help="what to time"
    )
    parser.add_argument("--out", type=Path, help="also write the figures here (JSON)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device")
    settings = compression_settings(load_bench("compression"))
    shapes = {
        a: quickstart_shapes() if a == "quickstart" else published_adapter(a) for a in args.adapters
    }
    train = args.local_steps * args.step_seconds
    where = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(
        f"torch {torch.__version__}, {where}; a 7B client's training: {args.local_steps} steps x "
        f"{args.step_seconds} s = {train:.2f} s"
    )
    figures = []
    for adapter, shape in shapes.items():
        values = sum(torch.Size(s).numel() for s in shape.values())
        print(f"\n{adapter}: {len(shape)} tensors, {values:,} values")
        for threads in args.threads:
            torch.set_num_threads(threads)
            header = ["setting", "MB / upload", "pack ms", "unpack ms"]
            if adapter != "quickstart":
                header += ["pack + unpack, % of training"]
                header += [f"round at {link}, s (pack + unpack %)" for link in LINKS]
            print(f"\n{threads} thread(s):\n\n| " + " | ".join(header) + " |")
            print("|" + "---|" * len(header))
            plain = None  # the uncompressed message: the broadcast's size, and the baseline
            for name, upload in settings.items():
                m = measure(shape, upload, args.device, args.repeats)
                plain = m if upload.scheme == "none" else plain
                codec_s = m["pack_s"] + m["unpack_s"]
                row = {"adapter": adapter, "threads": threads, "setting": name, **m}
                cells = [f"{m['bytes'] / 1e6:.3f}", f"{1e3 * m['pack_s']:.1f}"]
                cells.append(f"{1e3 * m['unpack_s']:.1f}")
                if adapter != "quickstart":  # a 7B client's round
                    row["codec_pct_of_training"] = 100 * codec_s / train
                    cells.append(f"{row['codec_pct_of_training']:.2f}%")
                    for link, speed in LINKS.items():
                        # the broadcast (fp32) down, the upload up, and the codec's work
                        seconds = train + (plain["bytes"] + m["bytes"]) / speed + codec_s
                        row[f"round_s {link}"] = seconds
                        row[f"codec_pct {link}"] = 100 * codec_s / seconds
                        cells.append(f"{seconds:.2f} ({100 * codec_s / seconds:.1f}%)")
                figures.append(row)
                print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"device": where, "figures": figures}, indent=1))


if __name__ == "__main__":
    main()
