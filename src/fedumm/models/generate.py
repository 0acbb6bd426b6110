"""Batched autoregressive decoding with a KV cache, restricted to a band of the joint vocabulary.

Restricting the band is what makes one model two tools: answers are sampled from text tokens only,
images from image codes only. Greedy by default; temperature and top-k sample with a seeded
CPU generator so generation is reproducible, and the same on any device the model runs on.
Classifier-free guidance (Ho & Salimans 2022) decodes each prompt next to an unconditional one
and extrapolates: logits = u + g * (c - u).
"""

from __future__ import annotations

import inspect

import numpy as np
import torch

from fedumm.runtime import model_device


def _cache_argument(model: torch.nn.Module) -> str:
    """The name under which this model takes and returns its KV cache: `cache` since
    transformers 5.2x, `past_key_values` before."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    prompts: list[list[int]],
    max_new_tokens: int,
    allowed: tuple[int, int],
    pad_id: int,
    stop_id: int | None = None,
    temperature: float = 0.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    guidance: tuple[list[list[int]], float] | None = None,
) -> list[list[int]]:
    """Continue each prompt by up to `max_new_tokens` ids in [allowed[0], allowed[1]).

    `guidance` = (unconditional prompts, scale g): one per prompt, decoded alongside."""
    n = len(prompts)
    if guidance is not None:
        prompts = prompts + guidance[0]
    device = model_device(model)
    ids, mask = _left_padded(prompts, pad_id, device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    band = torch.full((model.config.vocab_size,), float("-inf"), device=device)
    band[allowed[0] : allowed[1]] = 0.0
    out = torch.empty((n, 0), dtype=torch.long, device=device)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    past, step_ids, cache = None, ids, _cache_argument(model)
    for _ in range(max_new_tokens):
        result = model(
            input_ids=step_ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **{cache: past},
        )
        past = getattr(result, cache)
        logits = result.logits[:, -1, : band.shape[0]].float()
        if guidance is not None:
            cond, uncond = logits[:n], logits[n:]
            logits = uncond + guidance[1] * (cond - uncond)
        token = _next_token(logits + band, temperature, top_k, generator)
        out = torch.cat([out, token], dim=1)
        if stop_id is not None:
            done |= token.squeeze(1) == stop_id
            if done.all():
                break
        step_ids = token if guidance is None else token.repeat(2, 1)
        mask = torch.cat([mask, torch.ones((len(mask), 1), dtype=torch.long, device=device)], 1)
        positions = positions[:, -1:] + 1
    return out.tolist()


def _left_padded(
    prompts: list[list[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids and attention mask, padded on the left: every prompt's last token aligned."""
    length = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), length), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, length - len(p) :] = torch.tensor(p)
        mask[i, length - len(p) :] = 1
    return ids.to(device), mask.to(device)


def _next_token(
    logits: torch.Tensor, temperature: float, top_k: int | None, generator
) -> torch.Tensor:
    """Greedy, or sampled at `temperature` from the `top_k` most likely ids."""
    if temperature <= 0:
        return logits.argmax(-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(-1).cpu()  # the seeded generator lives on the CPU
    return torch.multinomial(probs, 1, generator=generator).to(logits.device)


def text_to_image(
    model: torch.nn.Module,
    processor,
    prompts: list[str],
    seed: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    guidance_scale: float = 1.0,
    batch_size: int = 256,
) -> np.ndarray:
    """Draw one image per prompt: (N, H, W, 3) uint8. Seeded: same seed, same images.

    guidance_scale 1.0 is plain conditional sampling; above 1 applies classifier-free guidance
    against the empty prompt."""
    generator = torch.Generator().manual_seed(seed)
    tokens = processor.vq.tokens_per_image
    codes = []
    for i in range(0, len(prompts), batch_size):
        chunk = [processor.generation_prompt(p) for p in prompts[i : i + batch_size]]
        uncond = [processor.generation_prompt("")] * len(chunk)
        guidance = (uncond, guidance_scale) if guidance_scale != 1.0 else None
        codes += generate(
            model,
            chunk,
            tokens,
            processor.image_id_range,
            processor.pad,
            temperature=temperature,
            top_k=top_k,
            generator=generator,
            guidance=guidance,
        )
    return processor.decode_images(np.array(codes).reshape(len(prompts), tokens))
