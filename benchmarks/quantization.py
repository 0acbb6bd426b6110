"""The quantized frozen base (`model.quantization`): memory and training-step time of fp32, bf16,
int8 and nf4 bases, with LoRA (r=8) on every linear of the language model.

Two bases: the shipped foundation (as `fedumm run` loads it) and a LLaMA-architecture language
model built from a config object (--hidden 1024, --layers 6, a 16k vocabulary: 110 M
parameters, 440 MB in fp32), large enough for the memory to show. int8 and nf4 are
bitsandbytes (`fedumm.models.quantization`); on a CPU with torchao installed, torchao's int8
weight-only is measured beside them, the other CPU candidate. Each case runs in a fresh
process, so its peak resident memory is its own; it prints, per case:
  - the bytes of the base's weights (its state dict: packed codes, scales and the unquantized
    embeddings, lm_head and norms);
  - the process's resident memory with the base loaded (on CUDA, the allocated GPU memory);
  - the peak resident memory of the timed training steps (the process's high-water mark, reset
    after the warm-up steps, which compile bitsandbytes' kernels; on CUDA, the peak allocated
    GPU memory);
  - the first step's time (bitsandbytes compiles its CPU kernels then, once per input shape)
    and the fastest of --steps steps after two warm-ups (the least disturbed by other work on
    a shared machine), and its ratio to fp32.

    python benchmarks/quantization.py [--device cuda] [--steps 5] [--out FILE]
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from fedumm.runtime import release_host_memory

VARIANTS = ("fp32", "bf16", "int8", "nf4", "torchao-int8")
WARMUP = 2  # bitsandbytes' CPU kernels compile (torch.compile) in the first forward and backward
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def stored_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor holds, a tensor subclass (torchao) by its inner tensors."""
    if hasattr(t, "__tensor_flatten__") and type(t) not in (torch.Tensor, torch.nn.Parameter):
        names, _ = t.__tensor_flatten__()
        return sum(stored_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of a model's state dict, tied parameters once."""
    unique = {id(v): v for v in model.state_dict(keep_vars=True).values()}
    return sum(stored_bytes(v) for v in unique.values() if isinstance(v, torch.Tensor))


def build_llama(hidden: int, layers: int, seed: int) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=16000,
        hidden_size=hidden,
        intermediate_size=hidden * 11 // 4,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 64,
    )
    return LlamaForCausalLM(config).eval()


def base_model(base: str, variant: str, device: torch.device, args) -> torch.nn.Module:
    """The frozen base of `variant`: the foundation through `models.load` (the run's path), the
    LLaMA through `quantize` directly (the same layers: the language model's linears)."""
    from fedumm.config import ModelConfig
    from fedumm.models import load
    from fedumm.models.quantization import linears_to_quantize, quantize
    from fedumm.runtime import Runtime

    dtype = "bfloat16" if variant == "bf16" else "float32"
    quantization = variant if variant in ("int8", "nf4") else "none"
    if base == "foundation":
        spec = ModelConfig(dtype=dtype, quantization=quantization)
        model = load(spec, Runtime(device)).model
    else:
        model = build_llama(args.hidden, args.layers, seed=0).to(getattr(torch, dtype))
        if quantization != "none":
            quantize(model, quantization, "model", device)
        model.to(device)
    if variant == "torchao-int8":
        from torchao.quantization import Int8WeightOnlyConfig, quantize_

        names = linears_to_quantize(model, "" if base == "foundation" else "model")
        quantize_(model, Int8WeightOnlyConfig(), filter_fn=lambda _, name: name in names)
    return model


def reset_peak(device: torch.device) -> None:
    """Start the peak from here: on a CPU after handing the unquantized weights' freed pages
    back to the system (glibc keeps them otherwise, and they would count)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:  # Linux: writing 5 to clear_refs resets the high-water mark VmHWM
        gc.collect()
        release_host_memory()
        Path("/proc/self/clear_refs").write_text("5")


def memory_bytes(device: torch.device, peak: bool) -> int:
    """The process's memory now or at its peak since `reset_peak`: resident (CPU) or allocated
    on the GPU."""
    if device.type == "cuda":
        return (torch.cuda.max_memory_allocated if peak else torch.cuda.memory_allocated)(device)
    field = "VmHWM:" if peak else "VmRSS:"
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def run_case(base: str, variant: str, args) -> dict:
    """One case, in this process: build, add LoRA, train --steps steps on a fixed batch."""
    from fedumm.models.lora import add_lora

    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    model = base_model(base, variant, device, args)
    stored = weight_bytes(model)
    reset_peak(device)
    loaded = memory_bytes(device, peak=False)
    targets = TARGETS + (["lm_head"] if base == "foundation" else [])
    model = add_lora(model, 8, 16, 0.0, targets, seed=0, scope="model")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    vocab = 400 if base == "foundation" else 16000
    ids = torch.randint(0, vocab, (args.batch, args.seq), generator=generator).to(device)
    times, losses = [], []
    for step in range(WARMUP + args.steps):
        if step == WARMUP:
            reset_peak(device)
        start = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
        losses.append(loss.item())
    return {
        "base": base,
        "variant": variant,
        "weight_bytes": stored,
        "loaded_bytes": loaded,
        "peak_bytes": memory_bytes(device, peak=True),
        "first_step_seconds": times[0],
        "step_seconds": min(times[WARMUP:]),
        "loss_first_last": [losses[0], losses[-1]],
        "adapter_dtypes": sorted({str(p.dtype) for p in params}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bases", default="foundation,llama")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--case", help=argparse.SUPPRESS)  # base:variant, run in this process
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(*args.case.split(":"), args)))
        return
    torchao = args.device == "cpu" and importlib.util.find_spec("torchao") is not None
    variants = [v for v in VARIANTS if torchao or not v.startswith("torchao")]
    start, rows = time.perf_counter(), []
    options = ("device", "steps", "batch", "seq", "hidden", "layers", "threads")
    forwarded = [f"--{name}={getattr(args, name)}" for name in options]
    for base in args.bases.split(","):
        for variant in variants:
            command = [sys.executable, "-W", "ignore", __file__, *forwarded]
            done = subprocess.run(
                [*command, "--case", f"{base}:{variant}"], capture_output=True, text=True
            )
            if done.returncode:
                print(f"{base} {variant} failed:\n{done.stderr[-2000:]}")
                continue
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    report(rows, args.device, time.perf_counter() - start)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


def report(rows: list[dict], device: str, wall: float) -> None:
    """The table, each base's figures as ratios to its fp32 case measured in this run."""
    memory = "GPU MiB" if device.startswith("cuda") else "RSS MiB"
    print(
        f"| base | variant | weights MiB | x fp32 | loaded {memory} | step peak {memory} "
        "| first step s | step s | x fp32 | loss |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        fp32 = next(r for r in rows if r["base"] == row["base"] and r["variant"] == "fp32")
        first, last = row["loss_first_last"]
        print(
            f"| {row['base']} | {row['variant']} | {row['weight_bytes'] / 2**20:.1f} "
            f"| {row['weight_bytes'] / fp32['weight_bytes']:.2f} "
            f"| {row['loaded_bytes'] / 2**20:.0f} | {row['peak_bytes'] / 2**20:.0f} "
            f"| {row['first_step_seconds']:.2f} "
            f"| {row['step_seconds']:.3f} "
            f"| {row['step_seconds'] / fp32['step_seconds']:.2f} | {first:.2f} -> {last:.2f} |"
        )
    print(f"wall {wall:.0f} s on {device}")


if __name__ == "__main__":
    main()
