"""Hugging Face `datasets` data sets on disk, in the three ways they are stored (save_to_disk,
parquet files, an image folder), written by the tests with rendered scenes, one image corrupt."""

import io
import json

import datasets
import numpy as np
import pytest
from PIL import Image

from fedumm.config import HFDatasetSpec
from fedumm.data import shapesworld
from fedumm.data.hf_datasets import read_classification, read_vqa
from tests.tiny import run_tiny

CLASSES = ["calm", "alarm"]


def _png(seed: int) -> bytes:
    scene = shapesworld.render(shapesworld.sample_scene(np.random.default_rng(seed)))
    buffer = io.BytesIO()
    Image.fromarray(scene).resize((40, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def _vqa_split(n: int, offset: int, corrupt: int | None = None) -> datasets.Dataset:
    answers = [["yes"] * 7 + ["no"] * 3, ["2"] * 10, ["red"] * 4 + ["blue"] * 6]
    rows = {
        "picture": [
            {"bytes": b"not a png" if i == corrupt else _png(offset + i), "path": None}
            for i in range(n)
        ],
        "query": [f"what about thing {i}?" for i in range(n)],
        "humans": [answers[i % 3] for i in range(n)],
        "kind": [["yes/no", "number", "other"][i % 3] for i in range(n)],
    }
    features = datasets.Features(
        {
            "picture": datasets.Image(),
            "query": datasets.Value("string"),
            "humans": datasets.Sequence(datasets.Value("string")),
            "kind": datasets.Value("string"),
        }
    )
    return datasets.Dataset.from_dict(rows, features=features)


VQA_COLUMNS = {"image": "picture", "question": "query", "answer": "humans", "family": "kind"}


@pytest.fixture
def vqa_on_disk(tmp_path):
    path = tmp_path / "vqa_disk"
    datasets.DatasetDict(
        {"train": _vqa_split(30, 0, corrupt=4), "test": _vqa_split(9, 100)}
    ).save_to_disk(str(path))
    return path


def _classification_split(n: int, offset: int) -> datasets.Dataset:
    rows = {
        "image": [{"bytes": _png(offset + i), "path": None} for i in range(n)],
        "text": [f"message {i}" for i in range(n)],
        "label": [i % 2 for i in range(n)],
    }
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "text": datasets.Value("string"),
            "label": datasets.ClassLabel(names=CLASSES),
        }
    )
    return datasets.Dataset.from_dict(rows, features=features)


@pytest.fixture
def classification_parquet(tmp_path):
    path = tmp_path / "parquet"
    (path / "data").mkdir(parents=True)
    for split, n, offset in (("train", 24, 0), ("test", 8, 50)):
        _classification_split(n, offset).to_parquet(str(path / "data" / f"{split}-00000.parquet"))
    return path


@pytest.fixture
def image_folder(tmp_path):
    path = tmp_path / "images"
    for split, n in (("train", 20), ("test", 6)):
        metadata = []
        for i in range(n):
            name = f"{CLASSES[i % 2]}/{i}.png"
            (path / split / name).parent.mkdir(parents=True, exist_ok=True)
            (path / split / name).write_bytes(_png(i + 7 * len(split)))
            metadata.append(
                json.dumps({"file_name": name, "text": f"note {i}", "label": CLASSES[i % 2]})
            )
        (path / split / "metadata.jsonl").write_text("\n".join(metadata) + "\n")
    return path


def test_vqa_rows_from_save_to_disk_keep_every_human_answer(vqa_on_disk):
    spec = HFDatasetSpec(path=str(vqa_on_disk), columns=VQA_COLUMNS)
    rows = read_vqa(spec, "train", 32, limit=30)
    assert len(rows.questions) == 29 and rows.skipped_images == ["train row 4"]
    assert rows.images[0].shape == (32, 32, 3) and rows.images[0].dtype == np.uint8
    assert rows.answers[0] == ["yes"] * 7 + ["no"] * 3 and rows.targets[:3] == ["yes", "2", "blue"]
    assert rows.families[:3] == ["yes/no", "number", "other"]
    assert len(read_vqa(spec, "test", 32, limit=5).questions) == 5  # the first N


def test_a_kept_row_reference_decodes_to_the_same_image(vqa_on_disk, classification_parquet):
    for path, columns, reader in (
        (vqa_on_disk, VQA_COLUMNS, read_vqa),
        (classification_parquet, {}, read_classification),
    ):
        spec = HFDatasetSpec(path=str(path), **({"columns": columns} if columns else {}))
        rows = reader(spec, "train", 32, 6, lambda stored, image: (stored, image))
        kept = rows.images if reader is read_vqa else [s.image for s in rows.samples]
        assert len(kept) >= 5 and all(np.array_equal(s.load(), i) for s, i in kept)


def test_parquet_class_labels_are_named_by_their_feature(classification_parquet):
    split = read_classification(HFDatasetSpec(path=str(classification_parquet)), "test", 32, 100)
    assert [s.label for s in split.samples[:2]] == CLASSES and len(split.samples) == 8
    assert split.samples[1].message == "message 1" and not split.skipped_images


def test_an_image_folder_gives_text_and_labels_from_its_metadata(image_folder):
    split = read_classification(HFDatasetSpec(path=str(image_folder)), "train", 32, 100)
    assert len(split.samples) == 20
    by_note = {s.message: s.label for s in split.samples}
    assert by_note["note 0"] == "calm" and by_note["note 3"] == "alarm"


def test_a_missing_folder_split_or_column_is_named(vqa_on_disk, tmp_path):
    with pytest.raises(FileNotFoundError, match="data.hf_dataset.path: no data set at"):
        read_vqa(HFDatasetSpec(path=str(tmp_path / "nope")), "train", 32, 10)
    spec = HFDatasetSpec(path=str(vqa_on_disk), columns=VQA_COLUMNS)
    with pytest.raises(ValueError, match="no split 'validation'; it has train, test"):
        read_vqa(spec, "validation", 32, 10)
    spec = HFDatasetSpec(path=str(vqa_on_disk), columns={**VQA_COLUMNS, "question": "q"})
    with pytest.raises(ValueError, match=r"no column 'q' \(data.hf_dataset.columns.question\)"):
        read_vqa(spec, "train", 32, 10)
    with pytest.raises(ValueError, match="unknown column role"):
        HFDatasetSpec(columns={"picture": "image"})


def test_a_federation_runs_on_a_saved_vqa_data_set(vqa_on_disk, tiny_foundation, tmp_path):
    out = tmp_path / "run"
    columns = ",".join(f"{k}: {v}" for k, v in VQA_COLUMNS.items())
    result = run_tiny(
        out,
        tiny_foundation,
        "data.kind=hf_dataset",
        f"data.hf_dataset.path={vqa_on_disk}",
        f"data.hf_dataset.columns={{{columns}}}",
        "partition.key=family",
        "data.train_samples=30",
        "data.test_samples=9",
        "partition.min_samples=2",
    )
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    expected = {
        "source": "hf_dataset",
        "train_samples": 29,
        "test_samples": 9,
        "skipped_images": ["train row 4"],
    }
    assert results["data"]["vqa"] == expected
    assert set(results["final"]["metrics"]["per_family"]) == {"yes/no", "number", "other"}


def test_a_hugging_face_model_classifies_an_image_folder(image_folder, tmp_path):
    from fedumm.models.architectures import build_random

    model = build_random("llava", tmp_path / "llava")
    out = tmp_path / "run"
    result = run_tiny(
        out,
        "builtin",
        f"model.name_or_path={model}",
        "data.tasks=[classification]",
        "data.classification.source=hf_dataset",
        f"data.classification.hf_dataset.path={image_folder}",
        "partition.min_samples=2",
    )
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert results["data"]["classification"]["classes"] == sorted(CLASSES)
    assert 0 <= results["final"]["metrics"]["classification_auc"] <= 100


def test_an_hf_dataset_source_without_a_path_is_a_config_error(tiny_foundation, tmp_path):
    result = run_tiny(tmp_path / "run", tiny_foundation, "data.kind=hf_dataset")
    assert result.exit_code == 2 and "kind 'hf_dataset' needs hf_dataset.path" in result.output
