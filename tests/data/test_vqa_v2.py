"""VQA v2 read from files in its official layout, which the test writes: question and
annotation JSONs with ten human answers, COCO-named images (one corrupt)."""

import json

import numpy as np
import pytest

from fedumm.data import vqa_v2
from tests.tiny import assert_trained, run_tiny


def test_index_joins_questions_and_their_ten_answers(vqa_root):
    questions = vqa_v2.read_questions(vqa_root, "val2014", limit=5)
    assert len(questions) == 5
    q = questions[2]
    assert (q.question_id, q.image_id, q.answer, q.answer_type) == (1001000, 1001, "2", "number")
    assert q.answers == ["2"] * 7 + ["maybe"] * 3


def test_each_image_is_decoded_once_and_a_corrupt_one_is_skipped(vqa_root):
    questions = vqa_v2.read_questions(vqa_root, "train2014", limit=100)
    calls = []

    def encode(stored, image):
        calls.append((stored.path.name, image.shape))
        assert np.array_equal(stored.load(), image)  # the reference decodes to the same image
        return np.zeros(4, dtype=np.int64)

    codes, skipped = vqa_v2.encode_images(questions, vqa_root, "train2014", 32, encode)
    assert skipped == ["train2014/COCO_train2014_000000001003.jpg"]
    assert len(calls) == len(codes) == 17 and len(set(calls)) == 17
    assert calls[0] == ("COCO_train2014_000000001000.jpg", (32, 32, 3))


def test_bad_files_are_named(vqa_root, tmp_path):
    with pytest.raises(FileNotFoundError, match="VQA v2 folder not found"):
        vqa_v2.read_questions(tmp_path / "none", "val2014", 5)
    with pytest.raises(FileNotFoundError, match="v2_OpenEnded_mscoco_test2015_questions.json"):
        vqa_v2.read_questions(vqa_root, "test2015", 5)
    path = vqa_v2.annotations_file(vqa_root, "val2014")
    data = json.loads(path.read_text())
    del data["annotations"][1]["multiple_choice_answer"]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="annotations.json: entry 1 has no 'multiple_choice"):
        vqa_v2.read_questions(vqa_root, "val2014", 5)
    path.write_text(json.dumps({"annotations": data["annotations"][2:]}))
    with pytest.raises(ValueError, match="no annotation for question_id 1000000"):
        vqa_v2.read_questions(vqa_root, "val2014", 5)
    path.write_text("{")
    with pytest.raises(ValueError, match="annotations.json: not valid JSON"):
        vqa_v2.read_questions(vqa_root, "val2014", 5)


def test_a_federation_trains_and_scores_on_vqa_v2_files(vqa_root, tiny_foundation, tmp_path):
    out = tmp_path / "run"
    result = run_tiny(
        out,
        tiny_foundation,
        "data.kind=vqa_v2",
        f"data.vqa_v2.root={vqa_root}",
        "data.train_samples=36",
        "data.test_samples=12",
        "partition.min_samples=2",
    )
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    data = results["data"]["vqa"]
    assert data == {
        "source": "vqa_v2",
        "train_samples": 34,
        "test_samples": 12,
        "skipped_images": ["train2014/COCO_train2014_000000001003.jpg"],
    }
    final = results["final"]["metrics"]
    assert set(final["per_family"]) == {"yes/no", "number"}
    assert 0 <= final["vqa_accuracy"] <= 100  # the official score itself: test_vqa_metric.py
    assert_trained(results)


def test_vqa_v2_without_a_root_is_refused(tiny_foundation, tmp_path):
    result = run_tiny(tmp_path / "run", tiny_foundation, "data.kind=vqa_v2")
    assert result.exit_code == 2 and "kind 'vqa_v2' needs vqa_v2.root" in result.output
