import pytest

from fedumm.evaluation.vqa import normalize_answer, vqa_accuracy


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Two.", "2"),
        ("  YES! ", "yes"),
        ("the red", "red"),
        ("a circle", "circle"),
        ("dont", "don't"),
        ("left,", "left"),
        ("3.5", "3.5"),
        ("none", "0"),
    ],
)
def test_normalize_answer_like_the_official_script(raw, expected):
    assert normalize_answer(raw) == expected


def test_accuracy_per_family():
    m = vqa_accuracy(["Two", "blue", "no", "yes"], ["2", "red", "no", "no"],
                     ["count", "color", "yesno", "yesno"])  # fmt: skip
    assert m["vqa_accuracy"] == 50.0
    assert m["per_family"] == {"color": 0.0, "count": 100.0, "yesno": 50.0}
    assert m["num_questions"] == 4


def test_accuracy_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="same length"):
        vqa_accuracy(["a"], ["a", "b"], ["x"])
