"""Accuracy, macro F1 and AUC from class scores, against hand-computed cases."""

import math

import numpy as np
import pytest

from fedumm.evaluation.classification import classification_metrics, one_vs_rest_auc


def test_auc_is_the_share_of_correctly_ordered_pairs_with_ties_half():
    scores = np.array([0.9, 0.4, 0.4, 0.2, 0.8])
    positive = np.array([True, True, False, False, False])
    # pairs (pos, neg): 0.9 beats 0.4, 0.2, 0.8 (3); 0.4 ties 0.4 (0.5), beats 0.2, loses 0.8
    assert one_vs_rest_auc(scores, positive) == pytest.approx(4.5 / 6)
    assert math.isnan(one_vs_rest_auc(scores, np.zeros(5, dtype=bool)))


def test_binary_case_by_hand():
    classes = ["no", "yes"]
    p_yes = np.array([0.9, 0.6, 0.4, 0.3, 0.7, 0.1])
    labels = ["yes", "yes", "yes", "no", "no", "no"]
    m = classification_metrics(np.stack([1 - p_yes, p_yes], 1), labels, classes)
    # predictions: yes yes no no yes no -> 4 of 6 right
    assert m["classification_accuracy"] == pytest.approx(100 * 4 / 6)
    # yes: tp 2 fp 1 fn 1 -> F1 2/3; no: tp 2 fp 1 fn 1 -> 2/3
    assert m["classification_macro_f1"] == pytest.approx(100 * 2 / 3)
    # pos scores .9 .6 .4 vs neg .3 .7 .1: .9 beats 3, .6 beats 2, .4 beats 2 -> 7/9
    assert m["classification_auc"] == pytest.approx(100 * 7 / 9)
    assert m["per_class_auc"]["no"] == pytest.approx(100 * 7 / 9)


def test_auc_sees_confidence_that_hard_labels_hide():
    classes = ["a", "b"]
    labels = ["a", "b", "a", "b"]
    confident = np.array([[0.9, 0.1], [0.2, 0.8], [0.45, 0.55], [0.6, 0.4]])
    hedged = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.95, 0.05]])
    a, b = (classification_metrics(s, labels, classes) for s in (confident, hedged))
    assert a["classification_accuracy"] == b["classification_accuracy"] == 50.0
    assert a["classification_auc"] > b["classification_auc"]


def test_macro_f1_weights_every_class_equally():
    classes = ["a", "b", "c"]
    labels = ["a"] * 8 + ["b", "c"]
    scores = np.tile([1.0, 0.0, 0.0], (10, 1))  # always "a"
    m = classification_metrics(scores, labels, classes)
    assert m["classification_accuracy"] == pytest.approx(80.0)
    # a: tp 8 fp 2 -> 16/18; b and c: 0
    assert m["classification_macro_f1"] == pytest.approx(100 * (16 / 18) / 3)
    assert m["per_class_recall"] == {"a": 100.0, "b": 0.0, "c": 0.0}


def test_bad_shapes_and_labels_are_named():
    with pytest.raises(ValueError, match=r"shape \(2, 2\), expected \(3, 2\)"):
        classification_metrics(np.zeros((2, 2)), ["a", "b", "a"], ["a", "b"])
    with pytest.raises(ValueError, match=r"\['z'\] are not among"):
        classification_metrics(np.zeros((1, 2)), ["z"], ["a", "b"])
