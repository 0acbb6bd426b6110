"""Turns images and text into the UMM's joint token sequences, and generated tokens back.

Formats (labels are -100 except on the target, so the loss is on the answer or the image only):
- understanding: <bos> <boi> image <eoi> question <sep> | answer <eos>
  (a sample without its image has no image segment at all: <bos> question <sep> | answer <eos>)
- generation:    <bos> prompt <sep> <boi> | image <eoi> <eos>
Captioning (pretraining) is understanding with an empty question.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedTokenizerFast

from fedumm.models.image_tokenizer import PatchVQ
from fedumm.models.umm import UMMForCausalLM

IGNORE = -100


@dataclass
class Encoded:
    """A token sequence and its labels (IGNORE where no loss is taken)."""

    input_ids: list[int]
    labels: list[int]

    @property
    def prompt(self) -> list[int]:
        """The tokens before the first label: what a model is given at inference."""
        first = next(i for i, t in enumerate(self.labels) if t != IGNORE)
        return self.input_ids[:first]

    @property
    def target(self) -> list[int]:
        return [t for t in self.labels if t != IGNORE]


class UMMProcessor:
    """Text tokenizer + VQ image tokenizer + the special ids that frame the joint sequences."""

    def __init__(self, tokenizer: PreTrainedTokenizerFast, vq: PatchVQ):
        self.tokenizer = tokenizer
        self.vq = vq
        self.text_vocab_size = len(tokenizer)
        ids = tokenizer.convert_tokens_to_ids
        self.bos, self.eos, self.sep = ids("<bos>"), ids("<eos>"), ids("<sep>")
        self.boi, self.eoi, self.pad = ids("<boi>"), ids("<eoi>"), ids("<pad>")

    @classmethod
    def for_model(cls, model: UMMForCausalLM, tokenizer: PreTrainedTokenizerFast) -> UMMProcessor:
        cfg = model.config
        if len(tokenizer) != cfg.text_vocab_size:
            raise ValueError(
                f"tokenizer has {len(tokenizer)} tokens but the model expects {cfg.text_vocab_size}"
            )
        vq = PatchVQ(model.codebook.detach().clone(), cfg.patch_size, cfg.image_grid)
        return cls(tokenizer, vq)

    # ---------------------------------------------------------------- text and images to tokens

    def text_ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def image_ids(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N, tokens_per_image) ids in the joint vocabulary."""
        return self.vq.encode(images) + self.text_vocab_size

    def understanding(self, image_ids: np.ndarray | None, question: str, answer: str) -> Encoded:
        image = [] if image_ids is None else [self.boi, *image_ids.tolist(), self.eoi]
        prompt = [self.bos, *image, *self.text_ids(question), self.sep]
        target = [*self.text_ids(answer), self.eos]
        return Encoded(prompt + target, [IGNORE] * len(prompt) + target)

    def generation_prompt(self, prompt_text: str) -> list[int]:
        """What the model is given to draw `prompt_text` ('' = unconditional, for guidance)."""
        return [self.bos, *self.text_ids(prompt_text), self.sep, self.boi]

    def generation(self, prompt_text: str, image_ids: np.ndarray) -> Encoded:
        prompt = self.generation_prompt(prompt_text)
        target = [*image_ids.tolist(), self.eoi, self.eos]
        return Encoded(prompt + target, [IGNORE] * len(prompt) + target)

    def encode_vqa(
        self, images: np.ndarray, questions: list[str], answers: list[str]
    ) -> list[Encoded]:
        img = self.image_ids(images)
        return [self.understanding(i, q, a) for i, q, a in zip(img, questions, answers)]

    # ---------------------------------------------------------------- tokens back

    def decode_text(self, ids: list[int]) -> str:
        ids = [t for t in ids if t < self.text_vocab_size]
        if self.eos in ids:
            ids = ids[: ids.index(self.eos)]
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def decode_images(self, ids: np.ndarray) -> np.ndarray:
        return self.vq.decode(np.asarray(ids) - self.text_vocab_size)

    @property
    def text_id_range(self) -> tuple[int, int]:
        return 0, self.text_vocab_size

    @property
    def image_id_range(self) -> tuple[int, int]:
        return self.text_vocab_size, self.text_vocab_size + self.vq.size


def collate(batch: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of sequences into input_ids / attention_mask / labels tensors."""
    length = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), length), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), length), dtype=torch.long)
    for i, e in enumerate(batch):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
