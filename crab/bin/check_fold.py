"""Check that the splits of a fold keep apart: no utterance, and no audio file, in two.

    python -m crab.bin.check_fold --fold main data/main/train data/main/valid data/main/test

Stage 3 runs it on every fold, whatever the corpus's own data prep checked: an
utterance of the test split that is also trained on makes every score of the fold
wrong. Each data directory's ``wav.scp`` gives its utterances and audio files
(``utt2emo`` without audio: ``--text_only true``), ``utt2spk`` their speakers.
Splits that share speakers are allowed (MELD's official splits do) and printed, so
that a protocol meant to be speaker-independent can be seen not to be.
"""

import argparse
import os

from crab import cli
from crab.cli import str2bool
from crab.datadir import NO_SPEAKER, check_fold, read_table
from crab.dataprep import DataPrepError


def split_tables(data_dir, text_only):
    """``({utt: speaker}, {audio path: utt})`` of one split's data directory."""
    listing = read_table(os.path.join(data_dir, "utt2emo" if text_only else "wav.scp"))
    speakers = read_table(os.path.join(data_dir, "utt2spk"), no_value=NO_SPEAKER)
    audio = {} if text_only else {os.path.normpath(path): utt for utt, path in listing.items()}
    return {utt: speakers.get(utt, utt) for utt in listing}, audio  # one missing: its own speaker


@cli.entry_point
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=cli.HelpFormatter)
    parser.add_argument("--fold", required=True, help="the fold's name, for messages")
    parser.add_argument("--text_only", type=str2bool, default=False, help="true: no wav.scp (utt2emo lists)")
    parser.add_argument("data_dirs", nargs="+", help="the fold's split data directories")
    args = parser.parse_args(argv)
    tables = {os.path.basename(os.path.normpath(d)): split_tables(d, args.text_only) for d in args.data_dirs}
    utterances = {split: utts for split, (utts, _) in tables.items()}
    shared = check_fold(utterances, name=args.fold, speaker_independent=False)
    owner = {}
    for split, (_, audio) in tables.items():
        for path, utt in audio.items():
            if path in owner and owner[path][0] != split:
                first_split, first_utt = owner[path]
                raise DataPrepError(
                    f"{args.fold}: {path} is the audio of '{first_utt}' in {first_split} and of "
                    f"'{utt}' in {split}: the same recording in two splits"
                )
            owner.setdefault(path, (split, utt))
    for (first, second), speakers in shared.items():
        print(f"{args.fold}: {first} and {second} share {len(speakers)} speaker(s) (not speaker-independent)")


if __name__ == "__main__":
    main()
