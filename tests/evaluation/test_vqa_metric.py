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
    m = vqa_accuracy(
        ["Two", "blue", "no", "yes"], ["2", "red", "no", "no"], ["count", "color", "yesno", "yesno"]
    )
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
    m = vqa_accuracy(["net", "2"], [humans, "two"], ["other", "number"])
    assert m["per_family"] == {"number": 100.0, "other": pytest.approx(90.0)}


def test_the_two_versions_of_the_script_differ_where_the_humans_agree():
    from fedumm.evaluation.vqa import vqa_score

    # The revised script compares raw strings when all ten humans gave the same answer; the
    # original normalised the prediction always ("two" -> "2").
    assert vqa_score("two", ["2"] * 10, rule="current") == 0.0
    assert vqa_score("two", ["2"] * 10, rule="original") == 1.0
    # Where they disagree, the revised script normalises the humans' number words too; the
    # original only their punctuation, so "two" among the humans never matches.
    humans = ["two"] * 5 + ["three"] * 5
    assert vqa_score("2", humans, rule="current") == 1.0
    assert vqa_score("2", humans, rule="original") == 0.0


def test_fewer_than_ten_answers_score_a_full_match_as_one():
    from fedumm.evaluation.vqa import vqa_score

    # Three humans: each leave-one-out subset holds two answers, and two matches are enough.
    assert vqa_score("red", ["red"] * 3) == 1.0
    # One match of three: two subsets hold it once (1/2), one not at all.
    assert vqa_score("red", ["red", "blue", "green"]) == pytest.approx(1 / 3)


def test_unknown_rule_is_named():
    from fedumm.evaluation.vqa import vqa_score

    with pytest.raises(ValueError, match="'newest'.*current, original"):
        vqa_score("a", ["a", "b"], rule="newest")


@pytest.mark.parametrize(
    "raw, expected", [("youre", "you're"), ("oclock", "o'clock"), ("Its a dog", "its dog")]
)
def test_contractions_come_from_the_scripts_table(raw, expected):
    assert normalize_answer(raw) == expected
