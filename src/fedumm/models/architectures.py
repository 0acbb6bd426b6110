"""Hugging Face architectures built from config objects, without a download, in two sizes.

- **tiny** (one per supported family): a 2-layer, 64-wide language model with a 2-layer vision
  tower (Chameleon: a small VQ-VAE; Janus: both) reading 32x32 images, ShapesWorld's size. For
  tests and for trying the Hugging Face path on a laptop.
- **published** (`PUBLISHED`): the real architectures of LLaVA-1.5-7B, Qwen2-VL-2B, Qwen2.5-VL-3B
  and -7B (BLIP3o's autoregressive backbones), PaliGemma-3B, SmolVLM-256M, Chameleon-7B and
  Janus-Pro-1B and -7B, at full size, to measure memory and speed on a GPU where no weights can
  be fetched. Config values are those of the models' published config.json files; the
  parameter totals match the published ones (2.21 B, 3.75 B, 8.29 B, 7,063,427,072,
  2,923,466,480, 7.04 B, 1.87 B, 6.99 B; tests). SmolVLM-256M's widths, depths and vocabulary
  were checked against excerpts of its config; its MLP sizes, scale factor and untied
  embeddings are as recalled, consistent with its nominal 256M (256,484,928).

Either is saved as an ordinary model folder (weights, fedumm's byte-level BPE tokenizer plus the
family's special tokens, the family's image processor) that `model.name_or_path` loads. The
weights are random: the config is marked (`fedumm_random_weights`), and fedumm warns whenever it
loads such a model, so its scores are never mistaken for a trained model's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers as tf

from fedumm.data import shapesworld as sw
from fedumm.models.hf import DEFAULT_TARGETS, FAMILIES, RANDOM_MARK
from fedumm.models.lora import lora_targets
from fedumm.models.text_tokenizer import train_text_tokenizer

SIDE, PATCH = 32, 8  # tiny models read ShapesWorld's 32x32 images in 8x8 patches
TEXT = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
)
VISION = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=SIDE,
    patch_size=PATCH,
)
TINY_CODES = 32  # Chameleon's and Janus's VQ codebook in the tiny models


class Tokens:
    """Ids of the family's special tokens, as the config needs them: from the real tokenizer
    when saving a model, or placeholders when only counting parameters."""

    def __init__(self, tokenizer=None, special: list[str] = ()):
        self.tokenizer = tokenizer
        self.placeholder = {name: 10 + i for i, name in enumerate(special)}

    def __getitem__(self, name: str) -> int:
        if self.tokenizer is None:
            return self.placeholder[name]
        return self.tokenizer.convert_tokens_to_ids(name)

    def __len__(self) -> int:
        return len(self.tokenizer) if self.tokenizer is not None else 512

    def common(self) -> dict:
        """pad / bos / eos ids for a text config."""
        if self.tokenizer is None:
            return {"pad_token_id": 0}
        t = self.tokenizer
        return {
            "pad_token_id": t.pad_token_id,
            "bos_token_id": t.bos_token_id,
            "eos_token_id": t.eos_token_id,
        }

    def vocabulary(self) -> dict[str, int]:
        if self.tokenizer is None:
            return dict(self.placeholder)
        return self.tokenizer.get_vocab()


@dataclass(frozen=True)
class Architecture:
    """One buildable model: its family, its config from the special tokens' ids, its image
    processor, and the special tokens its tokenizer must have."""

    family: str
    config: Callable[[Tokens], tf.PretrainedConfig]
    image_processor: Callable[[], object]
    special: tuple[str, ...]
    label: str  # how tables name it

    def instantiate(self, tokens: Tokens) -> torch.nn.Module:
        """The model with fresh random weights (on the current default device)."""
        return tf.AutoModelForImageTextToText.from_config(self.config(tokens))


QWEN_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
IDEFICS_TOKENS = ("<fake_token_around_image>", "<image>", "<global-img>")
JANUS_TOKENS = ("<begin_of_image>", "<end_of_image>", "<image_placeholder>")


def _code_name(i: int) -> str:
    """Chameleon's image codes are vocabulary entries IMGIMG<digits as letters>Z."""
    return "IMGIMG" + "".join(chr(ord("A") + int(d)) for d in str(i)) + "Z"


# ------------------------------------------------------------------------------------ families


def _tying(text: dict) -> dict:
    """The outer config must repeat the text config's word-embedding tying, where it is set."""
    return {k: text[k] for k in ("tie_word_embeddings",) if k in text}


def _llava(text: dict, vision: dict, **kwargs):
    def config(t: Tokens) -> tf.PretrainedConfig:
        body = {"vocab_size": len(t), **text, "pad_token_id": t.common()["pad_token_id"]}
        return tf.LlavaConfig(
            vision_config=tf.CLIPVisionConfig(**vision),
            text_config=tf.LlamaConfig(**body),
            image_token_id=t["<image>"],
            **kwargs,
        )

    return config


def _qwen(version: str, text: dict, vision: dict, head_dim: int):
    """Qwen2-VL, or Qwen2.5-VL (`version` "2.5": windowed attention in the vision tower);
    M-RoPE splits each head's rotary frequencies over time, height and width."""
    quarter = head_dim // 2
    sections = [quarter // 4, 3 * quarter // 8, quarter - quarter // 4 - 3 * quarter // 8]

    def config(t: Tokens) -> tf.PretrainedConfig:
        rope = {
            "rope_type": "default",
            "mrope_section": sections,
            "rope_theta": text.get("rope_theta", 1_000_000.0),
        }
        body = {k: v for k, v in text.items() if k != "rope_theta"}
        body.setdefault("vocab_size", len(t))
        tokens = dict(
            image_token_id=t["<|image_pad|>"],
            video_token_id=t["<|video_pad|>"],
            vision_start_token_id=t["<|vision_start|>"],
            vision_end_token_id=t["<|vision_end|>"],
        )
        kind = tf.Qwen2_5_VLConfig if version == "2.5" else tf.Qwen2VLConfig
        return kind(
            text_config={**body, **t.common(), "rope_parameters": rope},
            vision_config=vision,
            **_tying(body),
            **tokens,
        )

    return config


def _idefics3(text: dict, vision: dict, scale_factor: int, smol: bool):
    def config(t: Tokens) -> tf.PretrainedConfig:
        body = {"model_type": "llama", **text, "pad_token_id": t.common()["pad_token_id"]}
        body.setdefault("vocab_size", len(t))
        kind = tf.SmolVLMConfig if smol else tf.Idefics3Config
        return kind(
            vision_config=vision,
            text_config=body,
            scale_factor=scale_factor,
            image_token_id=t["<image>"],
            pad_token_id=t.common()["pad_token_id"],
            **_tying(body),
        )

    return config


def _paligemma(text: dict, vision: dict, projection_dim: int):
    def config(t: Tokens) -> tf.PretrainedConfig:
        body = {"model_type": "gemma", **text, "pad_token_id": t.common()["pad_token_id"]}
        body.setdefault("vocab_size", len(t))
        return tf.PaliGemmaConfig(
            vision_config=vision,
            text_config=body,
            projection_dim=projection_dim,
            image_token_id=t["<image>"],
        )

    return config


def _chameleon(text: dict, vq: dict | None):
    def config(t: Tokens) -> tf.PretrainedConfig:
        body = dict(text)
        body.setdefault("vocab_size", len(t))
        return tf.ChameleonConfig(
            **body,
            vq_config=vq,
            vocabulary_map=t.vocabulary(),
            image_token_id=t["<image>"],
            **t.common(),
        )

    return config


def _janus(text: dict, vision: dict, vq: dict):
    def config(t: Tokens) -> tf.PretrainedConfig:
        body = {"model_type": "llama", **text, "pad_token_id": t.common()["pad_token_id"]}
        body.setdefault("vocab_size", len(t))
        return tf.JanusConfig(
            text_config=body,
            vision_config=vision,
            vq_config=vq,
            image_token_id=t["<image_placeholder>"],
        )

    return config


def _square(kind: str, side: int) -> Callable[[], object]:
    """A PIL image processor that makes `side` x `side` images."""

    def build():
        if kind == "clip":
            return tf.CLIPImageProcessorPil(
                size={"shortest_edge": side}, crop_size={"height": side, "width": side}
            )
        if kind == "chameleon":
            return tf.ChameleonImageProcessorPil(
                size={"shortest_edge": side}, crop_size={"height": side, "width": side}
            )
        if kind in ("idefics3", "smolvlm"):
            edge = {"longest_edge": side}
            cls = tf.SmolVLMImageProcessorPil if kind == "smolvlm" else tf.Idefics3ImageProcessorPil
            return cls(do_image_splitting=False, size=edge, max_image_size=edge)
        cls = {"siglip": tf.SiglipImageProcessorPil, "janus": tf.JanusImageProcessorPil}[kind]
        return cls(size={"height": side, "width": side})

    return build


def _qwen_pixels(patch: int, side: int) -> Callable[[], object]:
    """Qwen2-VL's processor bounds pixels: exactly side x side, so an image is a fixed number
    of tokens, (side / patch / 2)^2."""
    return lambda: tf.Qwen2VLImageProcessorPil(
        patch_size=patch,
        merge_size=2,
        temporal_patch_size=2,
        min_pixels=side * side,
        max_pixels=side * side,
    )


# --------------------------------------------------------------------------------------- tiny

_TINY_VQ = dict(
    embed_dim=32,
    num_embeddings=TINY_CODES,
    latent_channels=32,
    resolution=SIDE,
    base_channels=32,
    channel_multiplier=[1, 1, 1, 1],
    num_res_blocks=1,
)
_TINY_QWEN_VISION = dict(
    depth=2, num_heads=2, patch_size=PATCH, spatial_merge_size=2, temporal_patch_size=2
)

TINY: dict[str, Architecture] = {
    "llava": Architecture(
        "llava", _llava(TEXT, VISION), _square("clip", SIDE), ("<image>",), "tiny LLaVA"
    ),
    "qwen2_vl": Architecture(
        "qwen2_vl",
        _qwen(
            "2",
            {**TEXT, "num_key_value_heads": 2, "rope_theta": 10000.0},
            {**_TINY_QWEN_VISION, "embed_dim": 32, "hidden_size": 64, "mlp_ratio": 2},
            16,
        ),
        _qwen_pixels(PATCH, SIDE),
        QWEN_TOKENS,
        "tiny Qwen2-VL",
    ),
    "qwen2_5_vl": Architecture(
        "qwen2_5_vl",
        _qwen(
            "2.5",
            {**TEXT, "num_key_value_heads": 2, "rope_theta": 10000.0},
            {
                **_TINY_QWEN_VISION,
                "hidden_size": 32,
                "intermediate_size": 64,
                "out_hidden_size": 64,
                "fullatt_block_indexes": [1],
                "window_size": 16,
            },
            16,
        ),
        _qwen_pixels(PATCH, SIDE),
        QWEN_TOKENS,
        "tiny Qwen2.5-VL",
    ),
    "idefics3": Architecture(
        "idefics3",
        _idefics3(TEXT, VISION, 2, smol=False),
        _square("idefics3", SIDE),
        IDEFICS_TOKENS,
        "tiny Idefics3",
    ),
    "smolvlm": Architecture(
        "smolvlm",
        _idefics3(TEXT, VISION, 2, smol=True),
        _square("smolvlm", SIDE),
        IDEFICS_TOKENS,
        "tiny SmolVLM",
    ),
    "paligemma": Architecture(
        "paligemma",
        _paligemma({**TEXT, "num_key_value_heads": 1, "head_dim": 16}, VISION, 64),
        _square("siglip", SIDE),
        ("<image>",),
        "tiny PaliGemma",
    ),
    "chameleon": Architecture(
        "chameleon",
        _chameleon(TEXT, _TINY_VQ),
        _square("chameleon", SIDE),
        ("<image>", "<racm3:break>", "<eoss>", *map(_code_name, range(TINY_CODES))),
        "tiny Chameleon",
    ),
    "janus": Architecture(
        "janus",
        _janus(
            TEXT,
            {
                **{k: v for k, v in VISION.items() if k != "intermediate_size"},
                "projection_dim": 64,
                "mlp_ratio": 2,
                "num_image_tokens": (SIDE // PATCH) ** 2,
            },
            {
                **{k: v for k, v in _TINY_VQ.items() if k != "resolution"},
                "embed_dim": 8,
                "num_patches": SIDE // PATCH,
                "projection_dim": 64,
                "image_token_embed_dim": 64,
            },
        ),
        _square("janus", SIDE),
        JANUS_TOKENS,
        "tiny Janus",
    ),
}

# ---------------------------------------------------------------------------------- published


def _qwen2_5_vl(
    hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, vocab: int, tied: bool
) -> Callable[[Tokens], tf.PretrainedConfig]:
    text = dict(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        vocab_size=vocab,
        tie_word_embeddings=tied,
    )
    vision = dict(
        depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=hidden
    )
    return _qwen("2.5", text, vision, hidden // heads)


_LLAMA_7B = dict(
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
)
_SIGLIP_L_384 = dict(
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    image_size=384,
    patch_size=16,
    mlp_ratio=4.0,
    num_image_tokens=576,
)


def _janus_pro(hidden: int, intermediate: int, layers: int, heads: int):
    text = dict(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        vocab_size=102400,
    )
    vision = {k: v for k, v in _SIGLIP_L_384.items() if k != "intermediate_size"}
    return _janus(
        text,
        {**vision, "projection_dim": hidden},
        {"projection_dim": hidden, "image_token_embed_dim": hidden},
    )


PUBLISHED: dict[str, Architecture] = {
    "llava-1.5-7b": Architecture(
        "llava",
        _llava(
            {**_LLAMA_7B, "vocab_size": 32064},
            dict(
                hidden_size=1024,
                intermediate_size=4096,
                num_hidden_layers=24,
                num_attention_heads=16,
                image_size=336,
                patch_size=14,
                projection_dim=768,
            ),
            vision_feature_layer=-2,
        ),
        _square("clip", 336),
        ("<image>",),
        "LLaVA-1.5-7B",
    ),
    "qwen2-vl-2b": Architecture(
        "qwen2_vl",
        _qwen(
            "2",
            dict(
                hidden_size=1536,
                intermediate_size=8960,
                num_hidden_layers=28,
                num_attention_heads=12,
                num_key_value_heads=2,
                vocab_size=151936,
                tie_word_embeddings=True,
            ),
            dict(depth=32, embed_dim=1280, mlp_ratio=4, num_heads=16, hidden_size=1536),
            128,
        ),
        _qwen_pixels(14, 672),
        QWEN_TOKENS,
        "Qwen2-VL-2B",
    ),
    "qwen2.5-vl-3b": Architecture(
        "qwen2_5_vl",
        _qwen2_5_vl(2048, 11008, 36, 16, 2, 151936, True),
        _qwen_pixels(14, 672),
        QWEN_TOKENS,
        "Qwen2.5-VL-3B (BLIP3o-4B backbone)",
    ),
    "qwen2.5-vl-7b": Architecture(
        "qwen2_5_vl",
        _qwen2_5_vl(3584, 18944, 28, 28, 4, 152064, False),
        _qwen_pixels(14, 672),
        QWEN_TOKENS,
        "Qwen2.5-VL-7B (BLIP3o-8B backbone)",
    ),
    "paligemma-3b": Architecture(
        "paligemma",
        _paligemma(
            dict(
                hidden_size=2048,
                intermediate_size=16384,
                num_hidden_layers=18,
                num_attention_heads=8,
                num_key_value_heads=1,
                head_dim=256,
                vocab_size=257216,
            ),
            dict(
                model_type="siglip_vision_model",
                hidden_size=1152,
                intermediate_size=4304,
                num_hidden_layers=27,
                num_attention_heads=16,
                image_size=224,
                patch_size=14,
                projection_dim=2048,
                vision_use_head=False,
            ),
            2048,
        ),
        _square("siglip", 224),
        ("<image>",),
        "PaliGemma-3B",
    ),
    "smolvlm-256m": Architecture(
        "smolvlm",
        _idefics3(
            dict(
                hidden_size=576,
                intermediate_size=1536,
                num_hidden_layers=30,
                num_attention_heads=9,
                num_key_value_heads=3,
                head_dim=64,
                vocab_size=49280,
                tie_word_embeddings=False,
            ),
            dict(
                hidden_size=768,
                intermediate_size=3072,
                num_hidden_layers=12,
                num_attention_heads=12,
                image_size=512,
                patch_size=16,
            ),
            4,
            smol=True,
        ),
        _square("smolvlm", 512),
        IDEFICS_TOKENS,
        "SmolVLM-256M (Idefics3)",
    ),
    "chameleon-7b": Architecture(
        "chameleon",
        _chameleon({**_LLAMA_7B, "vocab_size": 65536}, None),
        _square("chameleon", 512),
        ("<image>", "<racm3:break>", "<eoss>", *map(_code_name, range(8192))),
        "Chameleon-7B (unified, early fusion)",
    ),
    "janus-pro-1b": Architecture(
        "janus",
        _janus_pro(2048, 5632, 24, 16),
        _square("janus", 384),
        JANUS_TOKENS,
        "Janus-Pro-1B (unified)",
    ),
    "janus-pro-7b": Architecture(
        "janus",
        _janus_pro(4096, 11008, 30, 32),
        _square("janus", 384),
        JANUS_TOKENS,
        "Janus-Pro-7B (unified)",
    ),
}


def janus_foundation(
    hidden: int, intermediate: int, layers: int, heads: int, codes: int
) -> Architecture:
    """A small Janus for ShapesWorld (`fedumm pretrain` with architecture janus): the language
    model sized like the built-in foundation's, a 2-layer vision tower reading 32x32 images in
    8x8 patches, and a VQ-VAE coding each 8x8 cell as one of `codes` codes (4x4 per image)."""
    text = dict(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
    )
    vision = {
        **{k: v for k, v in VISION.items() if k != "intermediate_size"},
        "hidden_size": 64,
        "projection_dim": hidden,
        "mlp_ratio": 2,
        "num_image_tokens": (SIDE // PATCH) ** 2,
    }
    vq = {
        **{k: v for k, v in _TINY_VQ.items() if k != "resolution"},
        "num_embeddings": codes,
        "embed_dim": 8,
        "num_patches": SIDE // PATCH,
        "projection_dim": hidden,
        "image_token_embed_dim": hidden,
    }
    return Architecture(
        "janus",
        _janus(text, vision, vq),
        _square("janus", SIDE),
        JANUS_TOKENS,
        "Janus foundation for ShapesWorld",
    )


FAMILY_PRESETS = {
    family: ["tiny", *(n for n, a in PUBLISHED.items() if a.family == family)] for family in TINY
}


def architecture(family: str, preset: str = "tiny") -> Architecture:
    """The architecture `preset` of `family`; an unknown one is refused naming the choices."""
    if family not in TINY:
        raise ValueError(f"unknown family {family!r}; families: {', '.join(TINY)}")
    if preset == "tiny":
        return TINY[family]
    if preset not in PUBLISHED:
        raise ValueError(
            f"unknown preset {preset!r}; {family} presets: {', '.join(FAMILY_PRESETS[family])}"
        )
    arch = PUBLISHED[preset]
    if arch.family != family:
        raise ValueError(
            f"preset {preset!r} is a {arch.family} model, not {family}; {family} "
            f"presets: {', '.join(FAMILY_PRESETS[family])}"
        )
    return arch


def _tokenizer(special: tuple[str, ...]):
    tok = train_text_tokenizer(sw.text_corpus(0), 512)
    tok.add_special_tokens({"additional_special_tokens": list(special)})
    return tok


def build_random(
    family: str,
    out_dir: str | Path,
    preset: str = "tiny",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a model of `family` at `preset`'s size with random weights (model in `dtype`,
    tokenizer, image processor) to `out_dir`, its config marked as random."""
    arch = architecture(family, preset)
    tokenizer = _tokenizer(arch.special)
    torch.manual_seed(seed)
    config = arch.config(Tokens(tokenizer))
    setattr(config, RANDOM_MARK, preset if preset != "tiny" else f"tiny-{family}")
    model = tf.AutoModelForImageTextToText.from_config(config)
    model.to(dtype)
    out = Path(out_dir)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    arch.image_processor().save_pretrained(out)
    return out


def published_sizes(ranks: tuple[int, ...] = (8, 16)) -> list[dict]:
    """Per published architecture: total parameters, and LoRA parameters where fedumm puts them
    by default (the language model's q, k, v, o) at each rank. Built on the meta device."""
    rows = []
    for arch in PUBLISHED.values():
        with torch.device("meta"):
            model = arch.instantiate(Tokens(special=list(arch.special)))
        total = sum(p.numel() for p in model.parameters())
        targets = lora_targets(model, DEFAULT_TARGETS, FAMILIES[arch.family].language_model)
        per_rank = sum(m.in_features + m.out_features for m in targets.values())  # A, B
        for r in ranks:
            rows.append(
                {"model": arch.label, "parameters": total, "r": r, "lora_parameters": r * per_rank}
            )
    return rows
