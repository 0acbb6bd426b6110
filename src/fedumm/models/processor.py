"""Turns images and text into the UMM's joint token sequences, and generated tokens back.

Formats (labels are -100 except on the target, so the loss is on the answer or the image only):
- understanding: <bos> <boi> image <eoi> question <sep> | answer <eos>
  (a sample without its image has no image segment at all: <bos> question <sep> | answer <eos>)
- generation:    <bos> prompt <sep> <boi> | image <eoi> <eos>
Captioning (pretraining) is understanding with an empty question.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from transformers import PreTrainedTokenizerFast

from fedumm.data.images import StoredImage
from fedumm.models.image_tokenizer import PatchVQ
from fedumm.models.umm import UMMConfig, UMMForCausalLM

IGNORE = -100


@dataclass
class Encoded:
    """A token sequence and its labels (IGNORE where no loss is taken), with the model inputs
    that are not tokens (a Hugging Face model's pixel values; none for the built-in UMM, whose
    images are tokens), each with a leading per-sample dimension."""

    input_ids: list[int]
    labels: list[int]
    inputs: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def prompt(self) -> list[int]:
        """The tokens before the first label (all, if none): what a model is given at
        inference."""
        first = next((i for i, t in enumerate(self.labels) if t != IGNORE), len(self.labels))
        return self.input_ids[:first]

    @property
    def target(self) -> list[int]:
        return [t for t in self.labels if t != IGNORE]

    def prompt_only(self) -> Encoded:
        """The prompt with its model inputs: what is given to the model at inference."""
        prompt = self.prompt
        return Encoded(prompt, [IGNORE] * len(prompt), self.inputs)

    def continued(self, target: list[int]) -> Encoded:
        """This sequence's prompt followed by `target`, labelled: to score a given answer."""
        prompt = self.prompt
        return Encoded([*prompt, *target], [IGNORE] * len(prompt) + target, self.inputs)


class Processor(Protocol):
    """What the tasks need from a model's processor: the built-in UMM's, or a Hugging Face
    model's (models/hf.py). Images go in as (N, H, W, 3) uint8 and come out as whatever the
    model reads; a sample is an `Encoded` whatever the model."""

    family_name: str  # the model's family (a Hugging Face model_type, or the built-in model's)
    draws: bool  # it generates images too
    eos: int
    image_size: int

    def text_ids(self, text: str) -> list[int]: ...
    def encode_images(self, images: np.ndarray) -> list | np.ndarray: ...
    def encode_stored(self, stored: StoredImage, image: np.ndarray): ...
    def understanding(self, image, question: str, answer: str) -> Encoded: ...
    def collate(self, batch: list[Encoded], left: bool = False) -> dict[str, torch.Tensor]: ...
    def answer(self, model, prompts: list[Encoded], max_new_tokens: int) -> list[list[int]]: ...
    def decode_text(self, ids: list[int]) -> str: ...
    def loss(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor: ...

    # models that draw (draws = True) also have: generation, encode_generation_images, draw


class UMMProcessor:
    """Text tokenizer + VQ image tokenizer + the special ids that frame the joint sequences."""

    family_name = UMMConfig.model_type

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

    @property
    def image_size(self) -> int:
        """The side of the square images the model reads (image files are resized to it)."""
        return self.vq.image_size

    def encode_images(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N, tokens_per_image) ids in the joint vocabulary."""
        return self.vq.encode(images) + self.text_vocab_size

    def encode_stored(self, stored: StoredImage, image: np.ndarray) -> np.ndarray:
        """An image read from storage (decoded as `image`): its codes, 16 ints, are kept."""
        return self.encode_images(image[None])[0]

    def understanding(self, image_ids: np.ndarray | None, question: str, answer: str) -> Encoded:
        image = [] if image_ids is None else [self.boi, *image_ids.tolist(), self.eoi]
        prompt = [self.bos, *image, *self.text_ids(question), self.sep]
        target = [*self.text_ids(answer), self.eos]
        return Encoded(prompt + target, [IGNORE] * len(prompt) + target)

    def generation_prompt(self, prompt_text: str) -> list[int]:
        """What the model is given to draw `prompt_text` ('' = unconditional, for guidance)."""
        return [self.bos, *self.text_ids(prompt_text), self.sep, self.boi]

    def generation(
        self, prompt_text: str, image_ids: np.ndarray, unconditional: bool = False
    ) -> Encoded:
        """A text-to-image sample; `unconditional`: with the empty prompt (guidance training)."""
        prompt = self.generation_prompt("" if unconditional else prompt_text)
        target = [*image_ids.tolist(), self.eoi, self.eos]
        return Encoded(prompt + target, [IGNORE] * len(prompt) + target)

    def collate(self, batch: list[Encoded], left: bool = False) -> dict[str, torch.Tensor]:
        return collate(batch, self.pad, left)

    # ---------------------------------------------------------------- drawing

    draws = True  # image tokens share the vocabulary: one next-token loss draws too

    def encode_generation_images(self, images: np.ndarray) -> np.ndarray:
        return self.encode_images(images)

    def loss(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(**batch).loss

    def draw(
        self,
        model,
        prompts: list[str],
        seed: int,
        temperature: float,
        top_k: int | None,
        guidance_scale: float,
        batch_size: int,
    ) -> np.ndarray:
        from fedumm.models.generate import text_to_image

        return text_to_image(
            model, self, prompts, seed, temperature, top_k, guidance_scale, batch_size
        )

    def answer(self, model, prompts: list[Encoded], max_new_tokens: int) -> list[list[int]]:
        """Greedy continuations of understanding prompts, from text tokens only."""
        from fedumm.models.generate import generate

        return generate(
            model,
            [p.input_ids for p in prompts],
            max_new_tokens,
            self.text_id_range,
            self.pad,
            stop_id=self.eos,
        )

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


def encode_vqa(
    processor: Processor, images: np.ndarray, questions: list[str], answers: list[str]
) -> list[Encoded]:
    """Image-question-answer triples as understanding samples, for any model's processor."""
    encoded = processor.encode_images(images)
    return [processor.understanding(i, q, a) for i, q, a in zip(encoded, questions, answers)]


def collate(batch: list[Encoded], pad_id: int, left: bool = False) -> dict[str, torch.Tensor]:
    """Pad a list of sequences into input_ids / attention_mask / labels tensors (right-padded
    for training, left-padded for generation); non-token inputs are concatenated over the
    samples that have them, in order, which is how the models match them to their tokens."""
    length = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), length), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), length), dtype=torch.long)
    for i, e in enumerate(batch):
        n = len(e.input_ids)
        span = slice(length - n, length) if left else slice(0, n)
        ids[i, span] = torch.tensor(e.input_ids)
        labels[i, span] = torch.tensor(e.labels)
        mask[i, span] = 1
    out = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    for key in dict.fromkeys(k for e in batch for k in e.inputs):
        out[key] = torch.cat([e.inputs[key] for e in batch if key in e.inputs])
    return out
