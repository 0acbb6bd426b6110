"""VQA v2 read from its official files, without holding its images in memory.

    ROOT/v2_OpenEnded_mscoco_SUBTYPE_questions.json  {"questions": [{image_id, question,
                                                                     question_id}, ...]}
    ROOT/v2_mscoco_SUBTYPE_annotations.json          {"annotations": [{question_id, image_id,
                                                      answers: [{answer, ...} x 10],
                                                      multiple_choice_answer, answer_type}, ...]}
    ROOT/SUBTYPE/COCO_SUBTYPE_<image_id, 12 digits>.jpg

(SUBTYPE e.g. train2014, val2014). The JSON index is read whole (a few hundred MB for all of
VQA v2); images are decoded one at a time, each once however many questions it has, and handed
to `encode` at once, so only their encodings stay (the built-in model's 16 codes; for a Hugging
Face model a reference to the file, decoded again per batch). An image that cannot be decoded
leaves its questions out, counted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedumm.data.images import Encode, ImageFile, load_image


@dataclass(frozen=True)
class VQAv2Question:
    question_id: int
    image_id: int
    question: str
    answers: list[str]  # the ten human answers
    answer: str  # multiple_choice_answer: the most common one, the training target
    answer_type: str  # yes/no, number, other


def questions_file(root: Path, subtype: str) -> Path:
    return Path(root) / f"v2_OpenEnded_mscoco_{subtype}_questions.json"


def annotations_file(root: Path, subtype: str) -> Path:
    return Path(root) / f"v2_mscoco_{subtype}_annotations.json"


def image_file(root: Path, subtype: str, image_id: int) -> Path:
    return Path(root) / subtype / f"COCO_{subtype}_{image_id:012d}.jpg"


def _read_json(path: Path, key: str) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"VQA v2 file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise ValueError(f"{path}: expected an object with a list under {key!r}")
    return data[key]


def _field(entry: dict, key: str, path: Path, index: int):
    if key not in entry:
        raise ValueError(f"{path}: entry {index} has no {key!r}")
    return entry[key]


def read_questions(root: str | Path, subtype: str, limit: int) -> list[VQAv2Question]:
    """The first `limit` questions of `subtype` joined with their annotations."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"VQA v2 folder not found: {root}")
    qpath, apath = questions_file(root, subtype), annotations_file(root, subtype)
    questions = _read_json(qpath, "questions")[:limit]
    annotations = {}
    for i, a in enumerate(_read_json(apath, "annotations")):
        annotations[_field(a, "question_id", apath, i)] = (i, a)
    out = []
    for i, q in enumerate(questions):
        qid = _field(q, "question_id", qpath, i)
        if qid not in annotations:
            raise ValueError(f"{apath}: no annotation for question_id {qid} (from {qpath.name})")
        j, a = annotations[qid]
        answers = [_field(h, "answer", apath, j) for h in _field(a, "answers", apath, j)]
        out.append(
            VQAv2Question(
                qid,
                _field(q, "image_id", qpath, i),
                _field(q, "question", qpath, i),
                answers,
                _field(a, "multiple_choice_answer", apath, j),
                _field(a, "answer_type", apath, j),
            )
        )
    return out


def encode_images(
    questions: list[VQAv2Question],
    root: str | Path,
    subtype: str,
    size: int,
    encode: Encode,
) -> tuple[dict[int, object], list[str]]:
    """Each distinct image decoded once, resized to `size`, and handed to `encode` (with its
    file) right away; returns the encodings by image id and the files that could not be
    decoded."""
    codes: dict[int, np.ndarray] = {}
    skipped: list[str] = []
    for image_id in dict.fromkeys(q.image_id for q in questions):
        path = image_file(Path(root), subtype, image_id)
        image = load_image(path, size)
        if image is None:
            skipped.append(str(path.relative_to(root)))
            continue
        codes[image_id] = encode(ImageFile(path, size), image)
    return codes, skipped
