"""Text-to-image throughput of the built-in unified model on CPU, and of the GenEval-style scorer.

Prints images/s, measured in this one run, for several batch sizes, with and without
classifier-free guidance (which decodes every prompt twice), and how fast the scorer parses and
judges images. Each figure is the best of `--repeats` timings (shared machines are noisy).

    python benchmarks/generation.py [--images 256] [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import torch

from fedumm.data import geneval
from fedumm.evaluation.geneval import ShapesWorldParser, judge
from fedumm.models import foundation
from fedumm.models.generate import text_to_image


def best_of(repeats: int, fn, *args, **kwargs) -> float:
    """The shortest of `repeats` timings of fn(*args, **kwargs), in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args, **kwargs)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, processor = foundation.load()
    prompts = geneval.evaluation_prompts(24, seed=0)
    texts = [prompts[i % len(prompts)].prompt for i in range(args.images)]
    print(
        f"built-in UMM ({sum(p.numel() for p in model.parameters()):,} parameters), "
        f"{args.images} images of {processor.vq.tokens_per_image} tokens, "
        f"{args.threads} threads"
    )
    print(f"{'batch':>6} {'guidance':>9} {'seconds':>8} {'images/s':>9}")
    for batch in (1, 16, 64, 256):
        n = min(args.images, 32) if batch == 1 else args.images  # batch 1 is slow: fewer images
        for scale in (1.0, 3.0):
            seconds = best_of(
                args.repeats,
                text_to_image,
                model,
                processor,
                texts[:n],
                seed=0,
                guidance_scale=scale,
                batch_size=batch,
            )
            print(f"{batch:>6} {scale:>9} {seconds:>8.2f} {n / seconds:>9.1f}")
    images = text_to_image(model, processor, texts, seed=0)
    scorer = ShapesWorldParser()

    def score_all():
        return [judge(prompts[i % len(prompts)], scorer(im)) for i, im in enumerate(images)]

    seconds = best_of(args.repeats, score_all)
    print(f"scorer: {args.images / seconds:.0f} images/s (parse + judge)")


if __name__ == "__main__":
    main()
