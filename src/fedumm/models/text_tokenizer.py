"""Byte-level BPE text tokenizer, trained offline with `tokenizers`: any UTF-8 text encodes."""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = {
    "pad_token": "<pad>",
    "bos_token": "<bos>",
    "eos_token": "<eos>",
    "sep_token": "<sep>",
    "boi_token": "<boi>",  # begin of image tokens
    "eoi_token": "<eoi>",  # end of image tokens
}


def train_text_tokenizer(corpus: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `corpus`; the 256 byte tokens guarantee full UTF-8 coverage."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    named = {
        k: v
        for k, v in SPECIAL_TOKENS.items()
        if k in ("pad_token", "bos_token", "eos_token", "sep_token")
    }
    extra = [SPECIAL_TOKENS["boi_token"], SPECIAL_TOKENS["eoi_token"]]
    return PreTrainedTokenizerFast(tokenizer_object=tok, extra_special_tokens=extra, **named)
