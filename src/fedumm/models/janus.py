"""Janus draws: the text-to-image half of a unified Hugging Face model, as Janus was trained.

An image is a grid of codes from Janus's own VQ-VAE (`model.model.vqmodel`). Generation is
next-code prediction after the prompt: the codes enter the language model through the
generation embeddings and aligner (`prepare_embeddings_for_image_generation`), and the language
model's hidden states are read by the generation head (`model.model.generation_head`), not by
`lm_head`. The LoRA adapters sit in the shared language model, so one adapter serves both
understanding and generation.

A training sequence for generation is the prompt ending in <begin_of_image>, then one slot per
code; its codes travel beside it (`image_codes`). A batch may mix such rows with understanding
rows: `loss` runs the language model once on both and averages the text tokens' loss (lm_head)
and the codes' loss (generation head) over all target tokens, the same next-token objective as
the built-in unified model's. Dropping a share of prompts (their tokens replaced by padding, as
Janus's sampler does for the unconditional branch) trains classifier-free guidance.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from fedumm.models.processor import IGNORE
from fedumm.runtime import model_device

CODES = "image_codes"  # batch key: (generation rows, codes per image)
ROWS = "generation_rows"  # batch key: which rows of the batch are generation rows


def janus(model: torch.nn.Module) -> torch.nn.Module:
    """The JanusForConditionalGeneration under a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def to_pixels(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) in [-1, 1], what the VQ-VAE reads and writes."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def from_pixels(pixels: torch.Tensor) -> np.ndarray:
    """The VQ-VAE's (N, 3, H, W) output in [-1, 1] -> (N, H, W, 3) uint8."""
    scaled = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return scaled.permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def encode_images(vqmodel: torch.nn.Module, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, codes per image) int64, by the frozen VQ-VAE."""
    device = next(vqmodel.parameters()).device
    out = []
    for i in range(0, len(images), batch_size):
        pixels = to_pixels(images[i : i + batch_size]).to(device)
        codes = vqmodel.encode(pixels).image_tokens.view(len(pixels), -1)
        out.append(codes.cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.int64)


@torch.no_grad()
def decode_codes(model: torch.nn.Module, codes: torch.Tensor) -> np.ndarray:
    """(N, codes per image) -> (N, H, W, 3) uint8 images, by the VQ-VAE's decoder."""
    return from_pixels(janus(model).model.vqmodel.decode(codes.to(model_device(model))))


def code_slots(batch: dict[str, torch.Tensor], count: int) -> torch.Tensor:
    """(generation rows, count) positions of each generation row's code slots: its last `count`
    positions before the padding (rows are right-padded)."""
    rows = batch[ROWS]
    ends = batch["attention_mask"][rows].sum(1)
    return ends[:, None] - count + torch.arange(count, device=ends.device)[None]


def loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The mean next-token loss over the batch's targets: answer tokens through lm_head and
    image codes through the generation head."""
    if CODES not in batch:
        return model(**batch).loss
    batch = dict(batch)
    codes, rows = batch.pop(CODES), batch[ROWS]
    base = janus(model)
    slots = code_slots(batch, codes.shape[1])
    batch.pop(ROWS)
    ids, labels = batch.pop("input_ids"), batch.pop("labels")
    embeds = base.get_input_embeddings()(ids)
    drawn = base.prepare_embeddings_for_image_generation(codes).to(embeds.dtype)
    embeds = embeds.index_put((rows[:, None].expand_as(slots), slots), drawn)
    hidden = base.model(inputs_embeds=embeds, **batch).last_hidden_state
    total, count = hidden.new_zeros(()), 0
    text = labels[:, 1:] != IGNORE
    if text.any():  # understanding rows: the answer tokens, shifted as in the model's own loss
        logits = base.lm_head(hidden[:, :-1][text]).float()
        total = total + F.cross_entropy(logits, labels[:, 1:][text], reduction="sum")
        count += int(text.sum())
    before = hidden[rows[:, None].expand_as(slots), slots - 1]  # each code from what precedes it
    scores = base.model.generation_head(before).float()
    total = total + F.cross_entropy(scores.flatten(0, 1), codes.flatten(), reduction="sum")
    return total / (count + codes.numel())


@torch.no_grad()
def draw(
    model,
    prompts: list[list[int]],
    pad: int,
    bos: int,
    boi: int,
    seed: int,
    temperature: float,
    top_k: int | None,
    guidance_scale: float,
) -> np.ndarray:
    """One image per prompt (token ids ending in <begin_of_image>) through transformers' own
    Janus sampler (classifier-free guidance against the padded prompt), then the VQ-VAE."""
    base = janus(model)
    device = model_device(model)
    length = max(map(len, prompts))
    ids = torch.full((len(prompts), length), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):  # left padding: every prompt ends where sampling starts
        ids[i, length - len(p) :] = torch.tensor(p)
        mask[i, length - len(p) :] = 1
    config = GenerationConfig(**base.generation_config.to_dict())
    config.update(
        pad_token_id=pad,
        bos_token_id=bos,
        do_sample=temperature > 0,
        temperature=temperature if temperature > 0 else None,
        top_k=top_k,
        guidance_scale=guidance_scale,
    )
    config.generation_kwargs = {"boi_token_id": boi}  # where the unconditional prompt keeps
    # transformers' sampler halves its doubled (conditional, unconditional) batch only through
    # its guidance processor, which needs a scale above 1: without guidance, keep the first half
    plain = LogitsProcessorList([_Conditional()] if guidance_scale <= 1 else [])
    was_training = model.training
    model.eval()
    gpus = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=gpus):  # the sampler draws from torch's global generator
        torch.manual_seed(seed)
        codes = base.generate(
            ids.to(device),
            attention_mask=mask.to(device),
            generation_mode="image",
            generation_config=config,
            logits_processor=plain,
        )
    model.train(was_training)
    return decode_codes(model, codes)


class _Conditional(LogitsProcessor):
    """No guidance: the conditional half of the doubled batch's scores."""

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return scores[: scores.shape[0] // 2]


def missing_for_generation(missing_keys: list[str]) -> list[str]:
    """The parts generation needs that a checkpoint's weights did not bring."""
    parts = {
        "VQ-VAE": "model.vqmodel.",
        "generation head": "model.generation_head.",
        "generation embeddings": "model.generation_embeddings.",
        "generation aligner": "model.generation_aligner.",
    }
    return [
        name for name, prefix in parts.items() if any(k.startswith(prefix) for k in missing_keys)
    ]


def fit_vq(
    vqmodel: torch.nn.Module,
    images: np.ndarray,
    patch_codes: np.ndarray,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    on_step=None,
) -> dict:
    """Fit Janus's VQ-VAE to a patch codebook: `patch_codes` ((N, cells) ints) says which code
    each cell of `images` ((N, H, W, 3) uint8) is. Code vectors are fixed random unit vectors;
    the encoder learns to point at its cell's code (so the VQ-VAE's own nearest-code `encode`
    gives it) and the decoder to draw each code's patch (from the unit vectors `decode` reads).
    Two supervised regressions instead of vector quantization's search: a few minutes on a
    CPU. Returns the share of held-out cells coded as the codebook codes them, and the
    reconstructions' mean absolute pixel error."""
    generator = torch.Generator().manual_seed(seed)
    pixels, targets = to_pixels(images), torch.as_tensor(patch_codes, dtype=torch.long)
    cut = max(1, len(pixels) // 20)  # held out
    codebook = vqmodel.quantize.embedding.weight
    dims = vqmodel.quantize.quant_state_dims
    with torch.no_grad():
        codebook.copy_(F.normalize(torch.randn(codebook.shape, generator=generator), dim=-1))
    unit = codebook.detach()
    trained = [
        *vqmodel.encoder.parameters(),
        *vqmodel.quant_conv.parameters(),
        *vqmodel.post_quant_conv.parameters(),
        *vqmodel.decoder.parameters(),
    ]
    optimizer = torch.optim.Adam(trained, lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    vqmodel.train().requires_grad_(True)
    for step in range(steps):
        pick = cut + torch.randint(len(pixels) - cut, (batch_size,), generator=generator)
        x, codes = pixels[pick], targets[pick]
        z = vqmodel.quant_conv(vqmodel.encoder(x)).permute(0, 2, 3, 1).flatten(0, 2)
        pointing = F.cross_entropy(10 * F.normalize(z, dim=-1) @ unit.T, codes.flatten())
        grid = unit[codes].view(len(x), *dims, -1).permute(0, 3, 1, 2)
        drawing = F.mse_loss(vqmodel.decoder(vqmodel.post_quant_conv(grid)), x)
        optimizer.zero_grad(set_to_none=True)
        (pointing + drawing).backward()
        optimizer.step()
        schedule.step()
        if on_step is not None:
            on_step(step, (pointing + drawing).detach())
    vqmodel.eval().requires_grad_(False)
    with torch.no_grad():
        coded = vqmodel.encode(pixels[:cut]).image_tokens.view(cut, -1)
        drawn = vqmodel.decode(coded)
    return {
        "vq_code_agreement": 100.0 * float((coded == targets[:cut]).float().mean()),
        "vq_pixel_error": float(((drawn.clamp(-1, 1) - pixels[:cut]).abs() * 127.5).mean()),
    }
