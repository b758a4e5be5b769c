"""Kaldi-style data dirs for MELD's official split, from the release's CSVs.

<out_dir>/{train,valid,test} from train / dev / test_sent_emo.csv (dev is the
validation set). One utterance per CSV row, id <split>_dia<D>_utt<U>:
text = Utterance (whitespace collapsed; mojibake repaired unless --fix_mojibake
false), emo = Emotion, spk = Speaker (spaces -> _), plus sentiment, dialogue and
episode (S<season>E<episode>). Audio: <wav_dir>/<split>/dia<D>_utt<U>.wav (stage 0).

Every row is written, except the clips on the exclusion list; a missing wav is
counted here and left to stage 3 (an error, or with --policy skip a counted skip).
With --text_only true there is no audio: no wav.scp is written, and the exclusion
list, which names clips with broken audio, is not applied (every row is kept).

    python local/prepare_data.py --meld_root MELD.Raw --wav_dir data/wav16k --out_dir data/official
"""

import argparse
import os
from collections import Counter

from meld import CLASSES, EXPECTED_COUNTS, SPLITS, MeldError, fail, locate, read_exclusions, read_split

from crab import cli
from crab.cli import str2bool
from crab.datadir import check_fold, write_data_dir
from crab.dataprep import DataPrepError, count_table

DATA_SPLIT = {"train": "train", "dev": "valid", "test": "test"}  # MELD split -> data dir
TABLES = {  # Kaldi table -> value of a row (wav.scp is added by tables())
    "text": lambda r: r.text,
    "utt2emo": lambda r: r.emotion,
    "utt2spk": lambda r: r.speaker,
    "utt2sentiment": lambda r: r.sentiment,
    "utt2dialogue": lambda r: r.dialogue,
    "utt2episode": lambda r: f"S{r.season:02d}E{r.episode:02d}",
}


def by_utt(rows):
    return {r.utt: {"emo": r.emotion} for r in rows}


def check_counts(rows, meld_root):
    """Stop, naming expected and found counts, unless every split has the official ones."""
    problems = []
    for split, split_rows in rows.items():
        found = Counter(r.emotion for r in split_rows)
        if dict(found) == EXPECTED_COUNTS[split]:
            continue
        expected = EXPECTED_COUNTS[split]
        lines = [f"  {c:9s} expected {expected[c]:5d}, found {found[c]:5d}" for c in CLASSES]
        lines.append(f"  {'total':9s} expected {sum(expected.values()):5d}, found {len(split_rows):5d}")
        problems.append(f"{locate(meld_root, SPLITS[split][0])}:\n" + "\n".join(lines))
    if problems:
        fail(
            "per-class counts differ from the official MELD CSVs':\n" + "\n".join(problems) + "\n"
            "Is this the official MELD.Raw release? For a partial copy, run stage 1 with "
            "--data_opts '--check_counts false'."
        )


def apply_exclusions(rows, excluded, source):
    """Drop the excluded clips, saying which and why; warn about entries matching no row."""
    kept, dropped = {}, []
    for split, split_rows in rows.items():
        kept[split] = [r for r in split_rows if (split, r.clip) not in excluded]
        dropped += [r for r in split_rows if (split, r.clip) in excluded]
    print(f"Exclusion list {source}: {len(dropped)} clip(s) left out")
    for r in dropped:
        print(f"  {r.split} {r.clip} ({r.emotion}): {excluded[(r.split, r.clip)]}")
    unmatched = sorted(set(excluded) - {(r.split, r.clip) for r in dropped})
    for split, clip in unmatched:
        print(f"WARNING: {source}: {split} {clip} is not in {SPLITS[split][0]}")
    return kept


def wav_path(wav_dir, row):
    return os.path.join(os.path.abspath(wav_dir), row.split, row.clip + ".wav")


def tables(rows, wav_dir):
    """The Kaldi tables of ``rows``; ``wav_dir`` None: text only, no wav.scp (an old one is removed)."""
    values = {name: {r.utt: value(r) for r in rows} for name, value in TABLES.items()}
    return {"wav.scp": None if wav_dir is None else {r.utt: wav_path(wav_dir, r) for r in rows}, **values}


@cli.entry_point  # a write error (a file where --out_dir goes) is one line
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--meld_root", required=True, help="MELD.Raw, holding the *_sent_emo.csv files")
    parser.add_argument(
        "--wav_dir",
        required=True,
        help="stage 0's <wav_dir>/{train,dev,test}/*.wav (not read with --text_only true)",
    )
    parser.add_argument("--out_dir", required=True)
    parser.add_argument("--exclude", default="none", help="clips to leave out (none: no list)")
    parser.add_argument(
        "--check_counts",
        type=str2bool,
        default=True,
        help="stop unless the CSVs have the official per-class counts (true|false)",
    )
    parser.add_argument(
        "--fix_mojibake",
        type=str2bool,
        default=True,
        help="repair UTF-8 text that was read as Windows-1252 (true|false)",
    )
    parser.add_argument(
        "--text_only",
        type=str2bool,
        default=False,
        help="true: no audio: no wav.scp, exclusion list not applied (true|false)",
    )
    args = parser.parse_args(argv)
    try:
        excluded = read_exclusions(args.exclude)
        rows = {split: read_split(args.meld_root, split, args.fix_mojibake) for split in SPLITS}
    except MeldError as err:
        fail(str(err))

    print("Rows of the CSVs:")
    print(count_table({split: by_utt(r) for split, r in rows.items()}, CLASSES))
    if args.check_counts:
        check_counts(rows, args.meld_root)
    repaired = sum(r.repaired for split_rows in rows.values() for r in split_rows)
    print(f"Repaired mojibake in {repaired} row(s)" if args.fix_mojibake else "Mojibake repair off")
    if args.text_only:
        print(
            f"Text only: no audio, no wav.scp; the exclusion list {args.exclude} (clips with broken audio) "
            "is not applied"
        )
    else:
        rows = apply_exclusions(rows, excluded, args.exclude)

    wav_dir = None if args.text_only else args.wav_dir
    try:  # TV characters recur across the official splits: not speaker-independent
        check_fold(
            {split: {r.utt: r.speaker for r in split_rows} for split, split_rows in rows.items()},
            name="MELD's official splits",
            speaker_independent=False,
        )
    except DataPrepError as err:
        fail(str(err))
    for split, split_rows in rows.items():
        write_data_dir(os.path.join(args.out_dir, DATA_SPLIT[split]), tables(split_rows, wav_dir))
        missing = 0 if args.text_only else sum(not os.path.isfile(wav_path(wav_dir, r)) for r in split_rows)
        if missing:
            print(
                f"WARNING: {split}: {missing} of {len(split_rows)} clip(s) have no wav in "
                f"{os.path.join(args.wav_dir, split)}: stage 3 stops on them (--policy skip leaves them out)"
            )
    speakers = {split: {r.speaker for r in split_rows} for split, split_rows in rows.items()}
    shared = speakers["train"] & speakers["test"]
    print(
        f"Speakers: train {len(speakers['train'])}, dev {len(speakers['dev'])}, "
        f"test {len(speakers['test'])}; "
        f"{len(shared)} speak in both train and test (TV characters recur: not speaker-independent)"
    )
    print(f"Data dirs in {args.out_dir} (valid = dev):")
    print(count_table({DATA_SPLIT[split]: by_utt(r) for split, r in rows.items()}, CLASSES))


if __name__ == "__main__":
    main()
