"""The clients' partition for people: the table behind partition.json, its heatmaps, and the
lines the report and `fedumm partition` print.

Up to SUMMARY_CLIENTS clients everything shows every client. Beyond, a heatmap row per client
is unreadable (and at 10,000 clients nearly filled the machine's memory), so the views
summarize: the largest and the most skewed clients, and the distributions of client sizes and
label entropy over all of them. Time and memory then grow with the data, not the picture.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fedumm.data.partition import LabelCounts  # noqa: E402
from fedumm.federation.client import site_names  # noqa: E402
from fedumm.results import PartitionSummary  # noqa: E402

Summary = PartitionSummary | dict  # results.json's `partition`, or partition.json as read

SUMMARY_CLIENTS = 40  # more clients than this: arrays in partition.json, summarized plots
SHOWN = 20  # in a summary, this many largest and this many most skewed clients


@dataclass
class ClientTable:
    """partition.json's per-client figures as arrays, whichever form the file has."""

    ids: list[str]
    samples: np.ndarray  # per client, over all tasks
    tasks: dict[str, LabelCounts]  # task -> per client and label, how many samples
    modalities: tuple[list[str], np.ndarray] | None  # columns, clients x modalities counts

    @classmethod
    def of(cls, summary: Summary) -> ClientTable:
        summary = PartitionSummary.of(summary)
        if summary.client_arrays is not None:
            return cls._of_arrays(summary)
        clients = summary.clients or []
        tasks = {}
        for task, names in summary.labels.items():
            cells = [
                (i, names.index(lab), n)
                for i, c in enumerate(clients)
                for lab, n in c.tasks[task].label_histogram.items()
            ]
            client, label, count = (
                (np.array(v, dtype=np.int64) for v in zip(*cells))
                if cells
                else (np.array([], dtype=np.int64),) * 3
            )
            tasks[task] = LabelCounts(names, len(clients), client, label, count)
        modalities = None
        if summary.modality is not None:
            kept = [c.tasks["classification"].modalities for c in clients]
            modalities = (list(kept[0]), np.array([list(k.values()) for k in kept]))
        samples = np.array([c.samples for c in clients], dtype=np.int64)
        return cls([c.client_id for c in clients], samples, tasks, modalities)

    @classmethod
    def _of_arrays(cls, summary: PartitionSummary) -> ClientTable:
        arrays = summary.client_arrays
        samples = np.asarray(arrays.samples, dtype=np.int64)
        tasks = {
            task: LabelCounts(
                summary.labels[task],
                len(samples),
                *(np.asarray(v, dtype=np.int64) for v in (cells.client, cells.label, cells.count)),
            )
            for task, cells in arrays.label_counts.items()
        }
        kept = arrays.modalities
        modalities = (list(kept), np.array(list(kept.values())).T) if kept else None
        return cls(site_names(len(samples)), samples, tasks, modalities)

    @property
    def summarized(self) -> bool:
        return len(self.ids) > SUMMARY_CLIENTS

    def shown(self, task: str) -> tuple[list[int], list[str]]:
        """The clients a view shows, with why: all of them, or the SHOWN largest (for `task`)
        then the SHOWN most skewed (lowest label entropy, larger first) of the others."""
        if not self.summarized:
            return list(range(len(self.ids))), [""] * len(self.ids)
        sizes = self.tasks[task].sizes()
        largest = [int(i) for i in np.argsort(-sizes, kind="stable")[:SHOWN] if sizes[i] > 0]
        entropy = self.tasks[task].entropy()
        taken = set(largest)
        skewed = [
            int(i)
            for i in np.lexsort((-sizes, entropy))
            if i not in taken and not np.isnan(entropy[i])
        ][:SHOWN]
        return largest + skewed, ["largest"] * len(largest) + ["most skewed"] * len(skewed)


def describe_sizes(table: ClientTable) -> str:
    """'100,000 clients, 1 to 17 samples (median 1)': the population in one phrase."""
    s = table.samples
    return f"{len(s):,} clients, {s.min():,} to {s.max():,} samples (median {np.median(s):g})"


def repair_lines(summary: Summary) -> list[str]:
    """What the Dirichlet split moved to give every client partition.min_samples."""
    return [
        f"The split of {task} left {r.clients:,} clients short of partition.min_samples; "
        f"{r.samples_moved:,} random samples of the largest clients were moved to them."
        for task, r in PartitionSummary.of(summary).repaired.items()
    ]


def client_lines(summary: Summary) -> list[str]:
    """The report's Clients table: every client, or the summary's largest and most skewed."""
    summary = PartitionSummary.of(summary)
    table = ClientTable.of(summary)
    lines = []
    if table.summarized:
        lines += [
            f"{describe_sizes(table)}; below, per task, the {SHOWN} largest and the "
            f"{SHOWN} most skewed (lowest label entropy).",
            "",
        ]
    lines += ["| client | task | samples | top labels | modalities |", "|---|---|---|---|---|"]
    for task, held in table.tasks.items():
        rows, reasons = table.shown(task)
        for i, why, counts in zip(rows, reasons, held.rows(rows)):
            top = sorted(np.flatnonzero(counts), key=lambda j: -counts[j])[:4]
            cells = ", ".join(f"{held.labels[j]}: {counts[j]}" for j in top)
            kept = ""
            if table.modalities and task == "classification":
                columns, matrix = table.modalities
                kept = ", ".join(f"{m}: {v}" for m, v in zip(columns, matrix[i]) if v)
            name = table.ids[i] + (f" ({why})" if why else "")
            lines.append(
                f"| {name} | {task} ({summary.keys[task]}) | {counts.sum()} | {cells} | {kept} |"
            )
    return lines


def plot_partitions(summary: Summary, out_dir: Path) -> list[str]:
    """The partition at a glance: per task a clients x labels heatmap (partition_TASK.png) and,
    with a modality scenario, a clients x modalities one (partition_modality.png); summarized
    beyond SUMMARY_CLIENTS clients. Returns the file names written."""
    summary = PartitionSummary.of(summary)
    table = ClientTable.of(summary)
    names = []
    for task, held in table.tasks.items():
        rows, why = table.shown(task)
        counts, labels = held.rows(rows), held.labels
        row_names = [
            f"{table.ids[i]} ({n})" + (f" {w}" if w else "")
            for i, w, n in zip(rows, why, counts.sum(axis=1))
        ]
        key = summary.keys[task]
        names.append(f"partition_{task}.png")
        if not table.summarized:
            title = f"{task}: samples per client and {key} ({summary.description})"
            fig, ax = plt.subplots(figsize=_heatmap_size(len(labels), len(rows)))
            _heatmap(ax, counts.tolist(), row_names, labels, title, fig)
        else:
            fig = _summary_figure(
                held,
                task,
                counts.tolist(),
                row_names,
                labels,
                f"{task}: {key} of the {SHOWN} largest and the {SHOWN} most "
                f"skewed clients ({summary.description})",
            )
        _save(fig, out_dir / names[-1])
    if table.modalities is not None:
        columns, matrix = table.modalities
        rows = (
            list(range(len(table.ids)))
            if not table.summarized
            else np.argsort(-table.samples, kind="stable")[: 2 * SHOWN].tolist()
        )
        shown = "" if not table.summarized else f", the {2 * SHOWN} largest of {len(table.ids):,}"
        title = f"classification: modalities each client's samples keep ({summary.modality}{shown})"
        fig, ax = plt.subplots(figsize=_heatmap_size(len(columns), len(rows)))
        _heatmap(ax, matrix[rows].tolist(), [table.ids[i] for i in rows], columns, title, fig)
        names.append("partition_modality.png")
        _save(fig, out_dir / names[-1])
    return names


def _summary_figure(counted: LabelCounts, task: str, counts, rows, columns, title):
    """The shown clients' heatmap beside the histograms of every client's size and entropy."""
    width, height = _heatmap_size(len(columns), len(rows))
    fig = plt.figure(figsize=(width + 5, height))
    grid = fig.add_gridspec(2, 2, width_ratios=(width, 5))
    _heatmap(fig.add_subplot(grid[:, 0]), counts, rows, columns, title, fig)
    sizes = counted.sizes()
    entropy = counted.entropy()
    held = sizes[sizes > 0]
    ax = fig.add_subplot(grid[0, 1])
    if held.max() <= 50:  # a bar per size
        ax.hist(held, bins=np.arange(held.min(), held.max() + 2) - 0.5, color="tab:blue")
        ax.set_xticks(range(held.min(), held.max() + 1, max(1, (held.max() - held.min()) // 10)))
    else:  # sizes spanning decades: log-spaced bins
        ax.hist(
            held, bins=np.unique(np.geomspace(1, held.max() + 1, 30).astype(int)), color="tab:blue"
        )
        ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"samples ({task})")
    ax.set_ylabel("clients")
    ax.set_title(f"client sizes, all {len(held):,} holding {task}", fontsize=9)
    ax = fig.add_subplot(grid[1, 1])
    ax.hist(entropy[~np.isnan(entropy)], bins=30, color="tab:orange")
    ax.axvline(np.log2(len(columns)), color="gray", linestyle=":", label="uniform over labels")
    ax.set_yscale("log")
    ax.set_xlabel("label entropy (bits)")
    ax.set_ylabel("clients")
    ax.set_title("label skew: lower is more skewed", fontsize=9)
    ax.legend(fontsize=7)
    return fig


def _heatmap_size(columns: int, rows: int) -> tuple[float, float]:
    return max(6, 0.45 * columns + 2), 0.42 * rows + 1.6


def _heatmap(
    ax, counts: list[list[int]], rows: list[str], columns: list[str], title: str, fig
) -> None:
    """A counts table as a heatmap with the numbers written in."""
    image = ax.imshow(counts, aspect="auto", cmap="Blues")
    ax.set_xticks(range(len(columns)))
    ax.set_xticklabels(columns, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(rows, fontsize=8)
    dark = 0.6 * max(map(max, counts))
    for i, row in enumerate(counts):
        for j, value in enumerate(row):
            if value:
                ax.text(
                    j,
                    i,
                    str(value),
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if value > dark else "black",
                )
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.03)


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
