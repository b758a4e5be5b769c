"""Fused embeddings of a test set from the best checkpoint, and how well they cluster.

    python -m crab.bin.embeddings hparams.yaml [--key=value ...] --test_manifest=M \\
        --eval_name=NAME [--projection pca|tsne] [--skip_if_current]

Runs the model chosen on ``ckpt_metric`` (as ``crab.bin.evaluate`` does) over the
manifest and keeps the fused bottleneck, the classifier's fc1 output before the
ReLU (``taps["fusion"]``, the input of the fusion leg). Writes beside the predictions
of ``crab.bin.evaluate``, to the run's evaluation folder (``CrabBrain.eval_folder``:
``<output_folder>/eval_<NAME>/`` unless ``eval_folder`` is set):

- ``embeddings.npz``: ``ids``, ``embeddings`` (N x bottleneck_dim), ``labels``
  (class indices of the true emotions), ``classes``;
- ``embedding_scores.json``: silhouette (euclidean), Calinski-Harabasz and
  Davies-Bouldin scores of the embeddings grouped by true emotion (scikit-learn; the
  silhouette of a test set over 10,000 utterances is that of a fixed random 10,000;
  null, with a warning, where undefined: embeddings all one point, a collapsed model),
  and the checkpoint embedded (stage 7 and ``sweep.sh`` use embeddings of the checkpoint
  of the predictions beside them only: a run trained on since is embedded again);
- ``embeddings_<projection>.png``: their 2-D PCA (default) or t-SNE projection,
  coloured by emotion (a test set too small to project: one utterance for PCA, fewer than
  3 for t-SNE, or a collapsed model's, gets an empty panel saying why, and a warning).

With ``--skip_if_current`` (the recipe's stage 6), embeddings whose record of inputs
(``embeddings.inputs.json``, as ``crab.bin.evaluate``'s) equals this run's, with the plot of
``--projection``, are kept as they are.

``python -m crab.bin.compare embeddings`` draws several runs side by side
(CE only against MLCS).
"""

import argparse
import sys

from crab import cli, evalrecord
from crab.embeddings import PROJECTIONS, extract_embeddings, scores_line, write_embeddings
from crab.experiment import load_trained_run
from crab.fileio import make_dirs

logger = cli.module_logger(__name__, __spec__)


@cli.entry_point
def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    own = argparse.ArgumentParser(add_help=False, allow_abbrev=False, formatter_class=cli.HelpFormatter)
    own.add_argument(
        "--projection",
        choices=PROJECTIONS,
        default="pca",
        help="the projection of the 2-D plot (default: pca)",
    )
    own.add_argument(
        "--skip_if_current", action="store_true", help="keep embeddings of the same inputs (stage 6)"
    )
    cli.exit_on_run_help(argv, __doc__, own)
    args, rest = own.parse_known_args(argv)
    # the run's own configuration, as crab.bin.evaluate
    hparams, brain, test_set, cache = load_trained_run(rest)
    classes = list(hparams["classes"])
    inputs = evalrecord.embeddings_inputs(hparams, brain, cache)
    outputs = ("embeddings.npz", "embedding_scores.json", f"embeddings_{args.projection}.png")
    if args.skip_if_current and evalrecord.is_current(
        brain.eval_folder(), evalrecord.EMBEDDINGS_RECORD, inputs, outputs
    ):
        return
    make_dirs(brain.eval_folder())  # before the work: a folder that cannot be made is said at once
    brain.on_evaluate_start(max_key=hparams["ckpt_metric"])
    ids, embeddings, labels = extract_embeddings(brain, test_set, hparams["eval_dataloader_opts"])
    out_dir = brain.eval_folder()  # beside the predictions of crab.bin.evaluate
    scores = write_embeddings(
        out_dir,
        ids,
        embeddings,
        labels,
        classes,
        args.projection,
        title=f"{hparams['output_folder']} on {hparams['eval_name']}",
        checkpoint=getattr(brain, "_evaluated", None),
        inputs=inputs,
    )
    logger.info("Fused embeddings of %d utterances in %s: %s", len(ids), out_dir, scores_line(scores))


if __name__ == "__main__":
    main()
