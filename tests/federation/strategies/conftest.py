"""A tiny LoRA model with a little data, for the client side of the algorithms."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from fedumm.config import FederationConfig
from fedumm.data import shapesworld
from fedumm.federation.client import ClientData
from fedumm.federation.update import ClientUpdate
from fedumm.models import foundation
from fedumm.models.lora import add_lora, initial_adapters
from fedumm.models.processor import encode_vqa


def update(cid: str, params: dict, n: int, steps: int = 1) -> ClientUpdate:
    """A client update from plain lists: {'w': [1.0, 2.0]} -> float32 tensors."""
    tensors = {k: torch.tensor(v, dtype=torch.float32) for k, v in params.items()}
    return ClientUpdate(cid, tensors, n, steps)


@dataclass
class TinySetup:
    model: object
    collate: object  # the processor's batcher
    initial: dict
    client: ClientData

    def fed(self, **overrides) -> FederationConfig:
        return FederationConfig(batch_size=4, **overrides)


@pytest.fixture(scope="module")
def tiny(tiny_foundation):
    base, processor = foundation.load(tiny_foundation)
    model = add_lora(base, 2, 4.0, 0.0, ["q_proj", "v_proj", "lm_head"], seed=0, extra_ranks=(3,))
    samples = shapesworld.vqa_dataset(12, "train", 0)
    data = encode_vqa(
        processor,
        np.stack([s.image for s in samples]),
        [s.question for s in samples],
        [s.answer for s in samples],
    )
    return TinySetup(
        model, processor.collate, initial_adapters(model)[2], ClientData("site-1", data)
    )
