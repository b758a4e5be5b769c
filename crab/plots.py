"""Figures of the reports: confusion matrix (paper Fig. 2), metrics against alpha
(Fig. 3), 2-D projections of embeddings.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot, no display, no
global backend change), so they work on headless machines and inside training jobs.
"""

import os

import matplotlib as mpl
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from crab.fileio import write_atomic
from crab.metrics import row_normalised

LOW_RECALL = 0.2  # diagonal cells below this are marked (paper Fig. 2)


def _save(fig, path, dpi=150):
    """Write ``fig`` to ``path`` whole (``crab.fileio``), in the format its extension names."""
    FigureCanvasAgg(fig)
    fmt = os.path.splitext(path)[1][1:] or mpl.rcParams["savefig.format"]  # not the temporary name's
    write_atomic(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight"))
    return path


def plot_confusion(matrix, classes, path, title=None, mark_below=LOW_RECALL):
    """Row-normalised confusion matrix (true on rows, so the diagonal is each
    class's recall), every cell annotated, diagonal cells under ``mark_below``
    outlined in red. Rows of classes absent from the references are hatched
    and marked n/a."""
    counts = np.asarray(matrix)
    normalised = row_normalised(counts)
    n = len(classes)
    size = max(4.0, 0.7 * n + 2.0)
    fig = Figure(figsize=(size + 1.0, size))
    ax = fig.add_subplot()
    image = ax.imshow(np.nan_to_num(normalised), cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    for i in range(n):
        if np.isnan(normalised[i]).all():
            ax.add_patch(Rectangle((-0.5, i - 0.5), n, 1, facecolor="0.9", hatch="//", edgecolor="0.6"))
            ax.text((n - 1) / 2, i, "n/a: no test utterance", ha="center", va="center", fontsize=8)
            continue
        for j in range(n):
            value = normalised[i, j]
            low = i == j and value < mark_below
            ax.text(
                j,
                i,
                f"{value:.2f}",
                ha="center",
                va="center",
                fontsize=9,
                color="red" if low else ("white" if value > 0.5 else "black"),
                fontweight="bold" if low else "normal",
            )
            if low:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2.5))
    labels = [f"{c}\n(n={int(s)})" for c, s in zip(classes, counts.sum(axis=1), strict=True)]
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    subtitle = f"red: recall < {mark_below:g}"
    ax.set_title(f"{title}\n{subtitle}" if title else subtitle, fontsize=10)
    return _save(fig, path)


def plot_alpha(alphas, means, path, stds=None, baseline=None, title=None):
    """Metrics against alpha (paper Fig. 3), one panel per metric.

    ``means`` (and ``stds``, optional) map a metric name to one value per alpha;
    ``baseline`` maps a metric name to the CE-only value, drawn as a dashed
    horizontal line. The best alpha of each metric is annotated.
    """
    order = np.argsort(alphas)
    x = np.asarray(alphas, dtype=float)[order]
    fig = Figure(figsize=(4.2 * len(means), 3.8))
    axes = fig.subplots(1, len(means), squeeze=False, gridspec_kw={"wspace": 0.35})[0]
    for ax, colour, (metric, values) in zip(  # a colour for each of at most four metrics
        axes, ("tab:blue", "tab:orange", "tab:green", "tab:red"), means.items(), strict=False
    ):
        y = np.asarray(values, dtype=float)[order]
        err = None if not stds or metric not in stds else np.asarray(stds[metric], dtype=float)[order]
        ax.errorbar(x, y, yerr=err, marker="o", color=colour, capsize=3, label="MLCS")
        best = int(np.nanargmax(y))
        ax.annotate(
            f"{y[best]:.3f}",
            (x[best], y[best]),
            textcoords="offset points",
            xytext=(0, 7),
            ha="center",
            fontsize=8,
            color=colour,
        )
        if baseline and metric in baseline:
            ax.axhline(
                baseline[metric],
                color="0.3",
                linestyle="--",
                linewidth=1.2,
                label=f"CE only ({baseline[metric]:.3f})",
            )
        ax.margins(y=0.15)
        ax.set_xlabel("alpha")
        ax.set_ylabel(metric)
        ax.set_xticks(x)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_embeddings(panels, classes, path):
    """Scatter plots of 2-D projections side by side (4 per row), coloured by emotion.

    ``panels`` is a list of ``(title, points (n, 2), labels (n,) class indices)``; a panel whose
    points are None (a projection skipped) is drawn empty, its title saying why.
    """
    columns = min(4, len(panels))
    rows = -(-len(panels) // columns)
    fig = Figure(figsize=(4.5 * columns + 1.5, 4.6 * rows))
    colours = [f"C{i % 10}" for i in range(len(classes))]
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax in axes[len(panels) :]:
        ax.set_axis_off()
    for ax, (title, points, labels) in zip(axes, panels, strict=False):  # the grid may have spare axes
        if points is not None:
            _scatter_classes(ax, np.asarray(points), np.asarray(labels), classes, colours)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    handles, names = [], []
    for ax in axes:
        for handle, name in zip(*ax.get_legend_handles_labels(), strict=True):
            if name not in names:
                handles.append(handle)
                names.append(name)
    fig.legend(handles, names, loc="center right", fontsize=8, markerscale=1.5)
    fig.subplots_adjust(right=1 - 1.4 / fig.get_figwidth())
    return _save(fig, path)


def _scatter_classes(ax, points, labels, classes, colours):
    for k, name in enumerate(classes):
        chosen = labels == k
        if chosen.any():
            ax.scatter(points[chosen, 0], points[chosen, 1], s=12, alpha=0.8, color=colours[k], label=name)


def plot_paired(panels, path, metric="UAR", baseline_name="baseline"):
    """One panel per method: each pair's baseline score (x) against the method's (y),
    the diagonal drawn, points above it where the method won; ``panels`` is a list of
    ``(method name, baseline scores, method scores, point labels)``."""
    fig = Figure(figsize=(4.2 * len(panels), 4.4))
    everything = [v for _, base, meth, _ in panels for v in (*base, *meth)]
    pad = max(0.01, 0.05 * (max(everything) - min(everything)))
    low, high = min(everything) - pad, max(everything) + pad
    for i, (name, base, meth, labels) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        ax.plot([low, high], [low, high], color="0.5", linewidth=1, linestyle="--", label="equal")
        folds = sorted(set(fold for fold, _ in labels))
        colours = {fold: f"C{j % 10}" for j, fold in enumerate(folds)}
        for fold in folds:
            points = [(b, m) for b, m, (f, _) in zip(base, meth, labels, strict=True) if f == fold]
            ax.scatter(*zip(*points, strict=True), color=colours[fold], s=28, label=fold)
        above = sum(m > b for b, m in zip(base, meth, strict=True))
        ax.set_title(f"{name}: above the diagonal {above} of {len(base)}", fontsize=10)
        ax.set_xlim(low, high)
        ax.set_ylim(low, high)
        ax.set_aspect("equal")
        ax.set_xlabel(f"{baseline_name} {metric}")
        ax.set_ylabel(f"{name} {metric}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    fig.subplots_adjust(wspace=0.4)  # room for the next panel's axis label
    return _save(fig, path)
