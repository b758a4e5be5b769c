"""What an evaluation was computed from, so that a stage 6 run again keeps what is current.

``crab.bin.evaluate`` and ``crab.bin.embeddings`` write, in the same commit as their outputs,
a record of their inputs (``inputs``): the checkpoint, a digest of the test manifest, where
the audio was read from (``data_root``), the precision (of the predictions: embeddings are
extracted in float32) and the device type, the encoder states read from a feature cache
(their branches and dtype), and the code (a digest of the crab package's sources and the
versions of the libraries that compute the model). Given
``--skip_if_current`` (the recipe's stage 6, unless ``--reevaluate true``), a tool whose record
equals what it would record now, with its outputs present, writes nothing and says so;
otherwise it names what changed and evaluates.

Everything else a prediction depends on was fixed by training (the run's own
``hyperparams.yaml``) or does not change it (workers; batching, padding being masked, except
for the speech encoders whose states depend on the padding, whose batching is recorded; the
feature cache's states are checked against the model and the manifest). The audio files are
taken to be the manifest's: a corpus replaced in place under the same manifest and
``data_root`` needs ``--reevaluate true``.
"""

import functools
import glob
import hashlib
import json
import logging
import os
from importlib import metadata

from crab.provenance import file_digest

logger = logging.getLogger(__name__)

PREDICTIONS_RECORD = "predictions.inputs.json"  # beside predictions.csv (crab.bin.evaluate)
EMBEDDINGS_RECORD = "embeddings.inputs.json"  # beside embeddings.npz (crab.bin.embeddings)
LIBRARIES = ("torch", "torchaudio", "transformers", "speechbrain")


@functools.cache
def code_digest():
    """sha256 over the crab package's Python sources (relative path and bytes of each)."""
    root = os.path.dirname(os.path.abspath(__file__))
    digest = hashlib.sha256()
    for path in sorted(glob.glob(os.path.join(glob.escape(root), "**", "*.py"), recursive=True)):
        digest.update(os.path.relpath(path, root).encode() + b"\0")
        with open(path, "rb") as f:
            digest.update(f.read() + b"\0")
    return digest.hexdigest()


def inputs(hparams, brain, cache=(None, [])):
    """The record of an evaluation of ``brain``'s best checkpoint on ``ckpt_metric`` over
    ``hparams['test_manifest']``, before it runs (the checkpoint is found, not loaded), reading
    the encoder states of ``cache`` (``crab.experiment.feature_cache``)."""
    found = brain.checkpointer.find_checkpoint(max_key=hparams["ckpt_metric"])
    return {
        "checkpoint": os.path.basename(found.path) if found else "none",
        "test_manifest_sha256": file_digest(hparams["test_manifest"]),
        "data_root": os.path.abspath(str(hparams["data_root"])) if hparams.get("data_root") else None,
        "eval_precision": brain.eval_precision,
        "device_type": str(brain.device).split(":")[0],
        "feature_cache": _cached_states(*cache),
        "batching": _batching(hparams, cache[1]),
        "code_sha256": code_digest(),
        "libraries": {name: _version(name) for name in LIBRARIES},
    }


def _cached_states(cache, branches):
    """The branches read from a feature cache and the dtype of its states (None: none read).
    The cache is checked against the model and the manifest, but states stored in float16, or
    computed at extraction rather than by the encoders now, give other predictions."""
    return {"branches": sorted(branches), "dtype": cache.dtype} if cache is not None and branches else None


def _batching(hparams, cached):
    """The evaluation batching where a prediction depends on it: a speech encoder run now (not
    read from the cache: ``cached`` branches) whose states depend on the batch padding; else None."""
    encoder = hparams["model"].speech_encoder
    if encoder is None or "speech" in cached or not encoder.padding_dependent:
        return None
    batching = {"batch_size": hparams["eval_dataloader_opts"].get("batch_size")}
    if hparams.get("dynamic_batching"):
        batching.update(
            {key: hparams[key] for key in ("dynamic_batching", "max_batch_length", "num_buckets")}
        )
    return batching


def _version(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def is_current(eval_dir, record, wanted, outputs):
    """Whether ``eval_dir/record`` equals ``wanted`` and every one of ``outputs`` (names in
    ``eval_dir``) exists; logs the decision: kept, or which inputs changed."""
    path = os.path.join(eval_dir, record)
    if not os.path.exists(path):
        return False
    recorded = read(eval_dir, record)
    if recorded is None:
        logger.info("%s unreadable: evaluating again", path)
        return False
    missing = [name for name in outputs if not os.path.isfile(os.path.join(eval_dir, name))]
    changed = [key for key in wanted if recorded.get(key) != wanted[key]]
    if missing or changed:
        logger.info(
            "Evaluating %s again: %s",
            eval_dir,
            "; ".join(
                ([f"changed since the last evaluation: {', '.join(changed)}"] if changed else [])
                + ([f"missing: {', '.join(missing)}"] if missing else [])
            ),
        )
        return False
    logger.info(
        "%s is current (checkpoint %s, its other inputs as %s records them): "
        "kept; run without --skip_if_current (the recipe: --reevaluate true) to evaluate again",
        os.path.join(eval_dir, outputs[0]),
        wanted["checkpoint"],
        path,
    )
    return True


def read(eval_dir, record):
    """The record ``eval_dir/record`` as a dict; None when there is none or it is unreadable."""
    try:
        with open(os.path.join(eval_dir, record), encoding="utf-8") as f:
            recorded = json.load(f)
    except (OSError, ValueError):
        return None
    return recorded if isinstance(recorded, dict) else None


def other_inputs(eval_dir):
    """The inputs (record keys of both) in which the embeddings of ``eval_dir`` and the
    predictions beside them were computed from other data or code, sorted; empty when they
    agree or either has no readable record (an older release). A key of one record alone (the
    embeddings' ``projection_library``) is of what the other does not compute."""
    embedded, evaluated = read(eval_dir, EMBEDDINGS_RECORD), read(eval_dir, PREDICTIONS_RECORD)
    if embedded is None or evaluated is None:
        return []
    return sorted(key for key in embedded.keys() & evaluated.keys() if embedded[key] != evaluated[key])


def embeddings_inputs(hparams, brain, cache=(None, [])):
    """The record of the fused embeddings of that evaluation (``crab.bin.embeddings``): its
    inputs less the evaluation precision (embeddings are extracted in float32), plus what draws
    their 2-D projection (scikit-learn's PCA and t-SNE: a new release may flip or move the points)."""
    record = inputs(hparams, brain, cache)
    del record["eval_precision"]
    record["projection_library"] = {"scikit-learn": _version("scikit-learn")}
    return record


def forget(eval_dir, record):
    """Remove ``eval_dir/record`` before outputs are replaced without a new one: a kill between
    their replacement and the record's then leaves no record, never an old one."""
    try:
        os.unlink(os.path.join(eval_dir, record))
    except FileNotFoundError:
        pass
