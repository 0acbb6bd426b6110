"""Small data sets in the public datasets' official formats (VQA v2, Hateful Memes,
CrisisMMD), written by the tests: rendered ShapesWorld scenes as the images, one corrupt."""

import json

import numpy as np
import pytest
from PIL import Image

from fedumm.data import shapesworld, vqa_v2

CRISIS_HEADER = (
    "event_name\ttweet_id\timage_id\ttweet_text\timage\tlabel\tlabel_text\t"
    "label_image\tlabel_text_image"
)
CRISIS_LABELS = (
    "not_humanitarian",
    "infrastructure_and_utility_damage",
    "rescue_volunteering_or_donation_effort",
)


def picture(path, seed, size=(48, 40)):
    """A rendered scene at another size than the model's, saved as PNG or JPEG."""
    rng = np.random.default_rng(seed)
    image = shapesworld.render(shapesworld.sample_scene(rng))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).resize(size).save(path)


def write_vqa_v2_split(root, subtype, n, corrupt=None):
    questions, annotations = [], []
    rng = np.random.default_rng(len(subtype))
    for i in range(n):
        image_id = 1000 + i // 2  # two questions per image, as VQA v2 has several
        path = vqa_v2.image_file(root, subtype, image_id)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            if image_id == corrupt:
                path.write_bytes(b"\xff\xd8 truncated")
            else:
                scene = shapesworld.render(shapesworld.sample_scene(rng))
                Image.fromarray(scene).resize((64, 48)).save(path)
        qid = image_id * 1000 + i % 2
        answer = ["yes", "no", "2"][i % 3]
        humans = [answer] * 7 + ["maybe"] * 3
        questions.append(
            {"image_id": image_id, "question": f"is it thing {i}?", "question_id": qid}
        )
        annotations.append(
            {
                "question_id": qid,
                "image_id": image_id,
                "question_type": "is it",
                "answer_type": "number" if answer == "2" else "yes/no",
                "multiple_choice_answer": answer,
                "answers": [
                    {"answer": a, "answer_confidence": "yes", "answer_id": k + 1}
                    for k, a in enumerate(humans)
                ],
            }
        )
    vqa_v2.questions_file(root, subtype).write_text(
        json.dumps(
            {
                "info": {},
                "task_type": "Open-Ended",
                "data_type": "mscoco",
                "license": {},
                "data_subtype": subtype,
                "questions": questions,
            }
        )
    )
    vqa_v2.annotations_file(root, subtype).write_text(
        json.dumps({"info": {}, "license": {}, "data_subtype": subtype, "annotations": annotations})
    )


@pytest.fixture
def vqa_root(tmp_path):
    root = tmp_path / "vqa_v2"
    root.mkdir()
    write_vqa_v2_split(root, "train2014", 36, corrupt=1003)
    write_vqa_v2_split(root, "val2014", 12)
    return root


@pytest.fixture
def hateful_memes(tmp_path):
    root = tmp_path / "hateful_memes"
    for name, n in (("train.jsonl", 40), ("dev_seen.jsonl", 12)):
        lines = []
        for i in range(n):
            img = f"img/{name[:3]}{i:03d}.png"
            picture(root / img, i)
            lines.append(
                json.dumps({"id": i, "img": img, "label": i % 2, "text": f"meme text {i}"})
            )
        if name == "train.jsonl":
            (root / "img" / "bad.png").write_bytes(b"not a png")
            lines.append(json.dumps({"id": 99, "img": "img/bad.png", "label": 1, "text": "x"}))
        (root / name).write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def crisismmd(tmp_path):
    root = tmp_path / "CrisisMMD_v2.0"
    split_dir = root / "crisismmd_datasplit_all"
    split_dir.mkdir(parents=True)
    for split, n in (("train", 30), ("test", 9)):
        rows = [CRISIS_HEADER]
        for i in range(n):
            image = f"data_image/hurricane_irma/10_9_2017/{split}{i}_0.jpg"
            picture(root / image, 100 + i, size=(60, 44))
            label = CRISIS_LABELS[i % 3]
            rows.append(
                f"hurricane_irma\t{i}\t{i}_0\ttweet number {i}\t{image}\t{label}\t"
                f"{label}\t{label}\tPositive"
            )
        name = f"task_humanitarian_text_img_{split}.tsv"
        (split_dir / name).write_text("\n".join(rows) + "\n")
    return root
