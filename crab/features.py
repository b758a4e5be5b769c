"""Frozen-encoder feature cache: encoder hidden states extracted once, read in training.

With a frozen encoder, its output for an utterance never changes, so sweeps and
ablations need not run it again. ``extract`` writes, for every utterance of the
given manifests, the states the encoder's ``select`` reads (``(time, layers,
dim)``: the last layer, or every layer for ``layer_weighting: weighted_sum``) to a
cache directory:

    index.json             what was extracted (encoder identity, weights digest,
                           dtype), which shard holds each utterance, and a digest
                           of each utterance's input (text, audio path, duration)
    shard_00000.safetensors ...  tensors named ``<utt>/<branch>``

Each shard is written to a temporary name and renamed, then the index is
rewritten the same way, so an interrupted extraction loses at most the shard in
progress and re-running it extracts only what is missing. Utterances of new
manifests (another fold) are added to the same cache. The index records a digest
of the encoder weights: reading a cache with other weights (another checkpoint,
another random seed) or with changed inputs (an edited transcript) is an
error, never a silent mismatch.

An encoder fine-tuned only in its top layers (``finetune_top_layers``) is cached
below them: the cache holds the hidden state those layers read, its identity
covers the frozen weights only, and training runs the tuned layers on it.
"""

import fcntl
import hashlib
import json
import logging
import os

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from crab.cli import UserError
from crab.data import load_manifest, read_utterance_audio
from crab.encoders import lengths_to_mask, relative_to_absolute

logger = logging.getLogger(__name__)

INDEX = "index.json"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


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


def encoder_identity(encoder, max_duration=None):
    """What determines an encoder's cached states (compared on every read)."""
    identity = {
        "class": type(encoder).__name__,
        "layer_weighting": encoder.layer_weighting,
        "num_states": encoder.num_states,
        "dim": encoder.output_dim,
        "weights_sha256": weights_digest(encoder.model, set(encoder.frozen_parameter_names())),
    }
    if encoder.finetune_top_layers:  # the cache holds the hidden state below the tuned layers
        identity["finetune_top_layers"] = encoder.finetune_top_layers
    if hasattr(encoder, "normalize_waveform"):
        identity.update(normalize_waveform=encoder.normalize_waveform, max_duration=max_duration)
    else:
        identity.update(max_length=encoder.max_length, vocab=len(encoder.tokenizer))
    return identity


def input_digest(entry, branches):
    """What an utterance's cached states were computed from: its manifest text
    and/or audio path (as written, ``{data_root}`` unsubstituted) and duration."""
    parts = [entry["text"]] if "text" in branches else []
    if "speech" in branches:
        parts += [str(entry["wav"]), str(entry["duration"])]
    return hashlib.sha1("\x1f".join(parts).encode()).hexdigest()[:16]


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
            raise FeatureCacheError(f"no feature cache at {cache_dir} ({INDEX} missing): run the extraction first")
        with open(path, encoding="utf-8") as f:
            index = json.load(f)
        self.cache_dir = cache_dir
        self.branches = index["branches"]
        self.dtype = index["dtype"]
        self.shard_of = {utt: shard for shard, utts in index["shards"].items() for utt in utts}
        self.inputs = index["inputs"]
        self._open = {}

    def __contains__(self, utt):
        return utt in self.shard_of

    def get(self, utt, branch):
        """``(time, layers, dim)`` float32 states of one utterance."""
        shard = self.shard_of[utt]
        if shard not in self._open:
            self._open[shard] = safe_open(os.path.join(self.cache_dir, shard), framework="pt")
        return self._open[shard].get_tensor(f"{utt}/{branch}").float()

    def check(self, model, max_duration, manifests=()):
        """Which branches to read from the cache for ``model``.

        Every branch the cache holds must match the model's encoder exactly and
        be frozen; every utterance of ``manifests`` must be in the cache.
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
                    + (", or fine-tune only its top layers with finetune_top_speech_layers)"
                       if branch == "speech" else ")")
                )
            expected = encoder_identity(encoder, max_duration)
            cached = self.branches[branch]
            differ = sorted(k for k in expected.keys() | cached.keys() if cached.get(k) != expected.get(k))
            if differ:
                raise FeatureCacheError(
                    f"feature cache {self.cache_dir} was extracted with another {branch} encoder "
                    f"setting ({', '.join(differ)} differ): extract into a new directory"
                )
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
        return sorted(current)


def cached_states(batch):
    """``{branch: (states, mask)}`` from a PaddedBatch's ``<branch>_states`` items."""
    out = {}
    for branch in ("speech", "text"):
        if hasattr(batch, f"{branch}_states"):
            states, lens = getattr(batch, f"{branch}_states")
            frames = states.shape[1]
            out[branch] = (states, lengths_to_mask(relative_to_absolute(lens, frames), frames))
    return out


def _write_atomic(path, write):
    tmp = path + ".tmp"
    write(tmp)
    os.replace(tmp, path)


def _dump_json(obj, path):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)


def _read_index(cache_dir, branches, dtype):
    path = os.path.join(cache_dir, INDEX)
    if not os.path.isfile(path):
        return {"branches": branches, "dtype": dtype, "shards": {}, "inputs": {}}
    with open(path, encoding="utf-8") as f:
        index = json.load(f)
    if index["branches"] != branches or index["dtype"] != dtype:
        raise FeatureCacheError(
            f"{cache_dir} already holds features of other encoders or dtype "
            f"({index['dtype']}, {sorted(index['branches'])}): extract into a new directory"
        )
    return index


def _batches(utts, entries, batch_size):
    """Utterances in batches of similar length (less padding)."""
    order = sorted(utts, key=lambda u: (entries[u]["duration"] or len(entries[u]["text"]), u))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


@torch.no_grad()
def _encode_batch(model, branches, utts, entries, max_duration, device):
    """``{utt: {branch: (time, layers, dim) tensor}}`` for one batch."""
    out = {utt: {} for utt in utts}
    for branch in branches:
        encoder = model.encoders[branch]
        if branch == "speech":
            wavs = [read_utterance_audio(u, entries[u]["wav"], max_duration) for u in utts]
            batch = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True).to(device)
            lens = torch.tensor([len(w) / batch.shape[1] for w in wavs], device=device)
            states, mask = encoder.states(batch, lens)
        else:
            states, mask = encoder.states([entries[u]["text"] for u in utts])
        for i, utt in enumerate(utts):
            out[utt][branch] = states[i, : int(mask[i].sum())].cpu()
    return out


def extract(model, manifests, cache_dir, data_root=None, max_duration=None, batch_size=8,
            shard_size=256, dtype="float32", device="cpu"):
    """Extract the frozen encoders' states of every utterance of ``manifests``
    not yet in ``cache_dir``. Returns the number of utterances extracted."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got '{dtype}'")
    branches = cache_branches(model, max_duration)
    if not branches:
        raise FeatureCacheError("no encoder of this model is frozen: there is nothing to cache")
    os.makedirs(cache_dir, exist_ok=True)
    with open(os.path.join(cache_dir, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one extraction per cache at a time
        index = _read_index(cache_dir, branches, dtype)
        done = {utt for utts in index["shards"].values() for utt in utts}
        entries, digests = {}, {}
        for manifest in manifests:
            for utt, entry in load_manifest(manifest).items():
                digests[utt] = input_digest(entry, branches)
                if utt in done and digests[utt] != index["inputs"][utt]:
                    raise FeatureCacheError(
                        f"{manifest}: utterance '{utt}' has another text or audio than when {cache_dir} "
                        "was extracted: extract into a new directory"
                    )
                if utt not in done:
                    if data_root is not None and entry["wav"]:
                        entry["wav"] = entry["wav"].replace("{data_root}", data_root)
                    entries[utt] = entry
        todo = sorted(entries)
        logger.info("Feature cache %s: %d utterance(s) cached, %d to extract (%s)",
                    cache_dir, len(done), len(todo), ", ".join(sorted(branches)))
        model.to(device).eval()
        for start in range(0, len(todo), shard_size):
            shard = f"shard_{len(index['shards']):05d}.safetensors"
            tensors = {}
            for utts in _batches(todo[start:start + shard_size], entries, batch_size):
                encoded = _encode_batch(model, sorted(branches), utts, entries, max_duration, device)
                for utt, states in encoded.items():
                    for branch, value in states.items():
                        tensors[f"{utt}/{branch}"] = value.to(DTYPES[dtype]).contiguous()
            _write_atomic(os.path.join(cache_dir, shard), lambda p: save_file(tensors, p))
            index["shards"][shard] = sorted(todo[start:start + shard_size])
            index["inputs"].update({utt: digests[utt] for utt in index["shards"][shard]})
            _write_atomic(os.path.join(cache_dir, INDEX), lambda p: _dump_json(index, p))
            logger.info("Feature cache %s: %s written (%d/%d)", cache_dir, shard,
                        min(start + shard_size, len(todo)), len(todo))
    return len(todo)
