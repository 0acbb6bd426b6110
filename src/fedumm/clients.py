"""Who holds what: each task's pool split over the clients (the scheme: `data.partition`),
the modalities each classification sample keeps, and the summary results.json and
partition.json keep of it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedumm.config import RunConfig
from fedumm.data import partition
from fedumm.data.modality import IMAGE_TEXT, MODALITIES, assign_modalities, modality_counts
from fedumm.federation.client import ClientData, site_names
from fedumm.models import load_processor
from fedumm.models.processor import Encoded
from fedumm.partition_report import SUMMARY_CLIENTS, plot_partitions
from fedumm.report import dump_json
from fedumm.seeding import derive_seed
from fedumm.tasks import ClassificationTask, Task, build_tasks


@dataclass
class Partition:
    """How the data is spread: each client's samples, and where they came from."""

    clients: list[ClientData]
    indices: dict[str, list[np.ndarray]]  # task -> per client, indices into the task's pool
    modalities: list[np.ndarray] | None  # per client, what each classification sample keeps
    pooled: list[Encoded]  # every pool as the clients hold it: the centralized baseline's data
    repaired: dict[str, dict]  # task -> what its split moved to give every client min_samples


def split_clients(cfg: RunConfig, tasks: dict[str, Task]) -> Partition:
    """Each task's pool split over the clients that hold it (by its own label); a client's
    data is the union of its shares. Classification samples then keep the modalities the
    configured scenario gives them (partition.modality)."""
    k = cfg.federation.num_clients
    data: list[list[Encoded]] = [[] for _ in range(k)]
    indices: dict[str, list[np.ndarray]] = {}
    modalities, pooled, repaired = None, [], {}
    for number, (name, task) in enumerate(tasks.items()):
        holders = [i for i in range(k) if cfg.holds(i, name)]
        stream = (0xDA7A,) if number == 0 else (0xDA7A, number)  # first: as before tasks existed
        rng = np.random.default_rng(derive_seed(cfg.seed, *stream))
        shares, note = partition.split(cfg.partition, task.labels, len(holders), rng)
        if note.get("repaired_clients"):
            repaired[name] = note
        train = task.train
        if name == "classification":
            modalities, train = _apply_modalities(cfg, task, holders, shares)
        indices[name] = [np.array([], dtype=int) for _ in range(k)]
        for i, share in zip(holders, shares):
            indices[name][i] = share
            data[i].extend(train[j] for j in share)
        pooled.extend(train)
    clients = [ClientData(site, d) for site, d in zip(site_names(k), data)]
    return Partition(clients, indices, modalities, pooled, repaired)


def _apply_modalities(
    cfg: RunConfig, task: ClassificationTask, holders: list[int], shares: list[np.ndarray]
) -> tuple[list[np.ndarray], list[Encoded]]:
    """Per client, the modality each of its samples keeps; and the pool encoded that way."""
    m = cfg.partition.modality
    rng = np.random.default_rng(derive_seed(cfg.seed, 0x40DA))
    kept = assign_modalities(
        m.scenario,
        [len(s) for s in shares],
        rng,
        m.drop_probability,
        m.image_only_clients,
        m.presence_probability,
    )
    per_client = [np.array([], dtype=str) for _ in range(cfg.federation.num_clients)]
    pool = np.full(len(task.labels), IMAGE_TEXT, dtype=object)
    for i, share, codes in zip(holders, shares, kept):
        per_client[i] = codes
        pool[share] = codes
    return per_client, task.train_as(pool)


def partition_summary(cfg: RunConfig, tasks: dict[str, Task], split: Partition) -> dict:
    """Per client and task: samples, label counts, modalities kept. Up to SUMMARY_CLIENTS
    clients one object each (easy to read); beyond, arrays (compact at 100,000 clients)."""
    keys = {
        "vqa": cfg.partition.key,
        "generation": cfg.partition.generation_key,
        "classification": "class",
    }
    counts = {
        name: partition.label_counts(t.labels, split.indices[name]) for name, t in tasks.items()
    }
    kept = None
    if split.modalities is not None:
        kept = np.array([list(modality_counts(m).values()) for m in split.modalities])
    summary = {
        "scheme": cfg.partition.scheme,
        "alpha": cfg.partition.alpha if cfg.partition.scheme == "dirichlet" else None,
        "description": cfg.partition.describe(),
        "keys": {name: keys[name] for name in tasks},
        "labels": {name: c.labels for name, c in counts.items()},
    }
    if split.repaired:  # a Dirichlet draw that left clients short was mended: say how much
        summary["repaired"] = {
            name: {"clients": note["repaired_clients"], "samples_moved": note["moved_samples"]}
            for name, note in split.repaired.items()
        }
    if split.modalities is not None:
        summary["modality"] = cfg.partition.modality.describe()
    sizes = [len(c.data) for c in split.clients]
    if len(sizes) > SUMMARY_CLIENTS:
        summary["client_arrays"] = {
            "samples": sizes,
            "label_counts": {
                name: {
                    "client": c.client.tolist(),
                    "label": c.label.tolist(),
                    "count": c.count.tolist(),
                }
                for name, c in counts.items()
            },
        }
        if kept is not None:
            summary["client_arrays"]["modalities"] = dict(zip(MODALITIES, kept.T.tolist()))
        return summary
    clients = []
    for i, c in enumerate(split.clients):
        shares = {}
        for name, held in counts.items():
            row = held.rows([i])[0]
            histogram = {held.labels[j]: int(row[j]) for j in np.flatnonzero(row)}
            shares[name] = {"samples": int(row.sum()), "label_histogram": histogram}
        if kept is not None:
            shares["classification"]["modalities"] = dict(zip(MODALITIES, kept[i].tolist()))
        clients.append({"client_id": c.client_id, "samples": sizes[i], "tasks": shares})
    summary["clients"] = clients
    return summary


def write_partition(cfg: RunConfig, out_dir: Path) -> dict:
    """The partition a run with `cfg` would use, without training: partition.json (per client
    and task: samples, label histogram, modalities kept) and its heatmaps."""

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tasks = build_tasks(cfg, load_processor(cfg.model))
    summary = partition_summary(cfg, tasks, split_clients(cfg, tasks))
    (out_dir / "partition.json").write_text(dump_json(summary))
    plot_partitions(summary, out_dir)
    return summary
