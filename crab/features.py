"""Frozen-encoder feature cache: encoder hidden states extracted once, read in training.

With a frozen encoder, its output for an utterance never changes, so sweeps and
ablations need not run it again. ``extract`` writes, for every utterance of the
given manifests, the states the encoder's ``select`` reads (``(time, layers,
dim)``: the last layer, or every layer for ``layer_weighting: weighted_sum``) to a
cache directory:

    index.json             its layout's version (another one is refused), what was
                           extracted (encoder identity, weights digest, the
                           config entries that shape the states, dtype, the
                           releases of torch, transformers and SpeechBrain), which shard holds
                           each utterance, a digest of each utterance's input
                           (text, audio path, duration) and the fingerprint of
                           its audio file (size, SHA-256 of its bytes, and the
                           stat values they were taken at)
    shard_00000.safetensors ...  tensors named ``<utt>/<branch>``

Each shard is written to a temporary name, fsynced and renamed, and the index is
rewritten the same way (``crab.fileio``) at most once a minute (``INDEX_INTERVAL_S``), when
the extraction ends, and when an error or Ctrl-C stops it: the index grows with the
corpus, and rewriting it after every shard made an extraction quadratic in its size. A
kill or a power cut loses at most the last minute's shards; re-running extracts only
what is missing (and removes the shards and the temporary file the kill left).
Re-running also checks every listed shard (it opens, and holds its utterances' tensors
with the cache's dtype and trailing shape); a shard that does not is dropped from the
index, with a warning, and its utterances extracted again. Utterances of new manifests
(another fold) are added to the same cache. The index records a digest of the encoder
weights: reading a cache with other weights (another checkpoint, another random seed) or
with changed inputs (an edited transcript, an audio file replaced in place) is an error,
never a silent mismatch.

Audio files are compared by content: a file whose size and stat times (mtime,
ctime, inode) are those recorded is taken as unchanged; any other is hashed again
(SHA-256, ~1 GB/s), so a moved or touched corpus costs one hashing pass per
check, and only other bytes are an error. One extraction writes a cache at a time
(``crab.locking``: a second one waits).

An encoder fine-tuned only in its top layers (``finetune_top_layers``) is cached
below them: the cache holds the hidden state those layers read, its identity
covers the frozen weights only, and training runs the tuned layers on it.
"""

import functools
import hashlib
import json
import logging
import os
import shutil
import time

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from crab.checkpointing import library_versions, warn_version_drift
from crab.cli import UserError
from crab.data import load_manifest, read_utterance_audio
from crab.encoders import relative_to_absolute
from crab.fileio import remove_temps, write_atomic
from crab.locking import folder_lock
from crab.masks import device_mask, host_lengths

logger = logging.getLogger(__name__)

INDEX = "index.json"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
SAFETENSORS_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}
# 2: audio fingerprints ("audio"); a cache without them (1) holding speech states is
# not trusted: its audio may have changed unseen. An index of another version is refused
# (``_load_index``), so a new layout needs a new number.
INDEX_VERSION = 2
INDEX_KEYS = ("branches", "dtype", "shards", "inputs")  # read by every use of a cache
# The states of a shard are held in memory until it is written: WavLM Large's 25 hidden states
# are 5 MB per second of audio in float32, 256 utterances of 12 s 16 GB.
SHARD_MIB = 1024
INDEX_INTERVAL_S = 60  # extraction rewrites index.json at most this often (and when it stops)


class FeatureCacheError(UserError, ValueError):
    """A cache that does not match the model or lacks utterances."""


def weights_digest(module, names=None):
    """SHA-256 over a module's parameters and buffers (those in ``names`` if
    given), in state-dict order."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        if names is not None and name not in names:
            continue
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# Config entries that leave an encoder's states in evaluation as they are: regularisation in
# training (dropout, layer drop, SpecAugment masks) and records of how the model was saved.
# Runs that share a cache may set them otherwise.
_UNCACHED_CONFIG_KEYS = {
    "_name_or_path",
    "feature_extractor_type",
    "processor_class",
    "mel_filters",
    "architectures",
    "transformers_version",
    "dtype",
    "torch_dtype",
    "id2label",
    "label2id",
    "apply_spec_augment",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
    "use_cache",
}


def states_config(config):
    """The entries of a transformers ``config`` (or feature extractor) that shape the states its
    model computes in evaluation, as JSON reads them back: an edit of ``config.json`` that keeps
    the weights (attention heads, activation, a norm's epsilon) changes them, as one of
    ``preprocessor_config.json`` (Whisper's FFT window, mel bins, dither) does."""
    kept = {
        key: value
        for key, value in config.to_dict().items()
        if key not in _UNCACHED_CONFIG_KEYS
        and "dropout" not in key
        and not key.endswith("layerdrop")
        and not key.startswith("mask_")
    }
    return json.loads(json.dumps(kept, default=str))


# Identity keys that hold a config's entries (states_config), compared entry by entry.
_CONFIG_KEYS = ("config", "features")


def identity_differences(cached, expected):
    """The keys whose values differ between a cache's recorded encoder identity and an
    encoder's, a key one of them lacks included; and ``config.<entry>`` (``features.<entry>``)
    for each entry of the model's (feature extractor's) config both record with other values.
    Entries one transformers version has and another lacks are not compared: an upgrade that
    adds one does not refuse every cache."""
    keys = (expected.keys() | cached.keys()) - set(_CONFIG_KEYS)
    differ = sorted(k for k in keys if cached.get(k) != expected.get(k))
    for key in _CONFIG_KEYS:
        old, new = cached.get(key), expected.get(key)
        if old is None or new is None:
            differ += [] if old is new else [key]
        else:
            both = sorted(old.keys() & new.keys())
            differ += [f"{key}.{entry}" for entry in both if old[entry] != new[entry]]
    return differ


def encoder_identity(encoder, max_duration=None):
    """What determines an encoder's cached states (compared on every read)."""
    identity = {
        "class": type(encoder).__name__,
        "layer_weighting": encoder.layer_weighting,
        "num_states": encoder.num_states,
        "dim": encoder.output_dim,
        "weights_sha256": weights_digest(encoder.model, set(encoder.frozen_parameter_names())),
        "config": states_config(encoder.model.config),
    }
    if encoder.finetune_top_layers:  # the cache holds the hidden state below the tuned layers
        identity["finetune_top_layers"] = encoder.finetune_top_layers
    if getattr(encoder, "features", None) is not None:  # Whisper's log-mel
        identity["features"] = states_config(encoder.features)
    if hasattr(encoder, "normalize_waveform"):
        identity.update(normalize_waveform=encoder.normalize_waveform, max_duration=max_duration)
    else:
        identity.update(
            max_length=encoder.max_length,
            vocab=len(encoder.tokenizer),
            tokenizer_sha256=tokenizer_digest(encoder.tokenizer),  # the same size, other tokens
        )
        if encoder.tokenizer.padding_side == "left":  # cached padded on the left before it was overridden
            identity["padding_side"] = "right"
    return identity


def model_tokenizer_digest(model):
    """``tokenizer_digest`` of a Crab's text encoder, None without a text branch."""
    encoder = model.text_encoder
    return None if encoder is None else tokenizer_digest(encoder.tokenizer)


def tokenizer_digest(tokenizer):
    """SHA-256 of what a tokenizer maps text to: the whole of a fast tokenizer (vocabulary,
    merges, normalisation), else its vocabulary. A fast tokenizer's serialisation also holds
    the truncation and padding its last call set (transformers leaves them there): they are
    taken as unset, so a tokenizer digests the same before and after it is used."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        text = json.dumps(sorted(tokenizer.get_vocab().items()))
    else:
        from tokenizers import Tokenizer

        unset = Tokenizer.from_str(backend.to_str())
        unset.no_truncation()
        unset.no_padding()
        text = unset.to_str()
    return hashlib.sha256(text.encode()).hexdigest()


def input_digest(entry, branches):
    """What an utterance's cached states were computed from: its manifest text
    and/or audio path (as written, ``{data_root}`` unsubstituted) and duration."""
    parts = [entry["text"]] if "text" in branches else []
    if "speech" in branches:
        parts += [str(entry["wav"]), str(entry["duration"])]
    return hashlib.sha1("\x1f".join(parts).encode()).hexdigest()[:16]


def audio_fingerprint(path):
    """``{"size", "sha256", "stat"}`` of an audio file: its size and the SHA-256 of its
    bytes, and the stat values (size, mtime, ctime, inode) they were taken at."""
    before = os.stat(path)
    with open(path, "rb") as f:
        sha = hashlib.file_digest(f, "sha256").hexdigest()
    return {"size": before.st_size, "sha256": sha, "stat": _stat_key(before)}


def _stat_key(st):
    # ctime changes on any write or replacement of the file, and cannot be set back
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def audio_change(path, recorded):
    """``(what changed or None, fingerprint now)`` of an audio file against its
    ``recorded`` fingerprint; hashed only when its stat values differ."""
    try:
        st = os.stat(path)
    except OSError as err:
        return f"cannot be read now ({err.strerror})", None
    if _stat_key(st) == recorded["stat"]:
        return None, recorded
    now = audio_fingerprint(path)
    if now["size"] != recorded["size"]:
        return f"size {recorded['size']} -> {now['size']} bytes", now
    if now["sha256"] != recorded["sha256"]:
        return (
            f"same size, other bytes: sha256 {recorded['sha256'][:12]}... -> {now['sha256'][:12]}..."
        ), now
    return None, now


def _audio_changed_error(utt, path, what, cache_dir):
    return FeatureCacheError(
        f"utterance '{utt}': its audio {path} changed since {cache_dir} was extracted ({what}): "
        "its cached speech states are stale; extract into a new directory"
    )


def _old_index_error(cache_dir):
    return FeatureCacheError(
        f"feature cache {cache_dir} was extracted without audio fingerprints (an older crab), so a "
        "changed audio file would go unseen: extract into a new directory (or delete this one and re-extract)"
    )


def _load_index(cache_dir):
    """The cache's index.json, one with every key this crab reads, of its ``INDEX_VERSION`` or of
    none (written before the versions); else a ``FeatureCacheError`` naming it (an index of a
    newer crab's layout, one written before the per-utterance input digests, or damaged)."""
    path = os.path.join(cache_dir, INDEX)
    try:
        with open(path, encoding="utf-8") as f:
            index = json.load(f)
    except ValueError as err:
        problem = f"is not JSON ({err})"
    else:
        version = index.get("version") if isinstance(index, dict) else None
        if version not in (None, INDEX_VERSION):  # before the keys: another layout may lack them
            raise FeatureCacheError(
                f"feature cache index {path} is of version {json.dumps(version)}, a layout this crab "
                f"(version {INDEX_VERSION}) does not know, written by another (a newer) crab: read the "
                "cache with the crab that wrote it, or extract into a new directory"
            )
        missing = [key for key in INDEX_KEYS if not isinstance(index, dict) or key not in index]
        if not missing:
            return index
        problem = f"lacks {', '.join(missing)} (written by an older crab, or damaged)"
    raise FeatureCacheError(
        f"feature cache index {path} {problem}: extract into a new directory "
        "(or delete this one and extract it again)"
    )


def _shard_problem(path, utts, branches, dtype):
    """Why the shard at ``path`` cannot serve ``utts`` (``None`` if it can): it must
    open and hold ``<utt>/<branch>`` of each, ``(time, layers, dim)`` of the
    branch's identity in ``dtype``."""
    if not os.path.isfile(path):
        return "missing"
    try:
        with safe_open(path, framework="pt") as f:
            keys = set(f.keys())
            for utt in utts:
                for branch, identity in branches.items():
                    key = f"{utt}/{branch}"
                    if key not in keys:
                        return f"lacks {key}"
                    tensor = f.get_slice(key)
                    shape, stored = tensor.get_shape(), tensor.get_dtype()
                    expected = [identity["num_states"], identity["dim"]]
                    if len(shape) != 3 or shape[1:] != expected or stored != SAFETENSORS_DTYPES[dtype]:
                        want = f"{SAFETENSORS_DTYPES[dtype]} [time, {', '.join(map(str, expected))}]"
                        return f"{key} is {stored} {shape}, not {want}"
    except (SafetensorError, OSError) as err:
        return f"unreadable: {err}"
    return None


def cache_branches(model, max_duration=None):
    """Identity of each of the model's frozen encoders (the ones a cache may hold)."""
    return {
        branch: encoder_identity(model.encoders[branch], max_duration)
        for branch in model.branches
        if model.encoders[branch].frozen_states
    }


class FeatureCache:
    """Read-only view of a cache directory (shards opened lazily, memory-mapped)."""

    def __init__(self, cache_dir):
        path = os.path.join(cache_dir, INDEX)
        if not os.path.isfile(path):
            # a run's hyperparams.yaml names the cache it was last trained with: deleted or
            # moved since, the user needs every way on, not only the extraction
            raise FeatureCacheError(
                f"no feature cache at {cache_dir} ({INDEX} missing; a relative path is read from "
                f"{os.getcwd()}): extract it (the recipe's stage 4 with --feature_cache {cache_dir}), "
                "give the folder it was moved to (--feature_cache DIR), or run the encoders instead "
                '(--feature_cache=null; the recipe: --train_opts "--feature_cache=null")'
            )
        index = _load_index(cache_dir)
        self.cache_dir = cache_dir
        self.branches = index["branches"]
        self.dtype = index["dtype"]
        self.shard_of = {utt: shard for shard, utts in index["shards"].items() for utt in utts}
        self.inputs = index["inputs"]
        self.audio = index.get("audio")  # None: a cache written before audio fingerprints
        self.versions = index.get("versions")  # None: a cache written before they were recorded
        self._open = {}

    def __contains__(self, utt):
        return utt in self.shard_of

    def get(self, utt, branch):
        """``(time, layers, dim)`` float32 states of one utterance."""
        shard = self.shard_of[utt]
        path = os.path.join(self.cache_dir, shard)
        try:
            if shard not in self._open:
                self._open[shard] = safe_open(path, framework="pt")
            return self._open[shard].get_tensor(f"{utt}/{branch}").float()
        except (SafetensorError, OSError) as err:
            raise self._corrupt(path, f"utterance '{utt}'", err) from None

    def _corrupt(self, path, which, problem):
        return FeatureCacheError(
            f"feature cache shard {path} ({which}) is corrupt ({problem}): re-run the extraction "
            f"(crab.bin.extract_features with --feature_cache={self.cache_dir}), which extracts a corrupt "
            "shard's utterances again"
        )

    def check(self, model, max_duration, manifests=(), data_root=None):
        """Which branches to read from the cache for ``model``.

        Every branch the cache holds must match the model's encoder exactly and
        be frozen; every utterance of ``manifests`` must be in the cache, with the
        same inputs (text, audio path and duration, audio file content: its
        ``{data_root}`` is ``data_root``), in a shard that opens and holds it.
        """
        current = {b: model.encoders[b] for b in model.branches if b in self.branches}
        if not current:
            raise FeatureCacheError(
                f"feature cache {self.cache_dir} holds {sorted(self.branches)} states; "
                f"the model has branches {model.branches}"
            )
        for branch, encoder in current.items():
            if not encoder.frozen_states:
                raise FeatureCacheError(
                    f"feature cache {self.cache_dir} holds {branch} states, but the {branch} "
                    f"encoder is not frozen (set freeze_{branch}_encoder: true"
                    + (
                        ", or fine-tune only its top layers with finetune_top_speech_layers)"
                        if branch == "speech"
                        else ")"
                    )
                )
            differ = identity_differences(self.branches[branch], encoder_identity(encoder, max_duration))
            if differ:
                raise FeatureCacheError(
                    f"feature cache {self.cache_dir} was extracted with another {branch} encoder "
                    f"setting ({', '.join(differ)} differ): extract into a new directory"
                )
        warn_version_drift(self.versions, f"feature cache {self.cache_dir} was extracted")
        for manifest in manifests:
            entries = load_manifest(manifest)
            missing = [utt for utt in entries if utt not in self]
            if missing:
                raise FeatureCacheError(
                    f"feature cache {self.cache_dir} lacks {len(missing)} utterance(s) of "
                    f"{manifest} (first: {missing[0]}): run the extraction on it"
                )
            changed = [u for u, e in entries.items() if input_digest(e, self.branches) != self.inputs[u]]
            if changed:
                raise FeatureCacheError(
                    f"{len(changed)} utterance(s) of {manifest} have another text or audio than when "
                    f"{self.cache_dir} was extracted (first: {changed[0]}): extract into a new directory"
                )
            if "speech" in current:
                self._check_audio(entries, data_root)
            by_shard = {}
            for utt in entries:
                by_shard.setdefault(self.shard_of[utt], []).append(utt)
            for shard, utts in sorted(by_shard.items()):
                problem = _shard_problem(os.path.join(self.cache_dir, shard), utts, self.branches, self.dtype)
                if problem is not None:
                    raise self._corrupt(
                        os.path.join(self.cache_dir, shard),
                        f"{len(utts)} utterance(s) of {manifest}",
                        problem,
                    )
        return sorted(current)

    def _check_audio(self, entries, data_root):
        """Each utterance's audio file has the bytes it had at extraction."""
        if self.audio is None:
            raise _old_index_error(self.cache_dir)
        hashed = 0
        for utt, entry in entries.items():
            path = _audio_path(entry, data_root)
            what, now = audio_change(path, self.audio[utt])
            hashed += now is not self.audio[utt]
            if what is not None:
                raise _audio_changed_error(utt, path, what, self.cache_dir)
        if hashed:
            logger.info(
                "Feature cache %s: hashed %d audio file(s) moved or touched since extraction "
                "(same bytes); re-running the extraction records their new stat values",
                self.cache_dir,
                hashed,
            )


def _audio_path(entry, data_root):
    path = str(entry["wav"])
    if "{data_root}" in path:
        if data_root is None:
            raise ValueError(f"audio path {path}: no data_root to substitute")
        path = path.replace("{data_root}", data_root)
    return path


BRANCHES = ("speech", "text")  # a batch's cached states: <branch>_states


def cached_states(batch, host_lengths=None):
    """``{branch: (states, mask)}`` from a PaddedBatch's ``<branch>_states`` items. Each mask
    keeps its lengths on the host (``crab.masks.device_mask``), from ``host_lengths``
    (``{branch: relative lengths}`` read before the batch went to the device) where given,
    so that the GRU's packing does not wait for the device."""
    out = {}
    for branch in BRANCHES:
        if hasattr(batch, f"{branch}_states"):
            states, lens = getattr(batch, f"{branch}_states")
            lens = (host_lengths or {}).get(branch, lens)
            frames = states.shape[1]
            out[branch] = (states, device_mask(relative_to_absolute(lens, frames), frames, states.device))
    return out


def _dump_json(obj, path):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)


def _read_index(cache_dir, branches, dtype):
    path = os.path.join(cache_dir, INDEX)
    if not os.path.isfile(path):
        return {
            "version": INDEX_VERSION,
            "branches": branches,
            "dtype": dtype,
            "shards": {},
            "inputs": {},
            "audio": {},
            "versions": library_versions(),  # of the extraction that started it
        }
    index = _load_index(cache_dir)
    cached = index["branches"]
    differ = (
        [] if cached.keys() == branches.keys() else [f"branches {sorted(cached)}, not {sorted(branches)}"]
    )
    for branch in sorted(cached.keys() & branches.keys()):
        keys = identity_differences(cached[branch], branches[branch])
        if keys:
            differ.append(f"{branch} encoder: {', '.join(keys)} differ")
    if index["dtype"] != dtype:
        differ.append(f"dtype {index['dtype']}, not {dtype}")
    if differ:
        raise FeatureCacheError(
            f"{cache_dir} already holds features of other encoders or dtype ({'; '.join(differ)}): "
            "extract into a new directory, or delete this one and extract it again"
        )
    if "audio" not in index:
        if "speech" in branches and index["shards"]:
            raise _old_index_error(cache_dir)
        index.update(version=INDEX_VERSION, audio={})
    warn_version_drift(index.get("versions"), f"feature cache {cache_dir} was extracted")
    return index


def _drop_corrupt_shards(cache_dir, index):
    """Drop from ``index`` (and delete) each listed shard that cannot serve its
    utterances (``_shard_problem``), so that they are extracted again."""
    for shard, utts in list(index["shards"].items()):
        path = os.path.join(cache_dir, shard)
        problem = _shard_problem(path, utts, index["branches"], index["dtype"])
        if problem is not None:
            logger.warning(
                "Feature cache %s: %s is corrupt (%s): extracting its %d utterance(s) again",
                cache_dir,
                shard,
                problem,
                len(utts),
            )
            del index["shards"][shard]
            for utt in utts:
                index["inputs"].pop(utt, None)
                index["audio"].pop(utt, None)
            if os.path.exists(path):
                os.remove(path)


def _remove_unindexed_shards(cache_dir, index):
    """Remove the shards that a killed extraction wrote after its last index write: never
    read, their utterances are extracted again."""
    for name in os.listdir(cache_dir):
        if name.startswith("shard_") and name.endswith(".safetensors") and name not in index["shards"]:
            os.remove(os.path.join(cache_dir, name))


def _next_shard(index):
    numbers = [int(name[len("shard_") : -len(".safetensors")]) for name in index["shards"]]
    return f"shard_{max(numbers, default=-1) + 1:05d}.safetensors"


def _batches(utts, entries, batch_size):
    """Utterances in batches of similar length (less padding)."""
    order = sorted(utts, key=lambda u: (entries[u]["duration"] or len(entries[u]["text"]), u))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _extent(utts, entries, max_duration, speech):
    """How much input ``utts`` are, to extrapolate a shard's size: with the ``speech`` encoder's
    states, the seconds of audio (each cut at ``max_duration``), else the number of utterances."""
    durations = [entries[u]["duration"] for u in utts]
    if not speech or any(d is None for d in durations):
        return len(utts)
    return sum(min(d, max_duration or d) for d in durations)


def _check_room(cache_dir, shard_bytes, shard_extent, rest_extent):
    """Log the size the rest of the extraction will take, from the first shard's, and warn when
    the disk of ``cache_dir`` has less free space (the extraction stops there, keeping what
    it wrote)."""
    need = shard_bytes * rest_extent / max(shard_extent, 1e-9)
    free = shutil.disk_usage(cache_dir).free
    logger.info("Feature cache %s: about %.3g GB more to write (from its first shard)", cache_dir, need / 1e9)
    if need > free:
        logger.warning(
            "Feature cache %s: the rest of the extraction needs about %.3g GB, the disk has %.3g GB "
            "free: it will stop when the disk is full (the shards written are kept). Make room, "
            "or extract to another --feature_cache, in float16 (--dtype float16: half the size), "
            "or of the last layer only (layer_weighting: last)",
            cache_dir,
            need / 1e9,
            free / 1e9,
        )


@torch.no_grad()
def _encode_batch(model, branches, utts, entries, max_duration, device):
    """``{utt: {branch: (time, layers, dim) tensor}}`` for one batch. Each branch's states come
    to the host in one copy, cut there at the lengths its mask keeps on the host (reading a
    length or copying a row from a GPU would wait for it, once per utterance)."""
    out = {utt: {} for utt in utts}
    for branch in branches:
        encoder = model.encoders[branch]
        if branch == "speech":
            wavs = [read_utterance_audio(u, entries[u]["wav"], max_duration) for u in utts]
            batch = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True).to(device)
            lens = torch.tensor([len(w) / batch.shape[1] for w in wavs])
            states, mask = encoder.states(batch, lens)
        else:
            states, mask = encoder.states([entries[u]["text"] for u in utts])
        states = states.cpu()
        for utt, row, length in zip(utts, states, host_lengths(mask).tolist(), strict=True):
            out[utt][branch] = row[:length].clone()  # not a view holding the whole batch
    return out


def extract(
    model,
    manifests,
    cache_dir,
    data_root=None,
    max_duration=None,
    batch_size=8,
    shard_size=256,
    dtype="float32",
    device="cpu",
    shard_mib=SHARD_MIB,
):
    """Extract the frozen encoders' states of every utterance of ``manifests``
    not yet in ``cache_dir``, in shards of at most ``shard_size`` utterances, each written
    once its states reach ``shard_mib`` MiB. Returns the number of utterances extracted."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got '{dtype}'")
    branches = cache_branches(model, max_duration)
    if not branches:
        raise FeatureCacheError("no encoder of this model is frozen: there is nothing to cache")
    with folder_lock(cache_dir, "feature cache", wait=True):  # one extraction per cache at a time
        remove_temps(cache_dir)  # of an extraction killed while writing
        index = _read_index(cache_dir, branches, dtype)
        _drop_corrupt_shards(cache_dir, index)
        _remove_unindexed_shards(cache_dir, index)
        done = {utt for utts in index["shards"].values() for utt in utts}
        entries, digests, audio, restat = {}, {}, {}, False
        for manifest in manifests:
            for utt, entry in load_manifest(manifest).items():
                digests[utt] = input_digest(entry, branches)
                if utt in done and digests[utt] != index["inputs"][utt]:
                    raise FeatureCacheError(
                        f"{manifest}: utterance '{utt}' has another text or audio than when {cache_dir} "
                        "was extracted: extract into a new directory"
                    )
                if "speech" in branches:
                    path = _audio_path(entry, data_root)
                    if utt in done:
                        what, now = audio_change(path, index["audio"][utt])
                        if what is not None:
                            raise _audio_changed_error(utt, path, what, cache_dir)
                        restat |= now is not index["audio"][utt]
                        index["audio"][utt] = now  # moved or touched, same bytes: its new stat values
                    else:
                        audio[utt] = audio_fingerprint(path)  # before reading it: a change after is seen
                if utt not in done:
                    if data_root is not None and entry["wav"]:
                        entry["wav"] = entry["wav"].replace("{data_root}", data_root)
                    entries[utt] = entry
        todo = sorted(entries)
        logger.info(
            "Feature cache %s: %d utterance(s) cached, %d to extract (%s) on %s",
            cache_dir,
            len(done),
            len(todo),
            ", ".join(sorted(branches)),
            device,
        )
        model.to(device).eval()

        def save_index():
            write_atomic(os.path.join(cache_dir, INDEX), lambda p: _dump_json(index, p))

        unsaved, saved_at, written = restat, time.monotonic(), []

        def write_shard(utts, tensors):
            nonlocal unsaved, saved_at
            shard = _next_shard(index)
            path = os.path.join(cache_dir, shard)
            try:
                write_atomic(path, functools.partial(save_file, tensors))
            except SafetensorError as err:  # its write errors (a full disk) are no OSError
                raise FeatureCacheError(
                    f"cannot write {path} ({err}): the shards written before are kept, and the same "
                    "extraction run again (once there is room) goes on from them"
                ) from err
            problem = _shard_problem(path, utts, branches, dtype)
            if problem is not None:  # as written: a bug or a failing disk, not to be indexed
                raise FeatureCacheError(f"{path} does not read back: {problem}")
            if not written and len(utts) < len(todo):
                speech, rest = "speech" in branches, sorted(set(todo) - set(utts))
                done_now = _extent(utts, entries, max_duration, speech)
                _check_room(
                    cache_dir, os.path.getsize(path), done_now, _extent(rest, entries, max_duration, speech)
                )
            written.extend(utts)
            index["shards"][shard] = utts
            index["inputs"].update({utt: digests[utt] for utt in utts})
            index["audio"].update({utt: audio[utt] for utt in utts if utt in audio})
            unsaved = True
            if time.monotonic() - saved_at >= INDEX_INTERVAL_S:
                save_index()
                unsaved, saved_at = False, time.monotonic()
            logger.info("Feature cache %s: %s written (%d/%d)", cache_dir, shard, len(written), len(todo))

        try:
            # a shard holds at most shard_size utterances, and is written once its states (held in
            # memory until then) reach shard_mib
            for start in range(0, len(todo), shard_size):
                utts, tensors, held = [], {}, 0
                for batch in _batches(todo[start : start + shard_size], entries, batch_size):
                    encoded = _encode_batch(model, sorted(branches), batch, entries, max_duration, device)
                    for utt, states in encoded.items():
                        for branch, value in states.items():
                            tensor = tensors[f"{utt}/{branch}"] = value.to(DTYPES[dtype]).contiguous()
                            held += tensor.nbytes
                    utts += batch
                    if held >= shard_mib * 2**20:
                        write_shard(utts, tensors)
                        utts, tensors, held = [], {}, 0
                if utts:
                    write_shard(utts, tensors)
        except BaseException:  # an error or Ctrl-C: the shards written so far are indexed
            if unsaved:
                try:
                    save_index()
                except OSError as err:  # a full disk: the error that stopped the extraction says more
                    logger.warning("%s: the shards written since it was last saved are extracted again", err)
            raise
        if unsaved:
            save_index()
    return len(todo)
