"""Evaluate the best checkpoint of a trained Crab on one manifest.

``python -m crab.bin.evaluate hparams.yaml --output_folder=RUN --test_manifest=M
--eval_name=NAME [--skip_if_current] [--key=value ...]`` writes
``<output_folder>/eval_<NAME>/predictions.csv`` (id, true, predicted, per-class
probabilities), ``scores.json`` (WAR, UAR, macro-F1, weighted-F1) and ``checkpoint.txt``
(the checkpoint evaluated: packaging puts these scores on the model card of that
checkpoint). The best checkpoint is chosen on ``ckpt_metric``.

With ``--skip_if_current`` (the recipe's stage 6), an evaluation folder whose record of
inputs (``predictions.inputs.json``: checkpoint, test manifest, ``data_root``, precision,
device type, code; ``crab.evalrecord``) equals this evaluation's is kept as it is.

The model is the run's own: its configuration is ``RUN/hyperparams.yaml``, saved by
training (``crab.runconfig.load_run``); an option of training need not be given again,
and one given again must have the trained value (``test_manifest``, ``eval_name``,
``data_root``, ``data_folder``, ``feature_cache`` and the batching keys may differ).
"""

import argparse
import sys

from crab import cli, evalrecord
from crab.experiment import load_trained_run, loader_options
from crab.fileio import make_dirs
from crab.report import EVALUATED_CHECKPOINT

OUTPUTS = ("predictions.csv", "scores.json", EVALUATED_CHECKPOINT)


@cli.entry_point
def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    own = argparse.ArgumentParser(add_help=False, allow_abbrev=False, formatter_class=cli.HelpFormatter)
    own.add_argument(
        "--skip_if_current", action="store_true", help="keep an evaluation of the same inputs (stage 6)"
    )
    cli.exit_on_run_help(argv, __doc__, own)
    args, rest = own.parse_known_args(argv)
    hparams, brain, test_set, cache = load_trained_run(rest)
    brain.eval_inputs = evalrecord.inputs(hparams, brain, cache)
    if args.skip_if_current and evalrecord.is_current(
        brain.eval_folder(), evalrecord.PREDICTIONS_RECORD, brain.eval_inputs, OUTPUTS
    ):
        return
    make_dirs(brain.eval_folder())  # before the work: a folder that cannot be made is said at once
    brain.evaluate(
        test_set,
        max_key=hparams["ckpt_metric"],
        test_loader_kwargs=loader_options(hparams, test_set, train=False),
    )


if __name__ == "__main__":
    main()
