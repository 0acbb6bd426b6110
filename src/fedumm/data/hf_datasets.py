"""Any Hugging Face `datasets` data set on disk, for VQA or classification: a folder written by
`save_to_disk`, a folder of parquet files (`train-*.parquet`, `test-*.parquet`, as on the hub),
or an image folder (`train/`, `test/`, each with a `metadata.jsonl` of `file_name` and the other
columns; without one, `datasets` names a `label` column after the sub-folders). The config maps
its columns to what a task reads.

Rows are read one at a time and each image is decoded (by PIL, from the bytes or the file the
data set holds) and resized as it is read; one that cannot be decoded is skipped and counted by
its row, not a crash. A missing folder, split or column is an error that names it.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedumm.config import HFDatasetSpec
from fedumm.data.classification_files import Encode, Split, load_image
from fedumm.data.reports import ReportSample


@dataclass
class VQARows:
    """Questions with their images, answers (one, or the humans') and families."""

    images: list[np.ndarray] = field(default_factory=list)
    questions: list[str] = field(default_factory=list)
    answers: list[list[str]] = field(default_factory=list)
    families: list[str] = field(default_factory=list)
    skipped_images: list[str] = field(default_factory=list)

    @property
    def targets(self) -> list[str]:
        """The training answer: the most common one (first on a tie)."""
        return [Counter(a).most_common(1)[0][0] for a in self.answers]


def _format(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        return "disk"
    return "parquet" if any(path.rglob("*.parquet")) else "imagefolder"


def load_split(spec: HFDatasetSpec, split: str, where: str):
    """One split of the data set `spec` names; `where` is its config key, for errors."""
    import datasets

    path = Path(spec.path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{where}.path: no data set at {path}")
    fmt = _format(path, spec.format)
    if fmt == "disk":
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.Dataset):
            loaded = datasets.DatasetDict({"train": loaded})
    else:
        loaded = datasets.load_dataset(fmt, data_dir=str(path))
    if split not in loaded:
        raise ValueError(f"{path} ({fmt}): no split {split!r}; it has {', '.join(loaded)}")
    return loaded[split]


def _rows(dataset, columns: dict[str, str], limit: int, path: str, where: str) -> Iterator:
    """(row number, row) for the first `limit` rows, images left undecoded."""
    import datasets

    missing = {k: c for k, c in columns.items() if c not in dataset.column_names}
    if missing:
        key, column = next(iter(missing.items()))
        raise ValueError(
            f"{path}: no column {column!r} ({where}.columns.{key}); it has "
            f"{', '.join(dataset.column_names)}"
        )
    image = columns["image"]
    if isinstance(dataset.features[image], datasets.Image):
        dataset = dataset.cast_column(image, datasets.Image(decode=False))
    yield from enumerate(dataset.select(range(min(limit, len(dataset)))))


def _image(value, root: Path, size: int) -> np.ndarray | None:
    """An image cell: {'bytes', 'path'} from an Image column, or a path relative to `root`."""
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return load_image(io.BytesIO(value["bytes"]), size)
        value = value.get("path")
    return load_image(root / value, size) if value else None


def read_vqa(spec: HFDatasetSpec, split: str, size: int, limit: int) -> VQARows:
    """VQA rows: `columns` maps image, question, answer (a string, or the humans' list) and
    optionally family."""
    dataset = load_split(spec, split, "data.hf_dataset")
    wanted = {k: spec.columns[k] for k in ("image", "question", "answer", "family")
              if k in spec.columns}  # fmt: skip
    out = VQARows()
    for number, row in _rows(dataset, wanted, limit, spec.path, "data.hf_dataset"):
        image = _image(row[wanted["image"]], Path(spec.path), size)
        if image is None:
            out.skipped_images.append(f"{split} row {number}")
            continue
        answer = row[wanted["answer"]]
        out.images.append(image)
        out.questions.append(str(row[wanted["question"]]))
        out.answers.append([str(a) for a in answer] if isinstance(answer, list) else [str(answer)])
        out.families.append(str(row[wanted["family"]]) if "family" in wanted else "all")
    return out


def read_classification(
    spec: HFDatasetSpec, split: str, size: int, limit: int, encode: Encode | None = None
) -> Split:
    """Classification rows: `columns` maps image, text and label (a class name, or an integer
    of a ClassLabel column, named by it); with `encode`, each sample keeps `encode(file or
    None, image)` as its image (see classification_files.read_split)."""
    where = "data.classification.hf_dataset"
    dataset = load_split(spec, split, where)
    wanted = {k: spec.columns[k] for k in ("image", "text", "label")}
    feature = dataset.features.get(wanted["label"])
    name = feature.int2str if hasattr(feature, "int2str") else str
    out = Split([])
    for number, row in _rows(dataset, wanted, limit, spec.path, where):
        image = _image(row[wanted["image"]], Path(spec.path), size)
        if image is None:
            out.skipped_images.append(f"{split} row {number}")
            continue
        kept = image if encode is None else encode(None, image)
        out.samples.append(ReportSample(kept, str(row[wanted["text"]] or ""),
                                        name(row[wanted["label"]])))  # fmt: skip
    return out
