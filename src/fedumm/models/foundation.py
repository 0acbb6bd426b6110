"""The foundation checkpoint: the UMM pretrained centrally on ShapesWorld's pretraining formats.

Pretraining sees only captions (image -> caption) and caption-to-image, optionally image-caption
matching (yes/no); never a question or a GenEval-style prompt. Downstream tasks are what
federated LoRA has to teach. The default foundation ships inside the package
(`assets/foundation`, about 4 MB) and `fedumm pretrain` rebuilds it bit for bit from its seed.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedTokenizerFast

from fedumm.config import PretrainConfig
from fedumm.data import shapesworld as sw
from fedumm.models.generate import generate
from fedumm.models.image_tokenizer import fit_codebook
from fedumm.models.processor import Encoded, UMMProcessor
from fedumm.models.text_tokenizer import train_text_tokenizer
from fedumm.models.umm import UMMConfig, UMMForCausalLM
from fedumm.training import evaluation_loss, train_steps

BUILTIN_FOUNDATION = Path(__file__).resolve().parent.parent / "assets" / "foundation"


def build(cfg: PretrainConfig) -> tuple[UMMForCausalLM, UMMProcessor]:
    """A randomly initialised UMM with its trained text tokenizer and fitted image codebook."""
    torch.manual_seed(cfg.seed)
    tokenizer = train_text_tokenizer(sw.text_corpus(cfg.seed), cfg.text_vocab_size)
    images = np.stack([s.image for s in sw.caption_dataset(cfg.codebook_images, "train", cfg.seed)])
    codebook = fit_codebook(images, sw.CELL, cfg.codebook_size, cfg.seed)
    config = UMMConfig(
        text_vocab_size=len(tokenizer),
        codebook_size=len(codebook),
        patch_size=sw.CELL,
        image_grid=sw.GRID,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = UMMForCausalLM(config)
    model.codebook.copy_(torch.from_numpy(codebook))
    model.eval()
    return model, UMMProcessor.for_model(model, tokenizer)


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
) -> dict:
    """Greedy caption exact match, held-out caption-to-image loss per image token, and greedy
    caption-matching accuracy (when pretraining had matching pairs).

    Captions do not fix every cell or pixel offset, so a generated image can be right without
    matching the held-out one token for token: the loss, not exact match, measures generation.
    """
    metrics = {
        "caption_exact_match": _greedy_exact_match(model, processor, captioning, 32),
        "caption_to_image_loss": evaluation_loss(model, generation, processor.collate),
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
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    start = time.perf_counter()
    model, processor = build(cfg)
    matching = cfg.matching_samples
    train = sum(pretraining_data(processor, cfg.train_samples, "train", cfg.seed, matching), [])
    test = pretraining_data(
        processor, cfg.test_samples, "test", cfg.seed, cfg.test_samples if matching else 0
    )
    stats = train_steps(
        model, train, cfg.steps, cfg.batch_size, cfg.lr, cfg.weight_decay, cfg.seed,
        processor.collate, lr_schedule=_cosine(cfg.steps, cfg.lr), on_step=on_step,
    )  # fmt: skip
    metrics = evaluate_pretraining(model, processor, *test)
    metrics.update(
        train_loss=stats.loss,
        seconds=time.perf_counter() - start,
        parameters=sum(p.numel() for p in model.parameters()),
    )
    save(model, processor, out_dir, {"config": cfg.model_dump(), "metrics": metrics})
    return metrics


def _cosine(steps: int, peak: float, warmup: int = 50):
    def lr(step: int) -> float:
        if step < warmup:
            return peak * (step + 1) / warmup
        return 0.5 * peak * (1 + math.cos(math.pi * (step - warmup) / max(steps - warmup, 1)))

    return lr


def save(model: UMMForCausalLM, processor: UMMProcessor, out_dir: Path, card: dict) -> None:
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    processor.tokenizer.save_pretrained(out_dir)
    (out_dir / "pretraining.json").write_text(json.dumps(card, indent=2))


def load(path: str | Path = "builtin") -> tuple[UMMForCausalLM, UMMProcessor]:
    """Load a foundation folder written by `fedumm pretrain` ('builtin' = the shipped one)."""
    folder = BUILTIN_FOUNDATION if str(path) == "builtin" else Path(path)
    if not (folder / "config.json").is_file():
        hint = " (run `fedumm pretrain` to create it)" if str(path) == "builtin" else ""
        raise FileNotFoundError(f"no foundation checkpoint at {folder}: config.json missing{hint}")
    model = UMMForCausalLM.from_pretrained(folder, local_files_only=True)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(folder, local_files_only=True)
    model.eval()
    return model, UMMProcessor.for_model(model, tokenizer)
