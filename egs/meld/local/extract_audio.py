"""Stage 0 of the MELD recipe: each labelled clip's audio as a 16 kHz mono 16-bit wav.

For every row of the three CSVs, <clip folder>/dia<D>_utt<U>.mp4 becomes
<out_dir>/<split>/dia<D>_utt<U>.wav (ffmpeg, --nj in parallel). Resumable: an
existing non-empty wav is kept, and each wav is written under a temporary name and
renamed once complete, so an interrupted run leaves no truncated wav (a killed run's
temporary files are removed by the next; two runs on one <out_dir> are refused). Clips whose
mp4 is missing or does not decode whole (ffmpeg reports an error, as it does for a
cut or damaged mp4 it can decode in part) are counted and listed in
<out_dir>/log/failed_<split>.txt; those on the exclusion list are expected, the
others make stage 3 stop (or, with --policy skip, be left out and counted).

    python local/extract_audio.py --meld_root MELD.Raw --out_dir data/wav16k --nj 4
"""

import argparse
import functools
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

from meld import SPLITS, MeldError, fail, locate, read_exclusions, read_split

from crab.fileio import remove_temps, write_atomic
from crab.locking import FolderLockedError, folder_lock

WAV_HEADER_BYTES = 44  # a wav no larger than its header holds no audio
NO_FFMPEG = (
    "ffmpeg not found on PATH. Stage 0 needs it to take the audio out of MELD's mp4 files: "
    "install it (apt-get install ffmpeg, or conda install -c conda-forge ffmpeg) and re-run, or "
    "extract the audio yourself to <wav dir>/{train,dev,test}/dia<D>_utt<U>.wav "
    "(16 kHz mono) and start at --stage 1."
)


def has_wav(path):
    return os.path.isfile(path) and os.path.getsize(path) > 0


def decode(mp4, wav):
    """Write ``mp4``'s audio to ``wav``; a ``MeldError`` says why it could not."""
    command = [
        "ffmpeg",
        "-nostdin",
        "-hide_banner",
        "-loglevel",
        "error",
        "-xerror",
        "-y",
        "-i",
        mp4,
        "-vn",
        "-ac",
        "1",
        "-ar",
        "16000",
        "-c:a",
        "pcm_s16le",
        "-f",
        "wav",
        wav,
    ]
    result = subprocess.run(command, capture_output=True, text=True, errors="replace")
    # A cut or damaged mp4 can decode in part with exit status 0 (a shorter wav, or one
    # with gaps): -xerror stops at the first decoding error, and any error is a failure.
    errors = result.stderr.strip()
    written = os.path.isfile(wav) and os.path.getsize(wav) > WAV_HEADER_BYTES
    if result.returncode != 0 or errors or not written:
        detail = " | ".join(errors.splitlines()[-3:]) or "no audio written"
        raise MeldError(f"ffmpeg failed on {mp4}: {detail}")


def extract(mp4, wav):
    """Write ``wav`` from ``mp4``, under a temporary name renamed once complete; return
    None, or why it failed."""
    if not os.path.isfile(mp4):
        return f"no mp4 ({mp4})"
    try:
        write_atomic(wav, functools.partial(decode, mp4))
    except MeldError as err:
        return str(err)
    return None


def extract_split(meld_root, split, out_dir, nj):
    """Extract the clips of one split that have no wav yet: (rows, extracted, failures)."""
    rows = read_split(meld_root, split, repair=False)
    folder = locate(meld_root, SPLITS[split][1])
    os.makedirs(os.path.join(out_dir, split), exist_ok=True)
    jobs = {
        row.clip: (os.path.join(folder, row.clip + ".mp4"), os.path.join(out_dir, split, row.clip + ".wav"))
        for row in rows
    }
    todo = {clip: paths for clip, paths in jobs.items() if not has_wav(paths[1])}
    with ThreadPoolExecutor(max_workers=nj) as pool:
        reasons = dict(zip(todo, pool.map(lambda paths: extract(*paths), todo.values()), strict=True))
    failures = {clip: reason for clip, reason in reasons.items() if reason is not None}
    return rows, len(todo) - len(failures), failures


def report(split, rows, extracted, failures, excluded, log_path):
    """Print the split's counts and write its failures to ``log_path``."""
    expected = {clip for clip in failures if (split, clip) in excluded}
    with open(log_path, "w", encoding="utf-8") as f:
        for clip, reason in sorted(failures.items()):
            note = (
                f"\texpected: on the exclusion list ({excluded[(split, clip)]})" if clip in expected else ""
            )
            f.write(f"{clip}\t{reason}{note}\n")
    print(
        f"{split}: {len(rows)} clips: {len(rows) - extracted - len(failures)} already had a wav, "
        f"{extracted} extracted, {len(failures)} failed ({len(expected)} on the exclusion list)"
    )
    for row in rows:
        if (split, row.clip) in excluded and row.clip not in failures:
            print(
                f"NOTE: {split} {row.clip} is on the exclusion list but has a wav on this copy: "
                "listen to it, and take it off the list if it is sound"
            )
    unexpected = sorted(set(failures) - expected)
    if unexpected:
        names = ", ".join(unexpected[:10]) + (" ..." if len(unexpected) > 10 else "")
        print(
            f"WARNING: {split}: {len(unexpected)} clip(s) not on the exclusion list failed: {names}. "
            f"Reasons in {log_path}. Stage 3 will stop on them; --policy skip leaves them out "
            "(and counts them), or list them in the exclusion list once you have checked them."
        )
    if len(failures) == len(rows):
        fail(
            f"{split}: no clip could be extracted (reasons in {log_path}): is ffmpeg built with AAC "
            "decoding, and are the mp4 files complete?"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--meld_root", required=True, help="MELD.Raw")
    parser.add_argument("--out_dir", required=True, help="wavs go to <out_dir>/{train,dev,test}/")
    parser.add_argument("--nj", type=int, default=4, help="parallel ffmpeg processes")
    parser.add_argument(
        "--exclude", default="none", help="exclusion list: its failures are expected (none: no list)"
    )
    args = parser.parse_args()
    if shutil.which("ffmpeg") is None:
        fail(NO_FFMPEG)
    os.makedirs(os.path.join(args.out_dir, "log"), exist_ok=True)
    try:
        excluded = read_exclusions(args.exclude)
        with folder_lock(args.out_dir, "MELD wav folder"):
            for split in SPLITS:
                remove_temps(os.path.join(args.out_dir, split))  # of a killed run
                rows, extracted, failures = extract_split(args.meld_root, split, args.out_dir, args.nj)
                log_path = os.path.join(args.out_dir, "log", f"failed_{split}.txt")
                report(split, rows, extracted, failures, excluded, log_path)
    except (MeldError, FolderLockedError) as err:
        fail(str(err))


if __name__ == "__main__":
    main()
