"""Kaldi-style data dirs for MSP-Podcast: eight classes, the official partitions.

Reads <corpus_dir>/Labels/labels_consensus.csv (columns FileName, EmoClass, SpkrID,
Gender and, in releases 1.11 and 2.0, Split_Set; the other columns are not used), the
audio <corpus_dir>/Audios/<FileName> and the gold transcripts
<corpus_dir>/Transcripts/<name>.txt where they exist. Writes
<out_dir>/{train,valid,test1,test2}/ with wav.scp, text (gold, empty where there is
none), utt2emo, utt2spk, utt2gender, utt2partition.

    python local/prepare_data.py --corpus_dir MSP-PODCAST-Publish-2.0 --out_dir data/official

Partitions come from the Split_Set column; releases without it ship Partitions.txt
(``Train; MSP-PODCAST_0023_0048.wav`` lines), read when the column is absent or
given with --partitions. Train -> train, Development (older: Validation) -> valid,
Test1 -> test1, Test2 -> test2; Test3 has no public labels and is left out.
EmoClass A C D F H N S U -> anger contempt disgust fear happiness neutral sadness
surprise; O (other) and X (no agreement) are left out and counted.
"""

import argparse
import csv
import io
import os
import sys
from collections import Counter, defaultdict

from crab import cli
from crab.datadir import check_fold, write_data_dir
from crab.dataprep import C1_AS_CP1252, DataPrepError, count_table, csv_records, read_text

CLASS_OF = {
    "A": "anger",
    "C": "contempt",
    "D": "disgust",
    "F": "fear",
    "H": "happiness",
    "N": "neutral",
    "S": "sadness",
    "U": "surprise",
}
CLASSES = tuple(CLASS_OF.values())
DROPPED = {"O": "other", "X": "no agreement"}
SPLIT_OF = {
    "train": "train",
    "development": "valid",
    "validation": "valid",
    "test1": "test1",
    "test2": "test2",
}
HIDDEN_SPLITS = {"test3"}  # labels not public: scored online
SPLITS = ("train", "valid", "test1", "test2")
LABEL_FILES = ("labels_consensus.csv", "labels_concensus.csv")  # early releases spell it so
PARTITION_FILES = ("Partitions.txt", "Partition.txt")
UNKNOWN = "Unknown"
TABLES = {  # Kaldi table -> row field
    "wav.scp": "wav",
    "text": "text",
    "utt2emo": "emo",
    "utt2spk": "spk",
    "utt2gender": "gender",
    "utt2partition": "partition",
}


def fail(message):
    sys.exit(f"ERROR: {message}")


def need_file(option, path):
    if not os.path.isfile(path):
        where = "" if os.path.isabs(path) else f" in {os.getcwd()} (--data_opts paths: from the recipe)"
        fail(f"{option} {path}: no such file{where}")


def find_labels(corpus_dir, labels):
    if labels:
        need_file("--labels", labels)
        return labels
    for name in LABEL_FILES:
        path = os.path.join(corpus_dir, "Labels", name)
        if os.path.isfile(path):
            return path
    fail(
        f"no {os.path.join(corpus_dir, 'Labels', LABEL_FILES[0])}: is {corpus_dir} the MSP-Podcast "
        "directory (with Audios/ and Labels/)? Another labels file can be given with --labels"
    )


def read_labels(path):
    """Column names and rows of the consensus labels CSV (each row with its file:line)."""
    required = ["FileName", "EmoClass", "SpkrID", "Gender"]
    # lines end at CR and LF only (str.splitlines also breaks at U+0085, U+2028 ...)
    reader = csv.reader(io.StringIO(read_text(path), newline=""))
    records = csv_records(reader, path)
    found = [c.strip() for c in next(records, (1, 1, []))[2]]
    missing = [c for c in required if c not in found]
    if missing:
        fail(f"{path}: missing column(s) {missing}; found {found}. Label files differ between releases")
    rows, lines = [], {}
    for first, end, values in records:
        if not values:  # a blank line
            continue
        where = f"{path}:{first}" + (f"-{end}" if end > first else "")
        if len(values) != len(found):  # a cut or damaged row: its columns would shift or read as empty
            fail(f"{where}: {len(values)} field(s), the header has {len(found)}")
        row = dict(zip(found, (v.strip() for v in values), strict=True))
        name = row["FileName"]
        if not name:
            fail(f"{where}: empty FileName")
        if len(name.split()) > 1:  # the utterance id: a Kaldi table's first word
            fail(f"{where}: FileName '{name}' holds whitespace, which an utterance id cannot")
        utt = wav_name(name)  # X and X.wav are one file, one utterance id
        if utt in lines:
            line, spelled = lines[utt]
            fail(f"{where}: {name} already on line {line}" + (f" (as {spelled})" if spelled != name else ""))
        lines[utt] = first, name
        row["line"] = where
        rows.append(row)
    if not rows:
        fail(f"{path}: no rows")
    return found, rows


def wav_name(name):
    return name if name.endswith(".wav") else name + ".wav"


def read_partitions(path):
    """FileName -> partition from a Partitions.txt (``Train; MSP-PODCAST_0023_0048.wav`` lines)."""
    partition_of = {}
    for lineno, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(";")]
        if len(fields) != 2 or not all(fields):
            fail(f"{path}:{lineno}: expected '<Partition>; <FileName>', got '{line.strip()}'")
        partition, name = fields[0], wav_name(fields[1])
        if name in partition_of:
            fail(f"{path}:{lineno}: {name} is in the file twice")
        partition_of[name] = partition
    return partition_of


def find_partitions(corpus_dir, partitions, labels, columns):
    """The Partitions.txt to use, or None for the labels' Split_Set column."""
    if partitions:
        need_file("--partitions", partitions)
        return partitions
    if "Split_Set" in columns:
        return None
    for name in PARTITION_FILES:
        path = os.path.join(corpus_dir, name)
        if os.path.isfile(path):
            return path
    fail(
        f"{labels} has no Split_Set column and there is no {corpus_dir}/{PARTITION_FILES[0]}: "
        "label files differ between releases; give the partition file with --partitions"
    )


def gold_text(path):
    """The transcript in ``path``, whitespace collapsed; "" when there is none. C1 controls
    first: U+0085 (a Windows-1252 ellipsis decoded as Latin-1) is whitespace to split()."""
    if not os.path.isfile(path):
        return ""
    return " ".join(read_text(path).translate(C1_AS_CP1252).split())


def select(rows, partition_of, audio_dir, transcript_dir, missing_audio):
    """Utterances per split, and what was left out, by reason."""
    splits, left_out, missing, labelled = defaultdict(list), Counter(), [], 0
    for row in rows:
        name = wav_name(row["FileName"])
        partition = partition_of(row, name)
        if partition is None:
            left_out["in no partition"] += 1
            continue
        if partition.lower() in HIDDEN_SPLITS:
            left_out[f"{partition} (labels not public)"] += 1
            continue
        if partition.lower() not in SPLIT_OF:
            fail(
                f"{row['line']}: unknown partition '{partition}' (expected one of Train, Development, "
                "Validation, Test1, Test2, Test3)"
            )
        split = SPLIT_OF[partition.lower()]
        code = row["EmoClass"]
        if code in DROPPED:
            left_out[f"{DROPPED[code]} ({code})"] += 1
            continue
        if code not in CLASS_OF:
            fail(
                f"{row['line']}: unknown EmoClass '{code}' "
                f"(expected one of {sorted(CLASS_OF) + sorted(DROPPED)})"
            )
        wav = os.path.join(audio_dir, name)
        labelled += 1
        if not os.path.isfile(wav):
            missing.append(wav)
            if missing_audio != "keep":
                continue
        utt = name[: -len(".wav")]
        transcript = os.path.join(transcript_dir, utt + ".txt")
        speaker = "_".join(row["SpkrID"].split())  # the releases write Unknown, or leave it empty
        known = speaker not in ("", UNKNOWN)
        splits[split].append(
            {
                "utt": utt,
                "wav": os.path.abspath(wav),
                "emo": CLASS_OF[code],
                "partition": partition,
                # an unannotated speaker is the segment's own (Kaldi's way): no two are one speaker
                "spk": speaker if known else utt,
                "known_spk": known,
                "gender": "_".join(row["Gender"].split()) or UNKNOWN,
                "text": gold_text(transcript),
            }
        )
    listing = "\n  ".join(missing[:10])
    if missing and len(missing) == labelled:
        fail(
            f"none of the {labelled} labelled audio files is in {audio_dir}, e.g.\n  {listing}\n"
            "Is --data_root (MSP_PODCAST in db.sh) the MSP-Podcast directory, and is Audios/ unpacked?"
        )
    if missing and missing_audio == "error":
        fail(
            f"{len(missing)} audio file(s) missing, e.g.\n  {listing}\n"
            "Fix the copy, or leave them out with --missing_audio skip "
            '(run.sh --data_opts "--missing_audio skip"), or to stage 3 with --missing_audio keep'
        )
    if missing and missing_audio == "skip":
        left_out["missing audio"] = len(missing)
    if missing and missing_audio == "keep":
        print(
            f"WARNING: {len(missing)} audio file(s) missing, e.g.\n  {listing}\n"
            "Stage 3 stops on them (--policy skip leaves them out and counts them)."
        )
    return splits, left_out


def partition_lookup(partitions_file):
    """How to find a row's partition: the Split_Set column, or the Partitions.txt entry."""
    if partitions_file is None:
        return lambda row, name: row["Split_Set"] or None
    partition_of = read_partitions(partitions_file)
    return lambda row, name: partition_of.get(name)


def read_expected_counts(path):
    """(split, class or 'total') -> count from ``split class count`` lines (# comments)."""
    expected = {}
    for lineno, line in enumerate(read_text(path).splitlines(), 1):
        fields = line.split("#")[0].split()
        if not fields:
            continue
        known = len(fields) == 3 and fields[0] in SPLITS and fields[1] in CLASSES + ("total",)
        if not (known and fields[2].isdigit()):
            fail(
                f"{path}:{lineno}: expected '<split> <class|total> <count>' with split in {SPLITS}, "
                f"got '{line.strip()}'"
            )
        expected[fields[0], fields[1]] = int(fields[2])
    return expected


def check_counts(splits, expected, path):
    differences = []
    for (split, name), count in sorted(expected.items()):
        entries = splits.get(split, [])
        found = len(entries) if name == "total" else sum(r["emo"] == name for r in entries)
        if found != count:
            differences.append(f"  {split} {name}: found {found}, expected {count}")
    if differences:
        fail(
            f"counts differ from {path} (another release, or an incomplete copy?):\n" + "\n".join(differences)
        )


def check_splits(splits):
    for split in SPLITS:
        if not splits.get(split):
            fail(
                f"no usable utterances in {split}: "
                "is the labels file complete (and the partition file, if any)?"
            )
    absent = [c for c in CLASSES if not any(r["emo"] == c for r in splits["train"])]
    if absent:
        fail(f"no training utterances of class(es) {absent}")


def known_speakers(rows):
    return {r["spk"] for r in rows if r["known_spk"]}


def report(splits, left_out):
    print(count_table({s: {r["utt"]: r for r in splits[s]} for s in SPLITS}, CLASSES))
    for split in SPLITS:
        rows = splits[split]
        unknown = sum(not r["known_spk"] for r in rows)
        gold = sum(bool(r["text"]) for r in rows)
        speakers = len(known_speakers(rows))
        print(
            f"{split}: {speakers} known speakers, {unknown} utterances of unknown speaker (kept), "
            f"{gold} of {len(rows)} with a gold transcript"
        )
    if left_out:
        print("left out: " + ", ".join(f"{reason} {n}" for reason, n in sorted(left_out.items())))
    train = known_speakers(splits["train"])
    for split in SPLITS[1:]:
        shared = train & known_speakers(splits[split])
        if shared:
            print(
                f"note: {len(shared)} known speaker(s) in both train and {split}, e.g. {sorted(shared)[:5]}"
            )


@cli.entry_point  # a write error (a file where --out_dir goes) is one line
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--corpus_dir", required=True, help="the MSP-Podcast directory, holding Audios/ and Labels/"
    )
    parser.add_argument("--out_dir", required=True, help="written as <out_dir>/{train,valid,test1,test2}")
    parser.add_argument(
        "--labels", default="", help="labels CSV (default: <corpus_dir>/Labels/labels_consensus.csv)"
    )
    parser.add_argument(
        "--partitions",
        default="",
        help="Partitions.txt-style file to use instead of the labels' Split_Set column",
    )
    parser.add_argument(
        "--expected_counts",
        default="none",
        help="file of '<split> <class|total> <count>' lines to check; none: only print the counts",
    )
    parser.add_argument(
        "--missing_audio",
        choices=("keep", "error", "skip"),
        default="keep",
        help="a labelled file missing from Audios/: keep (written, left to stage 3's --policy), "
        "error (stop here) or skip (left out here, counted)",
    )
    args = parser.parse_args(argv)
    if not os.path.isdir(args.corpus_dir):
        fail(f"{args.corpus_dir} is not a directory: set MSP_PODCAST in db.sh")
    labels = find_labels(args.corpus_dir, args.labels)
    try:
        columns, rows = read_labels(labels)
    except DataPrepError as err:  # a row that does not parse
        fail(str(err))
    partitions = find_partitions(args.corpus_dir, args.partitions, labels, columns)
    print(f"labels: {labels}; partitions: {partitions or 'Split_Set column'}")
    splits, left_out = select(
        rows,
        partition_lookup(partitions),
        os.path.join(args.corpus_dir, "Audios"),
        os.path.join(args.corpus_dir, "Transcripts"),
        args.missing_audio,
    )
    check_splits(splits)
    if args.expected_counts != "none":
        need_file("--expected_counts", args.expected_counts)
        check_counts(splits, read_expected_counts(args.expected_counts), args.expected_counts)
    try:  # the official partitions: speakers shared with train are noted (report), not refused
        check_fold(
            {split: {r["utt"]: r["spk"] for r in splits[split]} for split in SPLITS},
            name="MSP-Podcast's partitions",
            speaker_independent=False,
        )
    except DataPrepError as err:
        fail(str(err))
    for split in SPLITS:
        write_data_dir(
            os.path.join(args.out_dir, split),
            {table: {r["utt"]: r[field] for r in splits[split]} for table, field in TABLES.items()},
        )
    report(splits, left_out)


if __name__ == "__main__":
    main()
