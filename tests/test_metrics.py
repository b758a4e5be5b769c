"""WAR, UAR, macro-F1 and weighted-F1 against hand-computed values."""

import pytest

from crab.metrics import compute_scores, confusion_matrix


def test_confusion_matrix_rows_are_true_classes():
    matrix = confusion_matrix([0, 0, 1, 2], [0, 1, 1, 1], 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 0], [0, 1, 0]]


def test_scores_hand_computed():
    # true:  a a a a b b c   predicted: a a a b b c c
    y_true = [0, 0, 0, 0, 1, 1, 2]
    y_pred = [0, 0, 0, 1, 1, 2, 2]
    scores = compute_scores(y_true, y_pred, 3)
    assert scores["WAR"] == pytest.approx(5 / 7)
    # recalls: a 3/4, b 1/2, c 1/1
    assert scores["UAR"] == pytest.approx((0.75 + 0.5 + 1.0) / 3)
    # precisions: a 3/3, b 1/2, c 1/2; F1: a 6/7, b 1/2, c 2/3
    f1 = [6 / 7, 0.5, 2 / 3]
    assert scores["macro_F1"] == pytest.approx(sum(f1) / 3)
    assert scores["weighted_F1"] == pytest.approx((4 * f1[0] + 2 * f1[1] + 1 * f1[2]) / 7)


def test_uar_differs_from_war_on_imbalanced_data():
    # Always predicting the majority class: WAR 0.8, UAR 0.5.
    scores = compute_scores([0] * 8 + [1] * 2, [0] * 10, 2)
    assert scores["WAR"] == pytest.approx(0.8)
    assert scores["UAR"] == pytest.approx(0.5)


def test_class_absent_from_references():
    # class 2 never true: UAR over classes 0, 1; macro-F1 also counts class 2,
    # which was predicted (F1 0), as scikit-learn does.
    scores = compute_scores([0, 0, 1, 1], [0, 2, 1, 1], 3)
    assert scores["UAR"] == pytest.approx((0.5 + 1.0) / 2)
    assert scores["macro_F1"] == pytest.approx((2 / 3 + 1.0 + 0.0) / 3)
    # class 2 neither true nor predicted: left out entirely
    scores = compute_scores([0, 1], [0, 1], 3)
    assert scores["UAR"] == 1.0 and scores["macro_F1"] == 1.0


def test_empty_input_is_an_error():
    with pytest.raises(ValueError):
        compute_scores([], [], 2)
