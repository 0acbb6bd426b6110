"""`fedumm bench NAME`: the shipped sweeps that reproduce the papers' tables, and the analysis
each adds to its grid (the performance scripts are in benchmarks/, not here).

A benchmark is a sweep file in configs/sweeps/NAME.yaml, run by the ordinary sweep machinery
(finished cells reused, another config's cells refused). `write_bench` then writes OUT/bench.md:
the sweep file's own description, the analysis specific to that benchmark (bytes to reach a
target accuracy, accuracy against bytes, change under attack, ...) and the grid's table.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.resources import files
from pathlib import Path

import numpy as np

from fedumm.config import ConfigError
from fedumm.evaluation.metrics import HEADLINES, headlines
from fedumm.results import RoundResult, RunResult
from fedumm.sweep import Sweep, grouped, load_sweep, plot_grid

# Package data (src/fedumm/configs links to the repository's configs/), found from a wheel too.
SWEEPS = Path(str(files("fedumm") / "configs" / "sweeps"))


def available() -> list[str]:
    return sorted(p.stem for p in SWEEPS.glob("*.yaml"))


def load_bench(name: str, overrides: list[str] | None = None) -> Sweep:
    path = SWEEPS / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"unknown benchmark {name!r}; the shipped ones are: {', '.join(available())} "
            f"(in {SWEEPS})"
        )
    return load_sweep(path, overrides)


def _results(out: Path, cell_name: str) -> RunResult:
    return RunResult.load(out / "cells" / cell_name / "results.json")


def _table(header: list[str], rows: list[list]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(str(v) for v in row) + " |" for row in rows),
    ]


def _traffic(rounds: list[RoundResult]) -> np.ndarray:
    """Bytes sent up and down, cumulated over the rounds."""
    return np.cumsum([r.bytes_up + r.bytes_down for r in rounds])


def communication(sweep: Sweep, rows: list[dict], out: Path) -> list[str]:
    """Per adapter: bytes per round, the ratio to full fine-tuning, final accuracy, and the
    round and bytes at which the global model first reaches the accuracy every cell reaches."""
    metric = headlines(rows[0])[0]
    target = min(r[metric] for r in rows)
    runs = [_results(out, cell.name) for cell in sweep.cells]
    per_round = [r["bytes_up_per_round"] + r["bytes_down_per_round"] for r in rows]  # measured
    loras = [res.run_config().lora for res in runs]
    full = [b for b, lora in zip(per_round, loras) if lora is None]
    table = []
    for res, lora, traffic in zip(runs, loras, per_round):
        sent = _traffic(res.rounds)
        scores = [r.metrics.get(metric, -1.0) for r in res.rounds]
        first = next((i for i, s in enumerate(scores) if s >= target), None)
        table.append(
            [
                f"LoRA r={lora.r}" if lora else "full fine-tuning",
                f"{res.communication.trainable_parameters:,}",
                f"{traffic / 1e6:.2f}",
                f"{full[0] / traffic:.1f}x" if full else "-",
                f"{res.final.metrics[metric]:.1f}",
                res.rounds[first].round if first is not None else "not reached",
                f"{sent[first] / 1e6:.1f}" if first is not None else "-",
            ]
        )
    lines = [
        f"## Bytes and accuracy ({HEADLINES[metric][0]}; target {target:.1f}, the lowest final "
        "score of any cell)",
        "",
        *_table(
            [
                "adapter",
                "trainable parameters",
                "MB / round (all clients, up + down)",
                "less than full FT",
                "final",
                "round reaching target",
                "MB sent to reach target",
            ],
            table,
        ),
    ]
    return lines + ["", *_published_backbones()]


def _published_backbones() -> list[str]:
    """LoRA against full fine-tuning on published backbones, counted from their shapes."""
    from fedumm.models.architectures import published_sizes

    lines = [
        "## Published backbones: LoRA (r) on the language model's q/k/v/o vs the whole model",
        "",
        "Counted from each architecture's parameter shapes (built from its config on the meta "
        "device); bytes per direction at bf16 (2 bytes a parameter) for both.",
        "",
    ]
    return lines + _table(
        ["model", "parameters", "r", "LoRA parameters", "LoRA MB", "full MB", "ratio"],
        [
            [
                s["model"],
                f"{s['parameters'] / 1e9:.2f} B",
                s["r"],
                f"{s['lora_parameters']:,}",
                f"{2 * s['lora_parameters'] / 1e6:.1f}",
                f"{2 * s['parameters'] / 1e6:,.0f}",
                f"{s['parameters'] / s['lora_parameters']:,.0f}x",
            ]
            for s in published_sizes()
        ],
    )


def compute_communication(sweep: Sweep, rows: list[dict], out: Path) -> list[str]:
    """Accuracy against cumulative bytes, one curve per local-steps setting (curve.png)."""
    from fedumm.report import plt

    runs = [_results(out, cell.name) for cell in sweep.cells]
    metrics = headlines(rows[0])
    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4), squeeze=False)
    table = []
    for res in runs:
        fed = res.run_config().federation
        name = f"{fed.local_steps} steps x {fed.rounds} rounds"
        evaluated = res.evaluated
        sent = _traffic(res.rounds)[[r.round - 1 for r in evaluated]]
        for ax, metric in zip(axes[0], metrics):
            ax.plot(sent / 1e6, [r.metrics[metric] for r in evaluated], marker="o", label=name)
        final = res.final.metrics
        table.append(
            [
                fed.local_steps,
                fed.rounds,
                fed.local_steps * fed.rounds,
                f"{sent[-1] / 1e6:.1f}",
                *(f"{final[m]:.1f}" for m in metrics),
            ]
        )
    for ax, metric in zip(axes[0], metrics):
        ax.set_xlabel("MB sent (up + down, cumulative)")
        ax.set_ylabel(HEADLINES[metric][0])
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "curve.png", dpi=120)
    plt.close(fig)
    return [
        "## Same local compute, split into rounds differently",
        "",
        *_table(
            [
                "local steps / round",
                "rounds",
                "steps per client",
                "MB sent",
                *(HEADLINES[m][0] for m in metrics),
            ],
            table,
        ),
        "",
        "![accuracy against bytes sent](curve.png)",
    ]


def robustness(sweep: Sweep, rows: list[dict], out: Path) -> list[str]:
    """Each aggregator's accuracy under each attack and its change against the same rule's clean
    run, one table per setting of the other grid axes (e.g. IID and skewed clients); then which
    rules stay within 3 points of their clean run under every attack (issue #8's target)."""
    metric = headlines(rows[0])[0]
    name = HEADLINES[metric][0]
    axes = [k for k in sweep.cells[0].values if k not in ("attack.kind", "federation.strategy")]
    lines = []
    for setting, part in grouped(rows, axes).items():
        rules = list(dict.fromkeys(r["federation.strategy"] for r in part))
        kinds = list(dict.fromkeys(r["attack.kind"] for r in part))
        score = {(r["attack.kind"], r["federation.strategy"]): r[metric] for r in part}
        change = {(k, rule): score[k, rule] - score["none", rule] for k in kinds for rule in rules}
        table = [
            [k] + [f"{score[k, rule]:.1f} ({change[k, rule]:+.1f})" for rule in rules]
            for k in kinds
        ]
        held = [rule for rule in rules if min(change[k, rule] for k in kinds) >= -3.0]
        where = ", ".join(str(v) for v in setting)
        lines += [
            f"## {name} under attack{f' ({where})' if where else ''}; in brackets the change "
            "against no attack",
            "",
            *_table(["attack", *rules], table),
            "",
            f"Within 3 points of their clean run under every attack: {', '.join(held) or 'none'}.",
            "",
        ]
    plot_grid(rows, ["federation.strategy", "attack.kind", *axes], [metric], out / "attacks.png")
    return [*lines, "![accuracy by aggregator and attack](attacks.png)"]


def privacy(sweep: Sweep, rows: list[dict], out: Path) -> list[str]:
    """Accuracy against the (epsilon, delta) the accountant reports for each noise level."""
    metric = headlines(rows[0])[0]
    delta = rows[0]["delta"]
    table = [
        [
            r["federation.strategy.noise_multiplier"],
            "inf (no noise)" if r["epsilon"] is None else f"{r['epsilon']:.2f}",
            f"{r[metric]:.1f}",
        ]
        for r in rows
    ]
    return [
        f"## Client-level DP: epsilon at delta {delta:g} against {HEADLINES[metric][0]}",
        "",
        *_table(["noise multiplier", "epsilon", HEADLINES[metric][0]], table),
    ]


def fedmllm(sweep: Sweep, rows: list[dict], out: Path) -> list[str]:
    """FedMLLM's tables: the first grid axis down (Local first, from the cells that ran the
    local-only baseline), the second across, per headline; then the paper's findings checked on
    these numbers: federated beats local-only everywhere, local-only degrades most under skew."""
    down, across = list(sweep.cells[0].values)
    columns = list(dict.fromkeys(r[across] for r in rows))

    def scores(metric: str) -> tuple[dict, dict]:
        """(method, column) -> federated score; column -> local-only score where it ran."""
        local = f"local_{metric}"
        return (
            {(r[down], r[across]): r[metric] for r in rows},
            {r[across]: r[local] for r in rows if local in r},
        )

    lines = []
    for metric in headlines(rows[0]):
        score, local = scores(metric)
        table = [["Local", *(_num(local.get(c)) for c in columns)]] if local else []
        for method in dict.fromkeys(r[down] for r in rows):
            table.append([method, *(_num(score.get((method, c))) for c in columns)])
        lines += [f"## {HEADLINES[metric][0]}", "", *_table([down, *columns], table), ""]
    metric = headlines(rows[0])[0]
    score, local = scores(metric)
    if not local:
        return lines
    name = HEADLINES[metric][0].removesuffix(" (%)").lower()
    fed = {c: [r[metric] for r in rows if r[across] == c] for c in columns}
    everywhere = [c for c in columns if c in local and min(fed[c]) > local[c]]
    lines += [
        "## FedMLLM's findings on these numbers",
        "",
        f"- Every federated method beats local-only ({name}) in {len(everywhere)} of "
        f"{len(local)} scenarios; the margin of the best / worst method over local-only: "
        + ", ".join(
            f"{c} {max(fed[c]) - local[c]:+.1f} / {min(fed[c]) - local[c]:+.1f}"
            for c in columns
            if c in local
        )
        + ".",
    ]
    skews = [c for c in columns if str(c).startswith("alpha=") and c in local]
    if len(skews) > 1:
        first, last = skews[0], skews[-1]
        drops = {m: score[m, first] - score[m, last] for m, c in score if c == first}
        worst = max(drops.values())
        lines.append(
            f"- From {first} to {last}, local-only loses {local[first] - local[last]:.1f} points; "
            f"the federated methods lose {min(drops.values()):.1f} to {worst:.1f}: local-only "
            + ("degrades most." if local[first] - local[last] > worst else "does not degrade most.")
        )
    return lines


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


ANALYSES: dict[str, Callable[[Sweep, list[dict], Path], list[str]]] = {
    "communication": communication,
    "compute-communication": compute_communication,
    "robustness": robustness,
    "privacy": privacy,
    "fedmllm-label-missing": fedmllm,
    "fedmllm-cross-hybrid": fedmllm,
    "fedmllm-strategies": fedmllm,
}


def write_bench(sweep: Sweep, rows: list[dict], out: Path) -> str:
    """Write OUT/bench.md (description, analysis, grid table); return the analysis part."""
    source = SWEEPS / f"{sweep.name}.yaml"
    description = [
        line.removeprefix("#").strip()
        for line in source.read_text().splitlines()
        if line.startswith("#")
    ]
    analysis = ANALYSES[sweep.name](sweep, rows, out) if sweep.name in ANALYSES else []
    runs = [*rows, *([{"wall_seconds": _reference_wall(out)}] if sweep.reference else [])]
    wall = sum(r["wall_seconds"] for r in runs)
    grid = (out / "sweep.md").read_text().split("\n", 2)[2]  # below its title
    text = "\n".join(
        [
            f"# fedumm bench {sweep.name}",
            "",
            *description,
            "",
            f"{len(rows)} cells{' and a reference run' if sweep.reference else ''}; sum of their "
            f"wall times {wall / 60:.1f} min.",
            "",
            *analysis,
            "",
            "## Grid",
            "",
            grid,
        ]
    )
    (out / "bench.md").write_text(text)
    return "\n".join(analysis)


def _reference_wall(out: Path) -> float:
    return RunResult.load(out / "reference" / "results.json").wall_seconds
