"""Cut the recordings of a Kaldi data directory with a ``segments`` file into one audio
file per utterance, for crab-infer (which reads one file per utterance) or data prep.

    python -m crab.bin.cut_segments --data_dir data/dev --out_dir data/dev_cut [--audio_dir DIR]

Writes ``<audio_dir>/<utt>.wav`` (default ``<out_dir>/audio``: the recording's samples
and sample format, where WAV holds it) and ``<out_dir>``: ``wav.scp`` of those files,
and ``text`` and the ``utt2*`` tables of the data directory for the utterances written.
An end time of -1 is the end of the recording, one up to 0.5 s past it is cut there
(``crab.segments``). A segment that cannot be cut (its recording is not in wav.scp or
cannot be read, times outside the recording, a line that does not parse) is left out
and listed in ``<out_dir>/segments.errors`` (``utt line reason``); the exit status is
then 1. Re-running cuts every segment again.
"""

import argparse
import logging
import os

from crab import cli
from crab.segments import cut_segments


@cli.entry_point
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=cli.HelpFormatter)
    parser.add_argument("--data_dir", required=True, help="holds wav.scp (recordings) and segments")
    parser.add_argument("--out_dir", required=True, help="the data directory of the cut utterances")
    parser.add_argument("--audio_dir", default=None, help="where the wavs go (default: <out_dir>/audio)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    for name in ("wav.scp", "segments"):
        if not os.path.isfile(os.path.join(args.data_dir, name)):
            raise cli.UserError(f"{args.data_dir}/{name}: no such file")
    written, failures = cut_segments(args.data_dir, args.out_dir, args.audio_dir)
    print(f"{args.out_dir}: {written} utterances cut, {len(failures)} failed")
    if failures:
        first = failures[0]
        raise cli.UserError(
            f"{len(failures)} segment(s) could not be cut (e.g. {first.utt}, line {first.line}: "
            f"{first.reason}); listed in {os.path.join(args.out_dir, 'segments.errors')}"
        )


if __name__ == "__main__":
    main()
