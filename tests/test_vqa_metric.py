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


def test_official_score_differs_from_exact_match_with_ten_human_answers():
    from fedumm.evaluation.vqa import vqa_score

    # 3 of 10 humans said "net": each nine-answer subset without one of them holds 2 "net"
    # (2/3), the seven others hold 3 (1): (3 * 2/3 + 7) / 10. Exact match against the most
    # common answer ("netting") would give 0.
    humans = ["net"] * 3 + ["netting"] * 7
    assert vqa_score("Net.", humans) == pytest.approx(0.9)
    assert vqa_score("netting", humans) == 1.0
    # One human of ten: 9 subsets hold it once (1/3), one not at all.
    assert vqa_score("yes", ["yes"] + ["no"] * 9) == pytest.approx(0.3)
    # Where humans disagree, their punctuation is normalised as the prediction's is.
    assert vqa_score("T-Shirt", ["t-shirt"] * 5 + ["shirt"] * 5) == 1.0
    # Number words become digits in predictions only (VQA v2's human answers already are).
    assert vqa_score("two", ["2"] * 10) == 1.0
    m = vqa_accuracy(["net", "2"], [humans, "two"], ["other", "number"])
    assert m["per_family"] == {"number": 100.0, "other": pytest.approx(90.0)}
