"""Paired comparison of two methods run on the same folds and seeds.

Each pair is one (fold, seed) run of both methods, so the fold-to-fold spread, which
dominates speaker-independent results, cancels in the differences. For the differences
``method - baseline`` it reports the mean, a t confidence interval and a percentile
bootstrap interval of the mean, the wins/losses/ties, an exact two-sided sign test
(ties dropped) and the Wilcoxon signed-rank test (scipy; zero differences dropped).

The runs of a pair must differ only in what is compared. ``compared_settings`` reads each
run's records (``hyperparams.yaml``, ``text_source.json``, its evaluation's
``predictions.inputs.json``): the settings in which every pair's two runs differ are what is
compared, and are listed with the table; one in which only some pairs differ is an error
naming the two runs, as is a run whose training stopped early or whose score the summary
holds no longer (evaluated again since stage 7 scored it). The code that trained the runs (the git
commit and library versions of each one's ``train_info.json``) is listed too where it is not one
clean commit and one set of versions for all (``code_differences``), never an error: a comparison
of runs trained by other code includes what changed between them.

Example
-------
>>> stats = paired_stats([0.90, 0.80, 0.85, 0.70], [0.91, 0.82, 0.84, 0.73])
>>> round(stats["mean_diff"], 4), stats["wins"], stats["losses"], stats["sign_p"]
(0.0125, 3, 1, 0.625)
"""

import json
import os
from collections import Counter

import numpy as np
from scipy import stats as scipy_stats

from crab import cli
from crab.evalrecord import PREDICTIONS_RECORD
from crab.metrics import METRICS, classification_report
from crab.provenance import read_run_provenance, trained_text_source
from crab.report import (
    check_evaluated_checkpoint,
    read_predictions,
    read_summary,
    read_train_info,
    summary_test_set,
    unfinished_training,
)
from crab.runconfig import RUN_HPARAMS, is_object, resolved_values, same_value, show

# Keys of a run's hyperparams.yaml that say where its files are or how fast it reads them,
# not what it learns or is tested on: left out of the comparison of two runs, at any depth
# (the loaders' num_workers). The data themselves are compared by their digests.
NOT_SETTINGS = frozenset(
    {
        "output_folder",
        "data_root",
        "data_folder",
        "feature_cache",
        "test_manifest",
        "eval_name",
        "num_workers",
        "gradient_checkpointing",
        "ckpt_interval_minutes",
        "ckpt_interval_steps",
        "find_unused_parameters",
        "use_tensorboard",
    }
)
# Settings that are data, not method: warned about when the runs of a pair differ in them.
DATA_SETTINGS = (
    "text_source",
    "asr_model",
    "train manifest (sha256)",
    "valid manifest (sha256)",
    "tokenizer (sha256)",
    "test manifest (sha256)",
)


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


def run_folder(summary_path, run):
    """The folder of a summary's ``run`` that holds its records: beside the summary, as stage 7
    writes them (``exp/<tag>/results_<test>.json``, ``exp/<tag>/<fold>/seed<seed>``), else the
    path the summary names; None where neither has a ``hyperparams.yaml`` (a summary alone)."""
    fold, seed = run_pair_key(run)
    for folder in (os.path.join(os.path.dirname(os.path.abspath(summary_path)), fold, seed), run):
        if os.path.isfile(os.path.join(folder, RUN_HPARAMS)):
            return folder
    return None


def summary_runs(path, metric):
    """``{(fold, seed): (run, settings, code)}`` of the runs of a summary: the run as it names it,
    what it was trained and tested with (``run_settings``) and the code that trained it
    (``run_code``); both None without its folder. Each run found is checked (``check_run``)."""
    _, summary = read_summary(path)
    test_set = summary.get("test_set") or summary_test_set(path)
    runs = {}
    for row in summary.get("runs", []):
        folder = run_folder(path, row["run"])
        if folder is not None:
            check_run(path, row, folder, test_set, metric)
        runs[run_pair_key(row["run"])] = (
            row["run"],
            folder and run_settings(folder, test_set),
            folder and run_code(folder),
        )
    return runs


def run_code(folder):
    """``{"code": git commit, "libraries": versions}`` of the last training of the run in
    ``folder`` (its ``train_info.json``; None values where it has none): what computed it,
    besides its settings."""
    info = read_train_info(folder) or {}
    return {"code": info.get("commit"), "libraries": info.get("versions")}


def check_run(path, row, folder, test_set, metric):
    """A ``PairingError`` naming a run of the summary ``path`` (its ``row``, found in ``folder``)
    whose training stopped before its epochs, or whose predictions on ``test_set`` now score
    otherwise than the summary says: evaluated again (or trained on) since stage 7 scored it."""
    unfinished = unfinished_training(folder)
    if unfinished:
        raise PairingError(
            f"{path}: {row['run']} trained {unfinished[0]} of its {unfinished[1]} epochs: finish it "
            "(stage 5 resumes it) and score it again (stage 7), or leave its pair out of both"
        )
    predictions = os.path.join(folder, f"eval_{test_set}", "predictions.csv")
    if not os.path.isfile(predictions):
        return
    check_evaluated_checkpoint(predictions, folder)
    classes, y_true, y_pred = read_predictions(predictions)
    now = classification_report(y_true, y_pred, classes)[metric]
    if not np.isclose(now, float(row[metric]), rtol=0, atol=1e-9):
        raise PairingError(
            f"{path}: {row['run']}: {metric} {row[metric]}, but its predictions ({predictions}) now score "
            f"{now:.6f}: evaluated again since stage 7 scored it; score it again (stage 7)"
        )


def run_settings(folder, test_set):
    """What the run in ``folder`` was trained and tested with, ``{setting: value}``: the keys
    of its ``hyperparams.yaml`` less ``NOT_SETTINGS`` (paths under its output and data folders
    written alike), the source of its transcripts and the digests of its training and validation
    manifests and tokenizer (``text_source.json``), and the digest of its test manifest and the
    precision of its evaluation on ``test_set`` (``predictions.inputs.json``), where recorded."""
    with open(os.path.join(folder, RUN_HPARAMS), encoding="utf-8") as f:
        values = resolved_values(f.read())
    roots = [(str(values[key]), f"<{key}>") for key in ("output_folder", "data_folder") if values.get(key)]
    settings = {key: _alike(value, roots) for key, value in values.items() if key not in NOT_SETTINGS}
    record = read_run_provenance(folder)
    if record:
        settings["text_source"], settings["asr_model"] = trained_text_source(record)
        digests = record.get("manifests_sha256") or {}
        for split in ("train", "valid"):
            if split in digests:
                settings[f"{split} manifest (sha256)"] = digests[split]
        if "tokenizer_sha256" in record:
            settings["tokenizer (sha256)"] = record["tokenizer_sha256"]
    evaluation = os.path.join(folder, f"eval_{test_set}", PREDICTIONS_RECORD)
    if os.path.isfile(evaluation):
        with open(evaluation, encoding="utf-8") as f:
            inputs = json.load(f)
        settings["test manifest (sha256)"] = inputs.get("test_manifest_sha256")
        settings["eval_precision"] = inputs.get("eval_precision")
    return settings


def _alike(value, roots):
    """``value`` with ``NOT_SETTINGS`` keys left out at any depth and each path under a root
    of ``roots`` (``(root, name)``) written under its name."""
    if isinstance(value, dict):
        return {k: _alike(v, roots) for k, v in value.items() if k not in NOT_SETTINGS}
    if isinstance(value, (list, tuple)):
        return type(value)(_alike(v, roots) for v in value)
    if isinstance(value, str):
        for root, name in roots:
            if value == root or value.startswith(root.rstrip("/") + "/"):
                return name + value[len(root.rstrip("/")) :]
    return value


NOT_SET = object()


def _shown(value, width=100):
    text = "not set" if value is NOT_SET else show(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def compared_settings(baseline, method, baseline_name="baseline", method_name="method"):
    """What the method's runs differ in from the baseline's (``summary_runs`` of both, the same
    pairs): the settings in which the two runs of every pair differ, in words, and the pairs
    without the records of both runs (not checked). A setting in which the runs of only some
    pairs differ is a ``PairingError`` naming them: the pairs would compare different things."""
    keys = sorted(baseline)
    checked = [k for k in keys if baseline[k][1] is not None and method[k][1] is not None]
    unchecked = [k for k in keys if k not in checked]

    def values(key, setting):
        return baseline[key][1].get(setting, NOT_SET), method[key][1].get(setting, NOT_SET)

    def differ(key):
        both = set(baseline[key][1]) | set(method[key][1])
        return {s for s in both if NOT_SET in values(key, s) or not same_value(*values(key, s))}

    differing = {key: differ(key) for key in checked}
    for key in checked:
        if "seed" in differing[key]:  # what pairs them
            raise PairingError(
                f"{baseline[key][0]} and {method[key][0]}, paired as {'/'.join(key)}, were trained with "
                f"seeds {_shown(values(key, 'seed')[0])} and {_shown(values(key, 'seed')[1])}: a pair is "
                "one seed of both"
            )
    everywhere = set.intersection(*differing.values()) if checked else set()
    for setting in sorted(set().union(*differing.values()) - everywhere):
        odd = next(k for k in checked if setting in differing[k])
        alike = next(k for k in checked if setting not in differing[k])
        (b, m), same = values(odd, setting), values(alike, setting)[0]
        raise PairingError(
            f"{baseline_name} and {method_name} differ in {setting} in some pairs only: "
            f"{baseline[odd][0]} has {_shown(b)}, {method[odd][0]} {_shown(m)}, while both runs of "
            f"{'/'.join(alike)} have {_shown(same)}: compare runs that differ in the same settings in "
            "every pair (train them alike, or leave the odd pairs out of both)"
        )
    compared = {setting: [values(k, setting) for k in checked] for setting in sorted(everywhere)}
    built = [s for s, pairs in compared.items() if any(_is_built(v) for pair in pairs for v in pair)]
    shown = [_compared(s, pairs) for s, pairs in compared.items() if s not in built]
    return shown + ([f"the objects built from them: {', '.join(built)}"] if built else []), unchecked


def code_differences(baseline, method):
    """Lines on the code and libraries that trained the runs of both methods (``summary_runs``
    of both, the same pairs), where they are not one clean commit and one set of versions for
    every run: ``code: abc1234 (4 runs) vs def5678 (3 runs), abc1234 (1 run)``. A commit with
    ``+dirty`` (uncommitted changes), or ``unknown`` (trained outside a git checkout), is not
    known to be the code of another run. The libraries are torch, speechbrain and transformers,
    with the python that ran them. Runs recorded by none (trained before ``train_info.json``)
    say nothing."""
    lines = []
    for what, label in (("code", "code (git commit)"), ("libraries", "libraries")):
        sides = [
            [runs[k][2][what] if runs[k][2] else None for k in sorted(runs)] for runs in (baseline, method)
        ]
        values = set(sides[0]) | set(sides[1])
        dirty = any(str(v).endswith("+dirty") for v in values)
        if values == {None} or (len(values) == 1 and not dirty and values != {"unknown"}):
            continue
        note = " (+dirty: with uncommitted changes)" if dirty else ""
        lines.append(f"{label}: {_tally(sides[0])} vs {_tally(sides[1])}{note}")
    return lines


def _tally(values):
    """``a (3 runs), b (1 run)``: each value with its count, the most frequent first."""
    counts = Counter("not recorded" if v is None else v for v in values).most_common()
    return ", ".join(f"{value} ({n} run{'s' if n > 1 else ''})" for value, n in counts)


def _is_built(value):
    return is_object(value) or isinstance(value, dict)


def _compared(setting, pairs):
    """``setting: <baseline's> vs <method's>``, each side's values over the pairs (``30 vs 20,
    25``: the method's runs differ among themselves), or, for a digest of each fold's data,
    ``setting: other in every pair``."""
    if setting.endswith("(sha256)"):
        return f"{setting}: other in every pair"
    sides = [", ".join({_shown(v): None for v in side}) for side in zip(*pairs, strict=True)]
    return f"{setting}: {sides[0]} vs {sides[1]}"


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


def settings_lines(compared, baseline_name):
    """Markdown lines of what each method's pairs compare (``{method: (shown, unchecked, code)}``:
    ``compared_settings`` and ``code_differences`` of its runs against the baseline's), the code
    that trained them under it where it is not one for all."""
    lines = ["Settings compared (the runs of every pair differ in these, and in nothing else they record):"]
    for name, (shown, unchecked, code) in compared.items():
        parts = list(shown)
        if unchecked:
            pairs = ", ".join("/".join(key) for key in unchecked)
            parts.append(f"NOT CHECKED: {pairs} (no run folder with its {RUN_HPARAMS})")
        elif not shown:
            parts.append(
                "no setting (the code differs: below)"
                if code
                else "nothing: the runs of each pair were trained and tested alike"
            )
        lines.append(f"- {name} against {baseline_name}: {'; '.join(parts)}")
        lines += [f"  - {line}: the differences may include what changed between them" for line in code]
    return lines + [""]


def paired_markdown(rows, metric, baseline_name, confidence=0.95, pair_unit="fold and seed", compared=None):
    """Markdown table: one row per method against the baseline, from ``paired_stats`` results,
    after what each compares (``settings_lines``, where ``compared`` is given)."""
    pct = f"{confidence * 100:g}%"
    lines = [
        f"Paired {metric} differences (method - {baseline_name}), one pair per {pair_unit}.",
        "",
        *(settings_lines(compared, baseline_name) if compared else []),
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
