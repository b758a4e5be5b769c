"""Score ``predictions.csv`` files and print a results table (mean and std over runs).

    python -m crab.bin.score [--out results.md] exp/*/seed*/eval_test/predictions.csv

Scores are recomputed from the predictions with ``crab.metrics``; the class list
comes from the ``prob_<class>`` columns.
"""

import argparse
import csv
import os
import sys

import numpy as np

from crab.metrics import METRICS, compute_scores


def read_predictions(path):
    """Class list and (true, predicted) index lists of one predictions file."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        classes = [c[len("prob_"):] for c in reader.fieldnames or [] if c.startswith("prob_")]
        index = {c: i for i, c in enumerate(classes)}
        rows = list(reader)
    try:
        y_true = [index[r["true"]] for r in rows]
        y_pred = [index[r["predicted"]] for r in rows]
    except KeyError as err:
        raise ValueError(f"{path}: label {err} has no prob_ column") from None
    return classes, y_true, y_pred


def results_table(paths):
    """Markdown table: one row per predictions file, then mean and std."""
    header = "| run | N | " + " | ".join(METRICS) + " |"
    lines = [header, "|" + "---|" * (len(METRICS) + 2)]
    all_scores = []
    for path in paths:
        classes, y_true, y_pred = read_predictions(path)
        scores = compute_scores(y_true, y_pred, len(classes))
        all_scores.append([scores[m] for m in METRICS])
        run = os.path.dirname(os.path.dirname(path)) or path
        lines.append(f"| {run} | {len(y_true)} | " + " | ".join(f"{s:.4f}" for s in all_scores[-1]) + " |")
    if len(paths) > 1:
        values = np.array(all_scores)
        cells = [f"{m:.4f} ± {s:.4f}" for m, s in zip(values.mean(0), values.std(0, ddof=1))]
        lines.append(f"| mean ± std ({len(paths)} runs) | | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("predictions", nargs="+")
    parser.add_argument("--out", help="also write the table here")
    args = parser.parse_args(argv)
    missing = [p for p in args.predictions if not os.path.isfile(p)]
    if missing:
        sys.exit(f"ERROR: no predictions at {', '.join(missing)}: run the evaluate stage first")
    table = results_table(args.predictions)
    print(table)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
