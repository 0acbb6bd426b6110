"""`fedumm sweep`: a grid of tiny runs, its table, and resuming a half-finished sweep."""

import csv
import json
from pathlib import Path

from fedumm.cli import app
from tests.tiny import TINY_RUN, runner


def _write_sweep(tmp_path, foundation, grid):
    overrides = "\n".join(f"  {item.split('=')[0]}: {item.split('=')[1]}" for item in TINY_RUN)
    path = tmp_path / "sweep.yaml"
    path.write_text(
        f"base: {Path('configs/quickstart.yaml').resolve()}\n"
        f"overrides:\n{overrides}\n  model.foundation: {foundation}\n"
        "  baselines.local: false\n  baselines.zero_shot: false\n"
        f"grid:\n{grid}"
    )
    return path


def _rows(out):
    return list(csv.DictReader((out / "sweep.csv").read_text().splitlines()))


def _sweep(path, out, *extra):
    return runner.invoke(app, ["sweep", str(path), "-o", str(out), "--quiet", *extra])


def test_grid_table_and_resume(tiny_foundation, tmp_path):
    path = _write_sweep(tmp_path, tiny_foundation,
                        "  federation.strategy.name: [fedavg, ffa_lora]\n"
                        "  partition.alpha: [0.1, 1.0]\n")  # fmt: skip
    out = tmp_path / "out"
    result = _sweep(path, out, "--set", "baselines.centralized=false")
    assert result.exit_code == 0, result.output
    rows = _rows(out)
    assert [(r["federation.strategy.name"], r["partition.alpha"]) for r in rows] == [
        ("fedavg", "0.1"),
        ("fedavg", "1.0"),
        ("ffa_lora", "0.1"),
        ("ffa_lora", "1.0"),
    ]
    for r in rows:
        res = json.loads((out / "cells" / r["cell"] / "results.json").read_text())
        assert float(r["vqa_accuracy"]) == res["final"]["metrics"]["vqa_accuracy"]
        assert res["config"]["partition"]["alpha"] == float(r["partition.alpha"])
    ffa = [
        float(r["bytes_up_per_round"]) for r in rows if r["federation.strategy.name"] == "ffa_lora"
    ]
    avg = [
        float(r["bytes_up_per_round"]) for r in rows if r["federation.strategy.name"] == "fedavg"
    ]
    assert max(ffa) < min(avg)
    table = (out / "sweep.md").read_text()
    assert "| name | alpha=0.1 | alpha=1.0 |" in table and (out / "sweep.png").stat().st_size > 0

    # Resume: delete one cell; only that one runs again, the others are reused unchanged.
    stamp = (out / "cells" / rows[0]["cell"] / "results.json").stat().st_mtime_ns
    (out / "cells" / rows[3]["cell"] / "results.json").unlink()
    result = _sweep(path, out, "--set", "baselines.centralized=false")
    assert result.exit_code == 0, result.output
    assert result.output.count("finished earlier, reused") == 3
    assert (out / "cells" / rows[0]["cell"] / "results.json").stat().st_mtime_ns == stamp
    assert _rows(out)[3]["vqa_accuracy"] == rows[3]["vqa_accuracy"]

    # A different config for the same folder is refused rather than mixed in.
    result = _sweep(path, out, "--set", "seed=5")
    assert result.exit_code == 1 and "holds a run with another config" in result.output


def test_a_bad_grid_value_is_refused_before_any_run(tiny_foundation, tmp_path):
    path = _write_sweep(tmp_path, tiny_foundation, "  federation.strategy.name: [fedavg, fedfoo]\n")
    result = _sweep(path, tmp_path / "out")
    assert result.exit_code == 2
    assert "cell name=fedfoo" in result.output and "unknown strategy 'fedfoo'" in result.output
    assert not (tmp_path / "out").exists()


def test_a_grid_value_may_be_a_whole_section(tmp_path):
    from fedumm.sweep import load_sweep

    path = tmp_path / "sweep.yaml"
    path.write_text(
        f"base: {Path('configs/quickstart.yaml').resolve()}\n"
        "overrides: {federation.num_clients: 10, federation.clients_per_round: 10}\n"
        "grid:\n  federation.strategy:\n    - {name: fedavg}\n"
        "    - {name: krum, num_byzantine: 2, multi_krum: 8}\n"
    )
    fedavg, krum = load_sweep(path)
    assert fedavg.name == "strategy=name=fedavg"
    assert krum.name == "strategy=name=krum_num_byzantine=2_multi_krum=8"
    assert krum.config.federation.strategy.hyperparameters() == {"num_byzantine": 2,
                                                                 "multi_krum": 8}  # fmt: skip


def test_every_shipped_sweep_validates():
    from fedumm.sweep import load_sweep

    shipped = sorted(Path("configs/sweeps").glob("*.yaml"))
    assert {p.stem for p in shipped} >= {"algorithms", "robustness", "privacy"}
    for path in shipped:
        cells = load_sweep(path)
        assert len({c.name for c in cells}) == len(cells) > 0, path
