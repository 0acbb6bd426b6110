"""results.json -> report.md and PNG plots: what a person looks at after a run."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

METHOD_NAMES = {"zero_shot": "zero-shot foundation", "local": "local-only (mean over clients)",
                "centralized": "centralized LoRA"}  # fmt: skip


def method_rows(results: dict) -> list[tuple[str, dict]]:
    """(label, metrics) in the order the story is told: zero-shot < local < federated <= central."""
    rows = []
    base = results.get("baselines", {})
    for key in ("zero_shot", "local"):
        if key in base:
            rows.append((METHOD_NAMES[key], base[key]["metrics"]))
    rows.append((f"federated LoRA ({results['config']['federation']['strategy']['name']})",
                 results["final"]["metrics"]))  # fmt: skip
    if "centralized" in base:
        rows.append((METHOD_NAMES["centralized"], base["centralized"]["metrics"]))
    return rows


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000:
            return f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"


def write_report(results: dict, out_dir: Path) -> None:
    out_dir = Path(out_dir)
    plot_accuracy(results, out_dir / "accuracy.png")
    plot_bytes(results, out_dir / "communication.png")
    cfg = results["config"]
    fed = cfg["federation"]
    rows = method_rows(results)
    families = list(rows[-1][1]["per_family"])
    lines = [
        "# fedumm run report",
        "",
        f"{fed['num_clients']} clients ({len(results['rounds'][0]['clients'])} per round), "
        f"{fed['rounds']} rounds x "
        + (f"{fed['local_epochs']} local epochs" if fed["local_epochs"] else
           f"{fed['local_steps']} local steps")
        + f", partition {cfg['partition']['scheme']}"
        + (f" (alpha={cfg['partition']['alpha']} over {cfg['partition']['key']})"
           if cfg["partition"]["scheme"] == "dirichlet" else "")
        + f", LoRA r={cfg['lora']['r']}, seed {cfg['seed']}. "
        f"Wall time {results['wall_seconds']:.0f} s.",
        "",
        "## VQA accuracy (%) on the held-out test split",
        "",
        "| method | overall | " + " | ".join(families) + " |",
        "|---|---|" + "---|" * len(families),
    ]  # fmt: skip
    for label, m in rows:
        spread = f" ± {m['vqa_accuracy_std']:.1f}" if "vqa_accuracy_std" in m else ""
        cells = " | ".join(f"{m['per_family'].get(f, float('nan')):.1f}" for f in families)
        lines.append(f"| {label} | **{m['vqa_accuracy']:.1f}**{spread} | {cells} |")
    if "centralized" in results.get("baselines", {}):
        central = results["baselines"]["centralized"]["metrics"]["vqa_accuracy"]
        fed_acc = results["final"]["metrics"]["vqa_accuracy"]
        lines += [
            "",
            f"Federated reaches **{100 * fed_acc / max(central, 1e-9):.1f}%** of centralized.",
        ]
    c = results["communication"]
    lines += [
        "",
        "![accuracy per round](accuracy.png)",
        "",
        "## Communication (bytes actually serialized)",
        "",
        "| | per client message | per round (up + down) |",
        "|---|---|---|",
        f"| LoRA adapter ({c['trainable_parameters']:,} params) "
        f"| {_fmt_bytes(c['adapter_message_bytes'])} "
        f"| {_fmt_bytes(c['adapter_bytes_per_round'])} |",
        f"| full fine-tuning ({c['total_parameters']:,} params) "
        f"| {_fmt_bytes(c['full_model_message_bytes'])} "
        f"| {_fmt_bytes(c['full_finetune_bytes_per_round'])} |",
        "",
        f"Adapter-only federation sends **{c['ratio']:.1f}x** less than full fine-tuning; "
        f"{_fmt_bytes(c['total_bytes'])} in total over the run.",
        "",
        "![bytes](communication.png)",
        "",
        "## Rounds",
        "",
        "| round | VQA acc | bytes up | bytes down | seconds | rejected updates |",
        "|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in results["rounds"]:
        acc = r["metrics"].get("vqa_accuracy")
        lines.append(
            f"| {r['round']} | {'' if acc is None else f'{acc:.1f}'} | {r['bytes_up']:,} | "
            f"{r['bytes_down']:,} | {r['seconds']:.1f} | {len(r['rejected'])} |"
        )
    part = results["partition"]
    lines += ["", "## Clients", "", "| client | samples | top labels |", "|---|---|---|"]
    for client in part["clients"]:
        top = sorted(client["label_histogram"].items(), key=lambda kv: -kv[1])[:4]
        lines.append(f"| {client['client_id']} | {client['samples']} | "
                     + ", ".join(f"{k}: {v}" for k, v in top) + " |")  # fmt: skip
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")


def plot_accuracy(results: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    rounds = [r for r in results["rounds"] if "vqa_accuracy" in r["metrics"]]
    ax.plot([r["round"] for r in rounds], [r["metrics"]["vqa_accuracy"] for r in rounds],
            marker="o", color="tab:blue", label="federated LoRA")  # fmt: skip
    base = results.get("baselines", {})
    styles = {"zero_shot": ("tab:gray", ":"), "local": ("tab:orange", "--"),
              "centralized": ("tab:green", "-.")}  # fmt: skip
    for key, (color, style) in styles.items():
        if key in base:
            m = base[key]["metrics"]
            ax.axhline(m["vqa_accuracy"], color=color, linestyle=style, label=METHOD_NAMES[key])
            if "vqa_accuracy_min" in m:
                ax.axhspan(m["vqa_accuracy_min"], m["vqa_accuracy_max"], color=color, alpha=0.12)
    ax.set_xlabel("round")
    ax.set_ylabel("VQA accuracy (%)")
    ax.set_ylim(-2, 100)  # a zero-shot line at 0% stays visible
    ax.set_title("Global model on the test split (band: local-only min..max)")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_bytes(results: dict, path: Path) -> None:
    c = results["communication"]
    rounds = [r["round"] for r in results["rounds"]]
    sent, total = [], 0
    for r in results["rounds"]:
        total += r["bytes_up"] + r["bytes_down"]
        sent.append(total / 1e6)
    full = [c["full_finetune_bytes_per_round"] * i / 1e6 for i in rounds]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(rounds, full, color="tab:red", marker="s",
            label="full fine-tuning (same messages, all weights serialized)")  # fmt: skip
    ax.plot(rounds, sent, color="tab:blue", marker="o", label="LoRA adapters (measured)")
    ax.set_yscale("log")
    ax.set_xlabel("round")
    ax.set_ylabel("cumulative MB over the wire (log)")
    ax.set_title(f"Adapter-only federation: {c['ratio']:.1f}x less traffic")
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
