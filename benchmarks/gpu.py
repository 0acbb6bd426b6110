"""GPU benchmark: fedumm's federation against plain torch + peft on a published architecture.

Builds the architecture with random weights directly on the device (no download, no disk) and
prints, measured in this one run:
  (a) plain torch + peft LoRA training speed (one fixed batch already on the device, the same
      LoRA, precision and optimizer): the anchor;
  (b) fedumm's client training speed on the same model and sequence length (`local_update`:
      batches built from samples by the model's processor, prefetched): ratio to (a), target
      >= 0.95;
  (c) an 8-client round's wall time over the clients' pure training + evaluation time
      (the round loop: serialization, validation, aggregation, adapter swaps), target <= 1.05;
  (d) peak GPU memory of a 16-client round over a 1-client round, target <= 1.05 (one base
      shared by every simulated client);
  (e) the largest batch of --seq-token samples the 7B architecture (LLaVA-1.5-7B) trains with
      bf16 + gradient checkpointing within 24 GB and 80 GB (by capping this process's share of
      the card).
Samples are --seq tokens: the image's placeholder tokens plus text filling the rest (640 = 576
image + 64 text for LLaVA-1.5 at 336 px). On a CPU (`--device cpu --preset tiny`) (a)-(c)
run at tiny scale, to check the script; (d) and (e) need CUDA.

    python benchmarks/gpu.py [--family llava --preset llava-1.5-7b] [--quick] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import time
from types import SimpleNamespace

import numpy as np
import torch
from transformers import AutoModelForImageTextToText

from fedumm.config import ConfigError, EvalConfig, FederationConfig, RunConfig
from fedumm.engines.embedded import InProcess
from fedumm.federation.client import ClientData, Federated, local_schedule, local_update
from fedumm.federation.compression import Compression
from fedumm.federation.server import Server
from fedumm.federation.strategies import build_strategy
from fedumm.models import place
from fedumm.models.architectures import Tokens, _tokenizer, architecture
from fedumm.models.hf import DEFAULT_TARGETS, FAMILIES, HFProcessor
from fedumm.models.lora import add_lora, get_adapter, set_adapter
from fedumm.models.processor import IGNORE, Encoded
from fedumm.runtime import Runtime, resolve_device, to_device
from fedumm.tasks import VQATask
from fedumm.tasks import evaluate as evaluate_tasks
from fedumm.training import Learner

GIB = 2**30


def build(
    family: str, preset: str, runtime: Runtime, dtype: torch.dtype, text_layers: int | None = None
):
    """(model with LoRA r=8 on q/k/v/o, processor): random weights made on the device;
    `text_layers` cuts the language model to that many layers (a reduced size for a CPU)."""
    arch = architecture(family, preset)
    tokenizer = _tokenizer(arch.special)
    config = arch.config(Tokens(tokenizer))
    if text_layers is not None:
        config.get_text_config().num_hidden_layers = text_layers
    torch.manual_seed(0)
    with torch.device(runtime.device):
        base = AutoModelForImageTextToText.from_config(config, dtype=dtype)
    base.requires_grad_(False).eval()
    place(base, runtime)
    processor = HFProcessor(family, config, tokenizer, arch.image_processor())
    model = add_lora(
        base, 8, 16.0, 0.0, DEFAULT_TARGETS, seed=0, scope=FAMILIES[family].language_model
    )
    return model, processor


def samples(processor: HFProcessor, n: int, length: int, seed: int) -> list[Encoded]:
    """`n` samples of exactly `length` tokens: a random image, filler text, a one-word answer."""
    rng = np.random.default_rng(seed)
    side = processor.image_size
    filler = processor.text_ids(" a")[-1]
    out = []
    for _ in range(n):
        image = processor.encode_images(rng.integers(0, 256, (1, side, side, 3), np.uint8))[0]
        e = processor.understanding(image, "", "yes")
        prompt = len(e.prompt)
        missing = length - len(e.input_ids)
        if missing < 0:
            raise ValueError(f"an image alone is {len(e.input_ids)} tokens, more than {length}")
        ids = e.input_ids[:prompt] + [filler] * missing + e.input_ids[prompt:]
        labels = [IGNORE] * (prompt + missing) + e.labels[prompt:]
        out.append(Encoded(ids, labels, e.inputs))
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain(model, batch: dict, steps: int, runtime: Runtime) -> float:
    """(a) samples/s of the plainest loop: the same batch, already on the device."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    model.train()
    for i in range(steps + 2):  # two warm-up steps
        if i == 2:
            sync(runtime.device)
            start = time.perf_counter()
        with runtime.autocast():
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    sync(runtime.device)
    model.eval()
    return steps * len(batch["input_ids"]) / (time.perf_counter() - start)


def fedumm_client(model, processor, data, steps: int, batch: int, runtime: Runtime) -> float:
    """(b) samples/s of fedumm's client training (the time `train_steps` reports)."""
    fed = FederationConfig(batch_size=batch, lr=1e-4)
    client = ClientData("site-1", data)
    message = get_adapter(model)
    learner = Learner(model, processor.collate, runtime=runtime)
    local_update(learner, client, message, local_schedule(fed, 2, 0))  # warm-up
    update = local_update(learner, client, message, local_schedule(fed, steps, 1))
    return steps * batch / update.metrics["train_seconds"]


def federation(
    model,
    processor,
    clients: int,
    per_client: int,
    seq: int,
    steps: int,
    batch: int,
    runtime: Runtime,
    rounds: int = 2,
) -> dict:
    """A FedAvg federation of `clients` (all sampled), evaluated on 16 questions each round;
    the last round's wall time, its clients' pure train + eval time, and peak memory."""
    fed = FederationConfig(local_steps=steps, batch_size=batch, lr=1e-4)
    members = [
        ClientData(f"site-{i + 1}", samples(processor, per_client, seq, i)) for i in range(clients)
    ]
    test = [e.prompt_only() for e in samples(processor, 16, seq, 99)]
    task = VQATask([], [], test, ["yes"] * 16, ["yes/no"] * 16, "benchmark")
    strategy = build_strategy("fedavg")

    learner = Learner(model, processor.collate, runtime=runtime)

    def train(client, message, rnd):
        seed = rnd * 100 + members.index(client)
        schedule = local_schedule(fed, steps, seed)
        return local_update(learner, client, message, schedule, Federated.of(fed, strategy, {}))

    def evaluate(params):
        set_adapter(model, params)
        return evaluate_tasks(
            {"vqa": task}, model, processor, EvalConfig(batch_size=16), runtime=runtime
        )

    # what the embedded engine's sites read of a run's parts: here clients that train by `train`
    parts = SimpleNamespace(
        train_client=train, clients=members, cfg=RunConfig(), compression=Compression()
    )
    server = Server(members, strategy, InProcess(parts), evaluate, clients, seed=0, progress=False)
    start = get_adapter(model)
    if runtime.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(runtime.device)
    _, records = server.run(start, rounds)
    last = records[-1]
    pure = sum(m["train_seconds"] for m in last.client_metrics.values()) + last.eval_seconds
    peak = torch.cuda.max_memory_allocated(runtime.device) if runtime.device.type == "cuda" else 0
    set_adapter(model, start)
    return {
        "round_seconds": last.seconds,
        "pure_seconds": pure,
        "peak_bytes": peak,
        "clients": clients,
    }


def largest_batch(
    model, processor, seq: int, runtime: Runtime, cap_bytes: int, limit: int = 512
) -> int:
    """(e) The largest batch that trains one step within `cap_bytes` of device memory."""
    total = torch.cuda.get_device_properties(runtime.device).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, cap_bytes / total), runtime.device)
    fits = lambda b: _one_step(model, processor, b, seq, runtime)  # noqa: E731
    low, high = 0, 1
    while high <= limit and fits(high):
        low, high = high, high * 2
    high = min(high, limit + 1)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    torch.cuda.set_per_process_memory_fraction(1.0, runtime.device)
    return low


def _one_step(model, processor, batch: int, seq: int, runtime: Runtime) -> bool:
    data = samples(processor, batch, seq, batch)
    fed = FederationConfig(local_steps=1, batch_size=batch, lr=1e-4)
    message = get_adapter(model)
    try:
        learner = Learner(model, processor.collate, runtime=runtime)
        local_update(learner, ClientData("probe", data), message, local_schedule(fed, 1, 0))
        return True
    except torch.OutOfMemoryError:
        return False
    finally:
        set_adapter(model, message)
        torch.cuda.empty_cache()


def verdict(ok: bool) -> str:
    return "OK" if ok else "MISSED"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="llava")
    parser.add_argument("--preset", default="llava-1.5-7b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=640, help="tokens per sample")
    parser.add_argument("--steps", type=int, default=10, help="timed steps for (a) and (b)")
    parser.add_argument("--quick", action="store_true", help="fewer steps and one cap in (e)")
    parser.add_argument("--skip-largest", action="store_true", help="skip (e)")
    parser.add_argument("--out", help="also write the figures as JSON here")
    args = parser.parse_args()
    seq = args.seq
    steps = 5 if args.quick else args.steps
    try:
        device = resolve_device(args.device, "--device")
    except ConfigError as e:
        raise SystemExit(
            f"{e} (--device cpu --preset tiny runs the script at tiny scale)"
        ) from None
    cuda = device.type == "cuda"
    runtime = Runtime(device, "bf16" if cuda else "fp32")
    dtype = torch.bfloat16 if cuda else torch.float32
    card = runtime.device_name
    print(
        f"{args.preset} {args.family} on {card}, {runtime.precision}, LoRA r=8 q/k/v/o, "
        f"batch {args.batch} x {seq} tokens, torch {torch.__version__}",
        flush=True,
    )
    t0 = time.perf_counter()
    model, processor = build(args.family, args.preset, runtime, dtype)
    print(
        f"built in {time.perf_counter() - t0:.1f} s: "
        f"{sum(p.numel() for p in model.parameters()) / 1e9:.2f} B parameters",
        flush=True,
    )
    out: dict = {
        "preset": args.preset,
        "card": card,
        "precision": runtime.precision,
        "batch": args.batch,
        "seq": seq,
    }

    data = samples(processor, args.batch * 4, seq, 0)
    batch = to_device(processor.collate(data[: args.batch]), device)
    out["plain_samples_per_s"] = plain(model, batch, steps, runtime)
    out["fedumm_samples_per_s"] = fedumm_client(model, processor, data, steps, args.batch, runtime)
    ratio = out["fedumm_samples_per_s"] / out["plain_samples_per_s"]
    print(f"(a) plain torch + peft: {out['plain_samples_per_s']:.2f} samples/s", flush=True)
    print(
        f"(b) fedumm client training: {out['fedumm_samples_per_s']:.2f} samples/s, "
        f"{ratio:.3f} of plain (target >= 0.95) {verdict(ratio >= 0.95)}",
        flush=True,
    )

    per_client, local = args.batch * 2, max(2, steps // 2)
    eight = federation(model, processor, 8, per_client, seq, local, args.batch, runtime)
    overhead = eight["round_seconds"] / eight["pure_seconds"]
    out["round_overhead"] = overhead
    print(
        f"(c) 8-client round: {eight['round_seconds']:.2f} s / {eight['pure_seconds']:.2f} s "
        f"training + evaluation = {overhead:.3f} (target <= 1.05) {verdict(overhead <= 1.05)}",
        flush=True,
    )

    if cuda:
        one = federation(model, processor, 1, per_client, seq, 2, args.batch, runtime, 1)
        many = federation(model, processor, 16, per_client, seq, 2, args.batch, runtime, 1)
        growth = many["peak_bytes"] / one["peak_bytes"]
        out["peak_gib_1"], out["peak_gib_16"] = one["peak_bytes"] / GIB, many["peak_bytes"] / GIB
        print(
            f"(d) peak GPU memory: 1 client {out['peak_gib_1']:.2f} GiB, 16 clients "
            f"{out['peak_gib_16']:.2f} GiB, ratio {growth:.3f} (target <= 1.05) "
            f"{verdict(growth <= 1.05)}",
            flush=True,
        )
    else:
        print("(d) peak GPU memory: skipped (needs CUDA)")

    if cuda and not args.skip_largest:
        del model, batch
        torch.cuda.empty_cache()
        gc = Runtime(device, "bf16", gradient_checkpointing=True)
        big, processor = build("llava", "llava-1.5-7b", gc, torch.bfloat16)
        total = torch.cuda.get_device_properties(device).total_memory
        caps = [24] if args.quick else [24, 80]
        for gb in caps:
            cap = min(gb * 10**9, total)
            found = largest_batch(big, processor, seq, gc, cap)
            out[f"largest_batch_{gb}gb"] = found
            print(
                f"(e) LLaVA-1.5-7B, bf16 + gradient checkpointing, within {cap / 1e9:.0f} GB: "
                f"largest batch {found} x {seq} tokens",
                flush=True,
            )
    else:
        print("(e) largest batch: skipped" + ("" if cuda else " (needs CUDA)"))
    print(f"wall {time.perf_counter() - t0:.0f} s")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
