"""Kaldi-style data directories: one table reader, one writer, one fold validator.

A data directory holds ``wav.scp`` (utt path), ``text`` (utt transcript),
``utt2emo``, ``utt2spk`` and any other ``utt2<field>`` table, one ``utt value``
line per utterance, UTF-8, sorted by utterance id. Every recipe's data prep
writes them with ``write_data_dir`` and checks its folds with ``check_fold``;
stage 2 (``crab.bin.transcribe``), stage 3 (``crab.bin.make_manifest``) and
``crab-infer`` read them through ``table_lines``, each with its own policy for a
bad line (``read_table``: stop; ``parse_wav_scp``: fail that utterance;
``read_transcripts``: drop a line cut off by an interrupted write).
"""

import functools
import glob
import logging
import os
from collections import namedtuple

from crab.dataprep import DataPrepError, clean_transcript, decode, is_piped
from crab.fileio import WriteError, commit, make_dirs, stage, write_text_atomic
from crab.locking import folder_lock

logger = logging.getLogger(__name__)

TableLine = namedtuple("TableLine", ["lineno", "utt", "value", "error", "ended"])
TableLine.__doc__ = """One line of a Kaldi table: ``utt`` and the rest of the line, stripped
(``value``); ``error`` a ``DataPrepError`` naming the file, line and column when the line is
not UTF-8 (``utt`` and ``value`` are then None); ``ended``: the line ends in a newline."""

Utterance = namedtuple("Utterance", ["utt", "path", "line"])
Failure = namedtuple("Failure", ["utt", "line", "reason"])

TEXT_FILES = {"gold": "text", "asr": "text.asr"}
# an empty speaker would be one speaker shared by every utterance without one, in every split
NO_SPEAKER = "no speaker: give it one (an unknown speaker is, as in Kaldi, the utterance id itself)"
NO_VALUE = {"utt2spk": NO_SPEAKER}  # the tables whose values may not be empty, and the error
WRITING = ".writing"  # in a data directory while write_data_dir replaces its tables
DATA_DIR = "data directory"  # what folder_lock calls it in messages


def table_lines(path):
    """The non-blank lines of the Kaldi table ``path``, as ``TableLine``s.

    Lines end at LF only: a stray CR inside a transcript is a control character, not a
    line break. A leading byte-order mark is dropped (``crab.dataprep.decode``)."""
    with open(path, "rb") as f:
        parts = f.read().split(b"\n")
    lines = []
    for lineno, raw in enumerate(parts, 1):
        ended = lineno < len(parts)
        try:
            line = decode(raw, path, fallback=None, first_line=lineno)
        except DataPrepError as err:
            lines.append(TableLine(lineno, None, None, err, ended))
            continue
        if line.strip():
            utt, value = (line.split(maxsplit=1) + [""])[:2]
            lines.append(TableLine(lineno, utt, value.strip(), None, ended))
    return lines


def read_table(path, required=True, no_value=None):
    """``utt value`` lines to a dict; the value is the rest of the line.

    UTF-8 (a leading byte-order mark is dropped); other bytes, or an utterance given
    twice, are a ``DataPrepError`` naming the file and line. A missing file is one too
    (``required``) or an empty table. With ``no_value`` (``NO_VALUE``), so is a line with the
    utterance id alone: ``<path>:<line>: utterance '<utt>' has <no_value>``.
    """
    table = {}
    if not os.path.isfile(path):
        if required:
            raise DataPrepError(f"missing {path}")
        return table
    for line in table_lines(path):
        if line.error:
            raise line.error
        if line.utt in table:
            raise DataPrepError(f"{path}:{line.lineno}: duplicate utterance id '{line.utt}'")
        if no_value and not line.value:
            raise DataPrepError(f"{path}:{line.lineno}: utterance '{line.utt}' has {no_value}")
        table[line.utt] = line.value
    return table


def tables_read(data_dir, text_source="gold", text_only=False):
    """The files of ``data_dir`` that ``read_data_dir`` reads, those that exist."""
    names = ["utt2emo" if text_only else "wav.scp", TEXT_FILES[text_source]]
    names += [os.path.basename(p) for p in glob.glob(os.path.join(glob.escape(data_dir), "utt2*"))]
    return sorted({n for n in names if os.path.isfile(os.path.join(data_dir, n))})


def read_data_dir(data_dir, text_source="gold", text_only=False):
    """Entries keyed by the utterances of ``wav.scp``; every ``utt2*`` table must cover
    them, and no table may hold another (a missing transcript is an empty one).

    ``text_source`` picks the transcripts: ``text`` (gold) or ``text.asr``.
    ``text_only``: keyed by the utterances of ``utt2emo`` instead, each ``wav`` None.
    A directory that ``write_data_dir`` did not finish (``WRITING``) is refused: its
    tables may be a mix of old and new ones.
    """
    if os.path.exists(os.path.join(data_dir, "segments")):
        raise DataPrepError(
            f"{data_dir}/segments: its utterances are spans of the recordings of wav.scp, and a "
            f"manifest lists one audio file per utterance: cut them first (python -m "
            f"crab.bin.cut_segments --data_dir {data_dir} --out_dir DIR) and prepare DIR"
        )
    if os.path.exists(os.path.join(data_dir, WRITING)):
        _wait_for_writer(data_dir)
    if os.path.exists(os.path.join(data_dir, WRITING)):
        raise DataPrepError(
            f"{data_dir}: data prep stopped while writing its tables ({WRITING} is there), which may "
            "be a mix of old and new ones: run data prep (stage 1) again"
        )
    if text_only:
        wavs = dict.fromkeys(read_table(os.path.join(data_dir, "utt2emo")))
    else:
        wavs = read_table(os.path.join(data_dir, "wav.scp"))
    text_file = os.path.join(data_dir, TEXT_FILES[text_source])
    if text_source == "asr" and not os.path.isfile(text_file):
        raise DataPrepError(f"missing {text_file}: run the transcription stage (--asr_model) first")
    tables = {"text": read_table(text_file, required=False)}
    for path in sorted(glob.glob(os.path.join(data_dir, "utt2*"))):
        tables[os.path.basename(path)[len("utt2") :]] = read_table(
            path, no_value=NO_VALUE.get(os.path.basename(path))
        )
    for field in ("emo", "spk"):
        if field not in tables:
            raise DataPrepError(f"{data_dir}: missing utt2{field}")
    entries = {}
    for utt, wav in wavs.items():
        entry = {"wav": wav}
        for field, table in tables.items():
            if field != "text" and utt not in table:
                raise DataPrepError(f"{data_dir}/utt2{field}: no entry for utterance '{utt}'")
            entry[field] = table.get(utt, "")
        entries[utt] = entry
    for field, table in tables.items():
        extra = sorted(set(table) - set(wavs))
        if extra:
            name = TEXT_FILES[text_source] if field == "text" else f"utt2{field}"
            listing = "utt2emo" if text_only else "wav.scp"
            raise DataPrepError(
                f"{data_dir}/{name}: utterances not in {listing}, e.g. '{extra[0]}' ({len(extra)} in all)"
            )
    return entries


def parse_wav_scp(path):
    """Utterances of ``path`` (``Utterance``) and the lines that cannot be used
    (``Failure``, with their line number): for a run that fails utterances, not itself."""
    utterances, failures, seen = [], [], {}
    for line in table_lines(path):
        if line.error:
            failures.append(Failure("-", line.lineno, "line is not UTF-8 text"))
        elif not line.value:
            failures.append(
                Failure(line.utt, line.lineno, "line does not parse: expected '<utt-id> <audio path>'")
            )
        elif is_piped(line.value):
            failures.append(
                Failure(
                    line.utt,
                    line.lineno,
                    "piped commands (Kaldi extended filenames) are not supported: write the audio to files",
                )
            )
        elif line.utt in seen:
            failures.append(
                Failure(line.utt, line.lineno, f"duplicate utterance id (first on line {seen[line.utt]})")
            )
        else:
            seen[line.utt] = line.lineno
            utterances.append(Utterance(line.utt, line.value, line.lineno))
    return utterances, failures


def read_texts(path):
    """``utt -> transcript`` of a Kaldi text file, cleaned as data prep cleans it
    (``clean_transcript``: no control characters, whitespace collapsed); ids given twice
    map to None (ambiguous: the utterance fails, not the run). Non-UTF-8 bytes are a
    ``DataPrepError`` naming the file and line."""
    texts = {}
    for line in table_lines(path):
        if line.error:
            raise line.error
        text = " ".join(clean_transcript(line.value)[0].split())
        texts[line.utt] = None if line.utt in texts else text
    return texts


def read_transcripts(path):
    """Transcripts already in ``path`` (utt -> text), as an interrupted writer left them.

    A cut-off last line (no newline, or cut inside a UTF-8 character) is dropped with
    a warning, and so transcribed again; invalid UTF-8 before it is a ``DataPrepError``
    naming the file and line."""
    if not os.path.isfile(path):
        return {}
    lines = table_lines(path)
    done = {}
    with open(path, "rb") as f:
        data = f.read()
    last_complete = None if not data.endswith(b"\n") else data.count(b"\n")  # None: a cut-off line follows
    for line in lines:
        if not line.ended:
            logger.warning(
                "%s:%d: the last line is cut off (an interrupted write): dropped, transcribed again",
                path,
                line.lineno,
            )
        elif line.error and line.lineno == last_complete:
            logger.warning(
                "%s:%d: the last line is not UTF-8 (an interrupted write): dropped, transcribed again",
                path,
                line.lineno,
            )
        elif line.error:
            raise DataPrepError(
                f"{path}:{line.lineno}: not UTF-8 text (a damaged file): repair or delete that "
                "line, or pass --overwrite true"
            )
        else:
            done[line.utt] = line.value
    return done


def write_data_dir(out_dir, tables):
    """Write the Kaldi tables ``{name: {utt: value}}`` into ``out_dir``: one ``utt value``
    line per utterance, sorted by utterance id, UTF-8 (an empty value gives ``utt``).
    A table given as None is absent: an old file of that name is removed. Two writers of
    one directory at once (two experiments' stage 1) take turns: ``out_dir/.lock``.

    A kill leaves the old tables or a directory that ``read_data_dir`` refuses: every
    table is written to a temporary file first, and only once all are on disk are the
    old ones replaced, while a marker file (``WRITING``) says so.

    An utterance id that is empty or holds whitespace, or a value that holds a line break,
    would not read back as written (a table line is ``utt value``, one per line): a
    ``DataPrepError`` naming the table and the utterance, before anything is written."""
    for name, rows in tables.items():
        if rows is not None:
            _check_table(os.path.join(out_dir, name), rows)
    make_dirs(out_dir)
    with folder_lock(out_dir, DATA_DIR, wait=True):
        _replace_tables(out_dir, tables)


def _replace_tables(out_dir, tables):
    """``write_data_dir``'s writes, under its lock."""
    staged = stage(
        (os.path.join(out_dir, name), functools.partial(_write_table, rows))
        for name, rows in tables.items()
        if rows is not None
    )
    marker = os.path.join(out_dir, WRITING)
    write_text_atomic(marker, "data prep is writing these tables: if it is not running, run it again\n")
    for name, rows in tables.items():
        if rows is None and os.path.exists(os.path.join(out_dir, name)):
            os.remove(os.path.join(out_dir, name))
    commit(staged)  # the removals are flushed to disk with the renames
    os.remove(marker)


def _wait_for_writer(data_dir):
    """Wait for a ``write_data_dir`` of ``data_dir`` still running in another process (stage 1 of
    another experiment); one that was killed leaves its marker, which the caller refuses. A folder
    that cannot be locked (read-only) has no writer."""
    try:
        with folder_lock(data_dir, DATA_DIR, wait=True):
            pass
    except WriteError:
        pass


def _check_table(path, rows):
    for utt in rows:
        if f"{utt}".split() != [f"{utt}"]:
            raise DataPrepError(
                f"{path}: utterance id {utt!r} is empty or holds whitespace: a Kaldi table's "
                "first word is the id (replace the whitespace, e.g. by '_')"
            )
        if "\n" in f"{rows[utt]}":
            raise DataPrepError(
                f"{path}: the value of utterance '{utt}' holds a line break, {rows[utt]!r}: "
                "each utterance is one line (join its lines, e.g. ' '.join(value.split()))"
            )


def _write_table(rows, path):
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(f"{utt} {rows[utt]}".rstrip() + "\n" for utt in sorted(rows))


def check_fold(splits, utterances=None, name="fold", speaker_independent=True):
    """Check one fold: ``splits`` is ``{split: {utt: speaker}}``.

    Every utterance has a speaker and is in exactly one split, and (``utterances`` given)
    every one of ``utterances`` is in one; with ``speaker_independent``, no speaker is in
    two splits. A failure is a ``DataPrepError`` naming the fold, the splits and an
    example. Returns ``{(split_a, split_b): speakers in both}`` for the pairs of
    splits that share speakers (empty when speaker-independent), for a recipe to note.
    """
    for split, speakers in splits.items():
        unknown = [utt for utt, speaker in speakers.items() if not str(speaker or "").strip()]
        if unknown:
            raise DataPrepError(f"{name}: utterance '{unknown[0]}' of {split} has {NO_SPEAKER}")
    names = list(splits)
    shared = {}
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            both = set(splits[first]) & set(splits[second])
            if both:
                raise DataPrepError(
                    f"{name}: {len(both)} utterance(s) in both {first} and {second}, e.g. '{sorted(both)[0]}'"
                )
            speakers = set(splits[first].values()) & set(splits[second].values())
            if speakers and speaker_independent:
                raise DataPrepError(
                    f"{name}: speaker(s) {sorted(speakers)[:5]} in both {first} and {second}: "
                    "the fold is not speaker-independent"
                )
            if speakers:
                shared[first, second] = speakers
    if utterances is not None:
        placed = set().union(*map(set, splits.values())) if splits else set()
        left = sorted(set(utterances) - placed)
        if left:
            raise DataPrepError(f"{name}: {len(left)} utterance(s) in no split, e.g. '{left[0]}'")
        foreign = sorted(placed - set(utterances))
        if foreign:
            raise DataPrepError(
                f"{name}: {len(foreign)} utterance(s) in a split but not in the corpus, e.g. '{foreign[0]}'"
            )
    return shared
