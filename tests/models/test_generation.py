"""Text-to-image with the unified model; federations that learn generation, alone or with VQA."""

import json

import numpy as np
import pytest

from fedumm.models import foundation
from fedumm.models.generate import generate, text_to_image
from tests.tiny import run_tiny

NO_LOCAL = ["baselines.local=false"]


@pytest.fixture(scope="module")
def tiny(tiny_foundation):
    return foundation.load(tiny_foundation)


def test_text_to_image_is_seeded(tiny):
    model, processor = tiny
    prompts = ["a photo of a red circle", "a photo of two squares"]
    a = text_to_image(model, processor, prompts, seed=3)
    assert a.shape == (2, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, text_to_image(model, processor, prompts, seed=3))
    assert not np.array_equal(
        text_to_image(model, processor, prompts * 4, seed=3),
        text_to_image(model, processor, prompts * 4, seed=4),
    )


def test_classifier_free_guidance_combines_the_two_predictions(tiny):
    model, processor = tiny
    cond = [processor.generation_prompt("a photo of a red circle")] * 2
    uncond = [processor.generation_prompt("")] * 2
    band = processor.image_id_range
    plain = generate(model, cond, 16, band, processor.pad)
    # u + g (c - u) with u == c is c for every g; with g = 0 it is u.
    assert generate(model, cond, 16, band, processor.pad, guidance=(cond, 5.0)) == plain
    assert generate(model, cond, 16, band, processor.pad, guidance=(uncond, 0.0)) == generate(
        model, uncond, 16, band, processor.pad
    )


def test_unified_federation_scores_vqa_and_geneval_side_by_side(tiny_foundation, tmp_path):
    args = [
        "data.tasks=[vqa, generation]",
        "partition.client_tasks=[vqa, generation, both]",
        "partition.generation_key=class",
        *NO_LOCAL,
    ]
    result = run_tiny(tmp_path / "a", tiny_foundation, *args)
    assert result.exit_code == 0, result.output
    res = json.loads((tmp_path / "a" / "results.json").read_text())
    for metrics in [res["final"]["metrics"], *(b["metrics"] for b in res["baselines"].values())]:
        assert 0 <= metrics["vqa_accuracy"] <= 100 and 0 <= metrics["geneval_overall"] <= 100
        assert set(metrics["geneval_per_tag"]) == {
            "single_object",
            "two_object",
            "counting",
            "colors",
            "position",
            "color_attr",
        }
        assert metrics["num_images"] == 2 * (2 + 2 + 2 + 2 + 2 + 2)  # 2 images x 2 prompts/tag
    held = {
        c["client_id"]: {t: s["samples"] for t, s in c["tasks"].items()}
        for c in res["partition"]["clients"]
    }
    assert held["site-1"]["generation"] == 0 < held["site-1"]["vqa"]
    assert held["site-2"]["vqa"] == 0 < held["site-2"]["generation"]
    assert held["site-3"]["vqa"] > 0 and held["site-3"]["generation"] > 0
    assert sum(h["generation"] for h in held.values()) == 48
    assert res["partition"]["keys"] == {"vqa": "answer", "generation": "class"}
    report = (tmp_path / "a" / "report.md").read_text()
    for name in ("zero_shot", "federated", "centralized"):
        assert (tmp_path / "a" / f"generated_{name}.png").stat().st_size > 0
        assert f"(generated_{name}.png)" in report
    assert "GenEval overall (%)" in report and "VQA accuracy (%)" in report

    again = run_tiny(tmp_path / "b", tiny_foundation, *args)
    assert again.exit_code == 0
    res_b = json.loads((tmp_path / "b" / "results.json").read_text())
    assert res_b["final"]["metrics"] == res["final"]["metrics"]  # seeded sampling and scoring


def test_generation_only_federation(tiny_foundation, tmp_path):
    result = run_tiny(
        tmp_path,
        tiny_foundation,
        "data.tasks=[generation]",
        *NO_LOCAL,
        "baselines.centralized=false",
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "results.json").read_text())["final"]["metrics"]
    assert "geneval_overall" in metrics and "vqa_accuracy" not in metrics
    assert "GenEval overall" in result.output


def test_bad_geneval_metadata_is_refused_naming_the_line(tiny_foundation, tmp_path):
    path = tmp_path / "evaluation_metadata.jsonl"
    path.write_text(
        '{"tag": "single_object", "include": [{"class": "circle", "count": 1}], "prompt": "a"}\n'
        '{"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "b"}\n'
    )
    result = run_tiny(
        tmp_path / "run",
        tiny_foundation,
        "data.tasks=[generation]",
        f"data.generation.metadata={path}",
    )
    assert result.exit_code == 1
    assert "evaluation_metadata.jsonl:2: class 'bench' cannot be drawn" in result.output
    assert not (tmp_path / "run" / "results.json").exists()
    missing = run_tiny(
        tmp_path / "run",
        tiny_foundation,
        "data.tasks=[generation]",
        f"data.generation.metadata={tmp_path / 'nope.jsonl'}",
    )
    assert missing.exit_code == 1 and "GenEval metadata file not found" in missing.output


def test_client_tasks_must_match_the_tasks(tiny_foundation, tmp_path):
    result = run_tiny(tmp_path, tiny_foundation, "partition.client_tasks=[vqa, generation]")
    assert result.exit_code == 2
    assert "partition.client_tasks names generation but data.tasks is ['vqa']" in result.output
