"""WAR, UAR, macro-F1, weighted-F1 and per-class scores against hand-computed values
and scikit-learn, with classes absent from the references or the predictions."""

import warnings

import numpy as np
import pytest
import sklearn.metrics as skm

from crab.metrics import (
    classification_report,
    compute_scores,
    confusion_matrix,
    row_normalised,
    scores_from_confusion,
)


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
    with pytest.raises(ValueError, match="empty confusion matrix"):
        scores_from_confusion(np.zeros((3, 3), dtype=np.int64))


# ---------------------------------------------------------------- per class, absent classes


def test_per_class_hand_computed():
    # true:  a a a a b b c   predicted: a a a b b c c   (as above)
    report = classification_report([0, 0, 0, 0, 1, 1, 2], [0, 0, 0, 1, 1, 2, 2], ["a", "b", "c"])
    assert report["per_class"]["a"] == {
        "support": 4,
        "predicted": 3,
        "precision": 1.0,
        "recall": 0.75,
        "F1": pytest.approx(6 / 7),
    }
    assert report["per_class"]["b"] == {
        "support": 2,
        "predicted": 2,
        "precision": 0.5,
        "recall": 0.5,
        "F1": 0.5,
    }
    assert report["per_class"]["c"] == {
        "support": 1,
        "predicted": 2,
        "precision": 0.5,
        "recall": 1.0,
        "F1": pytest.approx(2 / 3),
    }
    assert report["confusion_matrix"] == [[3, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert report["absent_from_references"] == [] and report["never_predicted"] == []
    assert report["num_utterances"] == 7 and report["UAR"] == pytest.approx(0.75)


def test_class_never_predicted_and_class_never_in_references():
    # classes a b c d; true a a b b c c, predicted a d b b a a:
    # c never predicted (precision undefined, recall 0, F1 0), d never true
    # (recall undefined, precision 0, F1 0).
    classes = ["a", "b", "c", "d"]
    report = classification_report([0, 0, 1, 1, 2, 2], [0, 3, 1, 1, 0, 0], classes)
    pc = report["per_class"]
    assert pc["a"] == {
        "support": 2,
        "predicted": 3,
        "precision": pytest.approx(1 / 3),
        "recall": 0.5,
        "F1": pytest.approx(0.4),
    }
    assert pc["b"] == {"support": 2, "predicted": 2, "precision": 1.0, "recall": 1.0, "F1": 1.0}
    assert pc["c"] == {"support": 2, "predicted": 0, "precision": None, "recall": 0.0, "F1": 0.0}
    assert pc["d"] == {"support": 0, "predicted": 1, "precision": 0.0, "recall": None, "F1": 0.0}
    assert report["absent_from_references"] == ["d"]
    assert report["never_predicted"] == ["c"]
    assert report["WAR"] == pytest.approx(3 / 6)
    assert report["UAR"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)  # d left out
    assert report["macro_F1"] == pytest.approx((0.4 + 1.0 + 0.0 + 0.0) / 4)  # d counted (predicted)
    assert report["weighted_F1"] == pytest.approx((2 * 0.4 + 2 * 1.0) / 6)
    # a class neither true nor predicted is undefined everywhere and left out
    report = classification_report([0, 1], [0, 1], ["a", "b", "c"])
    assert report["per_class"]["c"] == {
        "support": 0,
        "predicted": 0,
        "precision": None,
        "recall": None,
        "F1": None,
    }
    assert report["absent_from_references"] == ["c"] and report["UAR"] == 1.0 and report["macro_F1"] == 1.0
    assert report["never_predicted"] == []  # c has no references to miss


def test_row_normalised_confusion():
    normalised = row_normalised([[3, 1, 0], [0, 0, 0], [1, 1, 2]])
    assert normalised[0].tolist() == [0.75, 0.25, 0.0]
    assert np.isnan(normalised[1]).all()
    assert normalised[2].tolist() == [0.25, 0.25, 0.5]


@pytest.mark.parametrize("seed", range(40))
def test_agrees_with_scikit_learn_on_random_cases(seed):
    rng = np.random.default_rng(seed)
    num_classes = int(rng.integers(2, 9))
    n = int(rng.integers(1, 60))
    # skewed class probabilities, so that some classes go missing from either side
    y_true = rng.choice(num_classes, n, p=rng.dirichlet(np.full(num_classes, 0.5)))
    y_pred = np.where(
        rng.random(n) < 0.5, y_true, rng.choice(num_classes, n, p=rng.dirichlet(np.full(num_classes, 0.5)))
    )
    report = classification_report(y_true, y_pred, [f"c{k}" for k in range(num_classes)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about the undefined values we test
        assert report["WAR"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
        assert report["UAR"] == pytest.approx(skm.balanced_accuracy_score(y_true, y_pred))
        assert report["macro_F1"] == pytest.approx(skm.f1_score(y_true, y_pred, average="macro"))
        assert report["weighted_F1"] == pytest.approx(skm.f1_score(y_true, y_pred, average="weighted"))
        labels = list(range(num_classes))
        precision, recall, f1, support = skm.precision_recall_fscore_support(
            y_true, y_pred, labels=labels, zero_division=np.nan
        )
        assert report["confusion_matrix"] == skm.confusion_matrix(y_true, y_pred, labels=labels).tolist()
    for k in labels:
        c = report["per_class"][f"c{k}"]
        assert c["support"] == support[k]
        for ours, theirs in ((c["precision"], precision[k]), (c["recall"], recall[k]), (c["F1"], f1[k])):
            assert (ours is None and np.isnan(theirs)) or ours == pytest.approx(theirs)
    assert report["absent_from_references"] == [f"c{k}" for k in labels if support[k] == 0]
    predicted = set(y_pred.tolist())
    assert report["never_predicted"] == [f"c{k}" for k in labels if support[k] > 0 and k not in predicted]
