"""Adapter vs full-model size of published backbones, from their configs' parameter shapes.

The models are built from `transformers` config objects on the meta device (no weights, no
download), so the counts are those of the real architectures: Qwen2.5-VL-3B and -7B are the
autoregressive backbones of BLIP3o, FedUMM's unified model; Qwen2-VL-2B, LLaVA-1.5-7B,
PaliGemma-3B and SmolVLM-256M are image-text-to-text models; Chameleon-7B is an early-fusion
unified model (one decoder over text and VQ image tokens, as the built-in model). Config values
are those of the models' published config.json files, and the totals (2.21 B, 3.75 B, 8.29 B,
7,063,427,072, 2,923,466,480, 7.04 B) match the published ones. SmolVLM-256M's widths, depths
and vocabulary were checked against excerpts of its config; its MLP sizes, scale factor and
untied embeddings are as recalled, consistent with its nominal 256M (256,484,928). LoRA is
counted where fedumm puts it: the default targets inside each family's language model.
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


def _llava_1_5_7b() -> nn.Module:
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    vision = dict(model_type="clip_vision_model", hidden_size=1024, intermediate_size=4096,
                  num_hidden_layers=24, num_attention_heads=16, image_size=336, patch_size=14,
                  projection_dim=768)  # fmt: skip
    text = dict(model_type="llama", hidden_size=4096, intermediate_size=11008,
                num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                vocab_size=32064)  # fmt: skip
    config = LlavaConfig(vision_config=vision, text_config=text, vision_feature_layer=-2)
    return LlavaForConditionalGeneration(config)


def _paligemma_3b() -> nn.Module:
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration

    vision = dict(model_type="siglip_vision_model", hidden_size=1152, intermediate_size=4304,
                  num_hidden_layers=27, num_attention_heads=16, image_size=224, patch_size=14,
                  projection_dim=2048, vision_use_head=False)  # fmt: skip
    text = dict(model_type="gemma", hidden_size=2048, intermediate_size=16384,
                num_hidden_layers=18, num_attention_heads=8, num_key_value_heads=1, head_dim=256,
                vocab_size=257216)  # fmt: skip
    config = PaliGemmaConfig(vision_config=vision, text_config=text, projection_dim=2048)
    return PaliGemmaForConditionalGeneration(config)


def _smolvlm_256m() -> nn.Module:
    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration

    text = dict(model_type="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                num_attention_heads=9, num_key_value_heads=3, head_dim=64, vocab_size=49280,
                tie_word_embeddings=False)  # fmt: skip
    vision = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                  num_attention_heads=12, image_size=512, patch_size=16)  # fmt: skip
    config = SmolVLMConfig(text_config=text, vision_config=vision, scale_factor=4,
                           tie_word_embeddings=False)  # fmt: skip
    return SmolVLMForConditionalGeneration(config)


def _chameleon_7b() -> nn.Module:
    from transformers import ChameleonConfig, ChameleonForConditionalGeneration

    config = ChameleonConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                             num_attention_heads=32, num_key_value_heads=32, vocab_size=65536,
                             vocabulary_map={"<image>": 8711})  # fmt: skip
    return ChameleonForConditionalGeneration(config)


# name -> (builder, its family: where its language model is, as fedumm's LoRA sees it)
PUBLISHED: dict[str, tuple[Callable[[], nn.Module], str]] = {
    "Qwen2-VL-2B": (_qwen2_vl_2b, "qwen2_vl"),
    "Qwen2.5-VL-3B (BLIP3o-4B backbone)": (
        _qwen2_5_vl(2048, 11008, 36, 16, 2, 151936, True), "qwen2_5_vl"),
    "Qwen2.5-VL-7B (BLIP3o-8B backbone)": (
        _qwen2_5_vl(3584, 18944, 28, 28, 4, 152064, False), "qwen2_5_vl"),
    "LLaVA-1.5-7B": (_llava_1_5_7b, "llava"),
    "PaliGemma-3B": (_paligemma_3b, "paligemma"),
    "SmolVLM-256M (Idefics3)": (_smolvlm_256m, "smolvlm"),
    "Chameleon-7B (unified, early fusion)": (_chameleon_7b, "chameleon"),
}  # fmt: skip


def published_sizes(ranks: tuple[int, ...] = (8, 16)) -> list[dict]:
    """Per published model: total parameters, and LoRA parameters on the language model's
    attention projections (q, k, v, o) at each rank."""
    from fedumm.models.hf import DEFAULT_TARGETS, FAMILIES
    from fedumm.models.lora import lora_targets

    rows = []
    for name, (build, family) in PUBLISHED.items():
        with torch.device("meta"):
            model = build()
        total = sum(p.numel() for p in model.parameters())
        targets = lora_targets(model, DEFAULT_TARGETS, FAMILIES[family].language_model)
        per_rank = sum(m.in_features + m.out_features for m in targets.values())  # A, B
        for r in ranks:
            rows.append({"model": name, "parameters": total, "r": r,
                         "lora_parameters": r * per_rank})  # fmt: skip
    return rows
