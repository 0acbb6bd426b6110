"""Any Hugging Face `datasets` data set on disk, for VQA or classification: a folder written by
`save_to_disk`, a folder of parquet files (`train-*.parquet`, `test-*.parquet`, as on the hub),
or an image folder (`train/`, `test/`, each with a `metadata.jsonl` of `file_name` and the other
columns; without one, `datasets` names a `label` column after the sub-folders). The config maps
its columns to what a task reads.

Rows are read one at a time and each image is decoded (by PIL, from the bytes or the file the
data set holds) and resized as it is read; one that cannot be decoded is skipped and counted by
its row, not a crash. A Hugging Face model keeps only an `ImageRow` and decodes it again per
batch from the memory-mapped table. A missing folder, split or column is an error that names
it.
"""

from __future__ import annotations

import functools
import io
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedumm.config import HFDatasetSpec
from fedumm.data.classification_files import Split
from fedumm.data.images import Encode, load_image
from fedumm.data.incident_reports import ReportSample


@dataclass
class VQARows:
    """Questions with their images, answers (one, or the humans') and families."""

    images: list = field(default_factory=list)  # arrays, or what `encode` kept of them
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


def _location(spec: HFDatasetSpec, where: str) -> tuple[str, str]:
    """(folder, storage format) of the data set `spec` names; `where` is its config key."""
    path = Path(spec.path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{where}.path: no data set at {path}")
    return str(path), _format(path, spec.format)


@functools.lru_cache(maxsize=8)
def _open(path: str, fmt: str, split: str):
    """A split, opened once per process (Arrow tables are memory-mapped, not read into RAM)."""
    import datasets

    if fmt == "disk":
        loaded = datasets.load_from_disk(path)
        if isinstance(loaded, datasets.Dataset):
            loaded = datasets.DatasetDict({"train": loaded})
    else:
        loaded = datasets.load_dataset(fmt, data_dir=path)
    if split not in loaded:
        raise ValueError(f"{path} ({fmt}): no split {split!r}; it has {', '.join(loaded)}")
    return loaded[split]


@dataclass(frozen=True)
class ImageRow:
    """An image in row `index` of a data set's split, decoded again on each `load`."""

    path: str
    fmt: str
    split: str
    column: str
    index: int
    size: int

    def load(self) -> np.ndarray:
        cell = _undecoded(self.path, self.fmt, self.split, self.column)[self.index]
        image = _image(cell[self.column], Path(self.path), self.size)
        if image is None:
            raise OSError(f"{self.path} {self.split} row {self.index}: no longer decodes")
        return image


@functools.lru_cache(maxsize=8)
def _undecoded(path: str, fmt: str, split: str, column: str):
    """A split whose Image `column` gives its stored bytes or path, not a PIL image (once per
    process: every kept ImageRow reads through it)."""
    import datasets

    dataset = _open(path, fmt, split)
    if isinstance(dataset.features[column], datasets.Image):
        return dataset.cast_column(column, datasets.Image(decode=False))
    return dataset


def _read(
    spec: HFDatasetSpec,
    split: str,
    roles: dict[str, str],
    size: int,
    limit: int,
    where: str,
    encode: Encode | None,
) -> tuple[object, list[tuple[dict, object]], list[str]]:
    """The split, its first `limit` rows whose image decodes, each with what it keeps of its
    image (the array, or `encode(its ImageRow, array)`), and the rows whose image did not."""
    path, fmt = _location(spec, where)
    dataset = _open(path, fmt, split)
    missing = {k: c for k, c in roles.items() if c not in dataset.column_names}
    if missing:
        key, column = next(iter(missing.items()))
        raise ValueError(
            f"{path}: no column {column!r} ({where}.columns.{key}); it has "
            f"{', '.join(dataset.column_names)}"
        )
    column = roles["image"]
    kept, skipped = [], []
    rows = _undecoded(path, fmt, split, column).select(range(min(limit, len(dataset))))
    for index, row in enumerate(rows):
        image = _image(row[column], Path(path), size)
        if image is None:
            skipped.append(f"{split} row {index}")
            continue
        stored = ImageRow(path, fmt, split, column, index, size)
        kept.append((row, image if encode is None else encode(stored, image)))
    return dataset, kept, skipped


def _image(value, root: Path, size: int) -> np.ndarray | None:
    """An image cell: {'bytes', 'path'} from an Image column, or a path relative to `root`."""
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return load_image(io.BytesIO(value["bytes"]), size)
        value = value.get("path")
    return load_image(root / value, size) if value else None


def read_vqa(
    spec: HFDatasetSpec, split: str, size: int, limit: int, encode: Encode | None = None
) -> VQARows:
    """VQA rows: `columns` maps image, question, answer (a string, or the humans' list) and
    optionally family; with `encode`, `images` holds what `encode` keeps of each."""
    roles = {
        k: spec.columns[k] for k in ("image", "question", "answer", "family") if k in spec.columns
    }
    _, rows, skipped = _read(spec, split, roles, size, limit, "data.hf_dataset", encode)
    out = VQARows(skipped_images=skipped)
    for row, image in rows:
        answer = row[roles["answer"]]
        out.images.append(image)
        out.questions.append(str(row[roles["question"]]))
        out.answers.append([str(a) for a in answer] if isinstance(answer, list) else [str(answer)])
        out.families.append(str(row[roles["family"]]) if "family" in roles else "all")
    return out


def read_classification(
    spec: HFDatasetSpec, split: str, size: int, limit: int, encode: Encode | None = None
) -> Split:
    """Classification rows: `columns` maps image, text and label (a class name, or an integer
    of a ClassLabel column, named by it); with `encode`, each sample keeps what `encode` keeps
    of its image."""
    where = "data.classification.hf_dataset"
    roles = {k: spec.columns[k] for k in ("image", "text", "label")}
    dataset, rows, skipped = _read(spec, split, roles, size, limit, where, encode)
    feature = dataset.features.get(roles["label"])
    name = feature.int2str if hasattr(feature, "int2str") else str
    return Split(
        [
            ReportSample(image, str(row[roles["text"]] or ""), name(row[roles["label"]]))
            for row, image in rows
        ],
        skipped,
    )
