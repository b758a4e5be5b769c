"""Fused embeddings: the classifier's fc1 output before the ReLU (``taps["fusion"]``, the
input of the fusion leg), extracted from a trained ``CrabBrain``, scored by how well they
cluster by emotion, projected to 2-D and drawn.

The command lines are ``crab.bin.embeddings`` (one run) and ``crab.bin.compare embeddings``
(several side by side). Light on imports: numpy; torch, SpeechBrain, scikit-learn and
matplotlib only where needed.
"""

import json
import logging
import os

import numpy as np

from crab import evalrecord
from crab.fileio import commit, make_dirs, stage, text_writer, write_text_atomic

logger = logging.getLogger(__name__)

EMBEDDING_SCORES = ("silhouette", "calinski_harabasz", "davies_bouldin")
# The silhouette compares every pair of points: its time and memory grow with the square of
# the test set (minutes and GBs at MSP-Podcast's size). A larger set is scored on a fixed
# random sample of this many (as scikit-learn's ``sample_size`` does; the other two scores
# are linear).
SILHOUETTE_SAMPLE = 10000
PROJECTIONS = ("pca", "tsne")  # project_2d's methods; embeddings_<projection>.png
PROJECTION_NAMES = {"pca": "PCA", "tsne": "t-SNE"}
# PCA: two components need two points; t-SNE: its perplexity (at least 2) below the number of points
PROJECTION_MIN_POINTS = {"pca": 2, "tsne": 3}


def extract_embeddings(brain, test_set, loader_kwargs):
    """The fused embeddings of a dataset, from the brain's current parameters.

    Parameters
    ----------
    brain : crab.brain.CrabBrain
        The model, with the checkpoint to use loaded.
    test_set : speechbrain.dataio.dataset.DynamicItemDataset
        The utterances (``crab.experiment.dataset``).
    loader_kwargs : dict
        DataLoader options.

    Returns
    -------
    tuple of (list of str, numpy.ndarray, numpy.ndarray)
        Utterance ids, embeddings (N x bottleneck_dim) and true class indices.
    """
    import speechbrain as sb
    import torch

    loader = brain.make_dataloader(test_set, stage=sb.Stage.TEST, **loader_kwargs)
    brain.modules.eval()
    ids, embeddings, labels = [], [], []
    with torch.no_grad():
        for batch in loader:
            _, taps = brain.forward_model(batch)
            ids.extend(batch.id)
            embeddings.append(taps["fusion"].float().cpu())
            labels.append(batch.emo_encoded.data.squeeze(1).cpu())
    return ids, torch.cat(embeddings).numpy(), torch.cat(labels).numpy()


def embedding_scores(embeddings, labels):
    """Silhouette (euclidean), Calinski-Harabasz and Davies-Bouldin scores of
    embeddings grouped by their true label; None where undefined (``undefined_scores``), each
    with a warning. The silhouette of more than ``SILHOUETTE_SAMPLE`` points is that of a fixed
    random sample of them (the same points for every run of a test set)."""
    return _scores_and_why(embeddings, labels)[0]


def _scores_and_why(embeddings, labels):
    """``embedding_scores`` and ``undefined_scores``, computed once."""
    embeddings, labels = np.asarray(embeddings, dtype=np.float64), np.asarray(labels)
    undefined = undefined_scores(embeddings, labels)
    for why in dict.fromkeys(undefined.values()):  # one warning per reason
        keys = [key for key, reason in undefined.items() if reason == why]
        logger.warning("Embedding score%s %s undefined (n/a): %s", "s"[: len(keys) > 1], ", ".join(keys), why)
    return _scores(embeddings, labels, undefined), undefined


def undefined_scores(embeddings, labels):
    """The scores these embeddings and labels leave undefined, each with why: all of them for
    fewer than 2 labels or as many labels as points, and where scikit-learn would divide by zero
    yet give a number: every one when all embeddings are one point (a collapsed model:
    Davies-Bouldin 0, the best, and Calinski-Harabasz 1), Calinski-Harabasz when each class is
    one point (no spread within classes: 1 where it is infinite); the silhouette when its sample
    of ``SILHOUETTE_SAMPLE`` points holds one label."""
    embeddings, labels = np.asarray(embeddings, dtype=np.float64), np.asarray(labels)
    groups = len(np.unique(labels))
    if groups < 2:
        return dict.fromkeys(EMBEDDING_SCORES, f"{groups} label(s) among the {len(labels)} utterances")
    if groups >= len(labels):
        return dict.fromkeys(EMBEDDING_SCORES, f"each of the {len(labels)} utterances has a label of its own")
    scale = np.abs(embeddings).max()
    if _one_point(embeddings, scale):
        return dict.fromkeys(
            EMBEDDING_SCORES, f"all {len(embeddings)} embeddings are one point (a collapsed model)"
        )
    undefined = {}
    if all(_one_point(embeddings[labels == k], scale) for k in np.unique(labels)):
        undefined["calinski_harabasz"] = (
            "the embeddings of each class are one point (no spread within classes)"
        )
    if len(np.unique(labels[_silhouette_sample(len(labels))])) < 2:
        undefined["silhouette"] = f"its sample of {SILHOUETTE_SAMPLE} utterances holds one label"
    return undefined


def _one_point(points, scale):
    """Whether ``points`` are one point up to float32 rounding of values of ``scale``."""
    return float(np.ptp(points, axis=0).max()) <= 1e-5 * scale


def _silhouette_sample(n):
    """The points the silhouette of ``n`` points is taken over: a fixed sample of large sets."""
    if n <= SILHOUETTE_SAMPLE:
        return slice(None)
    return np.sort(np.random.default_rng(0).choice(n, SILHOUETTE_SAMPLE, replace=False))


def _scores(embeddings, labels, undefined):
    """The scores that ``undefined`` leaves out, and None for those it names."""
    from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score

    sample = _silhouette_sample(len(labels))
    score = {
        "silhouette": lambda: silhouette_score(embeddings[sample], labels[sample]),
        "calinski_harabasz": lambda: calinski_harabasz_score(embeddings, labels),
        "davies_bouldin": lambda: davies_bouldin_score(embeddings, labels),
    }
    return {key: None if key in undefined else float(score[key]()) for key in EMBEDDING_SCORES}


def project_2d(embeddings, method="pca", seed=0):
    """2-D projection: ``pca`` (deterministic) or ``tsne``."""
    embeddings = np.asarray(embeddings, dtype=np.float64)
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(embeddings)
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30, max(2, (len(embeddings) - 1) // 3)))
        return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(
            embeddings
        )
    raise ValueError(f"projection must be pca or tsne, got '{method}'")


def projected(embeddings, method, what):
    """The 2-D points of ``project_2d`` and None; or, for embeddings that ``method`` cannot
    project, None and why, logged as a warning naming ``what`` (a plot draws an empty panel)."""
    why = unprojectable(embeddings, method)
    if why is None:
        return project_2d(embeddings, method), None
    logger.warning("%s projection of the embeddings of %s skipped: %s", PROJECTION_NAMES[method], what, why)
    return None, why


def unprojectable(embeddings, method):
    """Why ``method`` cannot project these embeddings to 2-D (None: it can)."""
    name, needed = PROJECTION_NAMES[method], PROJECTION_MIN_POINTS[method]
    if len(embeddings) < needed:
        return f"{len(embeddings)} utterance(s), {name} needs at least {needed}"
    if embeddings.shape[1] < 2:  # scikit-learn's PCA (t-SNE's initialisation too) refuses it
        dim = embeddings.shape[1]
        return f"{dim}-dimensional embeddings (bottleneck_dim), {name} to 2-D needs at least 2"
    if _one_point(embeddings, np.abs(embeddings).max()):  # t-SNE of them crashes the process
        return f"all {len(embeddings)} embeddings are one point (a collapsed model)"
    return None


def write_embeddings(
    out_dir, ids, embeddings, labels, classes, projection="pca", title=None, checkpoint=None, inputs=None
):
    """Write the dump, its cluster scores and its projection plot to ``out_dir``.

    Parameters
    ----------
    out_dir : str
        Folder of ``embeddings.npz`` (``ids``, ``embeddings``, ``labels``, ``classes``),
        ``embedding_scores.json`` and ``embeddings_<projection>.png`` (an empty panel saying
        why where the projection cannot be made: too few utterances, one dimension, or all one point); made
        when missing.
    ids : list of str
        Utterance ids.
    embeddings : numpy.ndarray
        N x dim embeddings.
    labels : numpy.ndarray
        True class indices.
    classes : list of str
        Class names, by index.
    projection : str
        ``pca`` or ``tsne``.
    title : str, optional
        Plot title (default: ``out_dir``), above the scores.
    checkpoint : str, optional
        The checkpoint embedded (its folder's name), recorded in ``embedding_scores.json``:
        stage 7 uses the scores only beside predictions of the same checkpoint.
    inputs : dict, optional
        What they were computed from (``crab.evalrecord.inputs``), written to
        ``embeddings.inputs.json`` after the dump, scores and plot (an older record, and the
        plots of the dump replaced, whichever projection, are removed first).

    Returns
    -------
    dict
        The scores (``embedding_scores``).
    """
    from crab.plots import plot_embeddings

    make_dirs(out_dir)
    scores, undefined = _scores_and_why(embeddings, labels)

    def write_dump(tmp):
        with open(tmp, "wb") as f:  # a file object: np.savez adds .npz to a name
            np.savez(f, ids=np.array(ids), embeddings=embeddings, labels=labels, classes=np.array(classes))

    saved = {"num_utterances": len(ids), "dim": int(embeddings.shape[1]), **scores}
    if undefined:
        saved["undefined"] = undefined  # why a score is null
    if checkpoint:
        saved["checkpoint"] = checkpoint
    evalrecord.forget(out_dir, evalrecord.EMBEDDINGS_RECORD)  # a kill before the new one leaves none
    for drawn in PROJECTIONS:  # plots of the dump replaced: the new record must not vouch for them
        evalrecord.forget(out_dir, f"embeddings_{drawn}.png")
    commit(  # both whole (stage 7 reads the scores beside the predictions), or neither replaced
        stage(
            [
                (os.path.join(out_dir, "embeddings.npz"), write_dump),
                (os.path.join(out_dir, "embedding_scores.json"), text_writer(json.dumps(saved, indent=2))),
            ]
        )
    )
    text = ", ".join("n/a" if v is None else f"{k} {v:.3f}" for k, v in scores.items())
    points, why = projected(embeddings, projection, out_dir)
    plot_embeddings(
        [(_panel_title(f"{title or out_dir}\n{text}", why), points, labels)],
        classes,
        os.path.join(out_dir, f"embeddings_{projection}.png"),
    )
    if inputs:
        write_text_atomic(os.path.join(out_dir, evalrecord.EMBEDDINGS_RECORD), json.dumps(inputs, indent=2))
    return scores


def embedding_panels(named_dumps, projection="pca"):
    """The panels of several dumps side by side (``crab.plots.plot_embeddings``).

    Parameters
    ----------
    named_dumps : list of (str, str)
        A name and the path of its ``embeddings.npz``.
    projection : str
        ``pca`` or ``tsne``.

    Returns
    -------
    tuple of (list, list of str, dict)
        A title (the name and scores), the 2-D points and the labels per dump; the class
        list, the same in every dump; and ``name -> scores``.
    """
    panels, classes, scores = [], None, {}
    for name, path in named_dumps:
        dump = np.load(path)
        dump_classes = [str(c) for c in dump["classes"]]
        if classes is not None and dump_classes != classes:
            raise ValueError(f"{path}: classes {dump_classes} differ from {classes}")
        classes = dump_classes
        scores[name] = embedding_scores(dump["embeddings"], dump["labels"])
        text = scores_line(scores[name], names=("sil", "CH", "DB"))
        points, why = projected(dump["embeddings"], projection, path)
        panels.append((_panel_title(f"{name}\n{text}", why), points, dump["labels"]))
    return panels, classes, scores


def scores_line(scores, names=("silhouette", "Calinski-Harabasz", "Davies-Bouldin")):
    """The cluster scores on one line, each under its name in ``names``, n/a where undefined.

    >>> scores_line({"silhouette": 0.08626644, "calinski_harabasz": 121.0762, "davies_bouldin": None})
    'silhouette 0.086, Calinski-Harabasz 121.076, Davies-Bouldin n/a'
    """
    return ", ".join(
        f"{name} n/a" if scores[key] is None else f"{name} {scores[key]:.3f}"
        for name, key in zip(names, EMBEDDING_SCORES, strict=True)
    )


def _panel_title(title, skipped):
    """A panel's title, with why its projection was skipped (None: it was not)."""
    return title if skipped is None else f"{title}\nprojection skipped: {skipped}"


def scores_markdown(scores):
    """Markdown table of the cluster scores of several runs (``name -> scores``), n/a where undefined."""
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
    return "\n".join(lines)
