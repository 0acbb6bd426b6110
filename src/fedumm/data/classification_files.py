"""Multimodal classification data read from the public datasets' own files.

- Hateful Memes: JSON lines {"id", "img", "label", "text"} (train.jsonl, dev_seen.jsonl, ...),
  `img` relative to the dataset folder; label 1 = hateful.
- CrisisMMD v2.0, humanitarian task: tab-separated files with the header event_name, tweet_id,
  image_id, tweet_text, image, label, label_text, label_image, label_text_image
  (crisismmd_datasplit_all/task_humanitarian_text_img_{train,dev,test}.tsv), `image` relative to
  the dataset folder; the class is `label`.

Images are decoded and resized to the model's input size as they are read, one at a time; one
that cannot be decoded is skipped and counted, not a crash. A missing file, a malformed line or a
missing key is an error naming the file, the line and the key.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from fedumm.data.images import Encode, ImageFile, load_image
from fedumm.data.incident_reports import ReportSample

FORMATS = ("hateful_memes", "crisismmd")
DEFAULT_FILES = {
    "hateful_memes": ("train.jsonl", "dev_seen.jsonl"),
    "crisismmd": (
        "crisismmd_datasplit_all/task_humanitarian_text_img_train.tsv",
        "crisismmd_datasplit_all/task_humanitarian_text_img_test.tsv",
    ),
}
HATEFUL_MEMES_CLASSES = {0: "benign", 1: "hateful"}
CRISISMMD_COLUMNS = ("event_name", "tweet_id", "image_id", "tweet_text", "image", "label")


@dataclass
class Split:
    """The samples of one file, and the images that could not be decoded."""

    samples: list[ReportSample]
    skipped_images: list[str] = field(default_factory=list)


def read_split(
    fmt: str, root: str | Path, file: str, size: int, limit: int, encode: Encode | None = None
) -> Split:
    """At most `limit` samples of `file` (relative to `root`) in format `fmt`; with `encode`,
    each sample keeps `encode(its ImageFile, image)` instead of the decoded array, so the
    decoded images are never all in memory."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    path = root / file
    if not path.is_file():
        raise FileNotFoundError(f"{fmt} file not found: {path}")
    if fmt == "hateful_memes":
        rows = _hateful_memes_rows(path)
    elif fmt == "crisismmd":
        rows = _crisismmd_rows(path)
    else:
        raise ValueError(f"unknown classification format {fmt!r}; known: {', '.join(FORMATS)}")
    split = Split([])
    for image_file, text, label in rows:
        if len(split.samples) == limit:
            break
        image = load_image(root / image_file, size)
        if image is None:
            split.skipped_images.append(image_file)
            continue
        kept = image if encode is None else encode(ImageFile(root / image_file, size), image)
        split.samples.append(ReportSample(kept, text, label))
    return split


def _hateful_memes_rows(path: Path):
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not a JSON object ({e.msg})") from None
            missing = [k for k in ("img", "text", "label") if k not in row]
            if missing:
                raise ValueError(
                    f"{path}:{number}: missing key {', '.join(map(repr, missing))} "
                    "(Hateful Memes lines have id, img, label, text)"
                )
            if row["label"] not in HATEFUL_MEMES_CLASSES:
                raise ValueError(f"{path}:{number}: label must be 0 or 1, got {row['label']!r}")
            yield row["img"], str(row["text"]), HATEFUL_MEMES_CLASSES[row["label"]]


def _crisismmd_rows(path: Path):
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        missing = [c for c in CRISISMMD_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(
                f"{path}: header lacks column {', '.join(map(repr, missing))} (CrisisMMD files "
                f"have {', '.join(CRISISMMD_COLUMNS)}, ...)"
            )
        for number, row in enumerate(reader, 2):
            if not row["label"] or not row["image"]:
                raise ValueError(f"{path}:{number}: empty image or label")
            yield row["image"], row["tweet_text"] or "", row["label"]
