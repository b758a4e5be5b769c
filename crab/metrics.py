"""The one place where the reported metrics are defined.

WAR (weighted average recall) = accuracy; UAR (unweighted average recall) = mean
per-class recall (balanced accuracy); macro-F1 = unweighted mean of per-class F1;
weighted-F1 = per-class F1 weighted by the class's true count. As scikit-learn
does with ``labels`` unset, UAR averages over the classes present in the
references and macro-F1 over those present in references or predictions, so a
test split that lacks a class is scored on the classes it has.
"""

import numpy as np

METRICS = ("WAR", "UAR", "macro_F1", "weighted_F1")


def confusion_matrix(y_true, y_pred, num_classes):
    """Counts with true classes on rows, predicted on columns."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return matrix


def scores_from_confusion(matrix):
    """WAR, UAR, macro-F1 and weighted-F1 from a confusion matrix."""
    matrix = np.asarray(matrix, dtype=np.float64)
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    correct = np.diag(matrix)
    present = support > 0
    recall = np.divide(correct, support, out=np.zeros_like(correct), where=present)
    precision = np.divide(correct, predicted, out=np.zeros_like(correct), where=predicted > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(correct), where=denom > 0)
    total = support.sum()
    return {
        "WAR": float(correct.sum() / total),
        "UAR": float(recall[present].mean()),
        "macro_F1": float(f1[present | (predicted > 0)].mean()),
        "weighted_F1": float((f1 * support).sum() / total),
    }


def compute_scores(y_true, y_pred, num_classes):
    """WAR, UAR, macro-F1 and weighted-F1 of integer label sequences."""
    if len(y_true) == 0:
        raise ValueError("cannot score an empty set of predictions")
    return scores_from_confusion(confusion_matrix(y_true, y_pred, num_classes))
