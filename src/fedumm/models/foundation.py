"""Foundation checkpoints: a UMM built from a pretraining config, saved, loaded and named.

Three foundations ship inside the package (`assets/foundations/<name>`, about 4 MB each), and
`fedumm pretrain` (fedumm.pretraining) rebuilds each bit for bit from its config and seed on the
same machine and thread count:
- `assistant-v2` (the default, also called `builtin`): the assistant's mixture with half of the
  caption-to-image prompts short object lists (configs/pretrain.yaml).
- `assistant`: captions, caption-to-image and questions of two families
  (configs/pretrain_assistant.yaml); the default from 2026-11-26 to 2026-11-27.
- `captioner`: captions and caption-to-image only, never a question
  (configs/pretrain_captioner.yaml); the results measured before 2026-11-26 used it.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedTokenizerFast

from fedumm.config import ConfigError, PretrainConfig
from fedumm.data import shapesworld as sw
from fedumm.models.image_tokenizer import fit_codebook
from fedumm.models.processor import UMMProcessor
from fedumm.models.text_tokenizer import train_text_tokenizer
from fedumm.models.umm import UMMConfig, UMMForCausalLM

FOUNDATIONS = Path(__file__).resolve().parent.parent / "assets" / "foundations"
DEFAULT = "assistant-v2"  # what `builtin` names


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


def save(model: UMMForCausalLM, processor: UMMProcessor, out_dir: Path, card: dict) -> None:
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    processor.tokenizer.save_pretrained(out_dir)
    (out_dir / "pretraining.json").write_text(json.dumps(card, indent=2))


def names() -> list[str]:
    """The foundations `model.foundation` can name (besides a folder)."""
    return ["builtin", *sorted(p.name for p in FOUNDATIONS.iterdir() if p.is_dir())]


def location(name_or_path: str | Path = "builtin") -> Path:
    """The folder a `model.foundation` value names: a shipped foundation by name, or a folder
    written by `fedumm pretrain`."""
    value = str(name_or_path)
    name = DEFAULT if value == "builtin" else value
    if "/" not in name and (FOUNDATIONS / name).is_dir():
        return FOUNDATIONS / name
    if Path(value).is_dir():
        return Path(value)
    raise ConfigError(f"model.foundation {unknown(value)}")


def unknown(value: str) -> str:
    """Why `value` names no foundation, listing the names that do."""
    return (
        f"{value!r} is neither a shipped foundation ({', '.join(names())}; builtin = {DEFAULT}) "
        "nor a folder: give one of those names or a folder written by `fedumm pretrain`"
    )


def load(name_or_path: str | Path = "builtin") -> tuple[UMMForCausalLM, UMMProcessor]:
    """Load a foundation by name or folder (see `location`)."""
    folder = location(name_or_path)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"no foundation checkpoint at {folder}: config.json missing (run `fedumm pretrain`)"
        )
    model = UMMForCausalLM.from_pretrained(folder, local_files_only=True)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(folder, local_files_only=True)
    model.eval()
    return model, UMMProcessor.for_model(model, tokenizer)


def checksum(folder: str | Path) -> str:
    """sha256 over a model folder's weights, config and tokenizer (names and bytes): what makes
    two runs' foundations the same, whatever they were called. Cached while the files' sizes
    and modification times stay the same (a sweep asks once per cell)."""
    files = sorted(
        p
        for p in Path(folder).resolve().iterdir()
        if p.is_file()
        and (p.suffix == ".safetensors" or p.name in ("config.json", "tokenizer.json"))
    )
    return _sha256(tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files))


@functools.lru_cache(maxsize=16)
def _sha256(files: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for path, _, _ in files:
        digest.update(Path(path).name.encode() + b"\0")
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()
