"""Manifests, audio reading and the SpeechBrain data pipelines.

A manifest is a JSON object keyed by utterance id, each entry with at least
``wav`` (may start with ``{data_root}``), ``duration`` (s), ``text``, ``emo`` and
``spk``. Labels are encoded in the fixed order of the recipe's ``classes`` list.
"""

import json
import logging
import math
import os
from collections import Counter

import numpy as np
import soundfile as sf
import soxr
import speechbrain as sb
import torch

from crab.cli import UserError
from crab.dataprep import (
    MAX_SAMPLE_RATE,
    MIN_SAMPLE_RATE,
    MIN_SAMPLES,
    classes_problem,
    clean_transcript,
    frame_blocks,
    peak_problem,
    probe_audio,
    rate_problem,
)
from crab.provenance import check_tables

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
REQUIRED_FIELDS = ("wav", "duration", "text", "emo", "spk")


class BadAudioError(RuntimeError):
    """Audio whose rate or samples cannot be used (``read_audio``): ``kind`` as data
    prep counts it, the message names the file."""

    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind


def resample(wav, rate, target=SAMPLE_RATE):
    """``wav`` (a float tensor, ``(time,)`` or ``(batch, time)``) from ``rate`` to ``target`` Hz.

    soxr (HQ): its memory does not grow with the ratio of the rates reduced by their
    gcd, as torchaudio's sinc kernel does (4001 Hz: +1 GB, 44101 Hz: ~11 GB), and it
    is faster and cleaner (``crab.bin.bench_resample``). The rate must lie within
    ``MIN_SAMPLE_RATE``-``MAX_SAMPLE_RATE`` (``ValueError``).
    """
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise ValueError(f"sample rate {rate} Hz outside {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz")
    if rate == target:
        return wav
    device, dtype = wav.device, wav.dtype
    data = wav.detach().cpu().to(torch.float32).numpy()
    out = soxr.resample(
        np.ascontiguousarray(data.T), rate, target, quality="HQ"
    ).T  # soxr: (frames, channels)
    return torch.from_numpy(np.ascontiguousarray(out)).to(device=device, dtype=dtype)


def read_audio(path, max_duration=None):
    """Mono float32 16 kHz waveform, cut to the first ``max_duration`` seconds.

    A sample rate outside ``MIN_SAMPLE_RATE``-``MAX_SAMPLE_RATE``, NaN or infinite
    samples, or a peak beyond ``MAX_PEAK`` (in the part read) is a ``BadAudioError``
    naming the file; silence is left to the caller (``read_utterance_audio``,
    ``crab.inference.check_audio``).
    """
    info = sf.info(path)
    problem = rate_problem(info.samplerate, path)
    if problem:
        raise BadAudioError(*problem)
    frames = None if max_duration is None else math.ceil(max_duration * info.samplerate)
    mono, rate = _read_mono(path, frames), info.samplerate
    problem = peak_problem(float(np.max(np.abs(mono))) if mono.size else 0.0, path, silence=False)
    if problem:
        raise BadAudioError(*problem)
    wav = resample(torch.from_numpy(mono), rate)
    if max_duration is not None:
        wav = wav[: int(max_duration * SAMPLE_RATE)]
    return wav


def _read_mono(path, frames=None):
    """The first ``frames`` (None: all) of ``path``, the mean of its channels, float32, read
    by blocks (``frame_blocks``): nor does memory follow the channels of a multichannel file."""
    with sf.SoundFile(path) as f:
        parts = [data.mean(axis=1) for data in frame_blocks(f, frames, "float32")]
    return np.concatenate(parts) if parts else np.zeros(0, dtype="float32")


class AudioReadError(UserError, RuntimeError):
    """An utterance's audio file cannot be used."""


class DataError(UserError, ValueError):
    """A manifest is missing or does not fit the configuration."""


def read_utterance_audio(utt, path, max_duration=None):
    """``read_audio`` for a dataset item: a missing, empty, unreadable, sample-less, too
    short (fewer than ``MIN_SAMPLES`` at 16 kHz), non-finite, out-of-range (rate or
    amplitude) or silent file (``crab.dataprep``'s limits, as data prep checks them) is an
    ``AudioReadError`` naming the utterance and the file."""
    _, problem = probe_audio(path)
    if problem is None:
        try:
            wav = read_audio(path, max_duration)
        except BadAudioError as err:
            problem = (err.kind, str(err))
        except (RuntimeError, sf.LibsndfileError) as err:
            problem = ("unreadable audio", f"unreadable audio file {path} ({err})")
        else:
            if wav.numel() == 0:
                problem = ("no samples", f"no audio samples in {path}")
            elif wav.numel() < MIN_SAMPLES:  # else the speech encoder fails on it with no name
                need = f"{wav.numel()} samples at 16 kHz, need {MIN_SAMPLES}"
                problem = ("audio too short", f"audio too short for the speech encoder ({need}): {path}")
            else:  # finite and in range (read_audio): silence, as data prep and inference reject it
                problem = peak_problem(float(wav.abs().max()), path)
    if problem is not None:
        raise AudioReadError(f"utterance '{utt}': {problem[1]}")
    return wav


def require_manifest(path):
    """A missing manifest is a ``DataError`` saying which stage writes it; one older
    than the data directory it was made from, a ``ProvenanceError`` (``check_tables``)."""
    if not os.path.isfile(path):
        raise DataError(f"{path} not found: run stage 3 (manifests) first")
    check_tables(path)


def load_manifest(path, data_root=None):
    """Read a manifest, check its fields, substitute ``{data_root}``, and clean
    control characters out of the transcripts as data prep does."""
    require_manifest(path)
    try:
        with open(path, encoding="utf-8") as f:
            entries = json.load(f)
    except ValueError as err:  # not JSON (a hand-written one), or not UTF-8
        raise DataError(f"{path}: not a JSON manifest ({err})") from None
    if not isinstance(entries, dict):
        raise DataError(
            f"{path}: a manifest is a JSON object keyed by utterance id, not a {type(entries).__name__}"
        )
    cleaned = Counter()
    for utt, entry in entries.items():
        if not isinstance(entry, dict):
            raise DataError(f"{path}: utterance '{utt}' is a {type(entry).__name__}, not an object of fields")
        missing = [k for k in REQUIRED_FIELDS if k not in entry]
        if missing:
            raise DataError(f"{path}: utterance '{utt}' lacks field(s) {missing}")
        problem = _field_problem(entry)
        if problem:
            raise DataError(f"{path}: utterance '{utt}': {problem}")
        entry["text"], removed = clean_transcript(entry["text"])
        cleaned.update({"transcripts": bool(removed), "characters": removed})
        if data_root is not None and entry["wav"] is not None:  # None: a text-only manifest
            entry["wav"] = entry["wav"].replace("{data_root}", data_root)
    if cleaned["characters"]:
        logger.warning(
            "%s: cleaned %d control character(s) out of %d transcript(s)",
            path,
            cleaned["characters"],
            cleaned["transcripts"],
        )
    return entries


def _field_problem(entry):
    """Why a manifest entry's fields cannot be read (a hand-written manifest), or None: ``wav`` a
    path, ``duration`` its seconds (both null in a text-only manifest), ``text`` and ``emo`` strings."""
    wav, duration = entry["wav"], entry["duration"]
    if wav is not None and not isinstance(wav, str):
        return f'"wav" is {json.dumps(wav)}, not an audio path (a string; null in a text-only manifest)'
    if (wav is None) != (duration is None):
        return (
            f'"wav" is {json.dumps(wav)} and "duration" {json.dumps(duration)}: both are given, '
            "or both null (text-only)"
        )
    if duration is not None and (
        isinstance(duration, bool) or not isinstance(duration, (int, float)) or not 0 <= duration < math.inf
    ):
        return f'"duration" is {json.dumps(duration)}, not seconds (a number, at least 0)'
    for key in ("text", "emo"):
        if not isinstance(entry[key], str):
            return f'"{key}" is {json.dumps(entry[key])}, not a string'
    return None


def class_counts(manifest_path, classes):
    """Per-class utterance counts of a manifest, in the order of ``classes``."""
    entries = load_manifest(manifest_path)
    counts = Counter(entry["emo"] for entry in entries.values())
    unknown = sorted(set(counts) - set(classes))
    if unknown:
        raise DataError(f"{manifest_path}: labels {unknown} are not in classes {classes}")
    return [counts[c] for c in classes]


def label_encoder(classes, path=None):
    """A CategoricalEncoder with ``classes`` in their given order, saved to ``path``.

    A saved encoder whose labels differ from ``classes`` is an error: the label
    order is part of the trained model.
    """
    problem = classes_problem(classes)
    if problem:
        raise DataError(f"classes {list(classes)}: {problem}")
    encoder = sb.dataio.encoder.CategoricalEncoder()
    if path is not None and encoder.load_if_possible(path):
        saved = [encoder.ind2lab[i] for i in range(len(encoder))]
        if saved != list(classes):
            raise DataError(f"{path} holds labels {saved}, but the config says {list(classes)}")
        return encoder
    encoder.update_from_iterable(classes)
    encoder.expect_len(len(classes))
    if path is not None:
        encoder.save(path)
    return encoder


def make_dataset(
    manifest_path,
    encoder,
    data_root,
    max_duration=None,
    sort=False,
    audio=True,
    cache=None,
    cached_branches=(),
):
    """A DynamicItemDataset providing ``id``, ``text``, ``emo_encoded``, ``sig``
    (the waveform, when ``audio``) and ``<branch>_states`` for each of
    ``cached_branches`` read from ``cache`` (a ``crab.features.FeatureCache``)."""
    entries = load_manifest(manifest_path, data_root)
    for utt, entry in entries.items():
        if entry["emo"] not in encoder.lab2ind:
            raise DataError(
                f"{manifest_path}: utterance '{utt}' has label '{entry['emo']}', "
                f"not one of {list(encoder.lab2ind)}"
            )
        if audio and entry["wav"] is None:
            raise DataError(
                f"{manifest_path}: the manifest has no audio (utterance '{utt}' has \"wav\": null: "
                "text-only data prep); a speech or bimodal model needs audio: train with --modality=text"
            )
    dataset = sb.dataio.dataset.DynamicItemDataset(entries)
    if sort:
        dataset = dataset.filtered_sorted(sort_key="duration")

    @sb.utils.data_pipeline.takes("id", "wav")
    @sb.utils.data_pipeline.provides("sig")
    def audio_pipeline(utt, wav):
        return read_utterance_audio(utt, wav, max_duration)

    @sb.utils.data_pipeline.takes("emo")
    @sb.utils.data_pipeline.provides("emo_encoded")
    def label_pipeline(emo):
        return torch.LongTensor([encoder.lab2ind[emo]])

    keys = ["id", "text", "emo_encoded"]
    sb.dataio.dataset.add_dynamic_item([dataset], label_pipeline)
    if audio:
        sb.dataio.dataset.add_dynamic_item([dataset], audio_pipeline)
        keys.append("sig")
    for branch in cached_branches:
        sb.dataio.dataset.add_dynamic_item(
            [dataset], lambda utt, b=branch: cache.get(utt, b), takes="id", provides=f"{branch}_states"
        )
        keys.append(f"{branch}_states")
    sb.dataio.dataset.set_output_keys([dataset], keys)
    return dataset
