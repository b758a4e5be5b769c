"""Check the MELD data preparation on the official CSVs, without the audio.

Writes a tiny wav (a quiet tone: silence is bad input) for every CSV row into a
temporary dir, runs stage 1 (local/data.sh, with the official count check on) and the
stage-3 manifest checks (crab.dataprep.validate, as crab.bin.make_manifest) on it, then
compares each split's per-class counts with the official ones less the exclusion list.
Exits 1 on any difference. With --text_only, stages 1 and 3 run text-only (no
placeholder wavs; the exclusion list is not applied, so the counts are the official ones).

    python local/check_real_csvs.py /path/to/MELD.Raw [--text_only]    # a dir with the three CSVs
"""

import argparse
import io
import os
import subprocess
import sys
import tempfile
from collections import Counter

import numpy as np
import soundfile as sf
from meld import CLASSES, EXPECTED_COUNTS, SPLITS, read_exclusions, read_split
from prepare_data import DATA_SPLIT

from crab import cli
from crab.datadir import read_data_dir
from crab.dataprep import validate

RECIPE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def placeholder_wav_bytes(seconds=0.1):
    """A 220 Hz tone at -20 dBFS, 16 kHz 16-bit: audio that data prep accepts."""
    tone = 0.1 * np.sin(2 * np.pi * 220 * np.arange(int(16000 * seconds)) / 16000)
    buffer = io.BytesIO()
    sf.write(buffer, tone, 16000, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def write_placeholders(csv_dir, wav_dir):
    """A placeholder wav for every CSV row, where stage 0 would put the real one."""
    audio = placeholder_wav_bytes()
    for split in SPLITS:
        os.makedirs(os.path.join(wav_dir, split))
        for row in read_split(csv_dir, split, repair=False):
            with open(os.path.join(wav_dir, split, row.clip + ".wav"), "wb") as f:
                f.write(audio)


def expected_after_exclusion(csv_dir, excluded):
    """Official per-class counts less the excluded clips' labels."""
    expected = {}
    for split in SPLITS:
        counts = Counter(EXPECTED_COUNTS[split])
        counts.subtract(
            r.emotion for r in read_split(csv_dir, split, repair=False) if (split, r.clip) in excluded
        )
        expected[DATA_SPLIT[split]] = counts
    return expected


@cli.entry_point
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("csv_dir", help="directory holding train/dev/test_sent_emo.csv (e.g. MELD.Raw)")
    parser.add_argument("--exclude", default="local/exclude.txt", help="as in stage 1 (none: no list)")
    parser.add_argument("--text_only", action="store_true", help="check the text-only data prep (no audio)")
    args = parser.parse_args(argv)
    csv_dir, exclude, text_only = os.path.abspath(args.csv_dir), args.exclude, str(args.text_only).lower()
    os.chdir(RECIPE)
    with tempfile.TemporaryDirectory() as tmp:
        wav_dir, data_dir = os.path.join(tmp, "wav"), os.path.join(tmp, "data")
        if not args.text_only:
            write_placeholders(csv_dir, wav_dir)
        subprocess.run(
            [
                "bash",
                "local/data.sh",
                "--meld_root",
                csv_dir,
                "--data_root",
                wav_dir,
                "--data_dir",
                data_dir,
                "--exclude",
                exclude,
                "--text_only",
                text_only,
            ],
            check=True,
        )
        found = {}
        for split in DATA_SPLIT.values():
            entries = read_data_dir(os.path.join(data_dir, "official", split), text_only=args.text_only)
            kept = validate(entries, CLASSES, name=split)
            found[split] = Counter(entry["emo"] for entry in kept.values())
    expected = expected_after_exclusion(csv_dir, {} if args.text_only else read_exclusions(exclude))
    print(
        "Manifests (stage 3) against the official counts"
        + ("" if args.text_only else " less the exclusion list")
        + ":"
    )
    wrong = False
    for split, counts in found.items():
        for c in CLASSES:
            mark = "" if counts[c] == expected[split][c] else "  <- differs"
            wrong |= bool(mark)
            print(f"  {split:6s} {c:9s} expected {expected[split][c]:5d}, found {counts[c]:5d}{mark}")
        print(
            f"  {split:6s} {'total':9s} expected {sum(expected[split].values()):5d},"
            f" found {sum(counts.values()):5d}"
        )
    print("FAILED: counts differ" if wrong else "OK: every split and class has the expected count")
    sys.exit(1 if wrong else 0)


if __name__ == "__main__":
    main()
