"""Hugging Face image-text-to-text models as foundations: LLaVA, Qwen2-VL / Qwen2.5-VL,
Idefics3 / SmolVLM, PaliGemma, and two unified models, Chameleon and Janus. Janus also draws:
its generation half (VQ-VAE codes, generation head) is trained and sampled by models/janus.py;
Chameleon's transformers port has no image decoder, so it federates understanding only.

fedumm feeds each model with its own tokenizer and image processor and writes the image
placeholder tokens itself, one short rule per family. The families' `ProcessorMixin` classes
would do that too, but several refuse to build without torchvision (for their video half), which
breaks transformers here; the image processors fall back to their PIL versions. Prompts are
plain, not chat templates:  [<bos>] <image segment> question \\n | answer <eos>.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageTextToText,
    AutoTokenizer,
    PretrainedConfig,
)

from fedumm.data.images import StoredImage, resize
from fedumm.models import janus
from fedumm.models.processor import IGNORE, Encoded, collate
from fedumm.runtime import model_device, to_device

log = logging.getLogger("fedumm")
RANDOM_MARK = "fedumm_random_weights"  # config.json key of `fedumm random-model` models


def _llava_segment(p: HFProcessor, image: dict) -> list[int]:
    vision = p.config.vision_config
    n = (vision.image_size // vision.patch_size) ** 2
    n += p.config.vision_feature_select_strategy == "full"  # the CLS feature is kept
    return [p.config.image_token_id] * n


def _qwen2_vl_segment(p: HFProcessor, image: dict) -> list[int]:
    merged = int(image["image_grid_thw"][0].prod()) // p.config.vision_config.spatial_merge_size**2
    c = p.config
    return [c.vision_start_token_id, *[c.image_token_id] * merged, c.vision_end_token_id]


def _idefics3_segment(p: HFProcessor, image: dict) -> list[int]:
    """The global image only (splitting is turned off): <fake> <global-img> <image>*n <fake>."""
    vision = p.config.vision_config
    n = (vision.image_size // vision.patch_size) ** 2 // p.config.scale_factor**2
    fake, glob = p.tokenizer.convert_tokens_to_ids(["<fake_token_around_image>", "<global-img>"])
    return [fake, glob, *[p.config.image_token_id] * n, fake]


def _paligemma_segment(p: HFProcessor, image: dict) -> list[int]:
    return [p.config.image_token_id] * p.config.text_config.num_image_tokens


def _chameleon_segment(p: HFProcessor, image: dict) -> list[int]:
    vq = p.config.vq_config
    side = vq.resolution // 2 ** (len(vq.channel_multiplier) - 1)
    start, end = p.tokenizer.convert_tokens_to_ids(["<racm3:break>", "<eoss>"])
    return [start, *[p.config.image_token_id] * side**2, end]


def _janus_segment(p: HFProcessor, image: dict) -> list[int]:
    start, end = p.tokenizer.convert_tokens_to_ids(["<begin_of_image>", "<end_of_image>"])
    n = p.config.vision_config.num_image_tokens
    return [start, *[p.config.image_token_id] * n, end]


def _qwen_image_tokens(p: HFProcessor, batch: dict) -> dict[str, torch.Tensor]:
    """Qwen2-VL's multimodal RoPE needs to know which positions are image tokens."""
    return {"mm_token_type_ids": (batch["input_ids"] == p.config.image_token_id).long()}


def _paligemma_suffix(p: HFProcessor, batch: dict) -> dict[str, torch.Tensor]:
    """PaliGemma attends bidirectionally over the prefix; the suffix (the answer) is type 1."""
    return {"token_type_ids": (batch["labels"] != IGNORE).long()}


def _square_side(image_processor) -> int:
    """The side of the square image a processor makes (224 if it does not say)."""
    for source in (getattr(image_processor, "crop_size", None), image_processor.size):
        size = dict(source or {})
        for key in ("height", "shortest_edge", "longest_edge"):
            if size.get(key):
                return int(size[key])
    return 224


def _pixels_side(image_processor) -> int:
    """Qwen2-VL's processors bound pixels, not sides: the side of the largest square allowed."""
    return math.isqrt(int(image_processor.size["longest_edge"]))


@dataclass(frozen=True)
class Family:
    """How one family reads an image, and where its language model is."""

    language_model: str  # module path of the language model: LoRA adapters stay inside it
    image_segment: Callable[[HFProcessor, dict], list[int]]  # placeholder ids for one image
    bos_after_image: bool = False  # PaliGemma puts the image before <bos>
    batch_inputs: Callable[[HFProcessor, dict], dict] | None = None  # per-token extra inputs
    image_side: Callable[[object], int] = _square_side
    image_processor: dict = field(default_factory=dict)  # overrides when loading it
    draws: bool = False  # it generates images too (text-to-image, models/janus.py)


FAMILIES: dict[str, Family] = {
    "llava": Family("model.language_model", _llava_segment),
    "qwen2_vl": Family(
        "model.language_model",
        _qwen2_vl_segment,
        batch_inputs=_qwen_image_tokens,
        image_side=_pixels_side,
    ),
    "qwen2_5_vl": Family(
        "model.language_model",
        _qwen2_vl_segment,
        batch_inputs=_qwen_image_tokens,
        image_side=_pixels_side,
    ),
    "idefics3": Family(
        "model.text_model", _idefics3_segment, image_processor={"do_image_splitting": False}
    ),
    "smolvlm": Family(
        "model.text_model", _idefics3_segment, image_processor={"do_image_splitting": False}
    ),
    "paligemma": Family(
        "model.language_model",
        _paligemma_segment,
        bos_after_image=True,
        batch_inputs=_paligemma_suffix,
    ),
    "chameleon": Family("model.layers", _chameleon_segment),
    "janus": Family("model.language_model", _janus_segment, draws=True),
}

# LoRA on the language model's attention projections unless the config names others.
DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def _loaded(e: Encoded) -> Encoded:
    """`e` with an image kept as a reference decoded into its inputs."""
    image = e.inputs.get("images")
    if not isinstance(image, StoredImage):
        return e
    return Encoded(
        e.input_ids, e.labels, {**e.inputs, "images": torch.from_numpy(image.load())[None]}
    )


class HFProcessor:
    """A Hugging Face model's tokenizer and image processor, behind fedumm's `Processor`."""

    def __init__(self, family: str, config: PretrainedConfig, tokenizer, image_processor):
        self.family_name, self.family = family, FAMILIES[family]
        self.config, self.tokenizer, self.image_processor = config, tokenizer, image_processor
        if tokenizer.eos_token_id is None:
            raise ValueError(f"the {family} tokenizer has no eos token: answers could not end")
        self.eos = tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos
        self.bos = tokenizer.bos_token_id
        self.image_size = self.family.image_side(image_processor)
        self._segments: dict[tuple[int, ...], list[int]] = {}  # image shape -> its tokens
        self.vqmodel = None  # drawing families: the model's VQ-VAE, set when the model loads
        self.missing_for_generation: list[str] = []  # parts of it the checkpoint lacked
        if self.family.draws:
            self.boi = tokenizer.convert_tokens_to_ids("<begin_of_image>")

    def text_ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def encode_images(self, images: np.ndarray) -> list[torch.Tensor]:
        """(N, H, W, 3) uint8 -> one (1, H, W, 3) uint8 tensor per image, as it is: the image
        processor runs per batch (`collate`), so memory holds the images' bytes, not their
        float pixel values (at 336 px, 0.34 MB instead of 1.35 MB; a ShapesWorld image 3 KB)."""
        return [torch.from_numpy(np.ascontiguousarray(image))[None] for image in images]

    def encode_stored(self, stored: StoredImage, image: np.ndarray) -> StoredImage:
        """An image read from storage: only the reference is kept, decoded again per batch."""
        return stored

    def pixel_inputs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """(N, H, W, 3) uint8 -> the model's image inputs (pixel values, grids, masks)."""
        return dict(self.image_processor(images=list(images.numpy()), return_tensors="pt"))

    def image_segment(self, image: torch.Tensor | StoredImage) -> list[int]:
        """The placeholder tokens of one image; they depend only on its size."""
        shape = (image.size, image.size, 3) if isinstance(image, StoredImage) else image.shape[-3:]
        shape = tuple(shape)
        if shape not in self._segments:
            blank = torch.zeros((1, *shape), dtype=torch.uint8)
            self._segments[shape] = self.family.image_segment(self, self.pixel_inputs(blank))
        return self._segments[shape]

    def understanding(
        self, image: torch.Tensor | StoredImage | None, question: str, answer: str
    ) -> Encoded:
        segment = [] if image is None else self.image_segment(image)
        bos = [] if self.bos is None else [self.bos]
        head = segment + bos if self.family.bos_after_image else bos + segment
        prompt = [*head, *self.text_ids(f"{question}\n")]
        target = [*self.text_ids(answer), self.eos]
        inputs = {} if image is None else {"images": image}
        return Encoded(prompt + target, [IGNORE] * len(prompt) + target, inputs)

    # ---------------------------------------------------------------- drawing (Janus)

    @property
    def draws(self) -> bool:
        return self.family.draws

    def generation_prompt(self, prompt_text: str) -> list[int]:
        """What the model is given to draw `prompt_text`: <bos> prompt <begin_of_image>."""
        return [self.bos, *self.text_ids(prompt_text), self.boi]

    def generation(
        self, prompt_text: str, codes: np.ndarray, unconditional: bool = False
    ) -> Encoded:
        """A text-to-image training sample: the prompt, one slot per image code, the codes
        beside it. `unconditional`: the prompt padded out as the sampler's guidance branch
        sees it (classifier-free guidance training)."""
        prompt = self.generation_prompt(prompt_text)
        if unconditional:
            prompt = [t if t in (self.bos, self.boi) else self.pad for t in prompt]
        slots = [self.pad] * len(codes)
        codes = torch.as_tensor(np.asarray(codes), dtype=torch.long)[None]
        return Encoded(prompt + slots, [IGNORE] * (len(prompt) + len(slots)), {janus.CODES: codes})

    def encode_generation_images(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N, codes) by the model's VQ-VAE, at the side it reads."""
        if self.vqmodel is None:
            raise ValueError(f"the {self.family_name} model was loaded without its VQ-VAE")
        side = self.vq_image_size
        if images.shape[1] != side:
            images = np.stack([resize(image, side) for image in images])
        return janus.encode_images(self.vqmodel, images)

    @property
    def vq_image_size(self) -> int:
        """The side of the images Janus's VQ-VAE codes (and draws)."""
        vq = self.config.vq_config
        return vq.num_patches * 2 ** (len(vq.channel_multiplier) - 1)

    def loss(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return janus.loss(model, batch) if self.draws else model(**batch).loss

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
        """One image per prompt, (N, H, W, 3) uint8, through the model's own sampler."""
        images = []
        for i in range(0, len(prompts), batch_size):
            chunk = [self.generation_prompt(p) for p in prompts[i : i + batch_size]]
            images.append(
                janus.draw(
                    model,
                    chunk,
                    self.pad,
                    self.bos,
                    self.boi,
                    seed + i,
                    temperature,
                    top_k,
                    guidance_scale,
                )
            )
        return np.concatenate(images)

    # ---------------------------------------------------------------- batches

    def collate(self, batch: list[Encoded], left: bool = False) -> dict[str, torch.Tensor]:
        batch = [_loaded(e) for e in batch]
        out = collate(batch, self.pad, left)
        rows = [i for i, e in enumerate(batch) if janus.CODES in e.inputs]
        if rows:
            out[janus.ROWS] = torch.tensor(rows)
        images = out.pop("images", None)
        if images is not None:
            out.update(self.pixel_inputs(images))
        if self.family.batch_inputs is not None:
            out.update(self.family.batch_inputs(self, out))
        return out

    @torch.no_grad()
    def answer(self, model, prompts: list[Encoded], max_new_tokens: int) -> list[list[int]]:
        """Greedy continuations through the model's own `generate` (it knows its inputs)."""
        batch = to_device(self.collate(prompts, left=True), model_device(model))
        batch.pop("labels")
        was_training = model.training
        model.eval()
        out = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=self.eos,
            pad_token_id=self.pad,
        )
        model.train(was_training)
        return out[:, batch["input_ids"].shape[1] :].tolist()

    def decode_text(self, ids: list[int]) -> str:
        if self.eos in ids:
            ids = ids[: ids.index(self.eos)]
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()


def infer_family(config: PretrainedConfig, where: str) -> str:
    family = config.model_type
    if family not in FAMILIES:
        raise ValueError(
            f"{where}: model type {family!r} is not a supported family; supported: "
            f"{', '.join(FAMILIES)} (set model.family to force one)"
        )
    return family


def _source(name_or_path: str) -> str:
    """A local folder (resolved) or a hub id; anything else is a missing folder."""
    local = Path(name_or_path).expanduser()
    hub_id = name_or_path.count("/") == 1 and not name_or_path.startswith((".", "/", "~"))
    if not local.is_dir() and not hub_id:
        raise FileNotFoundError(f"model.name_or_path: no model folder at {name_or_path}")
    return str(local) if local.is_dir() else name_or_path


def load_processor(name_or_path: str, family: str = "auto") -> HFProcessor:
    """The processor of a local folder or hub id, without loading the model's weights."""
    source = _source(name_or_path)
    try:
        config = AutoConfig.from_pretrained(source)
    except OSError as err:
        raise FileNotFoundError(f"model.name_or_path: cannot load {name_or_path}: {err}") from err
    family = infer_family(config, source) if family == "auto" else family
    tokenizer = AutoTokenizer.from_pretrained(source)
    image_processor = AutoImageProcessor.from_pretrained(source, **FAMILIES[family].image_processor)
    return HFProcessor(family, config, tokenizer, image_processor)


def load(name_or_path: str, family: str = "auto", dtype: torch.dtype = torch.float32):
    """(model, processor) from a local folder or a hub id; the model frozen, in eval mode. A
    family that draws gets its VQ-VAE in the processor (what its images are coded by)."""
    processor = load_processor(name_or_path, family)
    model, info = AutoModelForImageTextToText.from_pretrained(
        _source(name_or_path), dtype=dtype, output_loading_info=True
    )
    if processor.draws:
        processor.vqmodel = janus.janus(model).model.vqmodel
        processor.missing_for_generation = janus.missing_for_generation(info["missing_keys"])
    random = getattr(model.config, RANDOM_MARK, None)
    if random:
        log.warning(
            "%s has random weights (fedumm random-model, %s): it measures memory and "
            "speed; its scores mean nothing",
            name_or_path,
            random,
        )
    model.requires_grad_(False)
    model.eval()
    return model, processor
