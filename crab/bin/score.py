"""Score ``predictions.csv`` files and print a results table (mean and std over runs).

    python -m crab.bin.score [--out results.md] [--summary results.json] [--per_run] \\
        exp/<tag>/*/seed*/eval_test/predictions.csv

Scores are recomputed from the predictions with ``crab.metrics``; the class list
comes from the ``prob_<class>`` columns. A run is the directory two levels above
its predictions file (``exp/<tag>/<fold>/seed<seed>``); its training wall time,
commit, machine, command and transcripts (``text_source``, ``asr_model``) come from
the ``train_info.json`` there (written by the recipe's stage 5), and its embedding cluster scores from
``embedding_scores.json`` next to the predictions (``crab.bin.embeddings``); a mean that some
runs have no value of is over the others, and says so (``(1 of 2 runs)``). The heading
(``--title``) and the summary name the folds and seeds of the runs, and the runs of the
same experiment with predictions on the same test set that were not given (a subset:
``crab.report.left_out_runs``). A predictions file given twice (or under two paths) is an
error: its run would count twice in the mean and std. Predictions of a checkpoint that their
run's ``save/`` no longer holds (the run trained on after it was evaluated) are an error:
evaluate it again. So are, with ``--test_manifests``, predictions of another version of their
test manifest than the one there now (the recipe's stage 7 gives them).

With ``--per_run``, each predictions file's directory also gets ``scores.json``
(metrics, per-class precision / recall / F1, confusion matrix, absent classes),
``per_class.md`` and ``confusion.png`` (row-normalised, diagonal cells under 0.2
marked, as the paper's Figure 2).
"""

import argparse
import glob
import json
import os
import sys

from crab import cli
from crab.fileio import write_text_atomic
from crab.report import results_table, run_dir_of


def repeated_files(paths):
    """The paths of ``paths`` that name a file named before (by another path too: ``a/../b``,
    a link)."""
    seen, repeated = set(), []
    for path in paths:
        real = os.path.realpath(path)
        if real in seen:
            repeated.append(path)
        seen.add(real)
    return repeated


def why_missing(path):
    """What to do about predictions ``path`` that are not there: evaluate its run, or, where the
    run has no checkpoint (never trained, or a seed or fold given by mistake), train it."""
    run = run_dir_of(path)
    if glob.glob(os.path.join(glob.escape(run), "save", "CKPT+*")):
        return f"no predictions at {path}: run the evaluate stage (6) first"
    return (
        f"no predictions at {path}, and {run} holds no trained checkpoint: train it (stage 5), or "
        "leave its fold or seed out (--folds, --seeds)"
    )


@cli.entry_point
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=cli.HelpFormatter)
    parser.add_argument("predictions", nargs="+", help="predictions.csv of each run (crab.bin.evaluate)")
    parser.add_argument("--out", help="also write the markdown results here")
    parser.add_argument("--summary", help="write mean, std and the runs as JSON here (for crab.bin.compare)")
    parser.add_argument(
        "--per_run",
        action="store_true",
        help="write scores.json, per_class.md and confusion.png beside each predictions file",
    )
    parser.add_argument(
        "--test_manifests",
        nargs="+",
        help="the test manifest of each predictions file, in their order: predictions made from "
        "another version of it are an error",
    )
    parser.add_argument("--title", help="heading of the markdown results")
    parser.add_argument("--tag", help="experiment name stored in the summary")
    parser.add_argument("--test_set", help="test set name stored in the summary")
    args = parser.parse_args(argv)
    missing = [p for p in args.predictions if not os.path.isfile(p)]
    if missing:
        sys.exit("ERROR: " + "; ".join(why_missing(p) for p in missing))
    if args.test_manifests and len(args.test_manifests) != len(args.predictions):
        parser.error(
            f"--test_manifests: {len(args.test_manifests)} for {len(args.predictions)} predictions files"
        )
    repeated = repeated_files(args.predictions)
    if repeated:  # one run counted twice: its score weighs double in the mean and shrinks the std
        sys.exit(f"ERROR: predictions given more than once: {', '.join(repeated)}")
    table, summary = results_table(
        args.predictions,
        args.per_run,
        args.title,
        test_manifests=args.test_manifests,
        tag=args.tag,
        test_set=args.test_set,
    )
    print(table)
    if args.out:
        write_text_atomic(args.out, table)
    if args.summary:
        write_text_atomic(args.summary, json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
