"""Paired comparison of two methods run on the same folds and seeds.

Each pair is one (fold, seed) run of both methods, so the fold-to-fold spread, which
dominates speaker-independent results, cancels in the differences. For the differences
``method - baseline`` it reports the mean, a t confidence interval and a percentile
bootstrap interval of the mean, the wins/losses/ties, an exact two-sided sign test
(ties dropped) and the Wilcoxon signed-rank test (scipy; zero differences dropped).

Example
-------
>>> stats = paired_stats([0.90, 0.80, 0.85, 0.70], [0.91, 0.82, 0.84, 0.73])
>>> round(stats["mean_diff"], 4), stats["wins"], stats["losses"], stats["sign_p"]
(0.0125, 3, 1, 0.625)
"""

import os

import numpy as np
from scipy import stats as scipy_stats

from crab import cli
from crab.metrics import METRICS
from crab.report import read_summary


class PairingError(cli.UserError, ValueError):
    """Scores that cannot be paired or read: the message names the file, line or run."""


def paired_stats(baseline, method, confidence=0.95, n_boot=10000, seed=0):
    """Statistics of the paired differences ``method - baseline``.

    Arguments
    ---------
    baseline, method : sequence of float
        One score per pair, in the same pair order.
    confidence : float
        Coverage of both intervals.
    n_boot : int
        Bootstrap resamples of the pairs (seeded: the same inputs give the same interval).
    seed : int
        Seed of the bootstrap.

    Returns
    -------
    dict
        ``n``, ``baseline_mean``, ``method_mean``, ``mean_diff``, ``std_diff`` (ddof 1),
        ``t_ci`` and ``boot_ci`` (low, high), ``wins``, ``losses``, ``ties``, ``sign_p``,
        ``wilcoxon_p`` (None when every difference is zero).
    """
    base = np.asarray(baseline, dtype=float)
    meth = np.asarray(method, dtype=float)
    if base.shape != meth.shape or base.ndim != 1:
        raise PairingError(f"paired scores must be two equal-length lists, got {base.shape} and {meth.shape}")
    if len(base) < 2:
        raise PairingError(f"a paired comparison needs at least 2 pairs, got {len(base)}")
    if not (np.isfinite(base).all() and np.isfinite(meth).all()):
        raise PairingError("paired scores must be finite numbers")
    diff = meth - base
    n = len(diff)
    mean, std = float(diff.mean()), float(diff.std(ddof=1))
    half = float(scipy_stats.t.ppf((1 + confidence) / 2, n - 1)) * std / np.sqrt(n)
    rng = np.random.default_rng(seed)
    boot = diff[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    wins, losses = int((diff > 0).sum()), int((diff < 0).sum())
    sign_p = float(scipy_stats.binomtest(wins, wins + losses, 0.5).pvalue) if wins + losses else 1.0
    nonzero = diff[diff != 0]
    wilcoxon_p = float(scipy_stats.wilcoxon(nonzero).pvalue) if len(nonzero) else None
    return {
        "n": n,
        "baseline_mean": float(base.mean()),
        "method_mean": float(meth.mean()),
        "mean_diff": mean,
        "std_diff": std,
        "t_ci": (float(mean - half), float(mean + half)),
        "boot_ci": tuple(float(v) for v in np.percentile(boot, [tail, 100 - tail])),
        "wins": wins,
        "losses": losses,
        "ties": n - wins - losses,
        "sign_p": sign_p,
        "wilcoxon_p": wilcoxon_p,
    }


def verdict(stats):
    """One honest phrase: helped / hurt when the t interval excludes 0, else not told apart."""
    low, high = stats["t_ci"]
    if low > 0:
        return "helped"
    if high < 0:
        return "hurt"
    return "cannot be told apart"


def run_pair_key(run):
    """The (fold, seed) of a run path ``.../<tag>/<fold>/seed<seed>``: what two methods share."""
    parts = os.path.normpath(run).split(os.sep)
    if len(parts) < 3 or not parts[-1].startswith("seed"):
        raise PairingError(f"not a run path of the form <tag>/<fold>/seed<seed>: {run}")
    return parts[-2], parts[-1]


def load_summary_scores(path, metric):
    """``{(fold, seed): score}`` of the runs listed in a stage-7 ``results_<test>.json``."""
    if metric not in METRICS:
        raise PairingError(f"metric must be one of {', '.join(METRICS)}, got '{metric}'")
    _, summary = read_summary(path)
    scores = {}
    for run in summary.get("runs", []):
        key = run_pair_key(run["run"])
        if key in scores:
            raise PairingError(f"{path}: two runs for fold {key[0]}, {key[1]}")
        scores[key] = _score(run.get(metric), f"{path}: {run['run']}: {metric}")
    if not scores:
        raise PairingError(f"{path}: no runs")
    return scores


def _score(value, where):
    """``value`` as a finite float, else a ``PairingError`` saying ``where``: a pair whose score
    is missing, null or NaN is neither dropped (the other pairs would stand for fewer runs than
    the tables say) nor left to fail later without naming its run."""
    try:
        score = float(value)
    except (TypeError, ValueError):
        score = None
    if score is None or not np.isfinite(score):
        raise PairingError(
            f"{where} '{value}' is not a number: every pair needs a score of both methods "
            "(score the run again, stage 7, or leave its pair out of both)"
        )
    return score


def check_same_test_data(named_paths):
    """A ``PairingError`` unless the summaries (``(name, results_<test>.json)`` pairs) score
    the same test data: the same test set (the ``test_set`` each stores) and, for each fold
    and seed, the same number of test utterances (``num_utterances`` of its run). Runs of
    another test set, or of another data directory of the same fold name, would pair
    silently otherwise. Summaries that do not record them are not told apart."""
    test_sets, counts = {}, {}
    for name, path in named_paths:
        _, summary = read_summary(path)
        if summary.get("test_set"):
            test_sets[name] = summary["test_set"]
        for run in summary.get("runs", []):
            if run.get("num_utterances") is not None:
                counts.setdefault(run_pair_key(run["run"]), {})[name] = run["num_utterances"]
    if len(set(test_sets.values())) > 1:
        raise PairingError(
            "scored on different test sets: "
            + ", ".join(f"{name} {test_set}" for name, test_set in test_sets.items())
            + "; compare the summaries of one test set"
        )
    for key, by_name in sorted(counts.items()):
        if len(set(by_name.values())) > 1:
            raise PairingError(
                f"fold {key[0]}, {key[1]} was scored on different test data: "
                + ", ".join(f"{name} {n} utterances" for name, n in by_name.items())
                + "; pair runs of the same data directory"
            )


def align(baseline, method, baseline_name="baseline", method_name="method"):
    """The pairs present in both ``{key: score}`` maps, sorted; an error names the unpaired ones."""
    missing = sorted(set(baseline) ^ set(method))
    if missing:
        where = ", ".join(
            f"{'/'.join(k)} (only {baseline_name if k in baseline else method_name})" for k in missing
        )
        raise PairingError(f"runs without a partner: {where}; compare the same folds and seeds")
    keys = sorted(baseline)
    return keys, [baseline[k] for k in keys], [method[k] for k in keys]


def fold_means(keys, baseline, method):
    """One pair per fold from ``align``'s (fold, seed) pairs: each fold's scores averaged
    over its seeds. The seeds of a fold share its test speakers, so their pairs are not
    independent; fewer, independent pairs give the more conservative comparison.

    >>> fold_means([("f1", "seed1"), ("f1", "seed2"), ("f2", "seed1"), ("f2", "seed2")],
    ...            [0.5, 0.7, 0.8, 0.8], [0.6, 0.6, 0.9, 0.7])
    ([('f1',), ('f2',)], [0.6, 0.8], [0.6, 0.8])
    """
    folds = sorted({key[0] for key in keys})
    seeds = {fold: [i for i, key in enumerate(keys) if key[0] == fold] for fold in folds}
    counts = {len(at) for at in seeds.values()}
    if len(counts) > 1:
        raise PairingError(
            "folds with different numbers of seeds: "
            + ", ".join(f"{fold} {len(at)}" for fold, at in seeds.items())
            + "; averaging over seeds needs the same seeds in every fold"
        )

    def means(values):
        return [round(float(np.mean([values[i] for i in seeds[fold]])), 12) for fold in folds]

    return [(fold,) for fold in folds], means(baseline), means(method)


def _fmt(value, digits=4):
    return "n/a" if value is None else f"{value:.{digits}f}"


def paired_markdown(rows, metric, baseline_name, confidence=0.95, pair_unit="fold and seed"):
    """Markdown table: one row per method against the baseline, from ``paired_stats`` results."""
    pct = f"{confidence * 100:g}%"
    lines = [
        f"Paired {metric} differences (method - {baseline_name}), one pair per {pair_unit}.",
        "",
        f"| method | pairs | {baseline_name} mean | method mean | mean difference | std of differences | "
        f"{pct} CI (t) | {pct} CI (bootstrap) | wins / losses / ties | sign test p | Wilcoxon p | "
        "verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in rows:
        t_low, t_high = s["t_ci"]
        b_low, b_high = s["boot_ci"]
        cells = [
            name,
            str(s["n"]),
            _fmt(s["baseline_mean"]),
            _fmt(s["method_mean"]),
            f"{s['mean_diff']:+.4f}",
            _fmt(s["std_diff"]),
            f"[{t_low:+.4f}, {t_high:+.4f}]",
            f"[{b_low:+.4f}, {b_high:+.4f}]",
            f"{s['wins']} / {s['losses']} / {s['ties']}",
            _fmt(s["sign_p"], 3),
            _fmt(s["wilcoxon_p"], 3),
            verdict(s),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def load_scores_table(path, metric):
    """``{setting: {(pair,): score}}`` from a tab-separated table with a header naming
    ``setting``, ``pair`` and ``metric`` among its columns; ``#`` lines are comments."""
    with open(path, encoding="utf-8") as f:
        rows = [(n, line.rstrip("\n").split("\t")) for n, line in enumerate(f, 1) if not line.startswith("#")]
    rows = [(n, cells) for n, cells in rows if any(c.strip() for c in cells)]
    if not rows:
        raise PairingError(f"{path}: empty table")
    header = rows[0][1]
    for column in ("setting", "pair", metric):
        if column not in header:
            raise PairingError(f"{path}: no column '{column}' in the header ({', '.join(header)})")
    at = {c: header.index(c) for c in ("setting", "pair", metric)}
    table = {}
    for n, cells in rows[1:]:
        if len(cells) != len(header):
            raise PairingError(f"{path}, line {n}: {len(cells)} cells, the header has {len(header)}")
        score = _score(cells[at[metric]], f"{path}, line {n}: {metric}")
        scores = table.setdefault(cells[at["setting"]], {})
        key = (cells[at["pair"]],)
        if key in scores:
            raise PairingError(f"{path}, line {n}: pair '{key[0]}' of '{cells[at['setting']]}' given twice")
        scores[key] = score
    return table
