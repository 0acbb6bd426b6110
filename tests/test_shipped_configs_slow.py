"""The shipped configs' promises, run as a user runs them (minutes each, so slow: `make
test-all`): the quick start (issue #2) and understanding + generation (issue #3)."""

import json

import pytest
from typer.testing import CliRunner

from fedumm.cli import app


def _run(config: str, out) -> dict:
    result = CliRunner().invoke(app, ["run", config, "-o", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    return json.loads((out / "results.json").read_text())


@pytest.mark.slow
def test_quickstart_tells_the_true_story(tmp_path):
    res = _run("configs/quickstart.yaml", tmp_path)
    acc = {k: v["metrics"]["vqa_accuracy"] for k, v in res["baselines"].items()}
    fed = res["final"]["metrics"]["vqa_accuracy"]
    # The foundation answers two families: useful zero-shot, well below fine-tuned.
    assert 20 <= acc["zero_shot"] <= acc["centralized"] - 20  # 26.7 and 81.3 measured
    assert acc["zero_shot"] + 5 <= acc["local"] and acc["local"] + 5 <= fed
    assert 0.9 * acc["centralized"] <= fed <= acc["centralized"]  # 93.2% measured (target 90%)
    assert res["communication"]["ratio"] >= 20
    assert sum(r["seconds"] for r in res["rounds"]) <= 300


@pytest.mark.slow
def test_unified_federation_understands_and_generates_near_centralized(tmp_path):
    res = _run("configs/unified.yaml", tmp_path)
    gen = {k: v["metrics"]["geneval_overall"] for k, v in res["baselines"].items()}
    fed = res["final"]["metrics"]["geneval_overall"]
    # The foundation already draws (70.5% zero-shot); clients alone on their few skewed prompts
    # lose some of it (67.1% measured), the federation adds to it.
    assert max(gen["zero_shot"], gen["local"]) < fed
    assert fed >= 0.9 * gen["centralized"]  # 98.8% measured (target 90%)
    vqa = {k: v["metrics"]["vqa_accuracy"] for k, v in res["baselines"].items()}
    fed_vqa = res["final"]["metrics"]["vqa_accuracy"]
    assert vqa["zero_shot"] < vqa["local"] < fed_vqa
    assert fed_vqa >= 0.9 * vqa["centralized"]  # 99.3% measured
