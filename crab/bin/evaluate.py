"""Evaluate the best checkpoint of a trained Crab on one manifest.

``python -m crab.bin.evaluate hparams.yaml --output_folder=RUN --test_manifest=M
--eval_name=NAME [--key=value ...]`` writes ``<output_folder>/eval_<NAME>/predictions.csv`` (id,
true, predicted, per-class probabilities) and ``scores.json`` (WAR, UAR,
macro-F1, weighted-F1). The best checkpoint is chosen on ``ckpt_metric``.

The model is the run's own: its configuration is ``RUN/hyperparams.yaml``, saved by
training (``crab.runconfig.load_run``); an option of training need not be given again,
and one given again must have the trained value (``test_manifest``, ``eval_name``,
``data_root``, ``feature_cache`` and the batching keys may differ).
"""

import os
import sys

import speechbrain as sb

from crab import cli
from crab.data import label_encoder
from crab.experiment import dataset, feature_cache, load_run, loader_options, make_brain


@cli.entry_point
def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    _, run_opts, _, hparams = load_run(argv)
    sb.create_experiment_directory(hparams["output_folder"], save_env_desc=False)
    encoder = label_encoder(hparams["classes"], os.path.join(hparams["save_folder"], "label_encoder.txt"))
    cache = feature_cache(hparams, [hparams["test_manifest"]])
    test_set = dataset(hparams, hparams["test_manifest"], encoder, sort=True, cache=cache)
    brain = make_brain(hparams, run_opts)
    if not brain.checkpointer.find_checkpoints(max_key=hparams["ckpt_metric"]):
        sys.exit(f"No checkpoint with {hparams['ckpt_metric']} in {hparams['save_folder']}: train first.")
    brain.evaluate(
        test_set,
        max_key=hparams["ckpt_metric"],
        test_loader_kwargs=loader_options(hparams, test_set, train=False),
    )


if __name__ == "__main__":
    main()
