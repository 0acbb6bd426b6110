"""Who holds what: each task's pool split over the clients, and the summary of it."""

from __future__ import annotations

import numpy as np
import pytest

from fedumm.clients import partition_summary, split_clients
from fedumm.config import PartitionConfig, load_config
from fedumm.data import partition
from fedumm.models import load_processor
from fedumm.tasks import build_tasks
from tests.tiny import TINY_RUN


@pytest.fixture(scope="module")
def unified(tiny_foundation):
    items = [*TINY_RUN, f"model.foundation={tiny_foundation}", "data.tasks=[vqa, generation]"]
    cfg = load_config("configs/quickstart.yaml", items)
    return cfg, build_tasks(cfg, load_processor(cfg.model))


def test_a_clients_data_is_the_union_of_its_share_of_every_task(unified):
    cfg, tasks = unified
    split = split_clients(cfg, tasks)
    assert [c.client_id for c in split.clients] == ["site-1", "site-2", "site-3"]
    for i, client in enumerate(split.clients):
        held = sum(len(split.indices[name][i]) for name in tasks)
        assert len(client.data) == held > 0
    for name, task in tasks.items():  # every sample of every pool goes to exactly one client
        everyone = np.concatenate(split.indices[name])
        assert sorted(everyone.tolist()) == list(range(len(task.labels)))
    assert len(split.pooled) == sum(len(t.train) for t in tasks.values())


def test_the_split_is_the_same_for_the_same_seed_and_differs_for_another(unified):
    cfg, tasks = unified
    again = split_clients(cfg, tasks)
    first = split_clients(cfg, tasks)
    other = split_clients(cfg.model_copy(update={"seed": 1}), tasks)
    for name in tasks:
        assert all(np.array_equal(a, b) for a, b in zip(first.indices[name], again.indices[name]))
    differs = any(
        not np.array_equal(a, b) for a, b in zip(first.indices["vqa"], other.indices["vqa"])
    )
    assert differs


def test_the_summary_counts_every_clients_labels(unified):
    cfg, tasks = unified
    split = split_clients(cfg, tasks)
    summary = partition_summary(cfg, tasks, split)
    assert summary["scheme"] == "dirichlet" and summary["keys"] == {
        "vqa": "answer",
        "generation": "tag",
    }
    for client, shares in zip(split.clients, summary["clients"]):
        assert shares["samples"] == len(client.data)
        assert sum(s["samples"] for s in shares["tasks"].values()) == len(client.data)
        for share in shares["tasks"].values():
            assert sum(share["label_histogram"].values()) == share["samples"]


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "quantity", "shards"])
def test_split_dispatches_on_the_configured_scheme(scheme):
    labels = np.repeat(np.arange(5), 20)  # 10 shards of 10, one label each
    cfg = PartitionConfig(scheme=scheme, shards_per_client=2, min_samples=2)
    parts, note = partition.split(cfg, labels, 5, np.random.default_rng(0))
    assert sorted(np.concatenate(parts).tolist()) == list(range(100))
    if scheme == "iid":
        assert [len(p) for p in parts] == [20] * 5
    if scheme == "shards":  # two label-sorted shards: at most two labels a client
        assert all(len(set(labels[p])) <= 2 for p in parts)
    if scheme != "dirichlet":
        assert note == {}
