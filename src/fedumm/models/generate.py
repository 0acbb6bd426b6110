"""Batched autoregressive decoding with a KV cache, restricted to a band of the joint vocabulary.

Restricting the band is what makes one model two tools: answers are sampled from text tokens only,
images from image codes only. Greedy by default; temperature and top-k sample with a seeded
generator so generation is reproducible.
"""

from __future__ import annotations

import torch


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
) -> list[list[int]]:
    """Continue each prompt by up to `max_new_tokens` ids in [allowed[0], allowed[1])."""
    n, length = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((n, length), pad_id, dtype=torch.long)
    mask = torch.zeros((n, length), dtype=torch.long)
    for i, p in enumerate(prompts):  # left padding keeps every prompt's last token aligned
        ids[i, length - len(p) :] = torch.tensor(p)
        mask[i, length - len(p) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    band = torch.full((model.config.vocab_size,), float("-inf"))
    band[allowed[0] : allowed[1]] = 0.0
    out = torch.empty((n, 0), dtype=torch.long)
    done = torch.zeros(n, dtype=torch.bool)
    past, step_ids = None, ids
    for _ in range(max_new_tokens):
        result = model(
            input_ids=step_ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=past,
            use_cache=True,
        )
        past = result.past_key_values
        logits = result.logits[:, -1, : band.shape[0]].float() + band
        if temperature > 0:
            logits = logits / temperature
            if top_k is not None:
                kth = logits.topk(top_k, dim=-1).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            token = torch.multinomial(logits.softmax(-1), 1, generator=generator)
        else:
            token = logits.argmax(-1, keepdim=True)
        out = torch.cat([out, token], dim=1)
        if stop_id is not None:
            done |= token.squeeze(1) == stop_id
            if done.all():
                break
        step_ids = token
        mask = torch.cat([mask, torch.ones((n, 1), dtype=torch.long)], dim=1)
        positions = positions[:, -1:] + 1
    return out.tolist()
