"""`fedumm pretrain`: the foundation UMM pretrained centrally on ShapesWorld's pretraining
formats, from its config and seed (the shipped foundation is rebuilt bit for bit).

Pretraining sees only captions (image -> caption) and caption-to-image, optionally image-caption
matching (yes/no); never a question or a GenEval-style prompt. Downstream tasks are what
federated LoRA has to teach.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from fedumm.config import PretrainConfig
from fedumm.data import shapesworld as sw
from fedumm.models import place
from fedumm.models.foundation import build, save
from fedumm.models.generate import generate
from fedumm.models.processor import Encoded, UMMProcessor
from fedumm.runtime import CPU, OutOfMemory, Runtime, resolve
from fedumm.training import evaluation_loss, train_steps


def pretraining_data(
    processor: UMMProcessor, n: int, split: str, seed: int, matching: int = 0
) -> tuple[list[Encoded], list[Encoded], list[Encoded]]:
    """(captioning, caption-to-image, caption matching) sequences: the first two each from half
    of `n` scenes, plus `matching` image-caption matching pairs."""
    samples = sw.caption_dataset(n, split, seed)
    image_ids = processor.encode_images(np.stack([s.image for s in samples]))
    captioning = [processor.understanding(ids, "", s.caption)
                  for s, ids in zip(samples[0::2], image_ids[0::2])]  # fmt: skip
    generation = [processor.generation(s.caption, ids)
                  for s, ids in zip(samples[1::2], image_ids[1::2])]  # fmt: skip
    pairs = sw.caption_matching_dataset(matching, split, seed) if matching else []
    pair_ids = processor.encode_images(np.stack([s.image for s in pairs])) if pairs else []
    matched = [processor.understanding(ids, s.question, s.answer)
               for s, ids in zip(pairs, pair_ids)]  # fmt: skip
    return captioning, generation, matched


def evaluate_pretraining(
    model,
    processor: UMMProcessor,
    captioning: list[Encoded],
    generation: list[Encoded],
    matching: list[Encoded],
    runtime: Runtime = CPU,
) -> dict:
    """Greedy caption exact match, held-out caption-to-image loss per image token, and greedy
    caption-matching accuracy (when pretraining had matching pairs).

    Captions do not fix every cell or pixel offset, so a generated image can be right without
    matching the held-out one token for token: the loss, not exact match, measures generation.
    """
    metrics = {
        "caption_exact_match": _greedy_exact_match(model, processor, captioning, 32),
        "caption_to_image_loss": evaluation_loss(
            model, generation, processor.collate, runtime=runtime
        ),
    }
    if matching:
        metrics["caption_matching_accuracy"] = _greedy_exact_match(model, processor, matching, 2)
    return metrics


def _greedy_exact_match(
    model, processor: UMMProcessor, encoded: list[Encoded], max_new_tokens: int
) -> float:
    """Share (%) of prompts whose greedy continuation is exactly the target text."""
    pred = generate(model, [e.prompt for e in encoded], max_new_tokens, processor.text_id_range,
                    processor.pad, stop_id=processor.eos)  # fmt: skip
    hits = [processor.decode_text(p) == processor.decode_text(e.target)
            for p, e in zip(pred, encoded)]  # fmt: skip
    return 100.0 * float(np.mean(hits))


def pretrain(cfg: PretrainConfig, out_dir: Path, on_step=None) -> dict:
    """Build and pretrain a foundation, save it to `out_dir`, return its held-out metrics."""
    runtime = resolve(cfg.runtime)  # a device that is not there: refused before any work
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    start = time.perf_counter()
    model, processor = build(cfg)
    place(model, runtime)
    matching = cfg.matching_samples
    train = sum(pretraining_data(processor, cfg.train_samples, "train", cfg.seed, matching), [])
    test = pretraining_data(
        processor, cfg.test_samples, "test", cfg.seed, cfg.test_samples if matching else 0
    )
    try:
        stats = train_steps(
            model, train, cfg.steps, cfg.batch_size, cfg.lr, cfg.weight_decay, cfg.seed,
            processor.collate, lr_schedule=_cosine(cfg.steps, cfg.lr), on_step=on_step,
            runtime=runtime, loss_fn=processor.loss,
        )  # fmt: skip
        with runtime.autocast():
            metrics = evaluate_pretraining(model, processor, *test, runtime=runtime)
    except torch.OutOfMemoryError as e:
        raise OutOfMemory(e) from None
    metrics.update(
        train_loss=stats.loss,
        seconds=time.perf_counter() - start,
        parameters=sum(p.numel() for p in model.parameters()),
    )
    save(model.cpu(), processor, out_dir, {"config": cfg.model_dump(), "metrics": metrics})
    return metrics


def _cosine(steps: int, peak: float, warmup: int = 50):
    def lr(step: int) -> float:
        if step < warmup:
            return peak * (step + 1) / warmup
        return 0.5 * peak * (1 + math.cos(math.pi * (step - warmup) / max(steps - warmup, 1)))

    return lr
