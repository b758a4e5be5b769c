"""Fused embeddings of a test set from the best checkpoint, and how well they cluster.

    python -m crab.bin.embeddings hparams.yaml [--key=value ...] --test_manifest=M \\
        --eval_name=NAME [--projection pca|tsne]

Runs the model chosen on ``ckpt_metric`` (as ``crab.bin.evaluate`` does) over the
manifest and keeps the fused bottleneck, the classifier's fc1 output before the
ReLU (``taps["fusion"]``, the input of the fusion leg). Writes to
``<output_folder>/eval_<NAME>/``:

- ``embeddings.npz``: ``ids``, ``embeddings`` (N x bottleneck_dim), ``labels``
  (class indices of the true emotions), ``classes``;
- ``embedding_scores.json``: silhouette (euclidean), Calinski-Harabasz and
  Davies-Bouldin scores of the embeddings grouped by true emotion (scikit-learn);
- ``embeddings_<projection>.png``: their 2-D PCA (default) or t-SNE projection,
  coloured by emotion.

``python -m crab.bin.compare embeddings`` draws several runs side by side
(CE only against MLCS).
"""

import argparse
import json
import logging
import os
import sys

import numpy as np
import speechbrain as sb
import torch

from crab import cli
from crab.data import label_encoder
from crab.experiment import dataset, feature_cache, load_run, make_brain
from crab.report import embedding_scores, project_2d

logger = logging.getLogger(__name__)


def extract(brain, test_set, loader_kwargs):
    """Utterance ids, fused embeddings and true class indices of a dataset."""
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


def write_outputs(out_dir, ids, embeddings, labels, classes, projection="pca", title=None):
    """The npz dump, the scores and the projection plot; returns the scores."""
    from crab.plots import plot_embeddings

    os.makedirs(out_dir, exist_ok=True)
    np.savez(
        os.path.join(out_dir, "embeddings.npz"),
        ids=np.array(ids),
        embeddings=embeddings,
        labels=labels,
        classes=np.array(classes),
    )
    scores = embedding_scores(embeddings, labels)
    with open(os.path.join(out_dir, "embedding_scores.json"), "w", encoding="utf-8") as f:
        json.dump({"num_utterances": len(ids), "dim": int(embeddings.shape[1]), **scores}, f, indent=2)
    text = ", ".join("n/a" if v is None else f"{k} {v:.3f}" for k, v in scores.items())
    plot_embeddings(
        [(f"{title or out_dir}\n{text}", project_2d(embeddings, projection), labels)],
        classes,
        os.path.join(out_dir, f"embeddings_{projection}.png"),
    )
    return scores


@cli.entry_point
def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--projection", choices=("pca", "tsne"), default="pca")
    args, rest = own.parse_known_args(argv)
    _, run_opts, _, hparams = load_run(rest)  # the run's own configuration, as crab.bin.evaluate
    sb.create_experiment_directory(hparams["output_folder"], save_env_desc=False)
    classes = list(hparams["classes"])
    encoder = label_encoder(classes, os.path.join(hparams["save_folder"], "label_encoder.txt"))
    cache = feature_cache(hparams, [hparams["test_manifest"]])
    test_set = dataset(hparams, hparams["test_manifest"], encoder, sort=True, cache=cache)
    brain = make_brain(hparams, run_opts)
    if not brain.checkpointer.find_checkpoints(max_key=hparams["ckpt_metric"]):
        sys.exit(f"No checkpoint with {hparams['ckpt_metric']} in {hparams['save_folder']}: train first.")
    brain.on_evaluate_start(max_key=hparams["ckpt_metric"])
    ids, embeddings, labels = extract(brain, test_set, hparams["eval_dataloader_opts"])
    out_dir = os.path.join(hparams["output_folder"], f"eval_{hparams['eval_name']}")
    scores = write_outputs(
        out_dir,
        ids,
        embeddings,
        labels,
        classes,
        args.projection,
        title=f"{hparams['output_folder']} on {hparams['eval_name']}",
    )
    logger.info("Fused embeddings of %d utterances in %s: %s", len(ids), out_dir, scores)


if __name__ == "__main__":
    main()
