"""Kaldi-style data directories for the generated mini corpus.

Speaker-independent split: each speaker is in exactly one of train / valid / test.

    python local/prepare_data.py --corpus_dir data/corpus --out_dir data \\
        --valid_speakers spk05 --test_speakers spk06
"""

import argparse
import csv
import os
import sys

from crab import cli
from crab.datadir import check_fold, write_data_dir
from crab.dataprep import DataPrepError

FIELDS = ("utt_id", "speaker", "gender", "emotion", "text", "wav")


def read_metadata(corpus_dir):
    path = os.path.join(corpus_dir, "metadata.csv")
    if not os.path.isfile(path):
        sys.exit(f"ERROR: {path} not found: run stage 0 (corpus generation) first")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in FIELDS if c not in (reader.fieldnames or [])]
        if missing:
            sys.exit(f"ERROR: {path}: missing column(s) {missing}")
        return list(reader)


def tables(rows, corpus_dir):
    """The Kaldi tables of ``rows`` (``crab.datadir.write_data_dir``)."""
    values = {
        "wav.scp": lambda r: os.path.abspath(os.path.join(corpus_dir, r["wav"])),
        "text": lambda r: r["text"],
        "utt2emo": lambda r: r["emotion"],
        "utt2spk": lambda r: r["speaker"],
        "utt2gender": lambda r: r["gender"],
    }
    return {name: {r["utt_id"]: value(r) for r in rows} for name, value in values.items()}


@cli.entry_point  # a write error (a file where --out_dir goes) is one line
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus_dir", required=True)
    parser.add_argument("--out_dir", required=True)
    parser.add_argument("--valid_speakers", default="spk05", help="comma-separated")
    parser.add_argument("--test_speakers", default="spk06", help="comma-separated")
    args = parser.parse_args(argv)
    rows = read_metadata(args.corpus_dir)
    valid, test = set(args.valid_speakers.split(",")), set(args.test_speakers.split(","))
    speakers = {r["speaker"] for r in rows}
    for name, chosen in (("valid", valid), ("test", test)):
        if not chosen <= speakers:
            sys.exit(
                f"ERROR: --{name}_speakers {sorted(chosen - speakers)} not in the corpus {sorted(speakers)}"
            )
    if valid & test:
        sys.exit(f"ERROR: speakers {sorted(valid & test)} are in both valid and test")
    splits = {
        "train": [r for r in rows if r["speaker"] not in valid | test],
        "valid": [r for r in rows if r["speaker"] in valid],
        "test": [r for r in rows if r["speaker"] in test],
    }
    try:
        check_fold(
            {name: {r["utt_id"]: r["speaker"] for r in split_rows} for name, split_rows in splits.items()},
            [r["utt_id"] for r in rows],
            args.out_dir,
        )
    except DataPrepError as err:
        sys.exit(f"ERROR: {err}")
    for name, split_rows in splits.items():
        write_data_dir(os.path.join(args.out_dir, name), tables(split_rows, args.corpus_dir))
        spk = sorted({r["speaker"] for r in split_rows})
        print(f"{name}: {len(split_rows)} utterances, speakers {','.join(spk)}")


if __name__ == "__main__":
    main()
