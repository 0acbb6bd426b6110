"""Janus-Pro at its published size with random weights: one understanding training step, one
generation training step (the text-to-image loss: VQ-VAE codes predicted by the generation
head after the prompt) and the sampling of one image (576 codes, classifier-free guidance),
through fedumm's own code (the processor's samples, `janus.loss`, the processor's `draw`).

LoRA r=8 on the language model's q/k/v/o, AdamW, batch --batch of 576 image tokens at 384 px
plus a short prompt. On a GPU: the real size, bf16. On a CPU: --text-layers cuts the language
model to a few layers (every width, the vision tower, the VQ-VAE and the heads stay at full
size), and the seconds are per step of that reduced model.

    python benchmarks/janus.py [--preset janus-pro-1b] [--device cpu --text-layers 2]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from gpu import build, sync

from fedumm.models import janus
from fedumm.runtime import Runtime, resolve_device, to_device


def timed(step, warmup: int, steps: int, device: torch.device) -> float:
    for _ in range(warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="janus-pro-1b")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--text-layers", type=int, default=None)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = resolve_device(args.device, "--device")
    gpu = device.type == "cuda"
    runtime = Runtime(device, "bf16" if gpu else "fp32", False, None)
    dtype = torch.bfloat16 if gpu else torch.float32
    model, processor = build("janus", args.preset, runtime, dtype, args.text_layers)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    rng = np.random.default_rng(0)
    side, prompt = processor.image_size, "a photo of a red circle left of a blue square"
    images = processor.encode_images(rng.integers(0, 256, (args.batch, side, side, 3), np.uint8))
    reading = processor.collate([processor.understanding(i, prompt, "yes") for i in images])
    codes = rng.integers(0, processor.config.vq_config.num_embeddings, (args.batch, 576))
    drawing = processor.collate([processor.generation(prompt, c) for c in codes])
    reading, drawing = (to_device(b, device) for b in (reading, drawing))

    def train(batch, loss_fn):
        def step():
            with runtime.autocast():
                loss = loss_fn(model, batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step

    model.train()
    understand = timed(train(reading, lambda m, b: m(**b).loss), 1, args.steps, device)
    generate = timed(train(drawing, janus.loss), 1, args.steps, device)
    model.eval()
    if gpu:
        torch.cuda.reset_peak_memory_stats(device)
    with runtime.autocast():
        start = time.perf_counter()
        image = processor.draw(model, [prompt], 0, 1.0, None, 5.0, 1)
        sync(device)
        sample = time.perf_counter() - start
    total = sum(p.numel() for p in model.parameters())
    row = {
        "preset": args.preset,
        "device": str(device),
        "card": runtime.device_name,
        "text_layers": model.config.get_text_config().num_hidden_layers,
        "parameters": total,
        "batch": args.batch,
        "understanding_step_s": understand,
        "generation_step_s": generate,
        "sample_one_image_s": sample,
        "image_shape": list(image.shape),
    }
    print(json.dumps(row, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(row, f, indent=2)


if __name__ == "__main__":
    main()
