"""Partitions of many clients: compact partition.json, summarized plots and report, repaired
Dirichlet draws, client states on disk: at tiny scale, end to end."""

import json

import numpy as np
from PIL import Image

from fedumm import partition_report
from fedumm.clients import write_partition
from fedumm.config import load_config
from fedumm.partition_report import SHOWN, ClientTable, plot_partitions
from tests.tiny import run_tiny

MANY = [
    "federation.num_clients=60",
    "data.train_samples=150",
    "partition.min_samples=2",
    "partition.alpha=0.1",
    "federation.rounds=2",
    "baselines.local=false",
    "federation.strategy.name=scaffold",
]


def test_a_federation_of_60_clients_is_summarized(tiny_foundation, tmp_path):
    result = run_tiny(tmp_path, tiny_foundation, *MANY)
    assert result.exit_code == 0, result.output
    part = json.loads((tmp_path / "results.json").read_text())["partition"]
    assert "clients" not in part and len(part["client_arrays"]["samples"]) == 60
    table = ClientTable.of(part)
    assert table.samples.sum() == 150 and table.samples.min() >= 2
    # Dirichlet(0.1) over 60 clients with 2.5 samples each: no draw gives all of them 2
    repaired = part["repaired"]["vqa"]
    assert repaired["clients"] > 0 and repaired["samples_moved"] >= repaired["clients"]
    report = (tmp_path / "report.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith("| site-")]
    assert len(rows) == 2 * SHOWN
    assert sum("(largest)" in r for r in rows) == SHOWN and "samples_moved" not in report
    assert f"{repaired['samples_moved']:,} random samples of the largest" in report
    # SCAFFOLD's control variates: a file per client that trained, none for the others
    trained = {
        c
        for r in json.loads((tmp_path / "results.json").read_text())["rounds"]
        for c in r["client_metrics"]
    }
    files = {p.name.split(".")[0] for p in (tmp_path / "client_states").iterdir()}
    assert files == trained and len(trained) <= 4


def test_both_forms_of_partition_json_are_the_same_table(tiny_foundation, tmp_path, monkeypatch):
    cfg = load_config(
        "configs/quickstart.yaml",
        [
            f"model.foundation={tiny_foundation}",
            "data.train_samples=150",
            "data.test_samples=8",
            "federation.num_clients=45",
            "partition.min_samples=2",
            "federation.clients_per_round=2",
        ],
    )
    arrays = write_partition(cfg, tmp_path / "arrays")
    monkeypatch.setattr(partition_report, "SUMMARY_CLIENTS", 100)
    from fedumm import clients

    monkeypatch.setattr(clients, "SUMMARY_CLIENTS", 100)
    objects = write_partition(cfg, tmp_path / "objects")
    assert "client_arrays" in arrays and len(objects["clients"]) == 45
    a, b = ClientTable.of(arrays), ClientTable.of(objects)
    assert a.ids == b.ids and np.array_equal(a.samples, b.samples)
    assert a.tasks["vqa"].labels == b.tasks["vqa"].labels
    everyone = list(range(45))
    assert np.array_equal(a.tasks["vqa"].rows(everyone), b.tasks["vqa"].rows(everyone))
    small = (tmp_path / "objects" / "partition.json").stat().st_size
    assert (tmp_path / "arrays" / "partition.json").stat().st_size < small / 3


def _synthetic(num_clients: int) -> dict:
    """A partition summary in the array form: 5 labels, Dirichlet(0.3)-like counts."""
    rng = np.random.default_rng(0)
    counts = rng.poisson(rng.dirichlet(np.full(5, 0.3), num_clients) * 6)
    counts[:, 0] += 1
    client, label = np.nonzero(counts)
    return {
        "description": "synthetic",
        "keys": {"vqa": "answer"},
        "labels": {"vqa": list("abcde")},
        "client_arrays": {
            "samples": counts.sum(1).tolist(),
            "label_counts": {
                "vqa": {
                    "client": client.tolist(),
                    "label": label.tolist(),
                    "count": counts[client, label].tolist(),
                }
            },
        },
    }


def test_the_summarized_plot_does_not_grow_with_the_population(tmp_path):
    sizes = []
    for n in (100, 20_000):
        (tmp_path / str(n)).mkdir()
        assert plot_partitions(_synthetic(n), tmp_path / str(n)) == ["partition_vqa.png"]
        sizes.append(Image.open(tmp_path / str(n) / "partition_vqa.png").size)
    assert sizes[0] == sizes[1]
    table = ClientTable.of(_synthetic(20_000))
    rows, why = table.shown("vqa")
    assert len(rows) == 2 * SHOWN and len(set(rows)) == 2 * SHOWN
    sizes = table.tasks["vqa"].sizes()
    assert sizes[rows[:SHOWN]].min() == np.sort(sizes)[-SHOWN]  # the largest
    entropy = table.tasks["vqa"].entropy()
    rest = np.setdiff1d(np.arange(20_000), rows[:SHOWN])
    assert entropy[rows[SHOWN:]].max() <= np.sort(entropy[rest])[SHOWN - 1]  # the most skewed


def test_numbers_lists_go_on_one_line_and_text_is_left_alone():
    from fedumm.report import dump_json

    doc = {
        "sizes": [1, 2, -3.5e-07],
        "text": "a [1, 2] b",
        "nested": [[1, 2], [3]],
        "mixed": [1, "a"],
    }
    text = dump_json(doc)
    assert json.loads(text) == doc
    assert '"sizes": [1,2,-3.5e-07]' in text and '"text": "a [1, 2] b"' in text


def test_a_summary_shows_only_clients_that_hold_the_task():
    summary = _synthetic(100)
    cells = summary["client_arrays"]["label_counts"]["vqa"]
    keep = [i for i, c in enumerate(cells["client"]) if c < 10]  # 10 of 100 clients hold vqa
    summary["client_arrays"]["label_counts"]["vqa"] = {
        k: [v[i] for i in keep] for k, v in cells.items()
    }
    table = ClientTable.of(summary)
    rows, _ = table.shown("vqa")
    assert sorted(rows) == list(range(10))
