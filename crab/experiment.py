"""What the train and evaluate entry points share: command line, hparams, data."""

import contextlib
import dataclasses
import json
import logging
import math
import os
import sys

import speechbrain as sb
import torch
from speechbrain.dataio.sampler import DynamicBatchSampler, ReproducibleRandomSampler
from speechbrain.utils.distributed import if_main_process, is_distributed_initialized, run_on_main

from crab.brain import CrabBrain
from crab.checkpointing import DATA_ORDER_SEED
from crab.compilers import compiler_missing
from crab.data import DataError, class_counts, label_encoder, make_dataset
from crab.devices import bf16_without_tensor_cores, device_problem
from crab.distributed import world_size
from crab.features import FeatureCache
from crab.fileio import write_text_atomic
from crab.locking import FolderLockedError, folder_lock, holder_now
from crab.losses import ClassCountError
from crab.runconfig import (
    ConfigError,
    check_overrides,
    has_checkpoint,
    last_value_wins,
    load_hparams,
    load_run,
    parse_arguments,
    resolved_values,
    run_options_as_overrides,
    show,
)
from crab.seeds import stream_seed
from crab.signals import worker_loader_options

logger = logging.getLogger(__name__)


def parse_and_load(argv=None, record_run_options=False):
    """Parse ``hparams.yaml [--run_opt ...] [--key=value ...]`` and load the hparams
    (a key given twice takes its last value). ``record_run_options`` (training): a run
    option given on the command line that the yaml also has as a key
    (``--grad_accumulation_factor``, ``--max_grad_norm``: SpeechBrain takes the command
    line's) becomes an override too, so that the run's hyperparams.yaml records the value
    it trains with rather than the yaml's."""
    hparams_file, run_opts, overrides = parse_arguments(sys.argv[1:] if argv is None else argv)
    if record_run_options:
        overrides = (overrides + "\n" if overrides else "") + run_options_as_overrides(hparams_file, run_opts)
    overrides = last_value_wins(overrides)
    check_overrides(hparams_file, overrides)
    check_seed(hparams_file, overrides)
    return hparams_file, run_opts, overrides, load_hparams(hparams_file, overrides)


def check_seed(hparams_file, overrides):
    """A ``ConfigError`` for a ``seed`` that SpeechBrain's ``seed_everything`` does not take as it
    is: one outside NumPy's range it takes as 0 (a run of seed 0 again), one that is no integer
    stops it with a traceback. A yaml that cannot be resolved (a ``!PLACEHOLDER`` without its
    value) is left to ``load_hparams``, which names what is missing."""
    with open(hparams_file, encoding="utf-8") as f:
        text = f.read()
    try:
        values = resolved_values(text, overrides)
    except ValueError:
        return
    seed = values.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ConfigError(f"{hparams_file}: seed: {show(seed)}: a seed is an integer from 0 to 4294967295")


@contextlib.contextmanager
def run_lock(output_folder):
    """Hold ``<output_folder>/.lock`` (``crab.locking``) for a whole training: a second
    training of the same folder stops at once with a ``FolderLockedError`` naming the
    holder (pid, host, start time, command), before it writes anything.

    In a DDP run the main process takes the lock for the whole job and tells the
    others (a broadcast, which every process reaches) whether it got it, so that all
    of them stop together, with the same message, when another job holds it.
    Evaluating a run while it trains takes no lock and is allowed: its checkpoints
    appear whole (``crab.checkpointing``), and evaluation writes only ``eval_<name>/``.
    """
    with contextlib.ExitStack() as stack:
        error = None
        if if_main_process():
            try:
                stack.enter_context(folder_lock(output_folder, "training run"))
            except FolderLockedError as err:
                error = str(err)
        if is_distributed_initialized():
            shared = [error]
            torch.distributed.broadcast_object_list(shared, src=0)
            error = shared[0]
        if error is not None:
            raise FolderLockedError(error)
        yield


def prepare_labels_and_weights(hparams):
    """Label encoder (saved) and class weights from the training manifest (set on
    the WCE module, which the checkpoint saves, and written to class_weights.json).
    In a DDP run the main process writes both files and the others read them."""
    classes = list(hparams["classes"])
    encoder_path = os.path.join(hparams["save_folder"], "label_encoder.txt")
    weights_path = os.path.join(hparams["save_folder"], "class_weights.json")
    run_on_main(_write_labels_and_weights, args=[hparams, encoder_path, weights_path])
    encoder = label_encoder(classes, encoder_path)
    with open(weights_path, encoding="utf-8") as f:
        saved = json.load(f)
    hparams["wce"].set_counts([saved[c]["count"] for c in classes])
    return encoder


def _write_labels_and_weights(hparams, encoder_path, weights_path):
    classes = list(hparams["classes"])
    if os.path.isfile(encoder_path) and not has_checkpoint(hparams["save_folder"]):
        os.remove(encoder_path)  # of a training killed before its first checkpoint: this one starts over
    label_encoder(classes, encoder_path)
    counts = class_counts(hparams["train_manifest"], classes)
    try:
        hparams["wce"].set_counts(dict(zip(classes, counts, strict=True)))  # errors name the class
    except ClassCountError as err:
        raise ClassCountError(f"{hparams['train_manifest']}: {err}") from None
    weights = hparams["wce"].weight.tolist()
    saved = {c: {"count": n, "weight": w} for c, n, w in zip(classes, counts, weights, strict=True)}
    write_text_atomic(weights_path, json.dumps(saved, indent=2))
    logger.info(
        "Training class counts: %s", ", ".join(f"{c} {n}" for c, n in zip(classes, counts, strict=True))
    )
    if hparams["wce"].class_weighting:
        named = ", ".join(f"{c} {w:.3g}" for c, w in zip(classes, weights, strict=True))
        logger.info("Class weights of the cross-entropy (N/N_c): %s", named)
    else:
        logger.info("No class weights (class_weighting: false): plain cross-entropy")


def feature_cache(hparams, manifests):
    """``(cache, branches)`` to read from the ``feature_cache`` directory, checked
    against the model and ``manifests``; ``(None, [])`` without one."""
    if not hparams.get("feature_cache"):
        return None, []
    cache = FeatureCache(hparams["feature_cache"])
    return cache, cache.check(hparams["model"], hparams["max_duration"], manifests, hparams["data_root"])


def dataset(hparams, manifest, encoder, sort=False, cache=(None, [])):
    """The dataset of a manifest with the inputs the model reads: audio for an
    uncached speech branch, ``<branch>_states`` for the cached ones."""
    cache, cached = cache
    audio = "speech" in hparams["model"].branches and "speech" not in cached
    return make_dataset(
        manifest,
        encoder,
        hparams["data_root"],
        hparams["max_duration"],
        sort=sort,
        audio=audio,
        cache=cache,
        cached_branches=cached,
    )


def item_lengths(data, max_duration=None):
    """Each item's length for dynamic batching, in ``data``'s order: its duration in
    seconds (cut at ``max_duration``, as its audio is), or in a text-only manifest
    (every ``duration`` null) the number of characters of its text."""
    entries = [data.data[utt] for utt in data.data_ids]
    missing = [utt for utt, entry in zip(data.data_ids, entries, strict=True) if entry["duration"] is None]
    if not missing:
        return [min(e["duration"], max_duration) if max_duration else e["duration"] for e in entries]
    if len(missing) < len(entries):
        raise ValueError(
            f"dynamic batching: utterance '{missing[0]}' has no duration but others have one; "
            "a manifest gives every duration, or none (text-only: lengths in characters)"
        )
    return [len(entry["text"]) for entry in entries]


def data_order_seed(seed, checkpoint=None):
    """The seed of the training data's order in a run of ``seed``: a stream of its own
    (``crab.seeds``). SpeechBrain's samplers shuffle each epoch with their seed + the epoch,
    so with the run's seed itself the orders of seed 43 were those of seed 42 one epoch
    later. A run resumed from ``checkpoint`` keeps the order it started with: its meta's
    ``data_order_seed``, or None for a checkpoint of an earlier release, which has none
    (SpeechBrain's own shuffling, ``loader_options``)."""
    if checkpoint is None:
        return stream_seed(seed, "data order", bits=62)  # + the epoch stays within torch's 64 bits
    return checkpoint.meta.get(DATA_ORDER_SEED)


def loader_options(hparams, data, train, order_seed=None):
    """DataLoader options for ``data``: ``train_dataloader_opts`` (``train``) or
    ``eval_dataloader_opts``. With ``dynamic_batching``, a DynamicBatchSampler over
    ``num_buckets`` length buckets replaces ``batch_size``: a batch holds at most
    ``max_batch_length`` seconds (characters) once padded to its longest item (an
    item longer than that makes a batch of its own). Batches in ascending length, or
    shuffled when the options shuffle: by a sampler seeded with ``order_seed``
    (``data_order_seed``), which the training steps to each epoch (the Brain's
    ``train_sampler``); None: SpeechBrain's own shuffling, as earlier releases had it (the
    run's seed + the epoch; under DDP, fixed batches by 0 + the epoch). Data-loading
    processes ignore the first SIGTERM (``crab.signals.worker_loader_options``)."""
    opts = dict(hparams["train_dataloader_opts" if train else "eval_dataloader_opts"])
    if opts.get("num_workers"):  # a SIGTERM to the whole job is the main process's to handle
        opts.update(worker_loader_options(opts.get("worker_init_fn")))
    dynamic = hparams.get("dynamic_batching")  # absent from the hyperparams.yaml of older runs
    if not dynamic and (order_seed is None or not opts.get("shuffle")):
        return opts
    shuffle = opts.pop("shuffle", False)
    if not dynamic:
        opts["sampler"] = ReproducibleRandomSampler(data, seed=order_seed)
        return opts
    opts.pop("batch_size", None)
    opts["batch_sampler"] = DynamicBatchSampler(
        data,
        hparams["max_batch_length"],
        hparams["num_buckets"],
        lengths_list=item_lengths(data, hparams["max_duration"]),
        shuffle=shuffle,
        batch_ordering="random" if shuffle else "ascending",
        seed=hparams["seed"] if order_seed is None else order_seed,
    )
    return opts


def batches_per_epoch(data, opts):
    """The training batches of one epoch of one process, as a loader with ``opts``
    (``loader_options``) makes them from ``data``; under DDP the processes share them."""
    if "batch_sampler" in opts:
        batches = len(opts["batch_sampler"])
    elif opts.get("drop_last"):
        batches = len(data) // opts.get("batch_size", 1)
    else:
        batches = math.ceil(len(data) / opts.get("batch_size", 1))
    return math.ceil(batches / world_size())


def optimizer_batch(opts, factor):
    """What one optimizer step of a training with loader ``opts`` and accumulation ``factor``
    averages over, in words: under DDP each process has its batches and its accumulation."""
    processes = world_size()
    if "batch_sampler" in opts:
        return f"{processes} process(es) x dynamic batches x accumulation {factor}"
    size = opts.get("batch_size", 1)
    return (
        f"{processes} process(es) x batches of {size} x accumulation {factor} = "
        f"{processes * size * factor} utterances"
    )


def check_accumulation(batches, factor, manifest):
    """An error when an epoch of ``batches`` holds no complete accumulation of ``factor``
    batches: SpeechBrain drops the gradients of an epoch's last, incomplete accumulation,
    so the model would never be updated. A dropped tail of a longer epoch is logged."""
    if batches < factor:
        raise DataError(
            f"{manifest}: {batches} training batch(es) per epoch, fewer than grad_accumulation_factor "
            f"{factor}: no optimizer step would ever be taken; lower grad_accumulation_factor or batch_size"
        )
    if batches % factor:
        logger.info(
            "%d training batches per epoch in accumulations of %d: the last %d of each epoch are dropped",
            batches,
            factor,
            batches % factor,
        )


def check_max_duration(hparams):
    """A ``ConfigError`` for a ``max_duration`` (null: none) beyond what the speech encoder reads:
    Whisper's feature extractor would cut every longer utterance at 30 s, unsaid."""
    speech = hparams["model"].speech_encoder
    limit = speech.max_seconds if speech is not None else None
    if limit is None:
        return
    duration = hparams.get("max_duration")
    if duration is None or duration > limit:
        source = hparams.get("speech_encoder_source")
        raise ConfigError(
            f"max_duration: {duration}, but the speech encoder {source} reads at most {limit:g} s of "
            f"audio (longer utterances would be cut there): set max_duration to {limit:g} or less"
        )


def run_option(run_opts, hparams, name):
    """A SpeechBrain run option as ``Brain`` resolves it: given on the command line, else the
    yaml's key of that name, else SpeechBrain's default."""
    from speechbrain.utils.run_opts import RunOptions

    if name in getattr(run_opts, "overridden_args", ()):
        return run_opts[name]
    return hparams[name] if name in hparams else RunOptions()[name]


def run_device(run_opts, hparams):
    """The device the run trains on, as ``Brain`` resolves it."""
    return run_option(run_opts, hparams, "device") or sb.utils.distributed.infer_device()


def check_device(run_opts, hparams):
    """A ``ConfigError`` for a device that is not here (``crab.devices.device_problem``): a CUDA
    device where torch sees no GPU, or past the last one. SpeechBrain would stop with a traceback
    from inside torch, once the run's folder is made. Under torchrun, a CUDA device given for
    several processes of a node: they would all train on that GPU (NCCL refuses it, once the
    model is built), where each takes cuda:LOCAL_RANK without one; more processes than GPUs."""
    given = run_option(run_opts, hparams, "device")
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if given and processes > 1 and torch.device(given).type == "cuda":
        raise ConfigError(
            f"--device={given}: all {processes} processes of this node would train on it; leave "
            "--device out under torchrun, and each process takes cuda:LOCAL_RANK"
        )
    device = run_device(run_opts, hparams)
    problem = device_problem(device)
    if problem and not given and processes > 1 and torch.cuda.is_available():  # cuda:LOCAL_RANK
        raise ConfigError(
            f"{device}: {processes} processes on this node (run.sh --ngpu, torchrun's --nproc_per_node), "
            f"a GPU each, and {problem}: ask for at most {torch.cuda.device_count()}"
        )
    if problem:
        cpu_only = device.startswith("cuda") and not torch.version.cuda
        cpu_build = " (this torch is a CPU-only build)" if cpu_only else ""
        raise ConfigError(
            f"--device={device}: {problem}{cpu_build}; give --device=cpu (a recipe: --ngpu 0), "
            "or run it where the GPU is"
        )


def check_precision(run_opts, hparams):
    """A ``ConfigError`` for fp16 (``--precision`` or ``--eval_precision``) on a device other than
    CUDA: SpeechBrain refuses it there with a traceback, after the run's record is written. A
    warning for bf16 on a GPU without bf16 tensor cores (``crab.devices``)."""
    device = run_device(run_opts, hparams)
    cuda = torch.device(device).type == "cuda"
    for key in ("precision", "eval_precision"):
        precision = run_option(run_opts, hparams, key)
        if cuda and precision == "bf16" and (slow := bf16_without_tensor_cores(device)):
            logger.warning("--%s=bf16: %s", key, slow)
        if not cuda and precision == "fp16":
            why = (
                " (a run trained in fp16 resumes in either: its weights are float32, and its gradient "
                "scaler is used in fp16 alone)"
                if key == "precision"
                else ""
            )
            raise ConfigError(
                f"--{key}=fp16: fp16 autocast needs a CUDA device, and this runs on {device}: "
                f"give --{key}=bf16 or fp32{why}"
            )


def check_compile(run_opts, hparams):
    """A ``ConfigError`` for ``--jit`` on every module, for ``--compile`` without
    ``--compile_using_dynamic_shape_tracing``, and for ``--compile`` where the compiler it builds
    with is missing (``crab.compilers``). TorchScript cannot script the Hugging Face encoders
    (SpeechBrain would stop with a traceback as training starts). SpeechBrain compiles for static
    shapes by default, and batches of speech are padded to a new length nearly every step:
    torch.compile then recompiles at each one until its recompile limit, and runs eagerly after."""
    if run_option(run_opts, hparams, "jit") and not run_option(run_opts, hparams, "jit_module_keys"):
        raise ConfigError(
            "--jit scripts every module, and TorchScript cannot script the Hugging Face encoders "
            "(module 'model'): leave --jit out"
        )
    if run_option(run_opts, hparams, "compile") and not run_option(
        run_opts, hparams, "compile_using_dynamic_shape_tracing"
    ):
        raise ConfigError(
            "--compile without --compile_using_dynamic_shape_tracing compiles for one padded length, "
            "and batches of speech come in many: torch.compile would recompile at nearly every step; "
            "add --compile_using_dynamic_shape_tracing, or leave --compile out (docs/training.md)"
        )
    if run_option(run_opts, hparams, "compile"):
        missing = compiler_missing(run_device(run_opts, hparams))
        if missing:
            raise ConfigError(f"--compile: {missing}")


def evaluation_run_options(run_opts, hparams):
    """``run_opts`` of a stage that only evaluates a trained run, checked (``check_precision``):
    training's ``--precision`` set to fp32, since evaluation runs in ``--eval_precision``, and a
    training precision given again with the run's options (the recipe passes ``--train_opts`` to
    every stage) must not stop it where it could not train, on a CPU."""
    trained = run_option(run_opts, hparams, "precision")
    if trained != "fp32":
        logger.info(
            "--precision=%s is training's: evaluation runs in --eval_precision=%s",
            trained,
            run_option(run_opts, hparams, "eval_precision"),
        )
        run_opts = dataclasses.replace(
            run_opts, precision="fp32", overridden_args=run_opts.overridden_args | {"precision"}
        )
    check_device(run_opts, hparams)
    check_precision(run_opts, hparams)
    return run_opts


def make_brain(hparams, run_opts):
    """A CrabBrain over the modules and checkpointer the hparams declare."""
    return CrabBrain(
        modules=hparams["modules"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )


def load_trained_run(argv=None):
    """What the stages that run a trained model on a test set share (``crab.bin.evaluate``,
    ``crab.bin.embeddings``): the run's own configuration (``load_run``), its experiment
    folder, the sorted dataset of ``test_manifest`` (cached encoder states with
    ``feature_cache``) and a CrabBrain (``make_brain``). Exits with a message when the run
    has no checkpoint with ``ckpt_metric``: train first.

    Returns ``(hparams, brain, test_set, cache)``, ``cache`` the ``(FeatureCache, branches)``
    read (``feature_cache``); the brain has not loaded a checkpoint yet.
    """
    _, run_opts, _, hparams = load_run(argv)
    sb.create_experiment_directory(hparams["output_folder"], save_env_desc=False)
    run_opts = evaluation_run_options(run_opts, hparams)
    encoder = label_encoder(hparams["classes"], os.path.join(hparams["save_folder"], "label_encoder.txt"))
    cache = feature_cache(hparams, [hparams["test_manifest"]])
    test_set = dataset(hparams, hparams["test_manifest"], encoder, sort=True, cache=cache)
    brain = make_brain(hparams, run_opts)
    if not brain.checkpointer.find_checkpoints(max_key=hparams["ckpt_metric"]):
        holder = holder_now(hparams["output_folder"])
        then = "train first"
        if holder:
            then = f"its training is running ({holder}): evaluate it once that has ended"
        sys.exit(f"No checkpoint with {hparams['ckpt_metric']} in {hparams['save_folder']}: {then}.")
    return hparams, brain, test_set, cache
