"""results.json -> report.md and PNG plots: what a person looks at after a run."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fedumm.config import FederationConfig, RunConfig  # noqa: E402
from fedumm.evaluation.metrics import HEADLINES, headlines  # noqa: E402
from fedumm.partition_report import client_lines, plot_partitions, repair_lines  # noqa: E402
from fedumm.results import (  # noqa: E402
    ClientLevelPrivacy,
    Communication,
    Metrics,
    PartitionSummary,
    RunResult,
    RuntimeInfo,
)
from fedumm.results import dump_json as dump_json  # noqa: E402  (partition.json's writers)

METHOD_NAMES = {
    "zero_shot": "zero-shot foundation",
    "local": "local-only (mean over clients)",
    "centralized": "centralized LoRA",
}


def method_rows(results: RunResult | dict) -> list[tuple[str, Metrics]]:
    """(label, metrics) in the order the story is told: zero-shot < local < federated <= central."""
    results = RunResult.of(results)  # a dict: what an engine read back from results.json
    cfg, base = results.run_config(), results.baselines
    mode = "LoRA" if cfg.lora else "full fine-tuning"
    before = {"zero_shot": base.zero_shot, "local": base.local}
    rows = [(METHOD_NAMES[name], scores.metrics) for name, scores in before.items() if scores]
    rows.append((f"federated {mode} ({cfg.federation.strategy.name})", results.final.metrics))
    if base.centralized:
        rows.append((f"centralized {mode}", base.centralized.metrics))
    return rows


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000:
            return f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"


def _where(runtime: RuntimeInfo | None) -> str:
    """' on NVIDIA H100, bf16' or ' on AMD EPYC, AVX2, 2 threads, fp32': where the run ran,
    from results.json (the CPU's instruction set and threads decide its last bits)."""
    if not runtime:
        return ""
    device = runtime.device_name or runtime.device
    if runtime.threads:
        device += f", {runtime.threads} threads"
    if runtime.devices:
        device = f"{len(runtime.devices)} workers ({', '.join(runtime.devices)})"
    return f" on {device}, {runtime.precision}"


def _learning_rates(cfg: RunConfig) -> str:
    """The clients' lr, and the baselines' where they train at another."""
    fed, baselines = cfg.federation, cfg.baselines
    notes = ["cosine decay"] if fed.lr_decay == "cosine" else []
    trained = baselines.local or baselines.centralized
    if trained and baselines.lr not in (None, fed.lr):
        notes.append(f"the baselines at {baselines.lr:g}")
    return f" at lr {fed.lr:g}" + (f" ({'; '.join(notes)})" if notes else "")


def _weights(fed: FederationConfig) -> str:
    """How the server weighs the updates, where it is not by partition size (the default)."""
    weights = fed.client_weights
    return "" if weights == "partition" else f", {weights} weights"


def write_report(results: RunResult | dict, out_dir: Path) -> None:
    """report.md and its plots (accuracy.png, communication.png, partition_*.png) in `out_dir`."""
    results, out_dir = RunResult.of(results), Path(out_dir)
    plot_accuracy(results, out_dir / "accuracy.png")
    plot_bytes(results, out_dir / "communication.png")
    cfg = results.run_config()
    lines = ["# fedumm run report", "", _setup_line(results, cfg), *_random_lines(results)]
    lines += _metric_lines(results, method_rows(results))
    lines += _privacy_lines(results, cfg)
    lines += ["", "![accuracy per round](accuracy.png)", *_picture_lines(out_dir)]
    lines += _communication_lines(results.communication, cfg)
    lines += _round_lines(results)
    lines += _client_lines(results.partition, out_dir)
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")


def _setup_line(results: RunResult, cfg: RunConfig) -> str:
    """The run in one paragraph: model, clients, rounds, lr, tasks, partition, seed, time."""
    fed, model = cfg.federation, cfg.model
    family = results.model.family or model.family
    base = (
        f"{model.name_or_path} ({family}, {model.dtype})"
        if model.name_or_path
        else f"foundation {model.foundation}"
    )
    work = (
        f"{fed.local_epochs} local epochs" if fed.local_epochs else f"{fed.local_steps} local steps"
    )
    return (
        f"Model: {base}. "
        f"{fed.num_clients} clients ({len(results.rounds[0].clients)} per round, "
        f"{fed.client_sampling}{_weights(fed)}), {fed.rounds} rounds x "
        + work
        + _learning_rates(cfg)
        + f", tasks: {', '.join(cfg.data.tasks)}, partition "
        + cfg.partition.describe()
        + (f", LoRA r={cfg.lora.r}" if cfg.lora else ", full fine-tuning")
        + f", seed {cfg.seed}. "
        f"Wall time {results.wall_seconds:.0f} s" + _where(results.runtime) + "."
    )


def _random_lines(results: RunResult) -> list[str]:
    random = results.model.random_weights
    if not random:
        return []
    return [
        "",
        f"**The model has random weights** (`fedumm random-model`, {random}): "
        "these numbers measure the pipeline's speed and memory, not a model.",
    ]


def _metric_lines(results: RunResult, rows: list[tuple[str, Metrics]]) -> list[str]:
    """A table per headline metric, and federated as a share of centralized where it ran."""
    lines = []
    central = results.baselines.centralized
    for key in headlines(rows[-1][1]):
        lines += ["", *metric_table(rows, key)]
        if central:
            fed = results.final.metrics[key]
            share = 100 * fed / max(central.metrics[key], 1e-9)
            lines += ["", f"Federated reaches **{share:.1f}%** of centralized."]
    return lines


def _picture_lines(out_dir: Path) -> list[str]:
    """The generated images the run drew (generation tasks), zero-shot to centralized."""
    pictures = [(label, f"generated_{name}.png") for name, label in GRID_NAMES.items()]
    pictures += [
        (f"local-only ({p.stem.removeprefix('generated_local_')})", p.name)
        for p in sorted(out_dir.glob("generated_local_*.png"))
    ]
    pictures = [(label, name) for label, name in pictures if (out_dir / name).is_file()]
    if not pictures:
        return []
    lines = ["", "## Generated images (green frame: correct by the GenEval-style scorer)", ""]
    for label, name in sorted(pictures, key=lambda p: _PICTURE_ORDER.get(p[1], 1)):
        lines += [f"**{label}**", "", f"![{label}]({name})", ""]
    return lines


def _compressed(cfg: RunConfig) -> str:
    said = cfg.federation.compression.summary()
    if not said:
        return ""
    return (
        f" Messages were compressed ({said}): the per-round figures are the compressed bytes "
        "sent, the per-message ones the uncompressed fp32 messages."
    )


def _communication_lines(c: Communication, cfg: RunConfig) -> list[str]:
    return [
        "",
        "## Communication (bytes actually serialized)",
        "",
        "| | per client message | per round (up + down) |",
        "|---|---|---|",
        f"| {'LoRA adapter' if cfg.lora else 'full model (measured)'} "
        f"({c.trainable_parameters:,} params) "
        f"| {_fmt_bytes(c.adapter_message_bytes)} "
        f"| {_fmt_bytes(c.adapter_bytes_per_round)} |",
        f"| full fine-tuning ({c.total_parameters:,} params) "
        f"| {_fmt_bytes(c.full_model_message_bytes)} "
        f"| {_fmt_bytes(c.full_finetune_bytes_per_round)} |",
        "",
        f"Adapter-only federation sends **{c.ratio:.1f}x** less than full fine-tuning; "
        f"{_fmt_bytes(c.total_bytes)} in total over the run." + _compressed(cfg),
        "",
        "![bytes](communication.png)",
    ]


def _round_lines(results: RunResult) -> list[str]:
    """A row per round: the headlines (where evaluated), traffic, time, faults."""
    keys = headlines(results.final.metrics)
    lines = [
        "",
        "## Rounds",
        "",
        "| round | "
        + " | ".join(HEADLINES[k][0] for k in keys)
        + " | bytes up | bytes down | seconds | dropped / late / rejected |",
        "|---|" + "---|" * (len(keys) + 4),
    ]
    for r in results.rounds:
        values = " | ".join(f"{r.metrics[k]:.1f}" if k in r.metrics else "" for k in keys)
        lines.append(
            f"| {r.round} | {values} | {r.bytes_up:,} | "
            f"{r.bytes_down:,} | {r.seconds:.1f} | {len(r.dropped)} / "
            f"{len(r.late)} / {len(r.rejected)} |"
        )
    return lines


def _client_lines(part: PartitionSummary, out_dir: Path) -> list[str]:
    """The partition: its description, what a repair moved, the clients, the heatmaps."""
    return [
        "",
        "## Clients",
        "",
        f"Partition: {part.description}" + (f", {part.modality}" if part.modality else "") + ".",
        *repair_lines(part),
        "",
        *client_lines(part),
        "",
        *(f"![{name}]({name})" for name in plot_partitions(part, out_dir)),
    ]


GRID_NAMES = {
    "zero_shot": "zero-shot foundation",
    "federated": "federated LoRA",
    "centralized": "centralized LoRA",
}
_PICTURE_ORDER = {
    "generated_zero_shot.png": 0,
    "generated_federated.png": 2,
    "generated_centralized.png": 3,
}


def _privacy_lines(results: RunResult, cfg: RunConfig) -> list[str]:
    """The (epsilon, delta) of the run's differential privacy, client- and sample-level."""
    out = []
    for p, what in (
        (results.privacy, "client-level (DP-FedAvg)"),
        (results.dp_sgd, "sample-level (DP-SGD)"),
    ):
        if p:
            eps = "infinite (no noise)" if p.epsilon is None else f"{p.epsilon:.2f}"
            sampling = p.sampling if isinstance(p, ClientLevelPrivacy) else None
            drawn = f", clients sampled by the {sampling}" if sampling else ""
            out.append(f"Privacy, {what}: epsilon {eps} at delta {p.delta:g}{drawn}.")
    if out and cfg.federation.seeded_privacy_noise:
        out.append(
            "**Epsilon is a simulation figure**: the noise was drawn from the run seed "
            "(`federation.seeded_privacy_noise`), so whoever holds the config can "
            "regenerate and subtract it."
        )
    return ["", *out] if out else []


def metric_table(rows: list[tuple[str, Metrics]], key: str) -> list[str]:
    """A markdown table of headline `key` with its breakdown, one row per (label, metrics)."""
    label, breakdown, _ = HEADLINES[key]
    categories = list(rows[-1][1][breakdown])
    lines = [
        f"## {label} on the held-out test set",
        "",
        "| method | overall | " + " | ".join(categories) + " |",
        "|---|---|" + "---|" * len(categories),
    ]
    for method, m in rows:
        spread = f" ± {m[key + '_std']:.1f}" if key + "_std" in m else ""
        cells = " | ".join(f"{m[breakdown].get(c, float('nan')):.1f}" for c in categories)
        lines.append(f"| {method} | **{m[key]:.1f}**{spread} | {cells} |")
    return lines


def plot_accuracy(results: RunResult, path: Path) -> None:
    """The global model's headlines per round, with the baselines as lines (local: its band)."""
    keys = headlines(results.final.metrics)
    fig, axes = plt.subplots(1, len(keys), figsize=(7 * len(keys), 4.2), squeeze=False)
    base = results.baselines.present()
    styles = {
        "zero_shot": ("tab:gray", ":"),
        "local": ("tab:orange", "--"),
        "centralized": ("tab:green", "-."),
    }
    for ax, key in zip(axes[0], keys):
        rounds = [r for r in results.rounds if key in r.metrics]
        ax.plot(
            [r.round for r in rounds],
            [r.metrics[key] for r in rounds],
            marker="o",
            color="tab:blue",
            label="federated LoRA",
        )
        for name, (color, style) in styles.items():
            if name in base:
                m = base[name].metrics
                ax.axhline(m[key], color=color, linestyle=style, label=METHOD_NAMES[name])
                if key + "_min" in m:
                    ax.axhspan(m[key + "_min"], m[key + "_max"], color=color, alpha=0.12)
        ax.set_xlabel("round")
        ax.set_ylabel(HEADLINES[key][0])
        ax.set_ylim(-2, 100)  # a zero-shot line at 0% stays visible
        ax.set_title("Global model on the test set (band: local-only min..max)", fontsize=10)
        ax.legend(loc="lower right", fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def generation_grid(
    images, prompts, verdicts: list[bool], path: Path, per_tag: int = 6, scale: int = 3
) -> None:
    """A PNG with one row per GenEval tag: images with their prompt below, framed green when
    the scorer judged them correct and red when not."""
    from PIL import Image, ImageDraw

    from fedumm.data.geneval import TAGS

    rows = {}
    for tag in TAGS:  # distinct prompts first, then more images of the same prompts
        idx = [i for i, p in enumerate(prompts) if p.tag == tag]
        first = {p.prompt: i for i, p in reversed(list(enumerate(prompts))) if p.tag == tag}
        firsts = sorted(first.values())
        if idx:
            rows[tag] = (firsts + [i for i in idx if i not in firsts])[:per_tag]
    side, frame, caption = images.shape[1] * scale, 3, 40
    cell_w, cell_h = side + 2 * frame + 70, side + 2 * frame + caption
    label_w = 100
    canvas = Image.new("RGB", (label_w + cell_w * per_tag, cell_h * len(rows)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (tag, idx) in enumerate(rows.items()):
        y = r * cell_h
        draw.text((4, y + side // 2), tag, fill="black")
        for c, i in enumerate(idx):
            x = label_w + c * cell_w + 35
            color = (30, 160, 60) if verdicts[i] else (210, 40, 40)
            draw.rectangle([x, y, x + side + 2 * frame - 1, y + side + 2 * frame - 1], fill=color)
            picture = Image.fromarray(images[i]).resize((side, side), Image.NEAREST)
            canvas.paste(picture, (x + frame, y + frame))
            words = prompts[i].prompt.removeprefix("a photo of ")
            text = textwrap.wrap(words, 18)[:3]
            draw.multiline_text(
                (x - 30, y + side + 2 * frame + 1), "\n".join(text), fill="black", spacing=1
            )
    canvas.save(path)


def plot_bytes(results: RunResult, path: Path) -> None:
    """Cumulative bytes over the rounds, measured, against full fine-tuning's."""
    c = results.communication
    rounds = [r.round for r in results.rounds]
    sent, total = [], 0
    for r in results.rounds:
        total += r.bytes_up + r.bytes_down
        sent.append(total / 1e6)
    full = [c.full_finetune_bytes_per_round * i / 1e6 for i in rounds]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(
        rounds,
        full,
        color="tab:red",
        marker="s",
        label="full fine-tuning (same messages, all weights serialized)",
    )
    ax.plot(rounds, sent, color="tab:blue", marker="o", label="LoRA adapters (measured)")
    ax.set_yscale("log")
    ax.set_xlabel("round")
    ax.set_ylabel("cumulative MB over the wire (log)")
    ax.set_title(f"Adapter-only federation: {c.ratio:.1f}x less traffic")
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
