"""The number of epochs of one setting, chosen on its runs' validation scores.

    python -m crab.bin.choose_epochs --metric UAR --out exp/mlcs/chosen_epochs \\
        --table exp/mlcs/valid_curves.md exp/mlcs/*/seed*/train_log.txt

Prints the table of ``crab.selection.curves_markdown`` (each run's validation curve, the
mean, the chosen epoch); ``--out`` gets the chosen number alone, for the next stage to read.
A run is named by its folders ``<fold>/seed<seed>``: two logs of one name are an error.
"""

import argparse

from crab import cli
from crab.fileio import write_text_atomic
from crab.metrics import METRICS
from crab.selection import best_epoch, curves_markdown, run_curves


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=cli.HelpFormatter)
    parser.add_argument("logs", nargs="+", help="train_log.txt of each run of the setting")
    parser.add_argument(
        "--metric", default="UAR", choices=METRICS, help="validation score the epoch is chosen on"
    )
    parser.add_argument("--title", help="heading of the table")
    parser.add_argument("--table", help="markdown file for the table")
    parser.add_argument("--out", help="file for the chosen number of epochs")
    return parser.parse_args(argv)


@cli.entry_point
def main(argv=None):
    args = parse_args(argv)
    curves = run_curves(args.logs, args.metric)
    table = curves_markdown(curves, args.metric, args.title)
    if args.table:
        write_text_atomic(args.table, table)
    if args.out:
        write_text_atomic(args.out, f"{best_epoch(curves)[0]}\n")
    print(table, end="")


if __name__ == "__main__":
    main()
