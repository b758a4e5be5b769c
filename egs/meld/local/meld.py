"""What the MELD scripts share: the release layout, the CSV reader, the exclusion list.

MELD.Raw holds, per split, a CSV of labelled utterances and a folder of clips named
``dia{Dialogue_ID}_utt{Utterance_ID}.mp4``. Each file is looked for in MELD.Raw and,
failing that, one folder down (unpacking the split archives nests them, e.g.
MELD.Raw/train/train_splits/).
"""

import csv
import glob
import io
import os
import re
import sys
from dataclasses import dataclass

from crab.dataprep import C1_AS_CP1252, DataPrepError, csv_records, read_text

CLASSES = ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise")
# MELD split -> (label CSV, clip folder), as published.
SPLITS = {
    "train": ("train_sent_emo.csv", "train_splits"),
    "dev": ("dev_sent_emo.csv", "dev_splits_complete"),
    "test": ("test_sent_emo.csv", "output_repeated_splits_test"),
}
COLUMNS = (
    "Sr No.",
    "Utterance",
    "Speaker",
    "Emotion",
    "Sentiment",
    "Dialogue_ID",
    "Utterance_ID",
    "Season",
    "Episode",
    "StartTime",
    "EndTime",
)
# Rows per class of the official CSVs. train: the spec (the MELD paper's counts);
# dev and test: counted on the official CSVs (local/check_real_csvs.py).
EXPECTED_COUNTS = {
    "train": {
        "anger": 1109,
        "disgust": 271,
        "fear": 268,
        "joy": 1743,
        "neutral": 4710,
        "sadness": 683,
        "surprise": 1205,
    },
    "dev": {
        "anger": 153,
        "disgust": 22,
        "fear": 40,
        "joy": 163,
        "neutral": 470,
        "sadness": 111,
        "surprise": 150,
    },
    "test": {
        "anger": 345,
        "disgust": 68,
        "fear": 50,
        "joy": 402,
        "neutral": 1256,
        "sadness": 208,
        "surprise": 281,
    },
}
SENTIMENTS = ("negative", "neutral", "positive")
# A run of non-ASCII characters: where UTF-8 read as Windows-1252 leaves its marks (â€™).
NON_ASCII = re.compile(r"[^\x00-\x7f]+")


@dataclass
class Row:
    split: str  # train | dev | test
    clip: str  # dia<D>_utt<U>
    text: str
    speaker: str
    emotion: str
    sentiment: str
    season: int
    episode: int
    repaired: bool  # mojibake was repaired in Utterance or Speaker

    @property
    def utt(self):
        return f"{self.split}_{self.clip}"

    @property
    def dialogue(self):
        return f"{self.split}_{self.clip.split('_')[0]}"


class MeldError(RuntimeError):
    """The corpus or a list is not what the recipe expects."""


def fail(message):
    sys.exit(f"ERROR: {message}")


def locate(meld_root, name):
    """``meld_root/name``, else the single ``meld_root/*/name``."""
    direct = os.path.join(meld_root, name)
    if os.path.exists(direct):
        return direct
    nested = glob.glob(os.path.join(glob.escape(meld_root), "*", name))
    if len(nested) == 1:
        return nested[0]
    where = "several places: " + ", ".join(sorted(nested)) if nested else "it or one folder below"
    raise MeldError(f"{name} not found in {where} (MELD root '{meld_root}': is it MELD.Raw?)")


def _cp1252_byte(ch):
    """The byte a Windows-1252 reading turned into ``ch``. The five bytes with no
    Windows-1252 character (0x81 0x8d 0x8f 0x90 0x9d) come out as Latin-1 controls."""
    try:
        return ch.encode("cp1252")
    except UnicodeEncodeError:
        return ch.encode("latin-1")


def _unmangle(run):
    """Undo one UTF-8 -> Windows-1252 misreading of ``run``, or return it unchanged."""
    try:
        return b"".join(_cp1252_byte(ch) for ch in run).decode("utf-8")
    except UnicodeError:
        return run


def fix_mojibake(text):
    """Repair text whose UTF-8 was read as Windows-1252 (``itâ€™s`` -> ``it’s``).

    Each run of non-ASCII characters is repaired on its own, and only when its
    Windows-1252 bytes are valid UTF-8, so correct text (``it’s``, ``café``) is kept.
    """
    return NON_ASCII.sub(lambda m: _unmangle(m.group(0)), text)


def _integer(value, column, where):
    if not re.fullmatch(r"[0-9]+", value.strip()):
        raise MeldError(f"{where}: {column} '{value}' is not a non-negative integer")
    return int(value)


def parse_row(record, split, where, repair):
    """One CSV record (a dict of the columns) as a checked Row."""
    # Windows-1252 punctuation stored as C1 controls (U+0092 for ’) first: the repair
    # then sees the mojibake of Latin-1 copies (â\x80\x99) as that of Windows-1252 ones
    text, speaker = (record[k].translate(C1_AS_CP1252) for k in ("Utterance", "Speaker"))
    if repair:
        text, speaker = fix_mojibake(text), fix_mojibake(speaker)
    repaired = (text, speaker) != (record["Utterance"], record["Speaker"])
    text, speaker = " ".join(text.split()), "_".join(speaker.split())
    if not text:
        raise MeldError(f"{where}: empty Utterance")
    if not speaker:
        raise MeldError(f"{where}: empty Speaker")
    emotion, sentiment = record["Emotion"].strip(), record["Sentiment"].strip()
    if emotion not in CLASSES:
        raise MeldError(f"{where}: Emotion '{emotion}' is not one of {', '.join(CLASSES)}")
    if sentiment not in SENTIMENTS:
        raise MeldError(f"{where}: Sentiment '{sentiment}' is not one of {', '.join(SENTIMENTS)}")
    dialogue = _integer(record["Dialogue_ID"], "Dialogue_ID", where)
    utterance = _integer(record["Utterance_ID"], "Utterance_ID", where)
    return Row(
        split=split,
        clip=f"dia{dialogue}_utt{utterance}",
        text=text,
        speaker=speaker,
        emotion=emotion,
        sentiment=sentiment,
        season=_integer(record["Season"], "Season", where),
        episode=_integer(record["Episode"], "Episode", where),
        repaired=repaired,
    )


def records(reader, path):
    """``crab.dataprep.csv_records``, a row that does not parse as a ``MeldError``."""
    try:
        yield from csv_records(reader, path)
    except DataPrepError as err:
        raise MeldError(str(err)) from None


def read_split(meld_root, split, repair=True):
    """The checked rows of one split's CSV, in file order."""
    path = locate(meld_root, SPLITS[split][0])
    reader = csv.reader(io.StringIO(read_text(path), newline=""))
    header = next(reader, None)
    if header is None or tuple(h.strip() for h in header) != COLUMNS:
        raise MeldError(f"{path}:1: header is {header}, expected {list(COLUMNS)}")
    rows, seen = [], {}
    for first, end, record in records(reader, path):
        where = f"{path}:{first}" + (f"-{end}" if end > first else "")
        if not any(field.strip() for field in record):
            continue
        if len(record) != len(COLUMNS):
            hint = "a quote left open?" if end > first else "an unquoted comma?"
            raise MeldError(f"{where}: {len(record)} fields, expected {len(COLUMNS)} ({hint})")
        row = parse_row(dict(zip(COLUMNS, record, strict=True)), split, where, repair)
        if row.clip in seen:
            raise MeldError(f"{where}: {row.clip} is already on line {seen[row.clip]}")
        seen[row.clip] = first
        rows.append(row)
    return rows


def read_exclusions(path):
    """``(split, clip) -> reason`` from an exclusion list (``none`` or empty: no list).

    Lines read ``<split> <clip>  # reason``; blank and comment-only lines are skipped. An
    edited list may have a byte-order mark, CRLF line ends or Windows-1252 bytes (``read_text``).
    """
    if path in ("", "none"):
        return {}
    if not os.path.isfile(path):
        raise MeldError(f"exclusion list {path} not found (--exclude none for no list)")
    excluded = {}
    for lineno, line in enumerate(read_text(path).split("\n"), 1):
        entry, _, reason = line.partition("#")
        fields = entry.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[0] not in SPLITS or not re.fullmatch(r"dia\d+_utt\d+", fields[1]):
            raise MeldError(
                f"{path}:{lineno}: expected '<train|dev|test> dia<D>_utt<U>  # reason', got {line.strip()!r}"
            )
        excluded[(fields[0], fields[1])] = reason.strip()
    return excluded
