"""A grid of runs from one sweep file: `fedumm sweep SWEEP.yaml -o OUT`.

Every combination of the grid values is one ordinary run (the `fedumm run` recipe) in its own
folder under OUT/cells. A cell whose results.json exists with the same config is reused, so an
interrupted sweep resumes where it stopped. After each cell, OUT/sweep.md, sweep.csv and
sweep.png are rewritten from all finished cells.
"""

from __future__ import annotations

import csv
import itertools
import json
import re
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


class SweepConfig(Section):
    base: str = Field(
        "../quickstart.yaml", description="Run config every cell starts from (relative path)."
    )
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="Dotted keys set in every cell."
    )
    grid: dict[str, list[Any]] = Field(
        default_factory=dict,
        description="Dotted key -> values (a value may be a mapping: a whole section); one run "
        "per combination.",
    )


@dataclass
class Cell:
    name: str
    values: dict[str, Any]  # grid key -> value
    config: RunConfig


def label(value: Any) -> Any:
    """How a grid value shows in names and tables: a mapping (a whole section) as k=v,k=v."""
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    return value


def _cell_name(values: dict[str, Any]) -> str:
    text = "-".join(f"{k.rsplit('.', 1)[-1]}={label(v)}" for k, v in values.items())
    return re.sub(r"[^A-Za-z0-9._=-]", "_", text) or "default"


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> list[Cell]:
    """Every cell's validated config; any bad cell is an error before work starts."""
    path = Path(path)
    sweep = validate(read_yaml(path), SweepConfig, str(path))
    base_path = (path.parent / sweep.base).resolve()
    cells = []
    for combo in itertools.product(*sweep.grid.values()):
        values = dict(zip(sweep.grid, combo))
        raw = apply_overrides(read_yaml(base_path), sweep.overrides)
        raw = apply_overrides(apply_overrides(raw, values), overrides or [])
        name = _cell_name(values)
        cells.append(Cell(name, values, validate(raw, RunConfig, f"{path} (cell {name})")))
    return cells


def run_sweep(cells: list[Cell], out_dir: Path, progress: bool = True) -> list[dict]:
    """Run (or reuse) every cell; return one summary row per cell."""
    from fedumm.experiment import run_experiment

    out_dir = Path(out_dir)
    rows = []
    for i, cell in enumerate(cells, 1):
        folder = out_dir / "cells" / cell.name
        done = folder / "results.json"
        if done.is_file():
            results = json.loads(done.read_text())
            if results["config"] != cell.config.model_dump():
                raise ConfigError(
                    f"{folder} holds a run with another config; remove it or choose another -o"
                )
            print(f"[{i}/{len(cells)}] {cell.name}: finished earlier, reused", flush=True)
        else:
            print(f"[{i}/{len(cells)}] {cell.name}", flush=True)
            results = run_experiment(cell.config, folder, progress=progress)
        rows.append(summarize(cell, results))
        write_sweep_report(rows, list(cell.values), out_dir)
    return rows


def summarize(cell: Cell, results: dict) -> dict:
    rounds = results["rounds"]
    final = results["final"]["metrics"]
    row = {k: label(v) for k, v in cell.values.items()}
    row.update({key: final[key] for key in headlines(final)})
    for name, base in results.get("baselines", {}).items():
        for key in headlines(base["metrics"]):
            row[f"{name}_{key}"] = base["metrics"][key]
    row["bytes_up_per_round"] = float(np.mean([r["bytes_up"] for r in rounds]))
    row["bytes_down_per_round"] = float(np.mean([r["bytes_down"] for r in rounds]))
    row["federation_seconds"] = float(sum(r["seconds"] for r in rounds))
    if "privacy" in results:
        row["epsilon"] = results["privacy"]["epsilon"]
    row["wall_seconds"] = results["wall_seconds"]
    row["cell"] = cell.name
    return row


def write_sweep_report(rows: list[dict], keys: list[str], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(out_dir / "sweep.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    short = {k: k.rsplit(".", 1)[-1] for k in keys}
    metrics = headlines(rows[0])
    lines = ["# fedumm sweep", ""]
    if len(keys) == 2:
        for metric in metrics:
            lines += _pivot(rows, keys, short, metric) + [""]
    lines += [
        "| " + " | ".join(short[k] for k in keys) + " | "
        + " | ".join(HEADLINES[m][0] for m in metrics)
        + " | KB up / round | KB down / round | federation (s) | wall (s) |",
        "|" + "---|" * (len(keys) + len(metrics) + 4),
    ]  # fmt: skip
    for r in rows:
        lines.append(
            "| " + " | ".join(str(r[k]) for k in keys) + " | "
            + " | ".join(f"{r[m]:.1f}" for m in metrics)
            + f" | {r['bytes_up_per_round'] / 1e3:.1f}"
            f" | {r['bytes_down_per_round'] / 1e3:.1f} | {r['federation_seconds']:.0f}"
            f" | {r['wall_seconds']:.0f} |"
        )  # fmt: skip
    lines += ["", "![accuracy](sweep.png)", ""]
    (out_dir / "sweep.md").write_text("\n".join(lines))
    _plot(rows, keys, short, metrics, out_dir / "sweep.png")


def _pivot(rows: list[dict], keys: list[str], short: dict[str, str], metric: str) -> list[str]:
    """`metric` with the first grid key down and the second across."""
    first, second = keys
    across = list(dict.fromkeys(r[second] for r in rows))
    acc = {(r[first], r[second]): r[metric] for r in rows}
    lines = [
        f"{HEADLINES[metric][0]} by {short[first]} (rows) and {short[second]} (columns):",
        "",
        f"| {short[first]} | " + " | ".join(f"{short[second]}={v}" for v in across) + " |",
        "|---|" + "---|" * len(across),
    ]
    for down in dict.fromkeys(r[first] for r in rows):
        cells = [f"{acc[(down, v)]:.1f}" if (down, v) in acc else "" for v in across]
        lines.append(f"| {down} | " + " | ".join(cells) + " |")
    return lines


def _plot(
    rows: list[dict], keys: list[str], short: dict[str, str], metrics: list[str], path: Path
) -> None:
    from fedumm.report import plt

    groups = list(dict.fromkeys(r[keys[0]] for r in rows)) if keys else ["run"]
    series = list(dict.fromkeys(r[keys[1]] for r in rows)) if len(keys) > 1 else [None]
    width = max(6, 0.8 * len(groups) * len(series) ** 0.5)
    fig, axes = plt.subplots(len(metrics), 1, figsize=(width, 4 * len(metrics)), squeeze=False)
    bar = 0.8 / len(series)
    for ax, metric in zip(axes[:, 0], metrics):
        for j, s in enumerate(series):
            heights = [
                next((r[metric] for r in rows
                      if (not keys or r[keys[0]] == g) and (s is None or r[keys[1]] == s)), 0.0)
                for g in groups
            ]  # fmt: skip
            label = f"{short[keys[1]]}={s}" if s is not None else None
            ax.bar(np.arange(len(groups)) + j * bar, heights, bar, label=label)
        ax.set_xticks(np.arange(len(groups)) + 0.4 - bar / 2)
        ax.set_xticklabels([str(g) for g in groups], rotation=30, ha="right")
        ax.set_ylabel(HEADLINES[metric][0])
        if len(keys) > 1:
            ax.legend()
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
