"""`fedumm pretrain`: a foundation pretrained centrally on ShapesWorld, from its config and
seed (the shipped foundations are rebuilt bit for bit).

Two architectures: the built-in UMM (`architecture: umm`, the shipped foundations), or a small
Janus (`architecture: janus`): a Hugging Face unified model with a vision tower to read images
and a VQ-VAE and generation head to draw them, saved as an ordinary model folder for
`model.name_or_path`. The mixture: captions (image -> caption) and caption-to-image, plus, as
the config asks, questions of some families (an assistant's instruction data) and image-caption
matching (yes/no). The downstream clients' data is a shift from it: other scenes, question
families held out of pretraining, and GenEval-style prompts it never saw.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForImageTextToText

from fedumm.config import PretrainConfig
from fedumm.data import shapesworld as sw
from fedumm.models import janus, place
from fedumm.models.architectures import Tokens, janus_foundation
from fedumm.models.foundation import build, save
from fedumm.models.hf import HFProcessor
from fedumm.models.image_tokenizer import PatchVQ, fit_codebook
from fedumm.models.processor import Encoded, Processor
from fedumm.models.text_tokenizer import train_text_tokenizer
from fedumm.runtime import CPU, OutOfMemory, Runtime, resolve
from fedumm.training import Learner, Schedule, evaluation_loss, train_steps


def pretraining_data(processor: Processor, cfg: PretrainConfig, split: str, n: int) -> dict:
    """The pretraining mixture, by objective: captioning and caption-to-image each from half of
    `n` scenes (a `cfg.short_captions` share of the drawing prompts short object lists), then
    image-caption matching pairs and question-answer pairs, as many as `cfg` asks for training
    and `n` of each for the held-out split (when `cfg` has them)."""
    scenes = sw.caption_scenes(n, split, cfg.seed)
    images = np.stack([sw.render(s) for s in scenes])
    read = processor.encode_images(images[0::2])
    drawn = processor.encode_generation_images(images[1::2])
    prompts = sw.mixed_captions(scenes[1::2], cfg.short_captions, cfg.seed, split)
    parts = {
        "captioning": [
            processor.understanding(ids, "", sw.caption(s)) for s, ids in zip(scenes[0::2], read)
        ],
        "generation": [processor.generation(text, ids) for text, ids in zip(prompts, drawn)],
    }
    families = tuple(cfg.question_families)
    extra = {
        "matching": lambda k: sw.caption_matching_dataset(k, split, cfg.seed),
        "questions": lambda k: sw.pretraining_questions(k, split, cfg.seed, families),
    }
    for name, count in (("matching", cfg.matching_samples), ("questions", cfg.question_samples)):
        k = (count if split == "train" else n) if count else 0
        pairs = extra[name](k) if k else []
        ids = processor.encode_images(np.stack([s.image for s in pairs])) if pairs else []
        parts[name] = [processor.understanding(i, s.question, s.answer) for s, i in zip(pairs, ids)]
    return parts


def evaluate_pretraining(model, processor: Processor, test: dict, runtime: Runtime = CPU) -> dict:
    """Greedy caption exact match, held-out caption-to-image loss per image token, and greedy
    accuracy on held-out matching pairs and questions (when pretraining had them).

    Captions do not fix every cell or pixel offset, so a generated image can be right without
    matching the held-out one token for token: the loss, not exact match, measures generation.
    """
    metrics = {
        "caption_exact_match": _greedy_exact_match(model, processor, test["captioning"], 32),
        "caption_to_image_loss": evaluation_loss(
            model, test["generation"], processor.collate, runtime=runtime, loss_fn=processor.loss
        ),
    }
    if test["matching"]:
        metrics["caption_matching_accuracy"] = _greedy_exact_match(
            model, processor, test["matching"], 2
        )
    if test["questions"]:
        metrics["question_accuracy"] = _greedy_exact_match(model, processor, test["questions"], 4)
    return metrics


def _greedy_exact_match(
    model, processor: Processor, encoded: list[Encoded], max_new_tokens: int
) -> float:
    """Share (%) of prompts whose greedy continuation is exactly the target text."""
    pred = processor.answer(model, [e.prompt_only() for e in encoded], max_new_tokens)
    hits = [
        processor.decode_text(p) == processor.decode_text(e.target) for p, e in zip(pred, encoded)
    ]
    return 100.0 * float(np.mean(hits))


def pretrain(cfg: PretrainConfig, out_dir: Path, on_step=None) -> dict:
    """Build and pretrain a foundation, save it to `out_dir`, return its held-out metrics."""
    runtime = resolve(cfg.runtime)  # a device that is not there: refused before any work
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    start = time.perf_counter()
    vq_fit = {}
    if cfg.architecture == "janus":
        model, processor, vq_fit = build_janus(cfg)
        model.model.vqmodel.requires_grad_(False)  # fitted first; codes stay what they are
    else:
        model, processor = build(cfg)
    place(model, runtime)
    train = sum(pretraining_data(processor, cfg, "train", cfg.train_samples).values(), [])
    test = pretraining_data(processor, cfg, "test", cfg.test_samples)
    try:
        stats = train_steps(
            Learner(model, processor.collate, processor.loss, runtime),
            train,
            Schedule(
                cfg.steps, cfg.batch_size, _cosine(cfg.steps, cfg.lr), cfg.seed, cfg.weight_decay
            ),
            on_step=on_step,
        )
        with runtime.autocast():
            metrics = evaluate_pretraining(model, processor, test, runtime=runtime)
    except torch.OutOfMemoryError as e:
        raise OutOfMemory(e) from None
    metrics.update(
        vq_fit,
        train_loss=stats.loss,
        seconds=time.perf_counter() - start,
        parameters=sum(p.numel() for p in model.parameters()),
    )
    # where it was trained: another CPU's kernels train the same config to other weights
    card = {"config": cfg.model_dump(), "metrics": metrics, "runtime": runtime.describe()}
    if cfg.architecture == "janus":
        save_janus(model.cpu(), processor, out_dir, card)
    else:
        save(model.cpu(), processor, out_dir, card)
    return metrics


def build_janus(cfg: PretrainConfig):
    """(model, processor, VQ fit metrics): a small Janus (architectures.janus_foundation) with
    fedumm's byte-level BPE, its VQ-VAE fitted to a k-means patch codebook of ShapesWorld
    images, as the built-in model's image tokenizer is."""
    torch.manual_seed(cfg.seed)
    arch = janus_foundation(
        cfg.hidden_size, cfg.intermediate_size, cfg.num_layers, cfg.num_heads, cfg.codebook_size
    )
    tokenizer = train_text_tokenizer(sw.text_corpus(cfg.seed), cfg.text_vocab_size)
    tokenizer.add_special_tokens({"additional_special_tokens": list(arch.special)})
    config = arch.config(Tokens(tokenizer))
    model = AutoModelForImageTextToText.from_config(config)
    images = np.stack([s.image for s in sw.caption_dataset(cfg.codebook_images, "train", cfg.seed)])
    book = fit_codebook(images, sw.CELL, cfg.codebook_size, cfg.seed)
    patches = PatchVQ(torch.from_numpy(book), sw.CELL, sw.GRID).encode(images)
    fitted = janus.fit_vq(model.model.vqmodel, images, patches, cfg.vq_steps, 32, 3e-3, cfg.seed)
    model.requires_grad_(True).eval()
    processor = HFProcessor("janus", config, tokenizer, arch.image_processor())
    processor.vqmodel = model.model.vqmodel
    return model, processor, fitted


def save_janus(model, processor: HFProcessor, out_dir: Path, card: dict) -> None:
    """An ordinary Hugging Face model folder (model, tokenizer, image processor)."""
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    processor.tokenizer.save_pretrained(out_dir)
    processor.image_processor.save_pretrained(out_dir)
    (out_dir / "pretraining.json").write_text(json.dumps(card, indent=2))


def _cosine(steps: int, peak: float, warmup: int = 50):
    def lr(step: int) -> float:
        if step < warmup:
            return peak * (step + 1) / warmup
        return 0.5 * peak * (1 + math.cos(math.pi * (step - warmup) / max(steps - warmup, 1)))

    return lr
