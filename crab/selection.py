"""Choosing the number of epochs on validation data, from the runs' training logs.

A run's ``train_log.txt`` has one line per epoch with the validation scores
(``epoch: 3, ... - valid loss: ..., valid UAR: 9.05e-01, ...``). The epoch count
chosen for a setting is the epoch with the best validation score averaged over its
runs (folds, seeds); ties go to the earlier epoch, the cheaper one.

Example
-------
>>> best_epoch({"a": [0.5, 0.7, 0.7], "b": [0.6, 0.8, 0.9]})
(3, [0.55, 0.75, 0.8])
"""

import os
import re

from crab import cli
from crab.metrics import METRICS


class SelectionError(cli.UserError, ValueError):
    """A training log without the scores asked for: the message names the file and line."""


def valid_curve(train_log, metric="UAR"):
    """The validation ``metric`` of each epoch in ``train_log``, in epoch order."""
    if metric not in METRICS:
        raise SelectionError(f"metric must be one of {', '.join(METRICS)}, got '{metric}'")
    pattern = re.compile(rf"valid {metric}: ([-+0-9.eE]+)")
    curve = {}
    with open(train_log, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            epoch = re.match(r"epoch: (\d+),", line)
            if not epoch:
                continue
            score = pattern.search(line)
            if not score:
                raise SelectionError(f"{train_log}, line {n}: no 'valid {metric}' on the line of an epoch")
            curve[int(epoch.group(1))] = float(score.group(1))  # a resumed run logs an epoch again
    if not curve:
        raise SelectionError(f"{train_log}: no epoch with validation scores")
    if sorted(curve) != list(range(1, len(curve) + 1)):
        raise SelectionError(f"{train_log}: epochs {sorted(curve)} are not 1..{len(curve)}")
    return [curve[e] for e in sorted(curve)]


def run_curves(logs, metric="UAR"):
    """``{run: valid_curve}`` of each training log, a run named by its folders under the setting
    (``<fold>/seed<seed>``). Two logs of one name are a ``SelectionError`` naming both: one curve
    would replace the other, and the epochs be chosen on fewer runs than given."""
    curves, named = {}, {}
    for log in logs:
        run = os.path.join(*os.path.normpath(log).split(os.sep)[-3:-1])
        if run in named and os.path.realpath(named[run]) != os.path.realpath(log):
            raise SelectionError(f"{named[run]} and {log} are both run {run}: give the runs of one setting")
        named[run] = log
        curves[run] = valid_curve(log, metric)
    return curves


def best_epoch(curves):
    """``(epoch, mean curve)``: the epoch (1-based) with the best mean over ``curves``
    (``{run: [score per epoch]}``, all of one length), the earliest on ties."""
    lengths = {len(c) for c in curves.values()}
    if len(lengths) != 1:
        raise SelectionError(f"runs of different lengths: {sorted(lengths)} epochs; finish them first")
    (length,) = lengths
    mean = [round(sum(c[e] for c in curves.values()) / len(curves), 10) for e in range(length)]
    return mean.index(max(mean)) + 1, mean


def curves_markdown(curves, metric="UAR", title=None):
    """Table of the curves (a row per run, the mean last) with the chosen epoch in bold."""
    chosen, mean = best_epoch(curves)
    epochs = range(1, len(mean) + 1)
    lines = [f"## {title}", ""] if title else []
    lines += [
        f"| run (validation {metric}) | " + " | ".join(str(e) for e in epochs) + " |",
        "|---|" + "---|" * len(mean),
    ]
    for run, curve in curves.items():
        lines.append(f"| {run} | " + " | ".join(f"{v:.3f}" for v in curve) + " |")
    cells = [f"**{v:.3f}**" if e == chosen else f"{v:.3f}" for e, v in zip(epochs, mean, strict=True)]
    lines.append("| mean | " + " | ".join(cells) + " |")
    lines += ["", f"Chosen: {chosen} epochs (best mean validation {metric}; ties: the earlier)."]
    return "\n".join(lines) + "\n"
