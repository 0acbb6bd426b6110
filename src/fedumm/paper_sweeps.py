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
from fedumm.sweep import Sweep, grouped, label, load_sweep, plot_grid

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


# ---- compression (issue 38) -------------------------------------------------------------------
SETTING = "setting"  # the compression sweeps' named axis (their other axis: the seed)
INT8_FEWER = 3.8  # int8 is 4x fewer bytes than fp32 but for its scales (a bf16 per 64 values)
PROJECTED = {"llava-1.5-7b": "LLaVA-1.5-7B", "janus-pro-7b": "Janus-Pro-7B"}


def published_adapter(preset: str, r: int = 8) -> dict[str, tuple[int, ...]]:
    """The LoRA tensors (PEFT's key names -> shapes) of a published architecture with rank `r`
    on its language model's q/k/v/o, as fedumm places them; built on the meta device."""
    import torch

    from fedumm.models.architectures import (
        DEFAULT_TARGETS,
        FAMILIES,
        PUBLISHED,
        Tokens,
        lora_targets,
    )

    arch = PUBLISHED[preset]
    with torch.device("meta"):
        model = arch.instantiate(Tokens(special=list(arch.special)))
    shapes = {}
    for name, module in lora_targets(
        model, DEFAULT_TARGETS, FAMILIES[arch.family].language_model
    ).items():
        shapes[f"base_model.model.{name}.lora_A.weight"] = (r, module.in_features)
        shapes[f"base_model.model.{name}.lora_B.weight"] = (module.out_features, r)
    return shapes


def random_adapter(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict:
    """Standard normal values in `shapes` (what an upload's change looks like to a codec)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=g) for k, shape in shapes.items()}


def upload_bytes(values: dict, upload) -> int:
    """The size of one upload message of `values` under `upload` (a CodecConfig), encoded by
    the codecs a run uses: a plain wire message for `none`."""
    import torch

    from fedumm.federation import wire
    from fedumm.federation.compression import build_codec, message

    codec = build_codec(upload)
    if codec is None:
        return len(wire.pack(values))
    blob, _ = message.encode(
        values, codec, torch.Generator().manual_seed(0), None, frozenset(values)
    )
    return len(blob)


def compression_settings(sweep: Sweep) -> dict[str, object]:
    """Each setting's label -> its upload CodecConfig, in the grid's order."""
    out = {}
    for cell in sweep.cells:
        out.setdefault(str(label(cell.values[SETTING])), cell.config.federation.compression.upload)
    return out


def _uncompressed(settings: dict[str, object]) -> str:
    """The setting that compresses nothing: what every other is compared with."""
    plain = [name for name, cfg in settings.items() if cfg.scheme == "none"]
    if not plain:
        raise ValueError("a compression sweep needs a setting with scheme none to compare with")
    return plain[0]


def projection(settings: dict[str, object], presets: dict[str, str] = PROJECTED) -> list[list]:
    """Per setting: (label, then per preset: bytes of one upload message, its ratio to none),
    from encoding a random adapter of the preset's LoRA r=8 q/k/v/o shapes."""
    sizes = {}
    for preset in presets:
        values = random_adapter(published_adapter(preset))
        sizes[preset] = {name: upload_bytes(values, cfg) for name, cfg in settings.items()}
    none = _uncompressed(settings)
    plain = {p: s[none] for p, s in sizes.items()}
    return [
        [name, *((sizes[p][name], plain[p] / sizes[p][name]) for p in presets)] for name in settings
    ]


def compression(sweep: Sweep, rows: list[dict], out: Path) -> list[str]:
    """Per setting, over the seeds: bytes of an upload message and its ratio to none, MB sent
    over the run, each headline's mean +- std and its change against none on the same seed;
    the issue's targets checked; accuracy against cumulative MB (compression.png); the bytes
    projected to 7B adapters by encoding them."""
    runs = [_results(out, cell.name) for cell in sweep.cells]
    metrics = headlines(rows[0])
    by_setting: dict[str, list[tuple[dict, RunResult]]] = {}
    for row, res in zip(rows, runs):
        by_setting.setdefault(str(row[SETTING]), []).append((row, res))
    names = list(by_setting)
    settings = compression_settings(sweep)
    plain = _uncompressed(settings)

    def per_message(res: RunResult) -> float:
        sent = [r.bytes_up / (len(r.clients) - len(r.dropped)) for r in res.rounds if r.clients]
        return float(np.mean(sent))

    up = {n: np.mean([per_message(res) for _, res in part]) for n, part in by_setting.items()}
    total = {
        n: np.mean([_traffic(res.rounds)[-1] for _, res in part]) for n, part in by_setting.items()
    }
    seeds = {n: {row.get("seed"): row for row, _ in part} for n, part in by_setting.items()}

    def scores(name: str, metric: str) -> np.ndarray:
        return np.array([row[metric] for row in seeds[name].values()])

    def change(name: str, metric: str) -> np.ndarray:
        common = [s for s in seeds[name] if s in seeds[plain]]
        return np.array([seeds[name][s][metric] - seeds[plain][s][metric] for s in common])

    def spread(values: np.ndarray, signed: bool = False) -> str:
        std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        return f"{np.mean(values):{'+' if signed else ''}.1f} +- {std:.1f}"

    lines = [
        f"## Compressed uploads: bytes and accuracy ({len(seeds[plain])} seeds; mean +- sample "
        "std; change: against no compression on the same seed)",
        "",
    ]
    header = ["setting", "KB / upload message", "fewer upload bytes", "MB sent (up + down)"]
    for metric in metrics:
        name = HEADLINES[metric][0]
        header += [name, f"{name.removesuffix(' (%)')}: change (points)"]
    table = []
    for n in names:
        line = [n, f"{up[n] / 1e3:.1f}", f"{up[plain] / up[n]:.1f}x", f"{total[n] / 1e6:.1f}"]
        for metric in metrics:
            line += [spread(scores(n, metric)), spread(change(n, metric), signed=True)]
        table.append(line)
    lines += [*_table(header, table), ""]
    lines += _targets(names, metrics, {n: up[plain] / up[n] for n in names}, change)
    _plot_compression(by_setting, metrics, out)
    lines += ["", "![accuracy against megabytes sent](compression.png)", ""]
    projected = projection(settings)
    lines += [
        "## Projected to 7B adapters: one upload message, LoRA r=8 on the language model's q/k/v/o",
        "",
        "Random normal adapters of each architecture's shapes (LLaVA-1.5-7B: Vicuna-7B, 32 "
        "layers, hidden 4096, 8,388,608 values; Janus-Pro-7B: DeepSeek-LLM-7B, 30 layers, "
        "hidden 4096, 7,864,320 values) encoded by the codecs a run uses.",
        "",
        *_table(
            [
                "setting",
                *(
                    f"{label} {what}"
                    for label in PROJECTED.values()
                    for what in ("MB", "fewer bytes")
                ),
            ],
            [
                [name, *(v for b, ratio in sizes for v in (f"{b / 1e6:.2f}", f"{ratio:.1f}x"))]
                for name, *sizes in projected
            ],
        ),
    ]
    return lines


def _targets(names: list[str], metrics: list[str], fewer: dict, change) -> list[str]:
    """Issue 38's targets per headline: int8 within 0.5 points of none at >= 4x fewer upload
    bytes; some setting with >= 16x fewer upload bytes within 2 points."""
    lines = ["Issue 38's targets (change of the mean over seeds against no compression):", ""]
    int8 = next((n for n in names if n == "int8"), None)
    for metric in metrics:
        name = HEADLINES[metric][0].removesuffix(" (%)")
        if int8 is not None:
            d = float(np.mean(change(int8, metric)))
            held = d >= -0.5 and fewer[int8] >= INT8_FEWER
            lines.append(
                f"- {name}, int8 within 0.5 points at 4x fewer upload bytes (int8's nominal 4x, "
                f"less its scales: >= {INT8_FEWER}x): "
                f"{'met' if held else 'MISSED'} ({d:+.1f} points, {fewer[int8]:.1f}x)."
            )
        small = [n for n in names if fewer[n] >= 16]
        within = [n for n in small if float(np.mean(change(n, metric))) >= -2.0]
        detail = ", ".join(
            f"{n} {float(np.mean(change(n, metric))):+.1f} at {fewer[n]:.0f}x" for n in small
        )
        lines.append(
            f"- {name}, a setting with >= 16x fewer upload bytes within 2 points: "
            f"{'met by ' + ', '.join(within) if within else 'MISSED'} ({detail or 'none is 16x'})."
        )
    return lines


def _plot_compression(by_setting: dict, metrics: list[str], out: Path) -> None:
    """Accuracy (mean over seeds) at each evaluated round against the MB sent by then, log x:
    uploads only (left) and up + down (right); the reference run's baselines as lines."""
    from fedumm.report import plt

    reference = out / "reference" / "results.json"
    baselines = RunResult.load(reference).baselines.present() if reference.is_file() else {}
    fig, axes = plt.subplots(len(metrics), 2, figsize=(13, 4.2 * len(metrics)), squeeze=False)
    for name, part in by_setting.items():
        runs = [res for _, res in part]
        evaluated = [r.round for r in runs[0].evaluated]
        for ax_row, metric in zip(axes, metrics):
            score = np.mean(
                [[res.rounds[i - 1].metrics[metric] for i in evaluated] for res in runs], 0
            )
            for ax, sent in zip(
                ax_row,
                (
                    [np.cumsum([r.bytes_up for r in res.rounds]) for res in runs],
                    [_traffic(res.rounds) for res in runs],
                ),
            ):
                x = np.mean([s[[i - 1 for i in evaluated]] for s in sent], 0) / 1e6
                ax.plot(x, score, marker="o", label=name)
    for ax_row, metric in zip(axes, metrics):
        for ax, what in zip(ax_row, ("MB uploaded", "MB sent (up + down)")):
            for (base, scores), style in zip(baselines.items(), (":", "--", "-.")):
                if metric in scores.metrics:
                    ax.axhline(
                        scores.metrics[metric],
                        color="black",
                        linestyle=style,
                        label=base.replace("_", "-"),
                    )
            ax.set_xscale("log")
            ax.set_xlabel(f"{what}, cumulative (log)")
            ax.set_ylabel(HEADLINES[metric][0])
            ax.grid(alpha=0.3, which="both")
        ax_row[1].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(out / "compression.png", dpi=120)
    plt.close(fig)


ANALYSES: dict[str, Callable[[Sweep, list[dict], Path], list[str]]] = {
    "communication": communication,
    "compute-communication": compute_communication,
    "robustness": robustness,
    "compression": compression,
    "compression-unified": compression,
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
