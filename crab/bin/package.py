"""Package a trained Crab as a self-contained inference model directory (stage 8).

    python -m crab.bin.package hparams.yaml --output_folder=RUN [--key=value ...] --out DIR \\
        [--text_source gold|asr] [--asr_model ID]

Loads the run's own configuration, ``RUN/hyperparams.yaml`` saved by training (as
``crab.bin.evaluate``: options of training need not be given again, and one given
again must have the trained value), loads the best checkpoint on ``ckpt_metric`` and
writes DIR:

    hyperparams.yaml        inference hparams: CrabClassifier.from_hparams(source=DIR); the
                            template crab/templates/inference.yaml filled with the run's keys
    model.ckpt              the Crab state_dict (encoders and head; no contrastive legs)
    label_encoder.ckpt      the label encoder, in the recipe's fixed class order
    class_weights.json      per-class training counts and WCE weights (from wce.ckpt)
    metadata.json           the run, its arguments, the checkpoint (epoch, train_s) and its
                            validation scores (and test scores of evaluations of that
                            checkpoint), encoder sources (hub ids or paths), transcripts
                            used, versions, and every other file with its size and sha256
                            (checked when loaded)
    train_hyperparams.yaml  the run's resolved training hyperparameters
    speech_encoder/         config (and feature extractor) of the speech encoder
    text_encoder/           config and tokenizer of the text encoder
    custom_interface.py     for SpeechBrain's foreign_class
    README.md               the model card (classes, expected inputs, encoders, training,
                            validation scores, test scores of the same checkpoint, how to
                            load it): not in the record, to edit

The transcripts the model was trained on (gold, or ASR and the ASR model that made
them) are the run's record, ``RUN/text_source.json`` (``crab.provenance``, written by
training from the manifest's); ``--text_source`` and ``--asr_model`` are needed only
for runs trained before it existed, and given, must agree with it.

No file of DIR names the training machine's folders (``crab.packaging.portable``): an
absolute path is written ``.../<tag>/<fold>/seed<seed>/...`` in the run's folder, else
``.../<its last part>``.

The encoders are rebuilt from their configs (``pretrained: false``) and get their
weights from model.ckpt, so DIR needs neither the training data nor the hub.
The package is checked before it replaces DIR: loaded back with CrabClassifier,
it must give the trained model's outputs. Re-running rewrites DIR the same way.
"""

import argparse
import logging
import sys

from crab import cli
from crab.packaging import TEXT_SOURCES, package
from crab.provenance import package_text_source
from crab.runconfig import load_run


@cli.entry_point
def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(
        prog="python -m crab.bin.package",
        usage="%(prog)s hparams.yaml --output_folder=RUN [--key=value ...] --out DIR [options]",
        description=__doc__,
        formatter_class=cli.HelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--out", required=True, help="the model directory to write")
    parser.add_argument(
        "--text_source",
        choices=TEXT_SOURCES,
        default=None,
        help="transcripts the model was trained on (default: the run's record, "
        "RUN/text_source.json; given, it must agree with it)",
    )
    parser.add_argument(
        "--asr_model",
        default="",
        help="the ASR model of those transcripts (default: the run's record; given, "
        "it must agree with it; ignored for gold transcripts)",
    )
    args, rest = parser.parse_known_args(argv)
    if not rest or rest[0].startswith("-"):
        parser.error("the first argument must be the training hyperparameters (yaml)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    arguments = list(rest[1:])
    # the encoders from their configs alone: the weights come from the checkpoint
    _, _, _, hparams = load_run(rest, pretrained_encoders=False)
    text_source, asr_model = package_text_source(hparams["output_folder"], args.text_source, args.asr_model)
    metadata = package(hparams, args.out, text_source, asr_model, arguments)
    training = metadata["training"]
    scores = ", ".join(f"{k} {v:.4f}" for k, v in training["valid_scores"].items())
    trained = f", {training['train_s']:.0f} s of training" if training["train_s"] is not None else ""
    print(
        f"{args.out}: {metadata['modality']} Crab, classes {metadata['classes']}, "
        f"checkpoint of epoch {training['epoch']}{trained} (valid {scores})"
    )


if __name__ == "__main__":
    main()
