"""Checks and writing shared by every recipe's data preparation.

Each candidate utterance is checked (audio readable, long enough for the speech
encoder, transcript non-empty, label known). The policy decides what a bad one
does: ``error`` stops with every problem listed by utterance and file; ``skip``
leaves it out, lists it in ``M.skipped`` beside the manifest ``M`` (``write_skipped``),
logs the first ``LOGGED_SKIPS`` and prints how many were skipped and why. What reading a
usable one converts (channels, sample rate, control characters) is counted and
printed (docs/bad_input.md).
"""

import codecs
import csv
import json
import logging
import math
import os
import re
import sys
import unicodedata
from collections import Counter

import numpy as np
import soundfile as sf

from crab.cli import UserError
from crab.fileio import make_dirs, write_text_atomic
from crab.locking import beside_lock

logger = logging.getLogger(__name__)

POLICIES = ("error", "skip")
# WavLM / HuBERT / wav2vec 2.0 need 400 samples (25 ms) for one output frame.
MIN_SAMPLES = 400
# Sample rates outside this range are bad input, not audio to resample: below 4 kHz
# the speech band is gone (telephone audio is 8 kHz), above 384 kHz no recording
# format goes (DXD is 352.8 kHz); such a header is a corrupt or mislabelled file.
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 4000, 384000
# Float audio lies within [-1, 1] (integer PCM is read scaled into it); a little
# overshoot is normal (inter-sample peaks, float mixes), 1000 (+60 dBFS) is not: such
# a file is mis-scaled (integer values stored as float) or garbage, and its
# features would be meaningless (or overflow to infinity in the encoder).
MAX_PEAK = 1e3
# Peak amplitude at or below which audio counts as silent (about -80 dBFS, 3 LSB at
# 16 bit). Silence is bad input everywhere (data prep, training reading, inference):
# it carries no speech, crab-infer refuses to classify it, so training or scoring on
# it would teach and measure a case the deployed classifier never sees.
SILENCE_PEAK = 1e-4
# With a skipped list (``M.skipped``), the log names the first skipped utterances only:
# a large corpus can skip thousands.
LOGGED_SKIPS = 10
SKIPPED = ".skipped"
SKIPPED_HEADER = ("utt", "kind", "message")
# what a field of a tab-separated line cannot hold: a tab, a line break (Unicode's too),
# another control character, and the backslash that escapes them
_TSV_SPECIAL = re.compile(r"[\\\x00-\x1f\x7f-\x9f\u2028\u2029]")
_TSV_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}


class DataPrepError(UserError, RuntimeError):
    """Data preparation found utterances it cannot use."""


def is_piped(value):
    """Is a ``wav.scp`` value a piped command (Kaldi's extended filename ``<utt> cmd |``)?"""
    return value.rstrip().endswith("|")


def csv_records(reader, path):
    """``(first line, last line, record)`` of each record of the ``csv.reader`` ``reader`` of
    ``path``: a record spans lines where a quote is left open (or a field holds a line
    break). One the csv module refuses is a ``DataPrepError`` naming its first line."""
    end = reader.line_num
    while True:
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            raise DataPrepError(
                f"{path}:{end + 1}: the row that starts here does not parse ({err}): a quote left open?"
            ) from None
        first, end = end + 1, reader.line_num
        yield first, end, record


def read_text(path):
    """A text file's content, decoded as UTF-8 with a leading byte-order mark removed.

    A line with bytes that are not UTF-8 (corpus releases mix encodings) is read as
    Windows-1252, with a warning naming the file and line (``decode``).
    """
    with open(path, "rb") as f:
        return decode(f.read(), path)


def decode(data, path, fallback="cp1252", first_line=1):
    """``data`` (bytes of ``path`` from line ``first_line`` on) as text: the one decoding
    function of every reader (``read_text``, ``crab.datadir``'s Kaldi-table reader).

    UTF-8, a leading byte-order mark dropped (at the start of the file only). Bytes
    that are not UTF-8: each line holding some is decoded in ``fallback`` (the
    other lines stay UTF-8: a file can mix both), with a warning naming the file,
    the first bad byte's line and column and how many lines; or (``fallback=None``)
    a ``DataPrepError`` naming them.
    """
    if first_line == 1 and data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + first_line
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        where = f"{path}:{line}:{column}: byte 0x{data[err.start]:02x} is not UTF-8"
        if fallback is None:
            raise DataPrepError(
                f"{where}; convert the file to UTF-8 (e.g. iconv -f cp1252 -t utf-8)"
            ) from None
        lines, bad = data.split(b"\n"), 0
        for i, line in enumerate(lines):
            try:
                lines[i] = line.decode("utf-8")
            except UnicodeDecodeError:
                lines[i] = line.decode(fallback, errors="replace")
                bad += 1
        print(f"WARNING: {where}; {bad} line(s) of the file read as {fallback}", file=sys.stderr)
        return "\n".join(lines)


def classes_problem(classes):
    """Why ``classes`` (the labels, in the model's output order) cannot be used, or None: a label
    given twice (the label encoder would keep one, and every class after it would be reported
    under its neighbour's name), an empty one or one with spaces around it (``--classes
    "a,b,"``, ``"a, b"``: no table label is), or one that is not a string (an unquoted
    YAML ``--classes=[0,1]``)."""
    for label in classes:
        if not isinstance(label, str):  # no table label equals it: each utterance's would be unknown
            return (
                f"label {label!r} was read as {type(label).__name__}, not text (YAML reads an unquoted 0, "
                f"1.5, true or null so): quote each label, --classes=\"['0','1']\""
            )
        if not label.strip() or label != label.strip():
            return f"label {label!r} is empty or has spaces around it"
    twice = sorted({label for label in classes if list(classes).count(label) > 1})
    if twice:
        return f"label {twice[0]!r} is given twice: each class once, in the model's output order"
    return None


def rate_problem(rate, path):
    """``(kind, message)`` when ``rate`` (Hz) is outside the usable range, else None."""
    if MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        return None
    return "bad sample rate", (
        f"sample rate {rate} Hz outside {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz "
        f"(corrupt or mislabelled header): {path}"
    )


def peak_problem(peak, path, silence=True):
    """``(kind, message)`` when audio of peak amplitude ``peak`` (NaN when it holds a
    NaN) is unusable: non-finite, beyond ``MAX_PEAK`` or (``silence``) silent; else None."""
    if not math.isfinite(peak):
        return "non-finite samples", f"NaN or infinite samples in {path}"
    if peak > MAX_PEAK:
        return "amplitude out of range", (
            f"amplitude out of range (peak {peak:.3g} > {MAX_PEAK:g}; "
            f"audio should lie within [-1, 1]) in {path}"
        )
    if silence and peak <= SILENCE_PEAK:
        return "silent audio", f"silent audio (peak amplitude {peak:.2g} <= {SILENCE_PEAK:g}) in {path}"
    return None


def scan_samples(path):
    """Peak amplitude of ``path``'s mono mix (the mean of its channels, as training
    reads it), read block by block (``frame_blocks``); NaN as soon as a block holds a NaN
    or infinity."""
    peak = 0.0
    with sf.SoundFile(path) as f:
        for block in frame_blocks(f, None, "float32"):
            block_peak = float(np.max(np.abs(block.mean(axis=1))))
            if not math.isfinite(block_peak):
                return float("nan")
            peak = max(peak, block_peak)
    return peak


class PeakCache:
    """Peak amplitudes (``scan_samples``) of the audio files read before, kept in a JSON file
    by path with the size and modification time each had: stage 3 reads a file's samples once
    however many folds, splits and reruns list it, and again only once the file has changed
    (its size or time: a file rewritten in place with both kept, as ``rsync -a`` of the same
    audio does, is taken as unchanged). An unreadable cache is read as empty, with a warning.

    Stage 3 of several folds or experiments at once shares the file: ``save`` adds this
    process's peaks to what the file holds then, under a lock on it, so that none is lost."""

    VERSION = 1  # of what a peak is (scan_samples): a new one drops the old entries

    def __init__(self, path):
        self.path, self.scanned = os.fspath(path), {}
        self.entries = self._read("every audio file is read again")

    def _read(self, then):
        """The entries of the file (none when it is not there, or unreadable: said, with ``then``)."""
        try:
            with open(self.path, encoding="utf-8") as f:
                saved = json.load(f)
            if saved.get("version") == self.VERSION:
                return dict(saved["files"])
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as err:
            logger.warning("%s unreadable (%s): %s", self.path, err, then)
        return {}

    def peak(self, wav):
        """``scan_samples(wav)``, from the cache while the file is as it was."""
        stat = os.stat(wav)
        key, stamp = os.path.abspath(wav), [stat.st_size, stat.st_mtime_ns]
        entry = self.entries.get(key)
        if isinstance(entry, list) and entry[:2] == stamp:
            return float("nan") if entry[2] is None else entry[2]
        peak = scan_samples(wav)
        self.entries[key] = self.scanned[key] = stamp + [peak if math.isfinite(peak) else None]
        return peak

    def save(self):
        """Add the peaks read since the last save to the file (made when missing)."""
        if self.scanned:
            make_dirs(os.path.dirname(os.path.abspath(self.path)))
            with beside_lock(self.path, "audio peak cache", wait=True):
                self.entries = {**self._read("it is written again"), **self.scanned}
                write_text_atomic(self.path, json.dumps({"version": self.VERSION, "files": self.entries}))
            self.scanned = {}


def frame_blocks(sound_file, frames, dtype, block=1 << 20):
    """The next ``frames`` frames (None: to the end) of an open ``sf.SoundFile``, as 2-D
    arrays of at most ``block`` frames: memory follows the samples there, never the header's
    frame count, which a damaged header can put at billions (a FLAC's: ``sf.read`` would
    allocate hundreds of GB for it first)."""
    left = math.inf if frames is None else frames
    while left > 0:
        data = sound_file.read(int(min(block, left)), dtype=dtype, always_2d=True)
        if not len(data):
            return
        yield data
        left -= len(data)


def missing_file(path):
    """``missing audio file <path>``, saying what is there when something is that is not a
    regular file: a directory, or a FIFO, device or socket (never opened: a FIFO would block)."""
    if not os.path.exists(path):
        return f"missing audio file {path}"
    if os.path.isdir(path):
        return f"missing audio file {path}: it is a directory"
    return f"missing audio file {path}: it is a FIFO, device or socket, not a regular file (never opened)"


def probe_audio(path):
    """``(info, None)`` for an audio file soundfile can open, else ``(None, (kind, message))``."""
    if not os.path.isfile(path):
        if is_piped(path):  # never run
            return None, ("missing audio", f"a piped command, not an audio file (it is not run): {path}")
        return None, ("missing audio", missing_file(path))
    if os.path.getsize(path) == 0:
        return None, ("empty audio file", f"empty audio file (0 bytes) {path}")
    try:
        return sf.info(path), None
    except (RuntimeError, sf.LibsndfileError) as err:
        return None, ("unreadable audio", f"unreadable audio file {path} ({err})")


def _cp1252_of_c1():
    table = {}
    for code in range(0x80, 0xA0):
        try:
            table[code] = bytes([code]).decode("cp1252")
        except UnicodeDecodeError:  # 0x81, 0x8d, 0x8f, 0x90, 0x9d: undefined there
            pass
    return table


C1_AS_CP1252 = _cp1252_of_c1()


def clean_transcript(text):
    """``(text, n)``: ``text`` without its ``n`` control characters (Unicode Cc).

    A C1 control that Windows-1252 defines is the character it stands for there
    (U+0092 becomes ’, U+0085 …: Windows-1252 text once decoded as Latin-1, as
    some corpus releases were). Tab, CR, LF and the other whitespace controls
    become a space, the rest (NUL, ESC, DEL, ...) are dropped; then, if there
    were any, runs of spaces are collapsed and the ends stripped. A text without
    control characters is returned as it is. Data prep, the manifest reader and
    ``crab-infer`` apply it.
    """
    count = sum(unicodedata.category(ch) == "Cc" for ch in text)
    if not count:
        return text, 0
    text = text.translate(C1_AS_CP1252)
    text = "".join((" " if ch.isspace() else "") if unicodedata.category(ch) == "Cc" else ch for ch in text)
    return re.sub(" {2,}", " ", text).strip(), count


def check_utterance(
    utt,
    entry,
    classes,
    min_samples=MIN_SAMPLES,
    conversions=None,
    require_text=True,
    peaks=None,
):
    """Return ``(kind, message)`` saying why ``entry`` is unusable, or None.

    ``require_text=False`` (data for a speech-only model) keeps an empty transcript.

    The audio's header must give a rate within ``MIN_SAMPLE_RATE``-``MAX_SAMPLE_RATE``
    and enough samples; then (last, as the costliest check) its samples are read to find
    NaN or infinite ones (float WAVs can hold them), an amplitude beyond ``MAX_PEAK`` and
    digital silence (``SILENCE_PEAK``): what training reading and inference reject too;
    ``peaks`` (a ``PeakCache``) keeps what was read before.

    Cleans the transcript (``clean_transcript``) and fills in ``duration`` (s).
    For a usable entry, counts in ``conversions`` (a Counter) what reading it
    will convert: several channels (averaged), another sample rate (resampled
    to 16 kHz), control characters in the transcript (cleaned here).
    """
    wav = entry["wav"]  # None: a text-only entry, no audio to check (its duration is None)
    info, problem = probe_audio(wav) if wav is not None else (None, None)
    if problem:
        return problem
    problem = rate_problem(info.samplerate, wav) if info is not None else None
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
    if info is not None:
        try:
            problem = peak_problem(peaks.peak(wav) if peaks else scan_samples(wav), wav)
        except (RuntimeError, sf.LibsndfileError) as err:  # a header fine, the data not
            problem = ("unreadable audio", f"unreadable audio file {wav} ({err})")
        if problem:
            return problem
    entry["duration"] = None if info is None else round(info.frames / info.samplerate, 3)
    if conversions is not None:
        conversions.update(
            ([f"{info.channels} channels (averaged to mono)"] if info and info.channels > 1 else [])
            + ([f"{info.samplerate} Hz (resampled to 16 kHz)"] if info and info.samplerate != 16000 else [])
            + (["control characters in transcript (cleaned)"] if removed else [])
        )
    return None


def validate(
    entries,
    classes,
    policy="error",
    name="data",
    min_samples=MIN_SAMPLES,
    require_text=True,
    skipped_file=None,
    peaks=None,
):
    """Keep the usable entries of ``entries`` (utt -> dict) according to ``policy``
    (``require_text=False``: empty transcripts are usable, for speech-only models;
    ``peaks``: see ``check_utterance``).

    ``skipped_file`` (``skipped_list`` of the manifest to be written): once the entries
    pass (``error``: none bad; ``skip``), it lists the skipped ones, or is removed when
    none is (``write_skipped``), and the log names the first ``LOGGED_SKIPS`` of them and
    then the file; without it, the log names every one. A failing ``error`` leaves it as it
    was, beside the manifest it was written with."""
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got '{policy}'")
    kept, problems, conversions = {}, [], Counter()
    for utt, entry in entries.items():
        reason = check_utterance(utt, entry, classes, min_samples, conversions, require_text, peaks)
        if reason is None:
            kept[utt] = entry
        else:
            problems.append((utt, reason))
    if problems and policy == "error":
        listing = "\n".join(f"  {utt}: {message}" for utt, (_, message) in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        if len(problems) == len(entries) and all(kind == "missing audio" for _, (kind, _) in problems):
            advice = (  # skipping would leave nothing
                "None of its audio files is there: if the corpus moved, run data preparation "
                "(stage 1) again with its new path (db.sh)."
            )
        else:
            advice = "Fix them, or re-run with the skip policy to leave them out."
        raise DataPrepError(f"{name}: {len(problems)} bad utterance(s):\n{listing}{more}\n{advice}")
    if skipped_file is not None:
        write_skipped(skipped_file, problems)
    logged = problems if skipped_file is None else problems[:LOGGED_SKIPS]
    for utt, (_, message) in logged:
        logger.warning("%s: skipping %s: %s", name, utt, message)
    if len(logged) < len(problems):
        more = len(problems) - len(logged)
        logger.warning("%s: ... and %d more; all %d in %s", name, more, len(problems), skipped_file)
    elif problems and skipped_file is not None:
        logger.warning("%s: all %d listed in %s", name, len(problems), skipped_file)
    if problems:
        kinds = Counter(kind for _, (kind, _) in problems)
        print(f"{name}: skipped {len(problems)} of {len(entries)} utterances: {dict(kinds)}")
    if conversions:
        print(f"{name}: converted, of {len(kept)} kept utterances: {dict(conversions)}")
    return kept


def skipped_list(manifest):
    """The list of the utterances that data prep left out of ``manifest``: ``M.skipped``."""
    return os.fspath(manifest) + SKIPPED


def tsv_field(value):
    r"""``value`` as one field of a tab-separated line: a backslash, a tab, a line break or
    another control character is written as its backslash escape, so that no field holds a
    tab and no record spans two lines.

    >>> tsv_field("bad\theader\nin C:\\db\x1b")
    'bad\\theader\\nin C:\\\\db\\x1b'
    """
    return _TSV_SPECIAL.sub(lambda m: _TSV_ESCAPES.get(m[0]) or _code_escape(m[0]), str(value))


def _code_escape(ch):
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def write_skipped(path, problems):
    """Write ``problems`` (``(utt, (kind, message))`` of the skipped utterances) to ``path``,
    one tab-separated line each (``SKIPPED_HEADER``, each field through ``tsv_field``),
    replacing the file whole (``crab.fileio``); with no problems, remove an old one."""
    if not problems:
        if os.path.lexists(path):
            os.remove(path)
        return
    rows = [SKIPPED_HEADER] + [(utt, kind, message) for utt, (kind, message) in problems]
    make_dirs(os.path.dirname(os.path.abspath(path)))
    write_text_atomic(path, "".join("\t".join(tsv_field(f) for f in row) + "\n" for row in rows))


def write_manifest(entries, path, data_root):
    """Write a JSON manifest with ``data_root`` replaced by ``{data_root}``. Audio outside
    ``data_root`` keeps its absolute path, with a warning counting it and naming the first:
    such a manifest does not move with the corpus, and may read another corpus's files."""
    root = os.path.abspath(data_root).rstrip("/") + "/"
    portable, outside = {}, []
    for utt, entry in entries.items():
        entry = dict(entry)
        if entry["wav"] is not None:  # None: text-only
            wav = os.path.abspath(entry["wav"])
            if wav.startswith(root):
                entry["wav"] = "{data_root}/" + wav[len(root) :]
            else:
                entry["wav"] = wav
                outside.append(utt)
        portable[utt] = entry
    if outside:
        logger.warning(
            "%s: %d of %d utterances have audio outside --data_root %s (e.g. %s: %s); their absolute "
            "paths are kept, so the manifest does not follow the corpus if it moves",
            path,
            len(outside),
            len(entries),
            os.path.abspath(data_root),
            outside[0],
            portable[outside[0]]["wav"],
        )
    make_dirs(os.path.dirname(os.path.abspath(path)))
    write_text_atomic(path, json.dumps(portable, indent=2, ensure_ascii=False))


def missing_classes(entries, classes):
    """The labels of ``classes`` that no entry of ``entries`` (utt -> dict) has, in order."""
    present = {e["emo"] for e in entries.values()}
    return [c for c in classes if c not in present]


def count_table(splits, classes):
    """Per-split, per-class counts as printable text.

    ``splits``: ``{split name: {utt: {"emo": label, ...}}}`` (a manifest's entries, or
    any dict with an ``"emo"`` label per utterance). The total counts every utterance;
    labels not in ``classes`` (a typo, a case, a class left out) are counted in an
    ``other`` column (``(other)`` when a class is called other) and listed below the
    table, one line per split that has some.
    """
    counts = {name: Counter(e["emo"] for e in entries.values()) for name, entries in splits.items()}
    known = set(classes)
    others = {
        name: {k: n for k, n in sorted(c.items(), key=lambda kv: str(kv[0])) if k not in known}
        for name, c in counts.items()
    }
    other = "(other)" if "other" in known else "other"
    columns = list(classes) + ([other] if any(others.values()) else [])
    width = max(len(c) for c in columns + ["total"]) + 2
    lines = ["split".ljust(12) + "".join(c.rjust(width) for c in columns) + "total".rjust(width)]
    for name, c in counts.items():
        row = [c[label] for label in classes] + ([sum(others[name].values())] if other in columns else [])
        lines.append(name.ljust(12) + "".join(str(n).rjust(width) for n in row) + str(c.total()).rjust(width))
    for name, labels in others.items():
        if labels:
            listing = ", ".join(f"'{label}' {n}" for label, n in labels.items())
            lines.append(f"{name}: other labels (not in {list(classes)}): {listing}")
    return "\n".join(lines)
