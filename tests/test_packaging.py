"""fedumm as a user installs it: a wheel (not an editable install) in a fresh venv, run from a
folder that is not the repository. Every file a command reads must ship inside the package."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.tiny import TINY_RUN

REPO = Path(__file__).resolve().parents[1]
# What the build reads: the project table, the README it names, the package and the configs
# the package links to (src/fedumm/configs -> ../../configs).
SOURCES = ["pyproject.toml", "README.md", "src", "configs"]


def _check(args: list, cwd: Path, env: dict | None = None) -> str:
    proc = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"{args}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv holding fedumm from a wheel; its dependencies come from this venv's
    site-packages through a .pth line (a plain path: this venv's own .pth files, among them
    the editable install's, are not read)."""
    root = tmp_path_factory.mktemp("packaging")
    source = root / "source"  # a copy, so the build's build/ and egg-info stay out of the repo
    source.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
            shutil.copytree(REPO / name, source / name, symlinks=True, ignore=ignore)
        else:
            shutil.copy2(REPO / name, source / name)
    wheels = root / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    _check([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", wheels, source], root)
    venv = root / "venv"
    _check([sys.executable, "-m", "venv", "--without-pip", venv], root)
    python = venv / "bin" / "python"
    _check(
        [*pip, "--python", python, "install", "--no-deps", "--no-index", *wheels.glob("*.whl")],
        root,
    )
    site = _check([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], root)
    (Path(site.strip()) / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return venv


def _env() -> dict:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def test_the_wheel_is_what_runs(installed, tmp_path):
    where = _check(
        [installed / "bin" / "python", "-c", "import fedumm; print(fedumm.__file__)"],
        tmp_path,
        _env(),
    )
    assert Path(where.strip()).is_relative_to(installed), where


def test_bench_finds_every_shipped_sweep(installed, tmp_path):
    help_text = _check(
        [installed / "bin" / "fedumm", "bench", "communication", "--help"], tmp_path, _env()
    )
    assert "benchmark" in help_text
    # Every sweep, with the run config it starts from, loads and validates from the wheel.
    shipped = sorted(p.stem for p in (REPO / "configs" / "sweeps").glob("*.yaml"))
    code = (
        "from fedumm.paper_sweeps import available, load_bench\n"
        "names = available()\n"
        "for name in names: load_bench(name)\n"
        "print(' '.join(names))"
    )
    names = _check([installed / "bin" / "python", "-c", code], tmp_path, _env())
    assert names.split() == shipped


def test_one_round_run_from_another_folder(installed, tmp_path):
    sets = [
        *TINY_RUN,
        "federation.rounds=1",
        "baselines.zero_shot=false",
        "baselines.local=false",
        "baselines.centralized=false",
    ]
    args = [installed / "bin" / "fedumm", "run", "-o", "out", "--quiet"]
    _check([*args, *(x for s in sets for x in ("--set", s))], tmp_path, _env())
    assert (tmp_path / "out" / "results.json").is_file()
