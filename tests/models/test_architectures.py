"""Architectures built without a download: published parameter counts (on the meta device),
their image processors, and `fedumm random-model`, which saves them with random weights."""

import json
import logging

import pytest
import torch

from fedumm.cli import app
from fedumm.config import ModelConfig
from fedumm.models import load
from fedumm.models.architectures import Tokens, _tokenizer, architecture, published_sizes
from fedumm.models.hf import RANDOM_MARK, HFProcessor
from tests.tiny import runner


def test_totals_match_the_published_models_and_lora_skips_the_vision_tower():
    rows = {(s["model"], s["r"]): s for s in published_sizes(ranks=(8,))}
    llava, paligemma = rows["LLaVA-1.5-7B", 8], rows["PaliGemma-3B", 8]
    assert llava["parameters"] == 7_063_427_072  # as on the model card
    assert paligemma["parameters"] == 2_923_466_480
    # LLaVA's Llama: 32 layers x q, k, v, o (4096 -> 4096) x r (in + out); CLIP's q/k/v excluded
    assert llava["lora_parameters"] == 32 * 4 * 8 * (4096 + 4096)
    # PaliGemma's Gemma-2B: 8 query heads and 1 key/value head of 256
    assert paligemma["lora_parameters"] == 18 * 8 * (2 * (2048 + 2048) + 2 * (2048 + 256))
    smol = rows["SmolVLM-256M (Idefics3)", 8]
    assert smol["parameters"] == 256_484_928  # "256M"; SigLIP's q/k/v excluded below
    assert smol["lora_parameters"] == 30 * 8 * (2 * (576 + 576) + 2 * (576 + 192))
    unified = rows["Chameleon-7B (unified, early fusion)", 8]
    assert unified["lora_parameters"] == llava["lora_parameters"] > 0


def test_janus_pro_totals_are_the_published_ones():
    rows = {s["model"]: s for s in published_sizes(ranks=(8,))}
    assert round(rows["Janus-Pro-1B (unified)"]["parameters"] / 1e9, 2) == 1.87
    assert round(rows["Janus-Pro-7B (unified)"]["parameters"] / 1e9, 2) == 6.99
    # DeepSeek-LLM 1.5B inside Janus-Pro-1B: 24 layers of 2048-wide q, k, v, o
    assert rows["Janus-Pro-1B (unified)"]["lora_parameters"] == 24 * 4 * 8 * (2048 + 2048)


@pytest.mark.parametrize(
    "family, preset, image_tokens",
    [
        ("llava", "llava-1.5-7b", 576),
        ("qwen2_5_vl", "qwen2.5-vl-3b", 578),
        ("janus", "janus-pro-1b", 578),
        ("smolvlm", "smolvlm-256m", 67),
    ],
)
def test_a_published_preset_reads_images_as_its_model_does(family, preset, image_tokens):
    """Placeholder tokens per image, as fedumm writes them with the preset's processor
    (LLaVA: 24x24 patches; Qwen: 48x48 patches merged 2x2, plus start and end; Janus: 576
    plus begin and end; SmolVLM: 32x32 patches shuffled by 4x4, plus 3 around them)."""
    arch = architecture(family, preset)
    tokenizer = _tokenizer(arch.special)
    config = arch.config(Tokens(tokenizer))
    processor = HFProcessor(family, config, tokenizer, arch.image_processor())
    blank = torch.zeros((processor.image_size, processor.image_size, 3), dtype=torch.uint8)
    segment = processor.image_segment(blank)
    assert len(segment) == image_tokens
    assert max(segment) < config.get_text_config().vocab_size


@pytest.mark.parametrize(
    "family, preset, message",
    [
        ("llava", "gpt-5", "unknown preset 'gpt-5'; llava presets: tiny, llava-1.5-7b"),
        (
            "janus",
            "llava-1.5-7b",
            "preset 'llava-1.5-7b' is a llava model, not janus; janus "
            "presets: tiny, janus-pro-1b, janus-pro-7b",
        ),
        ("vicuna", "tiny", "unknown family 'vicuna'"),
    ],
)
def test_unknown_presets_are_refused_with_the_choices(tmp_path, family, preset, message):
    result = runner.invoke(
        app, ["random-model", family, "--preset", preset, "-o", str(tmp_path / "m")]
    )
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "m").exists()


def test_a_random_model_says_it_is_untrained_wherever_it_is_used(tmp_path, caplog):
    out = tmp_path / "janus"
    result = runner.invoke(app, ["random-model", "janus", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "UNTRAINED" in result.output and "random weights" in result.output
    assert json.loads((out / "config.json").read_text())[RANDOM_MARK] == "tiny-janus"
    with caplog.at_level(logging.WARNING, logger="fedumm"):
        load(ModelConfig(name_or_path=str(out)))
    assert f"{out} has random weights (fedumm random-model, tiny-janus)" in caplog.text


@pytest.mark.slow
def test_a_published_size_trains_a_federated_round(tmp_path):
    """SmolVLM-256M at full size (random, bf16 on disk): saved, loaded by path, one round."""
    out = tmp_path / "smolvlm"
    result = runner.invoke(
        app,
        [
            "random-model",
            "smolvlm",
            "--preset",
            "smolvlm-256m",
            "--dtype",
            "bfloat16",
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    run = runner.invoke(
        app,
        [
            "run",
            "configs/quickstart.yaml",
            "-o",
            str(tmp_path / "run"),
            "--quiet",
            "--set",
            f"model.name_or_path={out}",
            "--set",
            "model.dtype=bfloat16",
            *sum(
                (
                    ["--set", o]
                    for o in [
                        "data.train_samples=8",
                        "data.test_samples=2",
                        "partition.min_samples=2",
                        "partition.scheme=iid",
                        "federation.num_clients=2",
                        "federation.clients_per_round=2",
                        "federation.rounds=1",
                        "federation.local_steps=1",
                        "federation.batch_size=2",
                        "eval.batch_size=2",
                        "baselines.local=false",
                        "baselines.centralized=false",
                        "baselines.zero_shot=false",
                    ]
                ),
                [],
            ),
        ],
    )
    assert run.exit_code == 0, run.output
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["model"]["random_weights"] == "smolvlm-256m"
    assert results["communication"]["total_parameters"] > 250_000_000
