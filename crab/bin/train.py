"""Train Crab: ``python -m crab.bin.train hparams.yaml [--key=value ...]``.

Re-running the same command resumes from the latest checkpoint in
``<output_folder>/save``; a finished run does nothing more.

The resolved hyperparameters are saved in ``<output_folder>/hyperparams.yaml``: the
later stages (evaluate, embeddings, package) load the run from it
(``crab.runconfig``). The training manifest's transcript source (gold, or ASR and its
model) is recorded in ``<output_folder>/text_source.json`` (``crab.provenance``).

Distributed (DDP): ``torchrun --nproc_per_node N -m crab.bin.train hparams.yaml
--distributed_backend=nccl|gloo [...]`` (SpeechBrain detects torchrun by its
``RANK`` and ``LOCAL_RANK``); the main process writes the label encoder and
class weights, checkpoints and logs.

One training per output folder at a time: the run holds ``<output_folder>/.lock``
from start to end (``crab.experiment.run_lock``); a second one stops at once with
one line naming the holder. The operating system drops the lock when the process
ends, even on ``kill -9``, so re-running an interrupted training needs no clean-up.
"""

import sys

import speechbrain as sb

from crab import cli
from crab.checkpointing import check_readable
from crab.data import require_manifest
from crab.distributed import end_process_group, short_torchrun_grace
from crab.experiment import (
    batches_per_epoch,
    check_accumulation,
    check_compile,
    check_device,
    check_max_duration,
    check_precision,
    data_order_seed,
    dataset,
    feature_cache,
    loader_options,
    make_brain,
    optimizer_batch,
    parse_and_load,
    prepare_labels_and_weights,
    run_lock,
)
from crab.features import model_tokenizer_digest
from crab.fileio import make_dirs
from crab.provenance import record_run_provenance
from crab.runconfig import (
    ConfigError,
    check_resume,
    has_checkpoint,
    warn_if_trained_before,
    write_run_hparams,
)

logger = cli.module_logger(__name__, __spec__)


@cli.entry_point
def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    cli.exit_on_run_help(argv, __doc__)
    hparams_file, run_opts, overrides, hparams = parse_and_load(argv, record_run_options=True)
    check_device(run_opts, hparams)  # before anything is written
    check_precision(run_opts, hparams)
    check_compile(run_opts, hparams)
    check_max_duration(hparams)
    if run_opts.get("data_parallel_backend"):
        # DataParallel hands each replica the whole batch's host-side lengths, and the
        # encoders' patched attention and masking keep the first device's modules
        raise ConfigError(
            "--data_parallel_backend (DataParallel) is not supported: train on several GPUs with "
            "DDP (run.sh --ngpu N, or torchrun with --distributed_backend=nccl)"
        )
    for key in ("train_manifest", "valid_manifest"):  # before anything is written
        require_manifest(hparams[key])
    sb.utils.distributed.ddp_init_group(run_opts)  # nothing without torchrun
    if sb.utils.distributed.if_main_process() and (short := short_torchrun_grace()):
        logger.warning(short)
    with run_lock(hparams["output_folder"]):  # one training per output folder at a time
        _train(hparams_file, run_opts, overrides, hparams)
    del hparams  # its checkpointer holds the brain, whose DDP modules hold the process group
    end_process_group()  # DDP: every process got here; the group and its threads end


def _train(hparams_file, run_opts, overrides, hparams):
    # a run resumed with other settings stops here, before its record is rewritten
    check_resume(hparams_file, overrides, hparams["output_folder"], hparams["save_folder"])
    resumed = has_checkpoint(hparams["save_folder"])
    if resumed:  # a checkpoint cut short stops the resume before the run's record is rewritten
        check_readable(hparams["checkpointer"].find_checkpoint())
    if sb.utils.distributed.if_main_process() and not resumed and hparams.get("train_log"):
        warn_if_trained_before(hparams["train_log"], hparams["save_folder"])
    # the transcripts' source, from the training manifest's record into the run folder (a run
    # resumed on other transcripts, tokenizer or manifests stops here, before anything is written)
    record_run_provenance(
        hparams["output_folder"],
        hparams["train_manifest"],
        write=sb.utils.distributed.if_main_process(),
        tokenizer_sha256=model_tokenizer_digest(hparams["model"]),
        valid_manifest=hparams["valid_manifest"],
        resumed=resumed,
    )
    if sb.utils.distributed.if_main_process():
        write_run_hparams(hparams_file, overrides, hparams["output_folder"])
    sb.create_experiment_directory(hparams["output_folder"])
    make_dirs(hparams["save_folder"])
    encoder = prepare_labels_and_weights(hparams)
    cache = feature_cache(hparams, [hparams["train_manifest"], hparams["valid_manifest"]])
    train_set = dataset(hparams, hparams["train_manifest"], encoder, cache=cache)
    valid_set = dataset(hparams, hparams["valid_manifest"], encoder, sort=True, cache=cache)
    brain = make_brain(hparams, run_opts)
    # the data order of the run's seed, or of the checkpoint a resumed run loads (recorded in each)
    order_seed = data_order_seed(hparams["seed"], brain.checkpointer.find_checkpoint())
    brain.checkpointer.data_order_seed = order_seed
    train_options = loader_options(hparams, train_set, train=True, order_seed=order_seed)
    check_accumulation(
        batches_per_epoch(train_set, train_options), brain.grad_accumulation_factor, hparams["train_manifest"]
    )
    logger.info("Optimizer step: %s", optimizer_batch(train_options, brain.grad_accumulation_factor))
    if not brain.checkpointer.find_checkpoints():  # a resumed run restores them
        brain.fit_state_normalization(
            train_set, hparams["eval_dataloader_opts"], hparams["state_norm_utterances"]
        )
    sampler = train_options.get("batch_sampler", train_options.get("sampler"))
    if sampler is not None:  # shuffled or dynamic batches: Brain calls its set_epoch() each epoch
        brain.train_sampler = sampler  # (DDP replaces it by its wrapper)
    brain.fit(
        hparams["epoch_counter"],
        train_set,
        valid_set,
        train_loader_kwargs=train_options,
        valid_loader_kwargs=loader_options(hparams, valid_set, train=False),
    )


if __name__ == "__main__":
    main()
