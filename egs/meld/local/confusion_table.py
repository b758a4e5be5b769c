"""Confusion matrix (counts) summed over runs, as a markdown table.

    python local/confusion_table.py exp/<tag>/official/seed*/eval_test/predictions.csv

Rows are true classes, columns predicted ones, in the class order of the files'
``prob_<class>`` columns (the recipe's label order); the last column is the recall.
"""

import csv
import sys

from crab.metrics import confusion_matrix


def main(paths):
    classes, true, predicted = None, [], []
    for path in paths:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = [c[len("prob_") :] for c in reader.fieldnames if c.startswith("prob_")]
            if classes is not None and header != classes:
                raise SystemExit(f"{path}: classes {header} differ from {classes}")
            classes = header
            for row in reader:
                true.append(classes.index(row["true"]))
                predicted.append(classes.index(row["predicted"]))
    matrix = confusion_matrix(true, predicted, len(classes)).tolist()
    print("| true \\ predicted | " + " | ".join(classes) + " | recall |")
    print("|---" * (len(classes) + 2) + "|")
    for i, name in enumerate(classes):
        row = [int(x) for x in matrix[i]]
        print(f"| {name} | " + " | ".join(map(str, row)) + f" | {row[i] / max(sum(row), 1):.3f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
