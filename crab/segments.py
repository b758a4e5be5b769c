"""Kaldi ``segments``: utterances that are spans of recordings, written to audio files of
their own (``crab.bin.cut_segments``), so that crab-infer and data prep, which read one
audio file per utterance, can use a segmented data directory.

A ``segments`` line is ``<utt-id> <recording-id> <start> <end>`` in seconds, the
recording being a line of ``wav.scp``; an end of -1 is the end of the recording, and an
end up to ``MAX_OVERSHOOT`` seconds past it is cut there (as Kaldi's extract-segments).
"""

import collections
import os

import numpy as np
import soundfile as sf

from crab.datadir import Failure, parse_wav_scp, read_table, table_lines
from crab.dataprep import DataPrepError, frame_blocks
from crab.fileio import WriteError, make_dirs, write_atomic, write_text_atomic

MAX_OVERSHOOT = 0.5  # seconds an end may pass the recording's end
Segment = collections.namedtuple("Segment", ["utt", "recording", "start", "end", "line"])


def read_segments(path):
    """The ``Segment``s of a segments file, and a ``Failure`` for each line that cannot be
    used (it does not parse, times that are not numbers or end before they start, an
    utterance id given twice)."""
    segments, failures, seen = [], [], {}
    for line in table_lines(path):
        if line.error:
            raise line.error
        fields = line.value.split()
        try:
            start, end = float(fields[1]), float(fields[2])
            ok = len(fields) == 3 and 0 <= start and (end == -1 or end > start)
        except (IndexError, ValueError):
            ok = False
        if not ok:
            reason = "expected '<utt-id> <recording-id> <start> <end>', seconds, 0 <= start < end (or -1)"
            failures.append(Failure(line.utt, line.lineno, reason))
        elif line.utt in seen:
            failures.append(
                Failure(line.utt, line.lineno, f"duplicate utterance id (first on line {seen[line.utt]})")
            )
        else:
            seen[line.utt] = line.lineno
            segments.append(Segment(line.utt, fields[0], start, end, line.lineno))
    return segments, failures


def _span(segment, info):
    """``(first frame, frame after the last)`` of ``segment`` in a recording (``sf.info``), or
    a reason it has none."""
    duration = info.frames / info.samplerate
    end = duration if segment.end == -1 else segment.end
    if segment.start >= duration:
        return None, f"starts at {segment.start:g} s, after the recording's end ({duration:g} s)"
    if end > duration + MAX_OVERSHOOT:
        return (
            None,
            f"ends at {end:g} s, more than {MAX_OVERSHOOT:g} s after the recording's end ({duration:g} s)",
        )
    return (round(segment.start * info.samplerate), min(round(end * info.samplerate), info.frames)), None


def _read_span(recording, span, info):
    """``(samples, rate, WAV subtype)`` of the frames ``span`` of ``recording``: its sample format
    where WAV holds it (else 32-bit float)."""
    with sf.SoundFile(recording) as f:
        f.seek(span[0])
        parts = list(frame_blocks(f, span[1] - span[0], "float64"))
    data = np.concatenate(parts) if parts else np.zeros((0, info.channels))
    return data, info.samplerate, info.subtype if sf.check_format("WAV", info.subtype) else "FLOAT"


def _write_wav(path, data, rate, subtype):
    try:
        write_atomic(path, lambda tmp: sf.write(tmp, data, rate, subtype=subtype, format="WAV"))
    except sf.LibsndfileError as err:  # libsndfile's write errors (a full disk) are no OSError
        raise WriteError.of(path, err, "it is left as it was") from err


def _locate(segment, paths, unusable, infos):
    """``(recording path, its sf.info, frame span, None)`` of ``segment``, or ``(None, None,
    None, reason)`` it cannot be cut; ``infos`` caches each recording's info (or why it has none)."""
    path = paths.get(segment.recording)
    if segment.recording in unusable or path is None:
        why = unusable.get(segment.recording, f"recording '{segment.recording}' is not in wav.scp")
        return None, None, None, why
    if segment.recording not in infos and not os.path.isfile(path):  # a FIFO would block sf.info
        what = (
            "not a regular file: a directory, FIFO or device, not opened"
            if os.path.exists(path)
            else "no such file"
        )
        infos[segment.recording] = f"recording {path} cannot be read ({what})"
    if segment.recording not in infos:
        try:
            infos[segment.recording] = sf.info(path)
        except (OSError, RuntimeError, sf.LibsndfileError) as err:
            infos[segment.recording] = f"recording {path} cannot be read ({str(err).splitlines()[0]})"
    info = infos[segment.recording]
    if isinstance(info, str):
        return None, None, None, info
    span, reason = _span(segment, info)
    return (path, info, span, None) if span else (None, None, None, reason)


def cut_segments(data_dir, out_dir, audio_dir=None):
    """Write each segment of the Kaldi data directory ``data_dir`` (``wav.scp`` of recordings,
    ``segments``) to ``<audio_dir>/<utt>.wav`` (default ``<out_dir>/audio``), and ``out_dir``
    as a data directory of those files: ``wav.scp`` and the utterance tables of ``data_dir``
    (``text``, ``utt2*``) for the utterances written. Returns ``(written, failures)``: how many,
    and a ``Failure`` per segment that could not be cut (it is left out), also listed in
    ``<out_dir>/segments.errors``."""
    if os.path.realpath(out_dir) == os.path.realpath(data_dir):
        raise DataPrepError(f"{out_dir}: write the cut data directory elsewhere than {data_dir} itself")
    segments, failures = read_segments(os.path.join(data_dir, "segments"))
    recordings, bad_lines = parse_wav_scp(os.path.join(data_dir, "wav.scp"))
    paths = {r.utt: r.path for r in recordings}
    unusable = {f.utt: f"wav.scp line {f.line}: {f.reason}" for f in bad_lines}
    audio_dir = audio_dir or os.path.join(out_dir, "audio")
    sources = {os.path.realpath(p) for p in paths.values()}
    for segment in segments:  # a segment named as its recording, cut beside it, would replace it
        wav = os.path.join(audio_dir, f"{segment.utt}.wav")
        if os.path.realpath(wav) in sources:
            raise DataPrepError(
                f"{wav}, segment '{segment.utt}' (segments line {segment.line}), would replace a recording "
                f"of {os.path.join(data_dir, 'wav.scp')}: write the cut audio elsewhere (another --audio_dir)"
            )
    make_dirs(audio_dir)
    make_dirs(out_dir)
    done, infos = {}, {}
    for segment in segments:
        path, info, span, reason = _locate(segment, paths, unusable, infos)
        if "/" in segment.utt or segment.utt.startswith("."):
            reason = "the utterance id cannot name a file (a '/' in it, or a leading '.')"
        if reason:
            failures.append(Failure(segment.utt, segment.line, reason))
            continue
        wav = os.path.join(audio_dir, f"{segment.utt}.wav")
        try:
            data, rate, subtype = _read_span(path, span, info)
        except (OSError, RuntimeError, sf.LibsndfileError) as err:
            failures.append(
                Failure(segment.utt, segment.line, f"cannot cut {path}: {str(err).splitlines()[0]}")
            )
            continue
        # not a segment's failure: a full disk stops here, the tables of an earlier cut left whole
        try:
            _write_wav(wav, data, rate, subtype)
        except WriteError as err:
            raise WriteError(
                err.errno,
                f"{err}; the wavs cut before it are this cut's, the tables still an earlier one's: "
                "cut again once there is room",
            ) from err
        done[segment.utt] = os.path.abspath(wav)
    _write_tables(data_dir, out_dir, done)
    errors = os.path.join(out_dir, "segments.errors")
    if failures:
        write_text_atomic(errors, "".join(f"{f.utt}\t{f.line}\t{f.reason}\n" for f in failures))
    elif os.path.exists(errors):
        os.remove(errors)
    return len(done), failures


def _write_tables(data_dir, out_dir, done):
    """``out_dir/wav.scp`` of the cut utterances ``done``, and ``data_dir``'s utterance tables
    (``text``, ``utt2*``) for them."""
    write_text_atomic(os.path.join(out_dir, "wav.scp"), "".join(f"{u} {p}\n" for u, p in done.items()))
    for name in sorted(os.listdir(data_dir)):
        if name == "text" or name.startswith("utt2"):
            table = read_table(os.path.join(data_dir, name))
            lines = (f"{u} {table[u]}".rstrip() + "\n" for u in done if u in table)
            write_text_atomic(os.path.join(out_dir, name), "".join(lines))
