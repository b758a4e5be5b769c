"""Paired comparison of methods against a baseline over the same folds and seeds.

    python -m crab.bin.paired --baseline ce_only=exp/ce_only/results_test.json \\
        --out exp/paired_test.md --plot exp/paired_test.png \\
        mlcs=exp/mlcs/results_test.json alpha0.5=exp/alpha0.5/results_test.json
    python -m crab.bin.paired --scores per_seed.tsv --baseline ce_only mlcs --out paired.md

Runs are paired by fold and seed (``<tag>/<fold>/seed<seed>`` in the stage-7 summaries),
of one test set: summaries of different test sets, or a fold and seed scored on different
numbers of utterances (another data directory), are an error, as is a run without a finite
score of the metric (null, NaN: it is named, not left out).

The two runs of a pair must differ only in what is compared. Each run's folder (beside the
summary, ``exp/<tag>/<fold>/seed<seed>``, else where the summary names it) holds what it was
trained and tested with: its ``hyperparams.yaml`` (less where its files are and how fast it
reads them: ``crab.paired.NOT_SETTINGS``), its transcripts and the digests of its manifests
and tokenizer (``text_source.json``), its test manifest and precision
(``eval_<test>/predictions.inputs.json``). The settings in which the runs of every pair
differ are what is compared: listed above the table (``alpha: 0.0 vs 2.0``; objects built
from them by name), with a warning on stderr where they include data (transcripts,
manifests, tokenizer). A setting in which only some pairs differ (a run trained for other
epochs, on other transcripts or another fold layout) is an error naming the two runs and
both values, as are two runs of a pair with other seeds, a run whose training stopped
before its epochs, and a score that its run's predictions no longer give (evaluated again
since stage 7: score it again). Pairs without their folders are said NOT CHECKED, above the
table and on stderr; ``--scores`` tables are not checked. Runs trained by other code (git
commits, torch / transformers / speechbrain and python versions: each run's ``train_info.json``),
by a commit with uncommitted changes (``+dirty``) or outside git (``unknown``), are listed
under the settings and warned about on stderr: their differences may include what changed in
the code.

``--by_fold`` averages each fold over its seeds first (one pair per fold: the seeds of a
fold share its test speakers, so this is the conservative comparison). With ``--scores``
settings and pairs come from a tab-separated table (columns ``setting``, ``pair`` and the
metric). Writes the table of ``crab.paired.paired_markdown``
and, with ``--plot``, one scatter panel per method (baseline against method, diagonal drawn).
"""

import argparse
import sys

from crab import cli
from crab.fileio import write_text_atomic
from crab.metrics import METRICS
from crab.paired import (
    DATA_SETTINGS,
    align,
    check_same_test_data,
    code_differences,
    compared_settings,
    fold_means,
    load_scores_table,
    load_summary_scores,
    paired_markdown,
    paired_stats,
    summary_runs,
)
from crab.plots import plot_paired
from crab.runconfig import RUN_HPARAMS


def named(value):
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=RESULTS_JSON, got '{value}'")
    return name, path


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=cli.HelpFormatter)
    parser.add_argument("--baseline", required=True, help="NAME=RESULTS_JSON, or a setting of --scores")
    parser.add_argument("methods", nargs="+", help="NAME=RESULTS_JSON, or settings of --scores")
    parser.add_argument("--scores", help="tab-separated table with columns setting, pair and the metric")
    parser.add_argument("--metric", default="UAR", choices=METRICS, help="score compared")
    parser.add_argument("--confidence", type=float, default=0.95, help="level of the confidence intervals")
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
        return args.baseline, {name: table[name] for name in wanted}, None
    try:
        entries = [named(args.baseline)] + [named(m) for m in args.methods]
    except argparse.ArgumentTypeError as err:
        raise cli.UserError(str(err)) from None
    distinct([name for name, _ in entries])
    scores = {name: load_summary_scores(path, args.metric) for name, path in entries}
    check_same_test_data(entries)
    return entries[0][0], scores, {name: summary_runs(path, args.metric) for name, path in entries}


def warn(message):
    print(f"WARNING: {message}", file=sys.stderr)


def compare_settings(baseline, runs):
    """``{method: (shown, unchecked, code)}`` of each method against the baseline
    (``compared_settings`` and ``code_differences``); what is not checked, data the runs of a
    pair differ in and code that is not one for all are warned about on stderr too."""
    compared = {}
    for name, method in runs.items():
        if name == baseline:
            continue
        shown, unchecked = compared_settings(runs[baseline], method, baseline, name)
        code = code_differences(runs[baseline], method)
        compared[name] = shown, unchecked, code
        if unchecked:
            warn(
                f"{name} against {baseline}: the settings of {len(unchecked)} pair(s) are not checked "
                f"(no run folder with its {RUN_HPARAMS} beside the summary or where it names the run)"
            )
        data = [line for line in shown if line.startswith(DATA_SETTINGS)]
        if data:
            warn(f"{name} and {baseline} were trained or tested on other data: {'; '.join(data)}")
        if code:
            warn(f"{name} and {baseline} were not all trained by the same code: {'; '.join(code)}")
    return compared


def run(args):
    baseline, scores, runs = load(args)
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
    compared = runs and compare_settings(baseline, runs)
    text = paired_markdown(rows, args.metric, baseline, args.confidence, unit, compared)
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
