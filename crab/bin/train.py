"""Train Crab: ``python -m crab.bin.train hparams.yaml [--key=value ...]``.

Re-running the same command resumes from the latest checkpoint in
``<output_folder>/save``; a finished run does nothing more.

Distributed (DDP): ``torchrun --nproc_per_node N -m crab.bin.train hparams.yaml
--distributed_backend=nccl|gloo [...]`` (SpeechBrain detects torchrun by its
``RANK`` and ``LOCAL_RANK``); the main process writes the label encoder and
class weights, checkpoints and logs.
"""

import os

import speechbrain as sb

from crab.experiment import (
    dataset,
    feature_cache,
    loader_options,
    make_brain,
    parse_and_load,
    prepare_labels_and_weights,
)


def main(argv=None):
    hparams_file, run_opts, overrides, hparams = parse_and_load(argv)
    sb.utils.distributed.ddp_init_group(run_opts)  # nothing without torchrun
    sb.create_experiment_directory(
        hparams["output_folder"], hyperparams_to_save=hparams_file, overrides=overrides
    )
    os.makedirs(hparams["save_folder"], exist_ok=True)
    encoder = prepare_labels_and_weights(hparams)
    cache = feature_cache(hparams, [hparams["train_manifest"], hparams["valid_manifest"]])
    train_set = dataset(hparams, hparams["train_manifest"], encoder, cache=cache)
    valid_set = dataset(hparams, hparams["valid_manifest"], encoder, sort=True, cache=cache)
    brain = make_brain(hparams, run_opts)
    if not brain.checkpointer.find_checkpoints():  # a resumed run restores them
        brain.fit_state_normalization(
            train_set, hparams["eval_dataloader_opts"], hparams["state_norm_utterances"]
        )
    train_options = loader_options(hparams, train_set, train=True)
    if "batch_sampler" in train_options:  # dynamic batches: Brain calls its set_epoch() each epoch
        brain.train_sampler = train_options["batch_sampler"]  # (DDP replaces it by its wrapper)
    brain.fit(
        hparams["epoch_counter"],
        train_set,
        valid_set,
        train_loader_kwargs=train_options,
        valid_loader_kwargs=loader_options(hparams, valid_set, train=False),
    )


if __name__ == "__main__":
    main()
