"""Evaluate the best checkpoint of a trained Crab on one manifest.

``python -m crab.bin.evaluate hparams.yaml --output_folder=RUN --test_manifest=M
--eval_name=NAME [--key=value ...]`` writes ``<output_folder>/eval_<NAME>/predictions.csv`` (id,
true, predicted, per-class probabilities), ``scores.json`` (WAR, UAR,
macro-F1, weighted-F1) and ``checkpoint.txt`` (the checkpoint evaluated: packaging puts
these scores on the model card of that checkpoint). The best checkpoint is chosen on
``ckpt_metric``.

The model is the run's own: its configuration is ``RUN/hyperparams.yaml``, saved by
training (``crab.runconfig.load_run``); an option of training need not be given again,
and one given again must have the trained value (``test_manifest``, ``eval_name``,
``data_root``, ``feature_cache`` and the batching keys may differ).
"""

import sys

from crab import cli
from crab.experiment import load_trained_run, loader_options


@cli.entry_point
def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    cli.exit_on_run_help(argv, __doc__)
    hparams, brain, test_set = load_trained_run(argv)
    brain.evaluate(
        test_set,
        max_key=hparams["ckpt_metric"],
        test_loader_kwargs=loader_options(hparams, test_set, train=False),
    )


if __name__ == "__main__":
    main()
