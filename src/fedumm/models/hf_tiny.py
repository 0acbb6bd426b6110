"""Tiny random Hugging Face models of each supported family, built from config objects and saved
with a tokenizer and image processor made offline: the real loading path (`model.name_or_path`)
without a download. For tests and for trying the Hugging Face path on a laptop; they know
nothing until trained.

Each is a 2-layer, 64-wide language model with a 2-layer vision tower (Chameleon: a small VQ-VAE;
Janus: both) reading 32x32 images (ShapesWorld's size), and fedumm's byte-level BPE tokenizer
plus the family's special tokens.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers as tf

from fedumm.data import shapesworld as sw
from fedumm.models.text_tokenizer import train_text_tokenizer

SIDE, PATCH = 32, 8
TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=4)  # fmt: skip
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
              image_size=SIDE, patch_size=PATCH)  # fmt: skip
CHAMELEON_CODES = 32


def _tokenizer(special: list[str]):
    tok = train_text_tokenizer(sw.text_corpus(0), 512)
    tok.add_special_tokens({"additional_special_tokens": special})
    return tok


def _llava(tok):
    text = tf.LlamaConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, **TEXT)
    config = tf.LlavaConfig(vision_config=tf.CLIPVisionConfig(**VISION), text_config=text,
                            image_token_id=tok.convert_tokens_to_ids("<image>"))  # fmt: skip
    processor = tf.CLIPImageProcessorPil(size={"shortest_edge": SIDE},
                                         crop_size={"height": SIDE, "width": SIDE})  # fmt: skip
    return tf.LlavaForConditionalGeneration(config), processor


def _qwen2_vl(tok, version: str = "2"):
    """Qwen2-VL, or Qwen2.5-VL (`version` "2.5": windowed attention in the vision tower)."""
    ids = tok.convert_tokens_to_ids
    text = dict(TEXT, vocab_size=len(tok), num_key_value_heads=2, pad_token_id=tok.pad_token_id,
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3],
                                 "rope_theta": 10000.0})  # fmt: skip
    vision = dict(depth=2, num_heads=2, patch_size=PATCH, spatial_merge_size=2,
                  temporal_patch_size=2)  # fmt: skip
    tokens = dict(image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
                  vision_start_token_id=ids("<|vision_start|>"),
                  vision_end_token_id=ids("<|vision_end|>"))  # fmt: skip
    if version == "2.5":
        vision.update(hidden_size=32, intermediate_size=64, out_hidden_size=64,
                      fullatt_block_indexes=[1], window_size=16)  # fmt: skip
        config = tf.Qwen2_5_VLConfig(text_config=text, vision_config=vision, **tokens)
        model = tf.Qwen2_5_VLForConditionalGeneration(config)
    else:
        vision.update(embed_dim=32, hidden_size=64, mlp_ratio=2)
        config = tf.Qwen2VLConfig(text_config=text, vision_config=vision, **tokens)
        model = tf.Qwen2VLForConditionalGeneration(config)
    pixels = SIDE * SIDE
    processor = tf.Qwen2VLImageProcessorPil(patch_size=PATCH, merge_size=2, temporal_patch_size=2,
                                            min_pixels=pixels, max_pixels=pixels)  # fmt: skip
    return model, processor


def _idefics3(tok, smol: bool = False):
    text = dict(TEXT, model_type="llama", vocab_size=len(tok), pad_token_id=tok.pad_token_id)
    kwargs = dict(vision_config=VISION, text_config=text, scale_factor=2,
                  image_token_id=tok.convert_tokens_to_ids("<image>"),
                  pad_token_id=tok.pad_token_id)  # fmt: skip
    edge = {"longest_edge": SIDE}
    if smol:
        processor = tf.SmolVLMImageProcessorPil(do_image_splitting=False, size=edge,
                                                max_image_size=edge)  # fmt: skip
        return tf.SmolVLMForConditionalGeneration(tf.SmolVLMConfig(**kwargs)), processor
    processor = tf.Idefics3ImageProcessorPil(do_image_splitting=False, size=edge,
                                             max_image_size=edge)  # fmt: skip
    return tf.Idefics3ForConditionalGeneration(tf.Idefics3Config(**kwargs)), processor


def _paligemma(tok):
    text = dict(TEXT, model_type="gemma", vocab_size=len(tok), num_key_value_heads=1,
                head_dim=16, pad_token_id=tok.pad_token_id)  # fmt: skip
    config = tf.PaliGemmaConfig(vision_config=VISION, text_config=text, projection_dim=64,
                                image_token_id=tok.convert_tokens_to_ids("<image>"))  # fmt: skip
    processor = tf.SiglipImageProcessorPil(size={"height": SIDE, "width": SIDE})
    return tf.PaliGemmaForConditionalGeneration(config), processor


def _chameleon(tok):
    """Image codes are vocabulary entries named IMGIMG<digits as letters>Z, as in Chameleon's."""
    vq = dict(embed_dim=32, num_embeddings=CHAMELEON_CODES, latent_channels=32, resolution=SIDE,
              base_channels=32, channel_multiplier=[1, 1, 1, 1], num_res_blocks=1)  # fmt: skip
    config = tf.ChameleonConfig(
        vocab_size=len(tok), vq_config=vq, vocabulary_map=tok.get_vocab(),
        image_token_id=tok.convert_tokens_to_ids("<image>"), pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **TEXT,
    )  # fmt: skip
    crop = {"height": SIDE, "width": SIDE}
    processor = tf.ChameleonImageProcessorPil(size={"shortest_edge": SIDE}, crop_size=crop)
    return tf.ChameleonForConditionalGeneration(config), processor


def _janus(tok):
    text = dict(TEXT, model_type="llama", vocab_size=len(tok), pad_token_id=tok.pad_token_id)
    vision = dict(VISION, projection_dim=64, mlp_ratio=2, num_image_tokens=(SIDE // PATCH) ** 2)
    vision.pop("intermediate_size")
    vq = dict(embed_dim=8, num_embeddings=CHAMELEON_CODES, latent_channels=32, base_channels=32,
              channel_multiplier=[1, 1, 1, 1], num_res_blocks=1, num_patches=SIDE // PATCH,
              projection_dim=64, image_token_embed_dim=64)  # fmt: skip
    image_token = tok.convert_tokens_to_ids("<image_placeholder>")
    config = tf.JanusConfig(text_config=text, vision_config=vision, vq_config=vq,
                            image_token_id=image_token)  # fmt: skip
    processor = tf.JanusImageProcessorPil(size={"height": SIDE, "width": SIDE})
    return tf.JanusForConditionalGeneration(config), processor


QWEN_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]


def _code_name(i: int) -> str:
    return "IMGIMG" + "".join(chr(ord("A") + int(d)) for d in str(i)) + "Z"


BUILDERS = {
    "llava": (_llava, ["<image>"]),
    "qwen2_vl": (_qwen2_vl, QWEN_TOKENS),
    "qwen2_5_vl": (lambda tok: _qwen2_vl(tok, "2.5"), QWEN_TOKENS),
    "idefics3": (_idefics3, ["<fake_token_around_image>", "<image>", "<global-img>"]),
    "smolvlm": (lambda tok: _idefics3(tok, smol=True),
                ["<fake_token_around_image>", "<image>", "<global-img>"]),
    "paligemma": (_paligemma, ["<image>"]),
    "chameleon": (_chameleon, ["<image>", "<racm3:break>", "<eoss>",
                               *map(_code_name, range(CHAMELEON_CODES))]),
    "janus": (_janus, ["<begin_of_image>", "<end_of_image>", "<image_placeholder>"]),
}  # fmt: skip


def build_tiny(family: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny random model of `family` (model, tokenizer, image processor) to `out_dir`."""
    if family not in BUILDERS:
        raise ValueError(f"no tiny builder for {family!r}; families: {', '.join(BUILDERS)}")
    build, special = BUILDERS[family]
    tokenizer = _tokenizer(special)
    torch.manual_seed(seed)
    model, image_processor = build(tokenizer)
    out = Path(out_dir)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    image_processor.save_pretrained(out)
    return out
