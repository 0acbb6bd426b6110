"""A lean install: the core runs without FLARE, datasets, Opacus and bitsandbytes (and scipy); a
config that needs one of them is refused before any work, naming the extra that installs it."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from fedumm.config import ConfigError, load_config
from fedumm.evaluation.classification import rankdata
from fedumm.extras import check_installed
from tests.tiny import TINY_RUN

OPTIONAL = ["nvflare", "datasets", "opacus", "bitsandbytes", "scipy"]
BLOCK = f"import sys; sys.modules.update(dict.fromkeys({OPTIONAL!r}))"  # import -> ImportError


def _lean(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", f"{BLOCK}\n{code}"], capture_output=True, text=True, timeout=600
    )


def test_import_and_a_run_need_none_of_the_extras(tiny_foundation, tmp_path):
    sets = [
        f"--set={item}"
        for item in [
            *TINY_RUN,
            f"model.foundation={tiny_foundation}",
            "threads=1",
            "data.tasks=[vqa, classification]",
            "data.classification.train_samples=60",
            "data.classification.test_samples=12",
        ]
    ]
    args = ["run", "configs/quickstart.yaml", "-o", str(tmp_path), "--quiet", *sets]
    done = _lean(f"from fedumm.cli import app; app({args!r})")
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert "classification_auc" in results["final"]["metrics"]  # ranks without scipy


@pytest.mark.parametrize(
    "setting, message",
    [
        (
            "engine=flare",
            "engine: flare needs NVIDIA FLARE, which is not installed: pip install 'fedumm[flare]'",
        ),
        ("federation.strategy.name=dp_fedavg", "federation.strategy.name: dp_fedavg needs Opacus"),
        ("federation.dp_sgd.enabled=true", "pip install 'fedumm[privacy]'"),
        (
            "data.kind=hf_dataset",
            "data.kind: hf_dataset needs Hugging Face datasets, which is not "
            "installed: pip install 'fedumm[datasets]'",
        ),
        (
            "model.quantization=nf4",
            "model.quantization: nf4 needs bitsandbytes (the quantized frozen base), which is "
            "not installed: pip install 'fedumm[quantization]'",
        ),
    ],
)
def test_a_config_that_needs_a_missing_extra_names_it(monkeypatch, setting, message):
    for module in OPTIONAL:
        monkeypatch.setitem(sys.modules, module, None)
    extra = ["data.hf_dataset.path=/data/x"] if setting.startswith("data.kind") else []
    cfg = load_config(None, [setting, *extra])
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_installed(cfg)


def test_flare_export_without_flare_is_refused_from_the_command_line(tmp_path):
    args = ["flare", "export", "configs/quickstart.yaml", "-o", str(tmp_path)]
    done = _lean(f"from fedumm.cli import app; app({args!r})")
    assert done.returncode == 2
    assert "fedumm flare export needs NVIDIA FLARE" in done.stderr
    assert "pip install 'fedumm[flare]'" in done.stderr


def test_ranks_average_ties_as_the_mann_whitney_statistic_needs():
    assert rankdata(np.array([0.3, 0.1, 0.3, 0.9])).tolist() == [2.5, 1.0, 2.5, 4.0]
    assert rankdata(np.array([2.0, 2.0, 2.0])).tolist() == [2.0, 2.0, 2.0]
