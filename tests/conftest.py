"""Shared fixtures: a tiny foundation pretrained for a few steps, built once per test session."""

from __future__ import annotations

import pytest
import torch

from fedumm.config import PretrainConfig
from fedumm.pretraining import pretrain
from tests.official_formats import crisismmd, hateful_memes, vqa_root  # noqa: F401 (fixtures)

TINY_PRETRAIN = dict(
    steps=3,
    train_samples=64,
    test_samples=8,
    codebook_images=60,
    hidden_size=32,
    intermediate_size=64,
    num_layers=2,
    num_heads=2,
    text_vocab_size=300,
    batch_size=16,
)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_foundation(tmp_path_factory):
    """Path of a tiny foundation checkpoint written by the real pretraining code."""
    out = tmp_path_factory.mktemp("foundation")
    pretrain(PretrainConfig(**TINY_PRETRAIN), out)
    return out
