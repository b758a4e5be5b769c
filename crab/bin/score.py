"""Score ``predictions.csv`` files and print a results table (mean and std over runs).

    python -m crab.bin.score [--out results.md] [--summary results.json] [--per_run] \\
        exp/<tag>/*/seed*/eval_test/predictions.csv

Scores are recomputed from the predictions with ``crab.metrics``; the class list
comes from the ``prob_<class>`` columns. A run is the directory two levels above
its predictions file (``exp/<tag>/<fold>/seed<seed>``); its training wall time,
commit, machine, command and transcripts (``text_source``, ``asr_model``) come from
the ``train_info.json`` there (written by the recipe's stage 4), and its embedding cluster scores from
``embedding_scores.json`` next to the predictions (``crab.bin.embeddings``).

With ``--per_run``, each predictions file's directory also gets ``scores.json``
(metrics, per-class precision / recall / F1, confusion matrix, absent classes),
``per_class.md`` and ``confusion.png`` (row-normalised, diagonal cells under 0.2
marked, as the paper's Figure 2).
"""

import argparse
import csv
import json
import os
import sys

from crab import cli
from crab.metrics import METRICS, classification_report
from crab.provenance import read_run_provenance
from crab.report import (
    EMBEDDING_SCORES,
    per_class_markdown,
    read_train_info,
    results_markdown,
    summarise,
)


def read_predictions(path):
    """Class list and (true, predicted) index lists of one predictions file."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        classes = [c[len("prob_") :] for c in reader.fieldnames or [] if c.startswith("prob_")]
        index = {c: i for i, c in enumerate(classes)}
        rows = list(reader)
    try:
        y_true = [index[r["true"]] for r in rows]
        y_pred = [index[r["predicted"]] for r in rows]
    except KeyError as err:
        raise ValueError(f"{path}: label {err} has no prob_ column") from None
    if not rows:
        raise ValueError(f"{path}: no predictions")
    return classes, y_true, y_pred


def run_dir_of(path):
    return os.path.dirname(os.path.dirname(path)) or path


def score_run(path, per_run=False):
    """The classification report of one predictions file, with the run's
    provenance; with ``per_run``, also write the per-run files beside it."""
    classes, y_true, y_pred = read_predictions(path)
    report = classification_report(y_true, y_pred, classes)
    run_dir = run_dir_of(path)
    info = read_train_info(run_dir) or {}
    row = {
        "run": run_dir,
        "num_utterances": report["num_utterances"],
        **{m: report[m] for m in METRICS},
        "absent_from_references": report["absent_from_references"],
        "never_predicted": report["never_predicted"],
        **{k: info.get(k) for k in ("wall_s", "commit", "machine", "command")},
    }
    transcripts = read_run_provenance(run_dir) or {}  # the run's own record, when train_info.json lacks it
    row.update({k: info.get(k, transcripts.get(k)) for k in ("text_source", "asr_model")})
    emb_path = os.path.join(os.path.dirname(path), "embedding_scores.json")
    if os.path.isfile(emb_path):
        with open(emb_path, encoding="utf-8") as f:
            row.update({k: v for k, v in json.load(f).items() if k in EMBEDDING_SCORES})
    if per_run:
        write_run_files(os.path.dirname(path), report, run_dir)
    return row


def write_run_files(eval_dir, report, name):
    from crab.plots import plot_confusion  # matplotlib only when drawing

    with open(os.path.join(eval_dir, "scores.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    with open(os.path.join(eval_dir, "per_class.md"), "w", encoding="utf-8") as f:
        f.write(per_class_markdown(report, title=f"{name}: per-class scores"))
    scores = ", ".join(f"{m} {report[m]:.4f}" for m in ("WAR", "UAR"))
    plot_confusion(
        report["confusion_matrix"],
        report["classes"],
        os.path.join(eval_dir, "confusion.png"),
        title=f"{name} ({scores})",
    )


def results_table(paths, per_run=False, title=None, **meta):
    """Markdown results of the runs and their summary (a JSON-ready dict)."""
    summary = summarise([score_run(p, per_run) for p in paths], **meta)
    return results_markdown(summary, title), summary


@cli.entry_point
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("predictions", nargs="+")
    parser.add_argument("--out", help="also write the markdown results here")
    parser.add_argument("--summary", help="write mean, std and the runs as JSON here (for crab.bin.compare)")
    parser.add_argument(
        "--per_run",
        action="store_true",
        help="write scores.json, per_class.md and confusion.png beside each predictions file",
    )
    parser.add_argument("--title", help="heading of the markdown results")
    parser.add_argument("--tag", help="experiment name stored in the summary")
    parser.add_argument("--test_set", help="test set name stored in the summary")
    args = parser.parse_args(argv)
    missing = [p for p in args.predictions if not os.path.isfile(p)]
    if missing:
        sys.exit(f"ERROR: no predictions at {', '.join(missing)}: run the evaluate stage first")
    table, summary = results_table(
        args.predictions, args.per_run, args.title, tag=args.tag, test_set=args.test_set
    )
    print(table)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(table)
    if args.summary:
        with open(args.summary, "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)


if __name__ == "__main__":
    main()
