"""The one place where the reported metrics are defined.

Definitions, for C classes and N scored utterances, from the confusion matrix M
(true classes on rows, predicted on columns; M[c, k] counts utterances of class c
predicted as k):

    TP_c = M[c, c]                support_c = sum_k M[c, k]   predicted_c = sum_k M[k, c]
    recall_c    = TP_c / support_c                    (undefined when support_c = 0)
    precision_c = TP_c / predicted_c                  (undefined when predicted_c = 0)
    F1_c        = 2 TP_c / (support_c + predicted_c)  (undefined when both are 0;
                  equal to 2 P R / (P + R) where both are defined, 0 when TP_c = 0)

    WAR (weighted average recall)   = sum_c TP_c / N = accuracy
    UAR (unweighted average recall) = mean of recall_c over the classes where it is
                                      defined = balanced accuracy
    macro-F1    = mean of F1_c over the classes where it is defined
    weighted-F1 = sum_c support_c F1_c / N

An undefined per-class value is left out of an average, never counted as 0: a test
split that lacks a class is scored on the classes it has (UAR over the classes in
the references; macro-F1 over the classes in references or predictions), which is
what scikit-learn does with ``labels`` unset (``balanced_accuracy_score``,
``f1_score(average="macro")``). A predicted class with no references still counts
in macro-F1, with F1 0. Such classes are not dropped silently: ``classification_report``
lists them (``absent_from_references``, ``never_predicted``) and the reports print them.
"""

import numpy as np

METRICS = ("WAR", "UAR", "macro_F1", "weighted_F1")
PER_CLASS = ("precision", "recall", "F1")


def confusion_matrix(y_true, y_pred, num_classes):
    """Counts with true classes on rows, predicted on columns."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return matrix


def _ratio(numerator, denominator):
    """numerator / denominator, NaN where the denominator is 0."""
    out = np.full(numerator.shape, np.nan)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def per_class_scores(matrix):
    """Per-class ``support``, ``predicted`` (counts) and ``precision``, ``recall``,
    ``F1`` (NaN where undefined, see the module docstring), as arrays of length C."""
    matrix = np.asarray(matrix, dtype=np.float64)
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    correct = np.diag(matrix)
    return {
        "support": support.astype(np.int64),
        "predicted": predicted.astype(np.int64),
        "precision": _ratio(correct, predicted),
        "recall": _ratio(correct, support),
        "F1": _ratio(2 * correct, support + predicted),
    }


def scores_from_confusion(matrix):
    """WAR, UAR, macro-F1 and weighted-F1 from a confusion matrix."""
    matrix = np.asarray(matrix)
    total = matrix.sum()
    if total == 0:
        raise ValueError("cannot score an empty confusion matrix")
    per_class = per_class_scores(matrix)
    f1 = per_class["F1"]
    return {
        "WAR": float(np.trace(matrix) / total),
        "UAR": float(np.nanmean(per_class["recall"])),
        "macro_F1": float(np.nanmean(f1)),
        "weighted_F1": float(np.nansum(f1 * per_class["support"]) / total),
    }


def compute_scores(y_true, y_pred, num_classes):
    """WAR, UAR, macro-F1 and weighted-F1 of integer label sequences.

    Arguments
    ---------
    y_true, y_pred : sequence of int
        Reference and predicted classes, in ``range(num_classes)``.
    num_classes : int

    Returns
    -------
    dict
        ``{"WAR", "UAR", "macro_F1", "weighted_F1"}`` as floats (module docstring).

    Example
    -------
    Three utterances of class 0 (two recognized), one of class 1 (recognized):
    WAR = 3/4; recalls 2/3 and 1, UAR = 5/6; F1_0 = 2*2 / (3 + 2) = 0.8 and
    F1_1 = 2*1 / (1 + 2) = 2/3, macro-F1 = 11/15, weighted-F1 = (3*0.8 + 2/3) / 4 = 23/30.

    >>> scores = compute_scores([0, 0, 0, 1], [0, 0, 1, 1], num_classes=2)
    >>> {name: round(value, 4) for name, value in scores.items()}
    {'WAR': 0.75, 'UAR': 0.8333, 'macro_F1': 0.7333, 'weighted_F1': 0.7667}
    """
    if len(y_true) == 0:
        raise ValueError("cannot score an empty set of predictions")
    return scores_from_confusion(confusion_matrix(y_true, y_pred, num_classes))


def _number(value):
    """A float for JSON, None for an undefined (NaN) value."""
    return None if np.isnan(value) else float(value)


def classification_report(y_true, y_pred, classes):
    """Everything the reports show about one set of predictions.

    Returns a JSON-ready dict: ``num_utterances``, the four ``METRICS``,
    ``classes``, ``per_class`` (class -> support, predicted, precision, recall,
    F1; None where undefined), ``confusion_matrix`` (counts, rows true),
    ``absent_from_references`` (classes with no test utterance: their recall is
    undefined and UAR leaves them out) and ``never_predicted`` (classes with
    references the model never predicted: precision undefined, recall and F1 0).

    Example
    -------
    No ``sad`` reference: UAR is the mean recall of ``angry`` (1/2) and ``happy`` (1).

    >>> report = classification_report([0, 0, 1], [0, 2, 1], ["angry", "happy", "sad"])
    >>> round(report["UAR"], 4), report["absent_from_references"], report["never_predicted"]
    (0.75, ['sad'], [])
    >>> report["per_class"]["sad"]
    {'support': 0, 'predicted': 1, 'precision': 0.0, 'recall': None, 'F1': 0.0}
    >>> report["confusion_matrix"]
    [[1, 0, 1], [0, 1, 0], [0, 0, 0]]
    """
    classes = list(classes)
    if len(y_true) == 0:
        raise ValueError("cannot score an empty set of predictions")
    matrix = confusion_matrix(y_true, y_pred, len(classes))
    per_class = per_class_scores(matrix)
    report = {"num_utterances": int(matrix.sum()), **scores_from_confusion(matrix)}
    report["classes"] = classes
    report["per_class"] = {
        c: {
            "support": int(per_class["support"][i]),
            "predicted": int(per_class["predicted"][i]),
            **{k: _number(per_class[k][i]) for k in PER_CLASS},
        }
        for i, c in enumerate(classes)
    }
    report["confusion_matrix"] = matrix.tolist()
    report["absent_from_references"] = [c for i, c in enumerate(classes) if per_class["support"][i] == 0]
    report["never_predicted"] = [
        c for i, c in enumerate(classes) if per_class["predicted"][i] == 0 and per_class["support"][i] > 0
    ]
    return report


def row_normalised(matrix):
    """Each row divided by its sum (the per-class recall on the diagonal); rows
    of classes absent from the references are NaN."""
    matrix = np.asarray(matrix, dtype=np.float64)
    return _ratio(matrix, matrix.sum(axis=1, keepdims=True).repeat(matrix.shape[1], axis=1))
