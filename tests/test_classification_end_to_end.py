"""The classification task under FedMLLM's modality scenarios, through `fedumm run` and
`fedumm partition` as a user calls them, at tiny scale."""

import json

import numpy as np

from fedumm.cli import app
from fedumm.config import load_config
from fedumm.data.modality import IMAGE, IMAGE_TEXT, TEXT
from fedumm.parts import build_parts
from tests.tiny import run_tiny, runner

CLASSIFICATION = [
    "data.tasks=[classification]",
    "data.classification.train_samples=72",
    "data.classification.test_samples=12",
    "partition.alpha=1.0",
]


def test_a_cross_modal_federation_reports_scores_and_its_partition(tiny_foundation, tmp_path):
    out = tmp_path / "run"
    cross = ["partition.modality.scenario=cross", "partition.modality.image_only_clients=1"]
    result = run_tiny(out, tiny_foundation, *CLASSIFICATION, *cross, "eval.modality_ablation=true")
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    for method in (results["final"], *results["baselines"].values()):
        m = method["metrics"]
        for key in ("classification_accuracy", "classification_macro_f1", "classification_auc"):
            assert 0 <= m[key] <= 100, (key, m[key])
    final = results["final"]["metrics"]
    assert final["classification_num_samples"] == 12
    assert {"classification_accuracy_image_only", "classification_accuracy_text_only"} <= set(final)
    part = results["partition"]
    kept = [c["tasks"]["classification"]["modalities"] for c in part["clients"]]
    assert [k[IMAGE] > 0 for k in kept].count(True) == 1  # one image-only client
    assert all(
        k[IMAGE_TEXT] == 0 and sum(k.values()) == c["samples"]
        for k, c in zip(kept, part["clients"])
    )
    assert part["modality"] == "cross-modal (1 image-only clients)"
    report = (out / "report.md").read_text()
    assert "Classification AUC (%)" in report and "partition_modality.png" in report
    assert (out / "partition_modality.png").is_file() and (out / "partition_classification.png")


def test_partition_command_shows_what_each_client_keeps(tiny_foundation, tmp_path):
    args = ["partition", "configs/classification.yaml", "-o", str(tmp_path)]
    for item in [
        *CLASSIFICATION,
        f"model.foundation={tiny_foundation}",
        "federation.num_clients=3",
        "partition.modality.scenario=missing",
        "partition.modality.drop_probability=0.5",
        "partition.min_samples=4",
    ]:
        args += ["--set", item]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "missing modality (beta=0.5)" in result.output and "keeps image+text" in result.output
    summary = json.loads((tmp_path / "partition.json").read_text())
    kept = [c["tasks"]["classification"]["modalities"] for c in summary["clients"]]
    assert sum(k[IMAGE] + k[TEXT] for k in kept) > 0
    assert sum(sum(k.values()) for k in kept) == 72
    assert (tmp_path / "partition_modality.png").is_file()


def test_centralized_data_is_the_clients_data_with_their_modalities(tiny_foundation):
    cfg = load_config(
        "configs/classification.yaml",
        [
            *CLASSIFICATION,
            f"model.foundation={tiny_foundation}",
            "federation.num_clients=3",
            "partition.min_samples=4",
            "partition.modality.scenario=hybrid",
            "partition.modality.presence_probability=0.5",
            "data.classification.agnostic_prompt=true",
        ],
    )
    fl = build_parts(cfg)
    held = sorted(tuple(e.input_ids) for c in fl.clients for e in c.data)
    assert held == sorted(tuple(e.input_ids) for e in fl.partition.pooled)
    boi = fl.processor.boi
    images = [boi in e.input_ids for c in fl.clients for e in c.data]
    assert 0 < np.mean(images) < 1  # some samples lost their image
    prompts = {fl.processor.decode_text(e.prompt).split(":")[0] for c in fl.clients for e in c.data}
    assert prompts == {"report"}  # the agnostic prompt: one instruction for every modality
