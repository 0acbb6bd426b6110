"""Adapter vs full-model size of published backbones, from their configs' parameter shapes.

The models are built from `transformers` config objects on the meta device (no weights, no
download), so the counts are those of the real architectures: Qwen2.5-VL-3B and -7B are the
autoregressive backbones of BLIP3o, FedUMM's unified model; Qwen2-VL-2B is a smaller
image-text-to-text model. Config values are those of the models' published config.json files;
the total parameter counts (2.21 B, 3.75 B, 8.29 B) match the published ones.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def _qwen2_vl_2b() -> nn.Module:
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    text = dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                num_attention_heads=12, num_key_value_heads=2, vocab_size=151936,
                tie_word_embeddings=True)  # fmt: skip
    vision = dict(depth=32, embed_dim=1280, mlp_ratio=4, num_heads=16, hidden_size=1536)
    config = Qwen2VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True)
    return Qwen2VLForConditionalGeneration(config)


def _qwen2_5_vl(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int,
                vocab: int, tied: bool) -> Callable[[], nn.Module]:  # fmt: skip
    def build() -> nn.Module:
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

        text = dict(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                    num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=vocab,
                    tie_word_embeddings=tied)  # fmt: skip
        vision = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
                      out_hidden_size=hidden)  # fmt: skip
        config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=tied)
        return Qwen2_5_VLForConditionalGeneration(config)

    return build


PUBLISHED: dict[str, Callable[[], nn.Module]] = {
    "Qwen2-VL-2B": _qwen2_vl_2b,
    "Qwen2.5-VL-3B (BLIP3o-4B backbone)": _qwen2_5_vl(2048, 11008, 36, 16, 2, 151936, True),
    "Qwen2.5-VL-7B (BLIP3o-8B backbone)": _qwen2_5_vl(3584, 18944, 28, 28, 4, 152064, False),
}

LANGUAGE_ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")


def lora_parameters(model: nn.Module, r: int, targets: tuple[str, ...], inside: str) -> int:
    """Parameters of rank-r LoRA on every Linear named `*.<target>` under `inside`:
    A is r x in, B is out x r."""
    return sum(
        r * (module.in_features + module.out_features)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
        and name.rsplit(".", 1)[-1] in targets
        and f".{inside}." in f".{name}."
    )


def published_sizes(ranks: tuple[int, ...] = (8, 16)) -> list[dict]:
    """Per published model: total parameters, and LoRA parameters on the language model's
    attention projections (q, k, v, o) at each rank."""
    rows = []
    for name, build in PUBLISHED.items():
        with torch.device("meta"):
            model = build()
        total = sum(p.numel() for p in model.parameters())
        for r in ranks:
            lora = lora_parameters(model, r, LANGUAGE_ATTENTION, "language_model")
            rows.append({"model": name, "parameters": total, "r": r, "lora_parameters": lora})
    return rows
