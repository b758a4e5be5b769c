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
"""

import argparse
import json
import os
import re
import sys

import numpy as np

from crab import cli
from crab.metrics import METRICS
from crab.report import EMBEDDING_SCORES, comparison_markdown, embedding_scores, project_2d


def read_summary(path):
    if not os.path.isfile(path):
        sys.exit(f"ERROR: no results summary at {path}: run the score stage (6) for it first")
    with open(path, encoding="utf-8") as f:
        summary = json.load(f)
    summary.setdefault("tag", os.path.basename(os.path.dirname(path)))
    return summary["tag"] or os.path.basename(os.path.dirname(path)), summary


def alpha_of(tag):
    match = re.fullmatch(r"alpha([0-9.]+)", tag)
    if not match:
        raise ValueError(f"experiment '{tag}' is not named alpha<value>")
    return float(match.group(1))


def alpha_sweep(entries, baseline, plot=None, title=None):
    """Markdown table of the sweep (CE-only first) and, with ``plot``, Figure 3."""
    entries = sorted(entries, key=lambda e: alpha_of(e[0]))
    alphas = [alpha_of(name) for name, _ in entries]
    rows = ([("CE only", baseline)] if baseline else []) + [
        (f"{a:g}", s) for a, (_, s) in zip(alphas, entries, strict=True)
    ]
    lines = [f"## {title}", ""] if title else []
    lines += ["| alpha | runs | " + " | ".join(METRICS) + " |", "|" + "---|" * (len(METRICS) + 2)]
    for name, summary in rows:
        cells = []
        for m in METRICS:
            mean, std = summary["mean"][m], summary["std"].get(m)
            cells.append(f"{mean:.4f}" + (f" ± {std:.4f}" if std is not None else ""))
        lines.append(f"| {name} | {summary['num_runs']} | " + " | ".join(cells) + " |")
    for metric in ("UAR", "WAR"):
        best = max(zip(alphas, entries, strict=True), key=lambda e: e[1][1]["mean"][metric])
        lines.append(f"\nBest {metric}: {best[1][1]['mean'][metric]:.4f} at alpha {best[0]:g}.")
    if plot:
        from crab.plots import plot_alpha

        means = {m: [s["mean"][m] for _, s in entries] for m in ("UAR", "WAR")}
        stds = {m: [s["std"].get(m) or 0.0 for _, s in entries] for m in ("UAR", "WAR")}
        base = {m: baseline["mean"][m] for m in ("UAR", "WAR")} if baseline else None
        plot_alpha(alphas, means, plot, stds=stds, baseline=base, title=title)
    return "\n".join(lines) + "\n"


def embedding_panels(named_dumps, projection="pca"):
    """Title, 2-D points and labels per dump, the class list, and the scores."""
    panels, classes, scores = [], None, {}
    for name, path in named_dumps:
        dump = np.load(path)
        dump_classes = [str(c) for c in dump["classes"]]
        if classes is not None and dump_classes != classes:
            raise ValueError(f"{path}: classes {dump_classes} differ from {classes}")
        classes = dump_classes
        scores[name] = embedding_scores(dump["embeddings"], dump["labels"])
        text = ", ".join(
            f"{short} {scores[name][key]:.3f}" if scores[name][key] is not None else f"{short} n/a"
            for short, key in zip(("sil", "CH", "DB"), EMBEDDING_SCORES, strict=True)
        )
        panels.append((f"{name}\n{text}", project_2d(dump["embeddings"], projection), dump["labels"]))
    return panels, classes, scores


@cli.entry_point
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    table = commands.add_parser("table", help="one row per experiment (paper Tables III/IV)")
    table.add_argument("summaries", nargs="+")
    table.add_argument("--ablation_table", help="conf/ablations.txt: method names and the paper's numbers")
    table.add_argument(
        "--corpus", help="recipe name (meld, iemocap, ...): the paper's UAR column is this corpus's"
    )
    table.add_argument("--test_set", help="test set, for corpora with several (msp_podcast: test1, test2)")
    table.add_argument("--out")
    table.add_argument("--title")
    alpha = commands.add_parser("alpha", help="metrics against alpha (paper Fig. 3)")
    alpha.add_argument("summaries", nargs="+")
    alpha.add_argument("--baseline", help="summary of the CE-only experiment")
    alpha.add_argument("--plot", help="PNG to draw")
    alpha.add_argument("--out")
    alpha.add_argument("--title")
    emb = commands.add_parser("embeddings", help="2-D projections of fused embeddings side by side")
    emb.add_argument("dumps", nargs="+", help="name=embeddings.npz")
    emb.add_argument("--plot", required=True)
    emb.add_argument("--projection", choices=("pca", "tsne"), default="pca")
    emb.add_argument("--out", help="markdown table of the cluster scores")
    args = parser.parse_args(argv)

    if args.command == "table":
        text = comparison_markdown(
            [read_summary(p) for p in args.summaries],
            args.ablation_table,
            args.title,
            corpus=args.corpus,
            test_set=args.test_set,
        )
    elif args.command == "alpha":
        baseline = read_summary(args.baseline)[1] if args.baseline else None
        text = alpha_sweep([read_summary(p) for p in args.summaries], baseline, args.plot, args.title)
    else:
        named = [d.split("=", 1) if "=" in d else (os.path.basename(d), d) for d in args.dumps]
        panels, classes, scores = embedding_panels(named, args.projection)
        from crab.plots import plot_embeddings

        plot_embeddings(panels, classes, args.plot)
        lines = [
            "| experiment | silhouette ↑ | Calinski-Harabasz ↑ | Davies-Bouldin ↓ |",
            "|---|---|---|---|",
        ]
        for name, s in scores.items():
            lines.append(
                f"| {name} | "
                + " | ".join("n/a" if s[k] is None else f"{s[k]:.3f}" for k in EMBEDDING_SCORES)
                + " |"
            )
        text = "\n".join(lines) + f"\n\n{args.projection.upper()} projections: {args.plot}\n"
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)


if __name__ == "__main__":
    main()
