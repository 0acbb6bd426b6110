"""Hateful Memes and CrisisMMD read from files in their official formats, which the tests
write: small folders of images plus JSONL / TSV, one image corrupt."""

import json

import pytest

from fedumm.data.classification_files import read_split
from tests.official_formats import CRISIS_LABELS
from tests.tiny import assert_trained, run_tiny


def test_hateful_memes_are_read_resized_and_a_bad_image_is_counted(hateful_memes):
    split = read_split("hateful_memes", hateful_memes, "train.jsonl", 32, limit=1000)
    assert len(split.samples) == 40 and split.skipped_images == ["img/bad.png"]
    assert split.samples[0].image.shape == (32, 32, 3)
    assert [s.label for s in split.samples[:2]] == ["benign", "hateful"]
    assert split.samples[3].message == "meme text 3"
    assert len(read_split("hateful_memes", hateful_memes, "train.jsonl", 32, limit=5).samples) == 5


def test_crisismmd_tsv_is_read_with_its_labels(crisismmd):
    path = "crisismmd_datasplit_all/task_humanitarian_text_img_test.tsv"
    split = read_split("crisismmd", crisismmd, path, 32, limit=1000)
    assert [s.label for s in split.samples[:3]] == list(CRISIS_LABELS)
    assert split.samples[1].message == "tweet number 1" and not split.skipped_images


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "train.jsonl:2: not a JSON object"),
        ('{"id": 1, "img": "img/tra000.png", "label": 0}', "train.jsonl:2: missing key 'text'"),
        (
            '{"id": 1, "img": "img/tra000.png", "label": 3, "text": "t"}',
            "train.jsonl:2: label must be 0 or 1, got 3",
        ),
    ],
)
def test_a_malformed_hateful_memes_line_is_named(hateful_memes, line, message):
    path = hateful_memes / "train.jsonl"
    first = path.read_text().splitlines()[0]
    path.write_text(f"{first}\n{line}\n")
    with pytest.raises(ValueError, match=message):
        read_split("hateful_memes", hateful_memes, "train.jsonl", 32, limit=100)


def test_missing_folder_file_and_columns_are_named(crisismmd, tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset folder not found: .*nowhere"):
        read_split("crisismmd", tmp_path / "nowhere", "x.tsv", 32, limit=10)
    with pytest.raises(FileNotFoundError, match="crisismmd file not found: .*x.tsv"):
        read_split("crisismmd", crisismmd, "x.tsv", 32, limit=10)
    (crisismmd / "short.tsv").write_text("event_name\ttweet_id\ttweet_text\n")
    with pytest.raises(ValueError, match="short.tsv: header lacks column 'image_id', 'image', "):
        read_split("crisismmd", crisismmd, "short.tsv", 32, limit=10)


@pytest.mark.parametrize("source", ["hateful_memes", "crisismmd"])
def test_a_federation_runs_on_the_files_with_missing_modalities(
    source, hateful_memes, crisismmd, tiny_foundation, tmp_path
):
    root = hateful_memes if source == "hateful_memes" else crisismmd
    out = tmp_path / "run"
    result = run_tiny(
        out,
        tiny_foundation,
        "data.tasks=[classification]",
        f"data.classification.source={source}",
        f"data.classification.root={root}",
        "partition.modality.scenario=missing",
        "partition.alpha=1.0",
        "partition.min_samples=2",
    )
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    data = results["data"]["classification"]
    expected = ["benign", "hateful"] if source == "hateful_memes" else sorted(CRISIS_LABELS)
    assert data["classes"] == expected and data["source"] == source
    assert data["skipped_images"] == (["img/bad.png"] if source == "hateful_memes" else [])
    final = results["final"]["metrics"]
    assert set(final["per_class_auc"]) == set(expected)
    assert 0 <= final["classification_auc"] <= 100
    assert_trained(results)


def test_a_file_source_without_a_root_is_refused_before_work(tiny_foundation, tmp_path):
    result = run_tiny(
        tmp_path / "run",
        tiny_foundation,
        "data.tasks=[classification]",
        "data.classification.source=hateful_memes",
    )
    assert result.exit_code == 2
    assert "data.classification: Value error, source 'hateful_memes' needs root" in result.output
