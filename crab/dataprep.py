"""Checks and writing shared by every recipe's data preparation.

Each candidate utterance is checked (audio readable, long enough for the speech
encoder, transcript non-empty, label known). The policy decides what a bad one
does: ``error`` stops with every problem listed by utterance and file; ``skip``
leaves it out, logs it, and prints how many were skipped and why. What reading a
usable one converts (channels, sample rate, control characters) is counted and
printed (README, "Bad input").
"""

import json
import logging
import os
import re
import sys
import unicodedata
from collections import Counter

import soundfile as sf

from crab.cli import UserError

logger = logging.getLogger(__name__)

POLICIES = ("error", "skip")
# WavLM / HuBERT / wav2vec 2.0 need 400 samples (25 ms) for one output frame.
MIN_SAMPLES = 400


def read_text(path):
    """A corpus text file's content: UTF-8 (BOM allowed), else Windows-1252 with a warning.

    Corpus releases mix encodings; a wrong guess is printed, never silent.
    """
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        print(f"WARNING: {path} is not UTF-8 ({err}); read as Windows-1252", file=sys.stderr)
        return data.decode("cp1252", errors="replace")


class DataPrepError(UserError, RuntimeError):
    """Data preparation found utterances it cannot use."""


def probe_audio(path):
    """``(info, None)`` for an audio file soundfile can open, else ``(None, (kind, message))``."""
    if not os.path.isfile(path):
        return None, ("missing audio", f"missing audio file {path}")
    if os.path.getsize(path) == 0:
        return None, ("empty audio file", f"empty audio file (0 bytes) {path}")
    try:
        return sf.info(path), None
    except (RuntimeError, sf.LibsndfileError) as err:
        return None, ("unreadable audio", f"unreadable audio file {path} ({err})")


def clean_transcript(text):
    """``(text, n)``: ``text`` without its ``n`` control characters (Unicode Cc).

    Tab, CR, LF and the other whitespace controls become a space, the rest
    (NUL, ESC, DEL, ...) are dropped; then, if there were any, runs of spaces
    are collapsed and the ends stripped. A text without control characters is
    returned as it is. Data prep and the manifest reader both apply it.
    """
    count = sum(unicodedata.category(ch) == "Cc" for ch in text)
    if not count:
        return text, 0
    text = "".join((" " if ch.isspace() else "") if unicodedata.category(ch) == "Cc" else ch for ch in text)
    return re.sub(" {2,}", " ", text).strip(), count


def check_utterance(utt, entry, classes, min_samples=MIN_SAMPLES, conversions=None, require_text=True):
    """Return ``(kind, message)`` saying why ``entry`` is unusable, or None.

    ``require_text=False`` (data for a speech-only model) keeps an empty transcript.

    Cleans the transcript (``clean_transcript``) and fills in ``duration`` (s).
    For a usable entry, counts in ``conversions`` (a Counter) what reading it
    will convert: several channels (averaged), another sample rate (resampled
    to 16 kHz), control characters in the transcript (cleaned here).
    """
    wav = entry["wav"]  # None: a text-only entry, no audio to check (its duration is None)
    info, problem = probe_audio(wav) if wav is not None else (None, None)
    if problem:
        return problem
    if info is not None and info.frames * 16000 < min_samples * info.samplerate:
        return "audio too short", (
            f"audio too short for the speech encoder ({info.frames} samples at "
            f"{info.samplerate} Hz, need {min_samples} at 16 kHz): {wav}"
        )
    entry["text"], removed = clean_transcript(str(entry.get("text", "")))
    if require_text and not entry["text"].strip():
        return "empty transcript", f"empty transcript for {wav or utt}"
    if entry.get("emo") not in classes:
        return "unknown label", f"label '{entry.get('emo')}' of {wav or utt} not in {list(classes)}"
    entry["duration"] = None if info is None else round(info.frames / info.samplerate, 3)
    if conversions is not None:
        conversions.update(
            ([f"{info.channels} channels (averaged to mono)"] if info and info.channels > 1 else [])
            + ([f"{info.samplerate} Hz (resampled to 16 kHz)"] if info and info.samplerate != 16000 else [])
            + (["control characters in transcript (cleaned)"] if removed else [])
        )
    return None


def validate(entries, classes, policy="error", name="data", min_samples=MIN_SAMPLES, require_text=True):
    """Keep the usable entries of ``entries`` (utt -> dict) according to ``policy``
    (``require_text=False``: empty transcripts are usable, for speech-only models)."""
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got '{policy}'")
    kept, problems, conversions = {}, [], Counter()
    for utt, entry in entries.items():
        reason = check_utterance(utt, entry, classes, min_samples, conversions, require_text)
        if reason is None:
            kept[utt] = entry
        else:
            problems.append((utt, reason))
    if problems and policy == "error":
        listing = "\n".join(f"  {utt}: {message}" for utt, (_, message) in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise DataPrepError(
            f"{name}: {len(problems)} bad utterance(s):\n{listing}{more}\n"
            "Fix them, or re-run with the skip policy to leave them out."
        )
    for utt, (_, message) in problems:
        logger.warning("%s: skipping %s: %s", name, utt, message)
    if problems:
        kinds = Counter(kind for _, (kind, _) in problems)
        print(f"{name}: skipped {len(problems)} of {len(entries)} utterances: {dict(kinds)}")
    if conversions:
        print(f"{name}: converted, of {len(kept)} kept utterances: {dict(conversions)}")
    return kept


def write_manifest(entries, path, data_root):
    """Write a JSON manifest with ``data_root`` replaced by ``{data_root}``."""
    root = os.path.abspath(data_root).rstrip("/") + "/"
    portable = {}
    for utt, entry in entries.items():
        entry = dict(entry)
        if entry["wav"] is not None:  # None: text-only
            wav = os.path.abspath(entry["wav"])
            entry["wav"] = "{data_root}/" + wav[len(root):] if wav.startswith(root) else wav
        portable[utt] = entry
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(portable, f, indent=2, ensure_ascii=False)
    os.replace(tmp, path)


def count_table(splits, classes):
    """Per-split, per-class counts as printable text (``splits``: name -> entries)."""
    width = max(len(c) for c in list(classes) + ["total"]) + 2
    lines = ["split".ljust(12) + "".join(c.rjust(width) for c in classes) + "total".rjust(width)]
    for name, entries in splits.items():
        counts = Counter(e["emo"] for e in entries.values())
        row = [counts[c] for c in classes]
        lines.append(name.ljust(12) + "".join(str(n).rjust(width) for n in row) + str(sum(row)).rjust(width))
    return "\n".join(lines)
