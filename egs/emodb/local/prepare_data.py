"""Kaldi-style data dirs for EmoDB with speaker-independent folds.

Reads <corpus_dir>/wav/*.wav (labels, speakers and text codes come from the
file names), checks the per-class counts against the released corpus, and writes
<out_dir>/<fold>/{train,valid,test}/ for every fold.

Folds: the speakers in the order of SPEAKER_ORDER (--pairing balanced: five
male + female pairs) or of their ids (--pairing sorted: 03 08, 09 10, 11 12,
13 14, 15 16, 5 folds only); with K folds, fold i tests the i-th block of 10/K
speakers, validates on the next block (cyclically) and trains on the rest. A
fold is named after its test speakers (fold03_13, fold03_08, or fold03 with
K = 10), so runs with different K or pairings never share a directory.

    python local/prepare_data.py --corpus_dir /data/emodb --out_dir data \\
        [--num_folds 5] [--pairing balanced|sorted] [--check_counts false]
"""

import argparse
import os
import re
import sys
from collections import Counter

import soundfile as sf
from emodb_facts import CLASSES, EMOTIONS, EXPECTED_COUNTS, SENTENCES, SPEAKER_GENDER

from crab import cli
from crab.datadir import check_fold, write_data_dir
from crab.dataprep import DataPrepError, count_table

NAME = re.compile(r"(\d{2})([a-z]\d{2})([A-Z])([a-z])\.wav")
MAX_LISTED = 20
# Male + female pairs (03 13, 10 16, 11 09, 12 14, 15 08): of the 120 ways to pair
# the five men with the five women, the one whose smallest class count in any
# pair is largest (5; pairing by sorted id gives a pair 03 08 with one disgust
# utterance); ties broken by the most even pair sizes (98 to 114 utterances),
# then by the largest sum over pairs of each pair's smallest class count.
SPEAKER_ORDER = ["03", "13", "10", "16", "11", "09", "12", "14", "15", "08"]
# --pairing: the speaker order whose consecutive blocks are the folds. "sorted" is
# the pairing of the CPU baselines of RESULTS.md (2026-11-24) (not gender-balanced: 11 12 are both male,
# 13 14 both female; 03 08 has one disgust utterance).
PAIRINGS = {"balanced": SPEAKER_ORDER, "sorted": sorted(SPEAKER_ORDER)}


def parse_name(name):
    """Speaker, text code, label and version of an EmoDB file name.

    Raises ValueError saying what is wrong with the name.
    """
    match = NAME.fullmatch(name)
    if match is None:
        raise ValueError("not an EmoDB file name (speaker, text code, emotion, version: e.g. 03a01Fa.wav)")
    spk, code, letter, version = match.groups()
    if spk not in SPEAKER_GENDER:
        raise ValueError(f"unknown speaker '{spk}' (EmoDB has {' '.join(sorted(SPEAKER_GENDER))})")
    if code not in SENTENCES:
        raise ValueError(f"unknown text code '{code}' (EmoDB has {' '.join(sorted(SENTENCES))})")
    if letter not in EMOTIONS:
        raise ValueError(f"unknown emotion letter '{letter}' (EmoDB has {''.join(EMOTIONS)})")
    return {"spk": spk, "code": code, "emo": EMOTIONS[letter], "version": version}


def read_utterance(wav_dir, name):
    """One utterance's fields, with the audio's sample rate (any rate is accepted)."""
    row = parse_name(name)
    path = os.path.abspath(os.path.join(wav_dir, name))
    try:
        info = sf.info(path)
    except (RuntimeError, sf.LibsndfileError) as err:
        raise ValueError(f"unreadable audio ({err})") from None
    row.update(
        utt=name[: -len(".wav")],
        wav=path,
        gender=SPEAKER_GENDER[row["spk"]],
        text=SENTENCES[row["code"]],
        sample_rate=info.samplerate,
    )
    return row


def scan_corpus(corpus_dir):
    """All utterances under <corpus_dir>/wav, or DataPrepError listing every bad file."""
    wav_dir = os.path.join(corpus_dir, "wav")
    if not os.path.isdir(wav_dir):
        raise DataPrepError(f"no directory {wav_dir}: --data_root must be the EmoDB folder holding wav/")
    rows, problems, hidden = [], [], 0
    for name in sorted(os.listdir(wav_dir)):
        if name.startswith("."):  # e.g. macOS ._03a01Fa.wav left by unzipping
            hidden += 1
            continue
        try:
            rows.append(read_utterance(wav_dir, name))
        except ValueError as err:
            problems.append(f"  {os.path.join(wav_dir, name)}: {err}")
    if problems:
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise DataPrepError(
            f"{len(problems)} bad file(s) in {wav_dir}:\n" + "\n".join(problems[:MAX_LISTED]) + more
        )
    if hidden:
        print(f"ignored {hidden} hidden file(s) in {wav_dir}")
    missing = sorted(set(SPEAKER_GENDER) - {r["spk"] for r in rows})
    if missing:
        raise DataPrepError(
            f"{wav_dir}: no files of speaker(s) {' '.join(missing)}; every fold needs its speakers"
        )
    return rows


def check_counts(rows, where):
    """Stop unless the per-class counts are those of the released corpus."""
    found = Counter(r["emo"] for r in rows)
    differ = [f"  {c}: expected {n}, found {found[c]}" for c, n in EXPECTED_COUNTS.items() if found[c] != n]
    if differ:
        raise DataPrepError(
            f"{where}: {len(rows)} utterances, expected {sum(EXPECTED_COUNTS.values())}; per class:\n"
            + "\n".join(differ)
            + "\nIs the copy complete? (--check_counts false skips this check)"
        )


def make_folds(num_folds, pairing="balanced"):
    """``[(name, test, valid, train)]`` speaker lists; each speaker is tested in one fold."""
    if len(SPEAKER_ORDER) % num_folds or num_folds < 3:
        raise DataPrepError(
            f"--num_folds {num_folds}: it must divide the {len(SPEAKER_ORDER)} speakers and leave a training "
            "block besides the test and validation blocks, i.e. 5 or 10"
        )
    # 10 sorted folds would reuse the names fold03 ... of the balanced ones with other validation speakers
    if pairing != "balanced" and num_folds != 5:
        raise DataPrepError(
            f"--pairing {pairing} is for the 5 folds of speaker pairs; "
            "--num_folds 10 (one speaker per fold) takes the default pairing"
        )
    order = PAIRINGS[pairing]
    size = len(order) // num_folds
    blocks = [sorted(order[i * size : (i + 1) * size]) for i in range(num_folds)]
    folds = []
    for i, test in enumerate(blocks):
        valid = blocks[(i + 1) % num_folds]
        train = sorted(set(order) - set(test) - set(valid))
        folds.append(("fold" + "_".join(test), test, valid, train))
    return folds


TABLES = {
    "wav.scp": "wav",
    "text": "text",
    "utt2emo": "emo",
    "utt2spk": "spk",
    "utt2gender": "gender",
    "utt2sample_rate": "sample_rate",
}


def by_utt(rows):
    """Rows keyed by utterance id, as count_table wants them."""
    return {r["utt"]: r for r in rows}


@cli.entry_point  # a write error (a file where --out_dir goes) is one line
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus_dir", required=True, help="EmoDB folder holding wav/")
    parser.add_argument("--out_dir", required=True)
    parser.add_argument("--num_folds", type=int, default=5, help="5 (speaker pairs) or 10 (single speakers)")
    parser.add_argument(
        "--pairing",
        choices=sorted(PAIRINGS),
        default="balanced",
        help="speaker pairs of the 5 folds: balanced (male + female, default) or sorted (by id)",
    )
    parser.add_argument(
        "--check_counts",
        choices=("true", "false"),
        default="true",
        help="stop unless the per-class counts are the released corpus's",
    )
    args = parser.parse_args(argv)
    try:
        folds = make_folds(args.num_folds, args.pairing)
        rows = scan_corpus(args.corpus_dir)
        if args.check_counts == "true":
            check_counts(rows, os.path.join(args.corpus_dir, "wav"))
    except DataPrepError as err:
        sys.exit(f"ERROR: {err}")
    rates = Counter(r["sample_rate"] for r in rows)
    print(
        "sample rates (Hz: files): "
        + ", ".join(f"{r}: {n}" for r, n in sorted(rates.items()))
        + " (read as 16 kHz mono in training)"
    )
    print(count_table({"emodb": by_utt(rows)}, CLASSES))
    for name, test, valid, train in folds:
        splits = {
            split: [r for r in rows if r["spk"] in speakers]
            for split, speakers in (("train", train), ("valid", valid), ("test", test))
        }
        try:
            check_fold(
                {split: {r["utt"]: r["spk"] for r in split_rows} for split, split_rows in splits.items()},
                [r["utt"] for r in rows],
                name,
            )
        except DataPrepError as err:
            sys.exit(f"ERROR: {err}")
        for split, split_rows in splits.items():
            write_data_dir(
                os.path.join(args.out_dir, name, split),
                {table: {r["utt"]: r[field] for r in split_rows} for table, field in TABLES.items()},
            )
        print(f"{name}: test {' '.join(test)} | valid {' '.join(valid)} | train {' '.join(train)}")
        print(count_table({split: by_utt(r) for split, r in splits.items()}, CLASSES))


if __name__ == "__main__":
    main()
