"""The foundation checkpoint: a UMM built from a pretraining config, saved and loaded.

The default foundation ships inside the package (`assets/foundation`, about 4 MB);
`fedumm pretrain` (fedumm.pretraining) rebuilds it bit for bit from its seed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedTokenizerFast

from fedumm.config import PretrainConfig
from fedumm.data import shapesworld as sw
from fedumm.models.image_tokenizer import fit_codebook
from fedumm.models.processor import UMMProcessor
from fedumm.models.text_tokenizer import train_text_tokenizer
from fedumm.models.umm import UMMConfig, UMMForCausalLM

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


def save(model: UMMForCausalLM, processor: UMMProcessor, out_dir: Path, card: dict) -> None:
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    processor.tokenizer.save_pretrained(out_dir)
    (out_dir / "pretraining.json").write_text(json.dumps(card, indent=2))


def location(path: str | Path = "builtin") -> Path:
    """The folder a `model.foundation` value names."""
    return BUILTIN_FOUNDATION if str(path) == "builtin" else Path(path)


def load(path: str | Path = "builtin") -> tuple[UMMForCausalLM, UMMProcessor]:
    """Load a foundation folder written by `fedumm pretrain` ('builtin' = the shipped one)."""
    folder = location(path)
    if not (folder / "config.json").is_file():
        hint = " (run `fedumm pretrain` to create it)" if str(path) == "builtin" else ""
        raise FileNotFoundError(f"no foundation checkpoint at {folder}: config.json missing{hint}")
    model = UMMForCausalLM.from_pretrained(folder, local_files_only=True)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(folder, local_files_only=True)
    model.eval()
    return model, UMMProcessor.for_model(model, tokenizer)
