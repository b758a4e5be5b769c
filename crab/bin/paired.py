"""Paired comparison of methods against a baseline over the same folds and seeds.

    python -m crab.bin.paired --baseline ce_only=exp/ce_only/results_test.json \\
        --out exp/paired_test.md --plot exp/paired_test.png \\
        mlcs=exp/mlcs/results_test.json alpha0.5=exp/alpha0.5/results_test.json
    python -m crab.bin.paired --scores per_seed.tsv --baseline ce_only mlcs --out paired.md

Runs are paired by fold and seed (``<tag>/<fold>/seed<seed>`` in the stage-7 summaries),
of one test set: summaries of different test sets, or a fold and seed scored on different
numbers of utterances (another data directory), are an error, as is a run without a finite
score of the metric (null, NaN: it is named, not left out);
``--by_fold`` averages each fold over its seeds first (one pair per fold: the seeds of a
fold share its test speakers, so this is the conservative comparison). With ``--scores``
settings and pairs come from a tab-separated table (columns ``setting``, ``pair`` and the
metric). Writes the table of ``crab.paired.paired_markdown``
and, with ``--plot``, one scatter panel per method (baseline against method, diagonal drawn).
"""

import argparse

from crab import cli
from crab.fileio import write_text_atomic
from crab.metrics import METRICS
from crab.paired import (
    align,
    check_same_test_data,
    fold_means,
    load_scores_table,
    load_summary_scores,
    paired_markdown,
    paired_stats,
)
from crab.plots import plot_paired


def named(value):
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=RESULTS_JSON, got '{value}'")
    return name, path


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline", required=True, help="NAME=RESULTS_JSON, or a setting of --scores")
    parser.add_argument("methods", nargs="+", help="NAME=RESULTS_JSON, or settings of --scores")
    parser.add_argument("--scores", help="tab-separated table with columns setting, pair and the metric")
    parser.add_argument("--metric", default="UAR", choices=METRICS)
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument(
        "--by_fold", action="store_true", help="one pair per fold, its scores averaged over the seeds"
    )
    parser.add_argument("--pair_unit", help="what one pair is, for the caption (default: fold and seed)")
    parser.add_argument("--title", help="a line printed above the table")
    parser.add_argument("--out", help="markdown file (default: print)")
    parser.add_argument("--plot", help="PNG of the per-pair scores")
    return parser.parse_args(argv)


def distinct(names):
    """A ``UserError`` naming what is given twice: one of them would replace the other's scores."""
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise cli.UserError(
            f"{', '.join(twice)} given twice (the baseline and each method need a name of their own)"
        )


def load(args):
    """``(baseline name, {name: scores})`` with scores keyed by pair."""
    if args.scores:
        table = load_scores_table(args.scores, args.metric)
        wanted = [args.baseline, *args.methods]
        distinct(wanted)
        unknown = [name for name in wanted if name not in table]
        if unknown:
            raise cli.UserError(f"{args.scores}: no setting {', '.join(unknown)} (has {', '.join(table)})")
        return args.baseline, {name: table[name] for name in wanted}
    try:
        entries = [named(args.baseline)] + [named(m) for m in args.methods]
    except argparse.ArgumentTypeError as err:
        raise cli.UserError(str(err)) from None
    distinct([name for name, _ in entries])
    scores = {name: load_summary_scores(path, args.metric) for name, path in entries}
    check_same_test_data(entries)
    return entries[0][0], scores


def run(args):
    baseline, scores = load(args)
    rows, panels = [], []
    for name, method in scores.items():
        if name == baseline:
            continue
        keys, base, meth = align(scores[baseline], method, baseline, name)
        if args.by_fold:
            keys, base, meth = fold_means(keys, base, meth)
        rows.append((name, paired_stats(base, meth, confidence=args.confidence)))
        panels.append((name, base, meth, [(k[0], k[-1]) for k in keys]))
    unit = args.pair_unit or ("fold (mean over its seeds)" if args.by_fold else "fold and seed")
    text = paired_markdown(rows, args.metric, baseline, args.confidence, unit)
    if args.title:
        text = f"{args.title}\n\n{text}"
    if args.plot:
        plot_paired(panels, args.plot, args.metric, baseline)
        text += f"\nFigure: {args.plot}\n"
    if args.out:
        write_text_atomic(args.out, text)
    print(text, end="")


@cli.entry_point
def main(argv=None):
    run(parse_args(argv))


if __name__ == "__main__":
    main()
