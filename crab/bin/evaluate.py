"""Evaluate the best checkpoint of a trained Crab on one manifest.

``python -m crab.bin.evaluate <output_folder>/hyperparams.yaml --test_manifest=M
--eval_name=NAME`` writes ``<output_folder>/eval_<NAME>/predictions.csv`` (id,
true, predicted, per-class probabilities) and ``scores.json`` (WAR, UAR,
macro-F1, weighted-F1). The best checkpoint is chosen on ``ckpt_metric``.
"""

import os
import sys

import speechbrain as sb

from crab.experiment import dataset, feature_cache, loader_options, make_brain, parse_and_load
from crab.data import label_encoder


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    hparams_file, run_opts, overrides, hparams = parse_and_load(argv)
    sb.create_experiment_directory(hparams["output_folder"], save_env_desc=False)
    encoder = label_encoder(
        hparams["classes"], os.path.join(hparams["save_folder"], "label_encoder.txt")
    )
    cache = feature_cache(hparams, [hparams["test_manifest"]])
    test_set = dataset(hparams, hparams["test_manifest"], encoder, sort=True, cache=cache)
    brain = make_brain(hparams, run_opts)
    if not brain.checkpointer.find_checkpoints(max_key=hparams["ckpt_metric"]):
        sys.exit(f"No checkpoint with {hparams['ckpt_metric']} in {hparams['save_folder']}: train first.")
    brain.eval_dir = os.path.join(hparams["output_folder"], f"eval_{hparams['eval_name']}")
    brain.evaluate(
        test_set,
        max_key=hparams["ckpt_metric"],
        test_loader_kwargs=loader_options(hparams, test_set, train=False),
    )


if __name__ == "__main__":
    main()
