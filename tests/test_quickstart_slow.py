"""The quick start's promises on the real config (minutes, so slow: `make test-all`)."""

import json

import pytest
from typer.testing import CliRunner

from fedumm.cli import app


@pytest.mark.slow
def test_quickstart_tells_the_true_story(tmp_path):
    result = CliRunner().invoke(app, ["run", "configs/quickstart.yaml", "-o", str(tmp_path),
                                      "--quiet"])  # fmt: skip
    assert result.exit_code == 0, result.output
    res = json.loads((tmp_path / "results.json").read_text())
    acc = {k: v["metrics"]["vqa_accuracy"] for k, v in res["baselines"].items()}
    fed = res["final"]["metrics"]["vqa_accuracy"]
    assert acc["zero_shot"] + 5 <= acc["local"] and acc["local"] + 5 <= fed
    assert fed <= acc["centralized"]
    assert res["communication"]["ratio"] >= 20
    assert sum(r["seconds"] for r in res["rounds"]) <= 300
