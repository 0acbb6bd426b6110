"""The built-in unified multimodal model (UMM): one decoder-only transformer over text and images.

Early fusion in the style of Chameleon/Janus: images become discrete tokens from a VQ codebook and
share one vocabulary with byte-level BPE text tokens, so the same next-token objective answers a
question about an image (understanding) and writes the tokens of an image (generation).

It is a `LlamaForCausalLM` whose config also records the image tokenizer and whose state dict
carries the VQ codebook as a buffer, so `save_pretrained` / `from_pretrained` round-trip the whole
unified model, and peft, `generate` and every other transformers tool work on it unchanged.
"""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM


class UMMConfig(LlamaConfig):
    model_type = "fedumm_umm"

    def __init__(
        self,
        text_vocab_size: int = 512,
        codebook_size: int = 256,
        patch_size: int = 8,
        image_grid: int = 4,
        **kwargs,
    ):
        self.text_vocab_size = text_vocab_size
        self.codebook_size = codebook_size
        self.patch_size = patch_size
        self.image_grid = image_grid
        kwargs.setdefault("vocab_size", text_vocab_size + codebook_size)
        super().__init__(**kwargs)


class UMMForCausalLM(LlamaForCausalLM):
    """Llama over the joint vocabulary [text tokens | image codes], with the codebook on board."""

    config_class = UMMConfig

    def __init__(self, config: UMMConfig):
        super().__init__(config)
        patch_dim = config.patch_size * config.patch_size * 3
        self.register_buffer("codebook", torch.zeros(config.codebook_size, patch_dim))


AutoConfig.register(UMMConfig.model_type, UMMConfig)
AutoModelForCausalLM.register(UMMConfig, UMMForCausalLM)
