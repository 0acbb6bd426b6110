"""A grid of runs from one sweep file: `fedumm sweep SWEEP.yaml -o OUT`.

Every combination of the grid values is one ordinary run (the `fedumm run` recipe) in its own
folder under OUT/cells. A cell whose results.json exists with the same config is reused, so an
interrupted sweep resumes where it stopped; a folder holding cells of another config is refused
before anything runs (unless told to overwrite them). An optional reference run (OUT/reference)
supplies a centralized baseline that every cell is also given as a percentage of. After each
cell, OUT/sweep.md, sweep.csv and sweep.png are rewritten from all finished cells.
"""

from __future__ import annotations

import csv
import itertools
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from fedumm.config import (
    ConfigError,
    RunConfig,
    Section,
    apply_overrides,
    read_yaml,
    validate,
)
from fedumm.evaluation.metrics import HEADLINES, headlines
from fedumm.results import Metrics, ResultsError, RunResult
from fedumm.validation import check

OF_CENTRAL = "_pct_of_centralized"  # suffix of a headline given as % of the reference's


class SweepConfig(Section):
    base: str = Field(
        "../quickstart.yaml", description="Run config every cell starts from (relative path)."
    )
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="Dotted keys set in every cell."
    )
    grid: dict[str, list[Any]] = Field(
        default_factory=dict,
        description="Dotted key -> values (a value may be a mapping: a whole section), or a "
        "named axis (a name that is not a config key) -> mappings of dotted keys, each with an "
        "optional `label`; one run per combination.",
    )
    reference: dict[str, Any] | None = Field(
        None,
        description="Overrides of one extra run (after `overrides`) whose centralized baseline "
        "every cell is compared with, as '% of centralized'; null = none.",
    )


@dataclass
class Cell:
    name: str
    values: dict[str, Any]  # grid key -> value
    config: RunConfig


@dataclass
class Sweep:
    name: str  # the sweep file's stem
    cells: list[Cell]
    reference: Cell | None  # its centralized baseline is what every cell is compared with


def label(value: Any) -> Any:
    """How a grid value shows in names and tables: a mapping as its `label`, else k=v,k=v."""
    if isinstance(value, dict):
        return value.get("label") or ",".join(f"{k}={v}" for k, v in value.items())
    return value


def _overrides(key: str, value: Any, source: str) -> dict[str, Any]:
    """The dotted keys a grid value sets. A key that is not in the config is a named axis
    whose values each set several keys (e.g. a method: a strategy plus its baselines)."""
    if key.split(".")[0] in RunConfig.model_fields:
        return {key: value}
    if not isinstance(value, dict):
        raise ConfigError(
            f"{source}: grid.{key} is not a config key, so it is a named axis whose values must "
            f"be mappings of dotted keys (got {value!r}); config sections: "
            f"{', '.join(RunConfig.model_fields)}"
        )
    return {k: v for k, v in value.items() if k != "label"}


def _cell_name(values: dict[str, Any]) -> str:
    text = "-".join(f"{k.rsplit('.', 1)[-1]}={label(v)}" for k, v in values.items())
    return re.sub(r"[^A-Za-z0-9._=-]", "_", text) or "default"


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> Sweep:
    """Every cell's validated config; any bad cell is an error before work starts."""
    path = Path(path)
    sweep = validate(read_yaml(path), SweepConfig, str(path))
    base_path = (path.parent / sweep.base).resolve()

    def cell(name: str, values: dict[str, Any], *extra: dict[str, Any]) -> Cell:
        raw = apply_overrides(read_yaml(base_path), sweep.overrides)
        for more in extra:
            raw = apply_overrides(raw, more)
        raw = apply_overrides(raw, overrides or [])
        source = f"{path} (cell {name})"
        return Cell(name, values, check(validate(raw, RunConfig, source), source))

    cells = []
    for combo in itertools.product(*sweep.grid.values()):
        values = dict(zip(sweep.grid, combo))
        sets = [_overrides(k, v, str(path)) for k, v in values.items()]
        cells.append(cell(_cell_name(values), values, *sets))
    reference = None
    if sweep.reference is not None:
        reference = cell("reference", {}, sweep.reference)
        if not reference.config.baselines.centralized:
            raise ConfigError(
                f"{path}: reference: must run the centralized baseline "
                "(baselines.centralized: true)"
            )
    return Sweep(path.stem, cells, reference)


def _folder(out_dir: Path, cell: Cell, sweep: Sweep) -> Path:
    return out_dir / "reference" if cell is sweep.reference else out_dir / "cells" / cell.name


def _check_folder(sweep: Sweep, out_dir: Path, overwrite: bool) -> None:
    """Refuse (or, with `overwrite`, clear) finished cells whose config is not this sweep's."""
    stale = []
    for cell in [*sweep.cells, *filter(None, [sweep.reference])]:
        folder = _folder(out_dir, cell, sweep)
        done = folder / "results.json"
        if done.is_file() and not _same_run(done, cell):
            stale.append(folder)
    if stale and not overwrite:
        names = ", ".join(str(f.relative_to(out_dir)) for f in stale[:3])
        more = f" and {len(stale) - 3} more" if len(stale) > 3 else ""
        raise ConfigError(
            f"{out_dir} holds runs with another config or foundation ({names}{more}): choose "
            "another -o, or pass --overwrite to run them again"
        )
    for folder in stale:
        shutil.rmtree(folder)


def _same_run(done: Path, cell: Cell) -> bool:
    """Whether a finished run's results.json is this cell's: the same config and the same base
    model (weights, config and tokenizer, by checksum; runs older than the checksum never are).
    A results.json that cannot be read is no finished run of it."""
    from fedumm.models import identity  # imports torch: only when comparing runs

    try:
        stored = RunResult.load(done)
    except ResultsError:
        return False
    sha = stored.model.sha256
    return _same_config(stored, cell) and sha == identity(cell.config.model)["sha256"]


def _same_config(stored: RunResult, cell: Cell) -> bool:
    """Whether a finished run had this cell's config. Keys added to the schema since it ran
    take their defaults, which by contract reproduce the behaviour from before they existed."""
    try:
        return _resolved(stored.run_config()) == _resolved(cell.config)
    except ValueError:  # a key since removed or changed: not the same run
        return False


def _resolved(cfg: RunConfig) -> dict:
    """The config as the run used it: LoRA targets left null and the model's default list name
    the same adapters, and local_steps means nothing once local_epochs sets the steps."""
    from fedumm.models import default_targets  # imports torch: only when comparing runs

    dump = cfg.model_dump()
    if cfg.lora is not None and cfg.lora.target_modules is None:
        dump["lora"]["target_modules"] = default_targets(cfg.model)
    if cfg.federation.local_epochs is not None:
        del dump["federation"]["local_steps"]
    return dump


def run_sweep(
    sweep: Sweep, out_dir: Path, progress: bool = True, overwrite: bool = False, jobs: int = 1
) -> list[dict]:
    """Run (or reuse) the reference and every cell; return one summary row per cell. With
    `jobs` > 1 the unfinished runs go first, that many at a time in separate processes."""
    from fedumm.engines import run_federation

    out_dir = Path(out_dir)
    todo = [*filter(None, [sweep.reference]), *sweep.cells]
    if jobs > 1 and any(c.config.engine == "flare" and c.config.flare.env == "poc" for c in todo):
        raise ConfigError(
            "--jobs > 1 with flare.env poc: POC servers of parallel cells would "
            "take the same ports; run the sweep with --jobs 1"
        )
    _check_folder(sweep, out_dir, overwrite)
    if jobs > 1:
        folders = [(c.config, _folder(out_dir, c, sweep)) for c in todo]
        _run_in_parallel(
            [(cfg, f) for cfg, f in folders if not (f / "results.json").is_file()], jobs
        )
    central: Metrics = {}
    rows = []
    for i, cell in enumerate(todo, 1):
        folder = _folder(out_dir, cell, sweep)
        done = folder / "results.json"
        if done.is_file():
            results = RunResult.load(done)
            print(f"[{i}/{len(todo)}] {cell.name}: finished earlier, reused", flush=True)
        else:
            print(f"[{i}/{len(todo)}] {cell.name}", flush=True)
            results = RunResult.of(run_federation(cell.config, folder, progress=progress))
        if cell is sweep.reference:
            central = results.baselines.centralized.metrics
            continue
        rows.append(summarize(cell, results, central))
        write_sweep_report(rows, list(cell.values), out_dir)
    return rows


def _run_in_parallel(runs: list[tuple[RunConfig, Path]], jobs: int) -> None:
    """Each run (config, folder) in its own process, `jobs` at a time, sharing the cores."""
    import multiprocessing
    import os

    threads = max(1, (os.cpu_count() or 1) // jobs)
    work = [(cfg, folder, threads) for cfg, folder in runs]
    with multiprocessing.get_context("spawn").Pool(min(jobs, len(work) or 1)) as pool:
        for i, folder in enumerate(pool.imap_unordered(_run_cell, work), 1):
            print(f"[{i}/{len(work)}] {folder.name}: finished", flush=True)


def _run_cell(args: tuple[RunConfig, Path, int]) -> Path:
    import torch

    from fedumm.engines import run_federation

    cfg, folder, threads = args
    torch.set_num_threads(threads)  # a config's own `threads` still wins in the run
    run_federation(cfg, folder, progress=False)
    return folder


def summarize(cell: Cell, results: RunResult, central: Metrics | None = None) -> dict:
    """One table row: grid values, final headlines (and each as % of `central`'s), bytes, time."""
    rounds = results.rounds
    final = results.final.metrics
    row = {k: label(v) for k, v in cell.values.items()}
    row.update({key: final[key] for key in headlines(final)})
    for key in headlines(central or {}):
        row[f"centralized_{key}"] = central[key]
        row[f"{key}{OF_CENTRAL}"] = 100 * final[key] / central[key] if central[key] else None
    for name, base in results.baselines.present().items():
        for key in headlines(base.metrics):
            row[f"{name}_{key}"] = base.metrics[key]
    row["bytes_up_per_round"] = float(np.mean([r.bytes_up for r in rounds]))
    row["bytes_down_per_round"] = float(np.mean([r.bytes_down for r in rounds]))
    row["federation_seconds"] = float(sum(r.seconds for r in rounds))
    if results.privacy is not None:
        row["epsilon"] = results.privacy.epsilon
        row["delta"] = results.privacy.delta
    row["wall_seconds"] = results.wall_seconds
    row["cell"] = cell.name
    return row


def write_sweep_report(rows: list[dict], keys: list[str], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with open(out_dir / "sweep.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        writer.writerows(rows)
    short = short_names(keys)
    metrics = headlines(rows[0])
    columns = {}  # row key -> column label
    for m in metrics:
        columns[m] = HEADLINES[m][0]
        if f"{m}{OF_CENTRAL}" in rows[0]:
            columns[f"{m}{OF_CENTRAL}"] = HEADLINES[m][0].replace("(%)", "(% of centralized)")
    lines = ["# fedumm sweep", ""]
    if len(keys) == 2:
        for key, name in columns.items():
            lines += _pivot(rows, keys, short, key, name) + [""]
    lines += [
        "| "
        + " | ".join(short[k] for k in keys)
        + " | "
        + " | ".join(columns.values())
        + " | KB up / round | KB down / round | federation (s) | wall (s) |",
        "|" + "---|" * (len(keys) + len(columns) + 4),
    ]
    for r in rows:
        lines.append(
            "| "
            + " | ".join(str(r[k]) for k in keys)
            + " | "
            + " | ".join(_number(r[c]) for c in columns)
            + f" | {r['bytes_up_per_round'] / 1e3:.1f}"
            f" | {r['bytes_down_per_round'] / 1e3:.1f} | {r['federation_seconds']:.0f}"
            f" | {r['wall_seconds']:.0f} |"
        )
    lines += ["", "![accuracy](sweep.png)", ""]
    (out_dir / "sweep.md").write_text("\n".join(lines))
    plot_grid(rows, keys, metrics, out_dir / "sweep.png")


def grouped(rows: list[dict], keys: list[str]) -> dict[tuple, list[dict]]:
    """Rows by their values of `keys`, in first-seen order: one table or plot panel per group."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    return groups


def short_names(keys: list[str]) -> dict[str, str]:
    """Axis labels for tables and plots: the last part of each dotted key."""
    return {k: k.rsplit(".", 1)[-1] for k in keys}


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _pivot(
    rows: list[dict], keys: list[str], short: dict[str, str], metric: str, name: str
) -> list[str]:
    """`metric` with the first grid key down and the second across."""
    first, second = keys
    across = list(dict.fromkeys(r[second] for r in rows))
    acc = {(r[first], r[second]): r[metric] for r in rows}
    lines = [
        f"{name} by {short[first]} (rows) and {short[second]} (columns):",
        "",
        f"| {short[first]} | " + " | ".join(f"{short[second]}={v}" for v in across) + " |",
        "|---|" + "---|" * len(across),
    ]
    for down in dict.fromkeys(r[first] for r in rows):
        cells = [_number(acc[(down, v)]) if (down, v) in acc else "" for v in across]
        lines.append(f"| {down} | " + " | ".join(cells) + " |")
    return lines


def plot_grid(rows: list[dict], keys: list[str], metrics: list[str], path: Path) -> None:
    """`grid_figure` saved to `path`."""
    from fedumm.report import plt

    fig = grid_figure(rows, keys, metrics)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def grid_figure(rows: list[dict], keys: list[str], metrics: list[str]):
    """Bars: the first axis along x, the second as series, one panel per value of the rest.
    The legend (titled with the second axis) sits right of each panel: inside, a legend wider
    than the panel made tight_layout shrink the panel to nothing."""
    from fedumm.report import plt

    short = short_names(keys)
    groups = list(dict.fromkeys(r[keys[0]] for r in rows)) if keys else ["run"]
    series = list(dict.fromkeys(r[keys[1]] for r in rows)) if len(keys) > 1 else [None]
    panels = grouped(rows, keys[2:])
    width = max(6, 0.8 * len(groups) * len(series) ** 0.5)
    fig, axes = plt.subplots(
        len(metrics), len(panels), figsize=(width * len(panels), 4 * len(metrics)), squeeze=False
    )
    bar = 0.8 / len(series)
    for row_axes, metric in zip(axes, metrics):
        reference = f"{metric}{OF_CENTRAL}" in rows[0]  # one centralized run for all cells
        for ax, (panel, part) in zip(row_axes, panels.items()):
            for j, s in enumerate(series):
                heights = [
                    next(
                        (
                            r[metric]
                            for r in part
                            if (not keys or r[keys[0]] == g) and (s is None or r[keys[1]] == s)
                        ),
                        0.0,
                    )
                    for g in groups
                ]
                label = str(s) if s is not None else None
                ax.bar(np.arange(len(groups)) + j * bar, heights, bar, label=label)
            ax.set_xticks(np.arange(len(groups)) + 0.4 - bar / 2)
            ax.set_xticklabels([str(g) for g in groups], rotation=30, ha="right")
            if keys:
                ax.set_xlabel(short[keys[0]])
            ax.set_ylabel(HEADLINES[metric][0])
            if panel:
                ax.set_title(", ".join(f"{short[k]}={v}" for k, v in zip(keys[2:], panel)))
            if reference:
                ax.axhline(
                    rows[0][f"centralized_{metric}"],
                    color="black",
                    linestyle="--",
                    label="centralized",
                )
            if len(keys) > 1 or reference:
                ax.legend(
                    title=short[keys[1]] if len(keys) > 1 else None,
                    fontsize="small",
                    loc="upper left",
                    bbox_to_anchor=(1.01, 1.0),
                )
            ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig
