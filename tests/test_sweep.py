"""`fedumm sweep`: a grid of tiny runs, its table, and resuming a half-finished sweep."""

import csv
import json
from pathlib import Path

from fedumm.cli import app
from fedumm.models import BUILTIN_TARGETS
from fedumm.models.foundation import checksum
from fedumm.report import plt
from fedumm.results import RoundResult, RunResult, Scores
from fedumm.sweep import Cell, grid_figure, summarize
from tests.tiny import TINY_RUN, runner


def _write_sweep(tmp_path, foundation, grid):
    overrides = "\n".join(f"  {item.split('=')[0]}: {item.split('=')[1]}" for item in TINY_RUN)
    path = tmp_path / "sweep.yaml"
    path.write_text(
        f"base: {Path('configs/quickstart.yaml').resolve()}\n"
        f"overrides:\n{overrides}\n  model.foundation: {foundation}\n"
        "  baselines.local: false\n  baselines.zero_shot: false\n  threads: 1\n"
        f"grid:\n{grid}"
    )
    return path


def _rows(out):
    return list(csv.DictReader((out / "sweep.csv").read_text().splitlines()))


def _result(final: dict, rounds: list[tuple[int, int, float]], wall: float) -> RunResult:
    """What `summarize` reads of a run: its final metrics, each round's bytes up and down and
    seconds, its wall time (the sections it does not read left out)."""
    return RunResult.model_construct(
        final=Scores(metrics=final),
        rounds=[
            RoundResult.model_construct(bytes_up=up, bytes_down=down, seconds=s)
            for up, down, s in rounds
        ],
        wall_seconds=wall,
    )


def _sweep(path, out, *extra):
    return runner.invoke(app, ["sweep", str(path), "-o", str(out), "--quiet", *extra])


def test_grid_table_and_resume(tiny_foundation, tmp_path):
    path = _write_sweep(
        tmp_path,
        tiny_foundation,
        "  federation.strategy.name: [fedavg, ffa_lora]\n  partition.alpha: [0.1, 1.0]\n",
    )
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
        res = RunResult.load(out / "cells" / r["cell"] / "results.json")
        assert float(r["vqa_accuracy"]) == res.final.metrics["vqa_accuracy"]
        assert res.run_config().partition.alpha == float(r["partition.alpha"])
    ffa = [
        float(r["bytes_up_per_round"]) for r in rows if r["federation.strategy.name"] == "ffa_lora"
    ]
    avg = [
        float(r["bytes_up_per_round"]) for r in rows if r["federation.strategy.name"] == "fedavg"
    ]
    assert max(ffa) < min(avg)
    table = (out / "sweep.md").read_text()
    assert "| name | alpha=0.1 | alpha=1.0 |" in table and (out / "sweep.png").stat().st_size > 0

    # Resume: delete one cell; only that one runs again, the others are reused unchanged, also
    # one written before a config key existed (it takes the key's default) and spelling out the
    # model's default LoRA targets where the config now leaves them null.
    first = out / "cells" / rows[0]["cell"] / "results.json"
    older = json.loads(first.read_text())
    del older["config"]["federation"]["max_grad_norm"]
    assert older["config"]["lora"]["target_modules"] is None
    older["config"]["lora"]["target_modules"] = BUILTIN_TARGETS
    first.write_text(json.dumps(older))
    stamp = first.stat().st_mtime_ns
    (out / "cells" / rows[3]["cell"] / "results.json").unlink()
    result = _sweep(path, out, "--set", "baselines.centralized=false", "--jobs", "2")
    assert result.exit_code == 0, result.output
    assert "[1/1] " + rows[3]["cell"] + ": finished" in result.output  # in a worker process
    assert result.output.count("finished earlier, reused") == 4
    assert (out / "cells" / rows[0]["cell"] / "results.json").stat().st_mtime_ns == stamp
    assert _rows(out)[3]["vqa_accuracy"] == rows[3]["vqa_accuracy"]

    # A cell made with another foundation (same config, other weights) is not this sweep's:
    # results.json records the foundation's checksum, and a cell is matched on both.
    second = out / "cells" / rows[1]["cell"] / "results.json"
    made = json.loads(second.read_text())
    assert made["model"]["sha256"] == checksum(tiny_foundation)
    second.write_text(json.dumps({**made, "model": {**made["model"], "sha256": "0" * 64}}))
    result = _sweep(path, out, "--set", "baselines.centralized=false")
    assert result.exit_code == 2, result.output
    assert f"another config or foundation (cells/{rows[1]['cell']}):" in result.output
    second.write_text(json.dumps(made))

    # A different config for the same folder is refused before anything runs, rather than
    # mixed in; --overwrite runs the stale cells again.
    result = _sweep(path, out, "--set", "seed=5")
    assert result.exit_code == 2
    assert "holds runs with another config or foundation (cells/" in result.output
    assert "and 1 more): choose another -o, or pass --overwrite" in result.output
    assert (out / "cells" / rows[0]["cell"] / "results.json").stat().st_mtime_ns == stamp
    result = _sweep(path, out, "--set", "seed=5", "--overwrite")
    assert result.exit_code == 0, result.output
    assert "reused" not in result.output
    assert RunResult.load(out / "cells" / rows[0]["cell"] / "results.json").run_config().seed == 5


def test_cells_as_a_percentage_of_the_reference_centralized_run(tiny_foundation, tmp_path):
    path = _write_sweep(tmp_path, tiny_foundation, "  partition.alpha: [0.1, 1.0]\n")
    text = path.read_text().replace("grid:", "reference: {baselines.centralized: true}\ngrid:")
    text = text.replace("baselines.local: false", "baselines.centralized: false")
    path.write_text(text)
    out = tmp_path / "out"
    result = _sweep(path, out)
    assert result.exit_code == 0, result.output
    reference = RunResult.load(out / "reference" / "results.json")
    assert reference.baselines.centralized is not None
    assert all("vqa_accuracy_pct_of_centralized" in r for r in _rows(out))
    assert (
        "| alpha | VQA accuracy (%) | VQA accuracy (% of centralized) |"
        in (out / "sweep.md").read_text()
    )

    path.write_text(text.replace("baselines.centralized: true", "seed: 1"))
    result = _sweep(path, tmp_path / "other")
    assert result.exit_code == 2 and "reference: must run the centralized baseline" in result.output


def test_a_row_gives_each_headline_as_a_percentage_of_centralized():
    cell = Cell("alpha=0.1", {"partition.alpha": 0.1}, None)
    results = _result({"vqa_accuracy": 30.0, "geneval_overall": 45.0}, [(10, 20, 1.5)], 2.0)
    row = summarize(cell, results, {"vqa_accuracy": 60.0, "geneval_overall": 0.0})
    assert row["vqa_accuracy_pct_of_centralized"] == 50.0
    assert row["geneval_overall_pct_of_centralized"] is None  # undefined, not infinite
    assert row["centralized_vqa_accuracy"] == 60.0
    assert summarize(cell, results).keys() == {
        "partition.alpha",
        "vqa_accuracy",
        "geneval_overall",
        "bytes_up_per_round",
        "bytes_down_per_round",
        "federation_seconds",
        "wall_seconds",
        "cell",
    }


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
    fedavg, krum = load_sweep(path).cells
    assert fedavg.name == "strategy=name=fedavg"
    assert krum.name == "strategy=name=krum_num_byzantine=2_multi_krum=8"
    assert krum.config.federation.strategy.hyperparameters() == {
        "num_byzantine": 2,
        "multi_krum": 8,
    }


def test_every_shipped_sweep_validates():
    from fedumm.sweep import load_sweep

    shipped = sorted(Path("configs/sweeps").glob("*.yaml"))
    assert {p.stem for p in shipped} >= {"algorithms", "robustness", "privacy"}
    for path in shipped:
        cells = load_sweep(path).cells
        assert len({c.name for c in cells}) == len(cells) > 0, path


def test_a_named_axis_sets_several_keys_and_shows_its_label(tmp_path):
    from fedumm.config import ConfigError
    from fedumm.sweep import load_sweep

    path = tmp_path / "sweep.yaml"
    base = f"base: {Path('configs/quickstart.yaml').resolve()}\n"
    path.write_text(
        base + "grid:\n  method:\n"
        "    - {label: FedAvg, federation.strategy.name: fedavg, baselines.local: true}\n"
        "    - {label: FedProx, federation.strategy.name: fedprox, baselines.local: false}\n"
        "  partition.alpha: [0.5]\n"
    )
    fedavg, fedprox = load_sweep(path).cells
    assert fedavg.name == "method=FedAvg-alpha=0.5"
    assert fedavg.config.baselines.local and not fedprox.config.baselines.local
    assert fedprox.config.federation.strategy.name == "fedprox"
    row = summarize(fedprox, _result({}, [(1, 1, 1.0)], 1.0))
    assert row["method"] == "FedProx"
    path.write_text(base + "grid:\n  method: [fedavg]\n")
    try:
        load_sweep(path)
    except ConfigError as e:
        assert "grid.method is not a config key" in str(e) and "'fedavg'" in str(e)
    else:
        raise AssertionError("a named axis with a plain value was accepted")


def test_local_steps_under_local_epochs_do_not_make_another_run():
    from fedumm.config import load_config
    from fedumm.sweep import _same_config

    cell = Cell("c", {}, load_config("configs/quickstart.yaml", ["federation.local_epochs=0.5"]))
    stored = cell.config.model_dump()
    stored["federation"]["local_steps"] = 99  # unused: the epochs set the steps
    assert _same_config(RunResult.model_construct(config=stored), cell)
    stored["federation"]["local_epochs"] = None  # now the 99 steps are what ran
    assert not _same_config(RunResult.model_construct(config=stored), cell)


def test_a_sweep_runs_every_cell_on_the_engine_its_config_names(tiny_foundation, tmp_path):
    path = _write_sweep(tmp_path, tiny_foundation, "  partition.alpha: [1.0]\n")
    out = tmp_path / "out"
    result = _sweep(
        path,
        out,
        "--set",
        "engine=flare",
        "--set",
        "baselines.centralized=false",
        "--set",
        "federation.num_clients=2",
    )
    assert result.exit_code == 0, result.output
    cell = RunResult.load(out / "cells" / "alpha=1.0" / "results.json")
    assert cell.flare.env == "sim" and cell.run_config().engine == "flare"
    assert (out / "cells" / "alpha=1.0" / "flare" / "fedumm" / "server" / "log.txt").is_file()


def test_a_plot_with_long_series_names_keeps_its_panels_wide():
    """clients-alpha's plot: a legend of long partition names, inside the panel, made
    tight_layout shrink the panel to a sliver; the legend now sits beside it."""
    keys = ["federation.num_clients", "partition"]
    rows = [
        {
            keys[0]: k,
            keys[1]: f"scheme=dirichlet,alpha={a}",
            "vqa_accuracy": 60.0 - k,
            "vqa_accuracy_pct_of_centralized": 90.0,
            "centralized_vqa_accuracy": 66.0,
        }
        for k in (2, 4, 8, 16)
        for a in ("1.0", "0.5", "0.1")
    ]
    fig = grid_figure(rows, keys, ["vqa_accuracy"])
    assert fig.axes[0].get_position().width > 0.4  # of the figure's width; it was 0.009
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == [
        "centralized",
        "scheme=dirichlet,alpha=1.0",
        "scheme=dirichlet,alpha=0.5",
        "scheme=dirichlet,alpha=0.1",
    ]
    plt.close(fig)
