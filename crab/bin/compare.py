"""Compare experiments: the ablation table, the alpha sweep figure, embedding plots.

    python -m crab.bin.compare table --out exp/ablations_test.md [--ablation_table conf/ablations.txt] \\
        [--corpus meld --test_set test] exp/ce_only/results_test.json exp/mlcs/results_test.json ...
    python -m crab.bin.compare alpha --out exp/alpha_test.md --plot exp/alpha_test.png \\
        --baseline exp/ce_only/results_test.json exp/alpha0.25/results_test.json ...
    python -m crab.bin.compare embeddings --plot exp/embeddings_test.png [--projection pca|tsne] \\
        ce_only=exp/ce_only/main/seed42/eval_test/embeddings.npz mlcs=...

``table`` and ``alpha`` read the summaries ``crab.bin.score --summary`` writes
(mean and std over folds and seeds); an experiment is named by its summary's tag.
``alpha`` takes each experiment's alpha from its tag (``alpha<value>``) and draws
UAR and WAR against alpha with the CE-only result as horizontal lines (paper
Fig. 3). ``embeddings`` projects each ``crab.bin.embeddings`` dump to 2-D and
draws them side by side, coloured by emotion, with their cluster scores.

``table`` and ``alpha`` keep the table another sweep wrote to ``--out`` (other settings,
runs or title: ``crab.report.table_setting``): it is renamed with its figure (``--plot``,
``--companions``) to ``<name>.<date written>.<ext>`` before the new one is written.
"""

import argparse
import functools
import os
import sys

from crab import cli
from crab.embeddings import embedding_panels, scores_markdown
from crab.fileio import write_text_atomic
from crab.locking import beside_lock
from crab.report import alpha_figure, alpha_sweep, comparison_markdown, keep_other_sweeps_table, read_summary


@cli.entry_point
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=cli.HelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    table = cli.add_command(commands, "table", "one row per experiment (paper Tables III/IV)")
    table.add_argument("summaries", nargs="+", help="results_<test>.json of each experiment (stage 7)")
    table.add_argument("--ablation_table", help="conf/ablations.txt: method names and the paper's numbers")
    table.add_argument(
        "--corpus", help="recipe name (meld, iemocap, ...): the paper's UAR column is this corpus's"
    )
    table.add_argument("--test_set", help="test set, for corpora with several (msp_podcast: test1, test2)")
    table.add_argument("--out", help="markdown file of the table (default: printed only)")
    table.add_argument("--title", help="the table's heading")
    table.add_argument(
        "--companions",
        nargs="*",
        default=[],
        help="files of the table in --out (its embedding plot and scores): renamed with it when it is "
        "another sweep's",
    )
    alpha = cli.add_command(commands, "alpha", "metrics against alpha (paper Fig. 3)")
    alpha.add_argument("summaries", nargs="+", help="results_<test>.json of each alpha's experiment")
    alpha.add_argument("--baseline", help="summary of the CE-only experiment")
    alpha.add_argument("--plot", help="PNG to draw")
    alpha.add_argument("--out", help="markdown file of the table (default: printed only)")
    alpha.add_argument("--title", help="the table's and the figure's heading")
    emb = cli.add_command(commands, "embeddings", "2-D projections of fused embeddings side by side")
    emb.add_argument("dumps", nargs="+", help="name=embeddings.npz")
    emb.add_argument("--plot", required=True, help="PNG to draw")
    emb.add_argument("--projection", choices=("pca", "tsne"), default="pca", help="2-D projection")
    emb.add_argument("--out", help="markdown table of the cluster scores")
    args = parser.parse_args(argv)

    if args.command == "embeddings":
        named = [d.split("=", 1) if "=" in d else (os.path.basename(d), d) for d in args.dumps]
        panels, classes, scores = embedding_panels(named, args.projection)
        from crab.plots import plot_embeddings

        plot_embeddings(panels, classes, args.plot)
        text = scores_markdown(scores) + f"\n\n{args.projection.upper()} projections: {args.plot}\n"
        print(text)
        if args.out:
            write_text_atomic(args.out, text)
        return
    if args.command == "table":
        text = comparison_markdown(
            [read_summary(p) for p in args.summaries],
            args.ablation_table,
            args.title,
            corpus=args.corpus,
            test_set=args.test_set,
        )
        companions, draw = args.companions, None
    else:
        baseline = read_summary(args.baseline)[1] if args.baseline else None
        entries = [read_summary(p) for p in args.summaries]
        text = alpha_sweep(entries, baseline, title=args.title)
        companions = [args.plot]
        draw = args.plot and functools.partial(alpha_figure, entries, baseline, args.plot, args.title)
    print(text)
    write_sweep_table(args.out, text, companions, draw)


def write_sweep_table(out, text, companions, draw=None):
    """Write the table ``text`` to ``out`` and ``draw`` its figure, one sweep at a time; a table of
    another sweep there is first renamed with its ``companions`` (``keep_other_sweeps_table``)."""
    if not out:
        if draw:
            draw()
        return
    with beside_lock(out, "sweep table", wait=True):
        kept = keep_other_sweeps_table(out, text, companions)
        if kept:
            print(
                f"{out} is the table of another sweep (its heading and rows say which): kept as {kept}",
                file=sys.stderr,
            )
        if draw:
            draw()
        write_text_atomic(out, text)


if __name__ == "__main__":
    main()
