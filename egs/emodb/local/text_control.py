"""EmoDB's text control: how well the sentence alone predicts the emotion.

Every speaker reads every sentence in every emotion, so the transcript should say
nothing about the label. On each fold's test split (data/<fold>/test.json) this
scores predictors that see only the transcript (the manifest's "text"), each
estimated on the fold's train split (data/<fold>/train.json, its "text" and "emo"):

- ratio: argmax over classes of p(class | sentence) / p(class), the training
  utterances' class frequencies among those of the sentence over their class
  frequencies among all;
- mode: the sentence's most frequent class in training;
- majority: always the most frequent class in training (no text at all).

Ties go to the class first in --classes; a class that training lacks is never
predicted, and a sentence that training lacks gets the majority class. Prints WAR and
UAR (crab.metrics.compute_scores) per fold, then their mean ± std over the folds
(the sample standard deviation, ddof 1, as in the recipe's results tables).

    python local/text_control.py --data_dir data \\
        --folds "fold03_08 fold09_10 fold11_12 fold13_14 fold15_16"
"""

import argparse
import json
import os
import sys
from collections import Counter
from fractions import Fraction

import numpy as np
from emodb_facts import CLASSES

from crab import cli
from crab.metrics import compute_scores

PREDICTORS = ("ratio", "mode", "majority")
METRICS = ("WAR", "UAR")


def first_max(scores, classes):
    """The class of ``classes`` with the largest score (``scores``: class -> number,
    classes left out are never chosen); ties go to the class first in ``classes``."""
    best = None
    for label in classes:
        if label in scores and (best is None or scores[label] > scores[best]):
            best = label
    return best


def fit(train, classes):
    """The three predictors of the module docstring, estimated on ``train`` (utt ->
    entry with "text" and "emo"): ``{predictor: {sentence: class}}``, and the majority
    class (the answer for a sentence not in training)."""
    prior = Counter(e["emo"] for e in train.values())
    by_text = {}
    for entry in train.values():
        by_text.setdefault(entry["text"], Counter())[entry["emo"]] += 1
    majority = first_max(prior, classes)
    # p(c | s) / p(c) = n(s, c) N / (n(s) n(c)); n(s) and N are the same for every c
    ratio = {
        text: first_max({c: Fraction(n[c], prior[c]) for c in prior}, classes) for text, n in by_text.items()
    }
    mode = {text: first_max(n, classes) for text, n in by_text.items()}
    return {"ratio": ratio, "mode": mode, "majority": {text: majority for text in by_text}}, majority


def score_fold(train, test, classes):
    """``{predictor: {"WAR": ..., "UAR": ...}}`` of the predictors fitted on ``train``,
    on ``test`` (manifest entries: utt -> dict with "text" and "emo")."""
    unknown = sorted({e["emo"] for e in list(train.values()) + list(test.values())} - set(classes))
    if unknown:
        raise cli.UserError(f"labels not in --classes: {' '.join(unknown)}")
    predictors, majority = fit(train, classes)
    index = {label: i for i, label in enumerate(classes)}
    y_true = [index[e["emo"]] for e in test.values()]
    scores = {}
    for name in PREDICTORS:
        y_pred = [index[predictors[name].get(e["text"], majority)] for e in test.values()]
        result = compute_scores(y_true, y_pred, len(classes))
        scores[name] = {m: result[m] for m in METRICS}
    return scores


def read_manifest(path):
    if not os.path.isfile(path):
        raise cli.UserError(f"{path}: no such manifest (run stages 1-3 of run.sh for this fold)")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@cli.entry_point
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", default="data", help="the folds' manifests: <data_dir>/<fold>/*.json")
    parser.add_argument("--folds", required=True, help="space-separated fold names")
    parser.add_argument("--classes", default=",".join(CLASSES), help="comma-separated labels, tie order")
    args = parser.parse_args(argv)
    classes = args.classes.split(",")
    folds = args.folds.split()
    per_fold = {}
    for fold in folds:
        train = read_manifest(os.path.join(args.data_dir, fold, "train.json"))
        test = read_manifest(os.path.join(args.data_dir, fold, "test.json"))
        per_fold[fold] = score_fold(train, test, classes)
    header = ["fold"] + [f"{p} {m}" for p in PREDICTORS for m in METRICS]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for fold, scores in per_fold.items():
        print("| " + " | ".join([fold] + [f"{scores[p][m]:.3f}" for p in PREDICTORS for m in METRICS]) + " |")
    cells = []
    for p in PREDICTORS:
        for m in METRICS:
            values = np.array([scores[p][m] for scores in per_fold.values()])
            std = f" ± {values.std(ddof=1):.3f}" if len(values) > 1 else ""
            cells.append(f"{values.mean():.3f}{std}")
    print("| " + " | ".join([f"mean ± std (ddof 1), {len(folds)} folds"] + cells) + " |")
    print(f"chance UAR: 1/{len(classes)} = {1 / len(classes):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
