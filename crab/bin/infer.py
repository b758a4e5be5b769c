"""Classify the utterances of a Kaldi-style wav.scp with a packaged Crab (``crab-infer``).

    crab-infer --model exp/crab_tiny/main/seed42/model --wav_scp data/main/test/wav.scp \\
        --text data/main/test/text --text_mode gold --out results.tsv   # in egs/mini

``--model`` is a directory written by ``crab.bin.package`` (recipe stage 8), or the
Hugging Face Hub id of one (``owner/name``: the repository is downloaded whole, as plain
files, under the hub's cache, then checked like a directory: ``crab.inference.package_dir``).
``wav.scp`` holds ``<utt-id> <audio path>`` lines (any sample rate, any channel
count: the audio is read at 16 kHz mono). Where the transcripts come from is
always said with ``--text_mode``, never guessed:

    gold  from ``--text`` (``<utt-id> <transcript>`` lines, Kaldi's data/*/text)
    asr   transcribed here with ``--asr_model`` (Whisper large-v3 by default, as the
          MSP-Podcast recipe; any model ``crab.bin.transcribe`` can run)
    none  no transcripts: only for a speech-only model

The output has one line per utterance: the predicted label, its probability and
every class probability, the transcript source and the transcript used.
``--format tsv`` (a header line, then ``id predicted score prob_<class>...
text_source text``) or ``jsonl`` (one JSON object a line); ``auto`` picks jsonl
for an ``--out`` ending in .jsonl or .json, else tsv. Utterances are batched by
length (longest first); the lines of a run are finally sorted in wav.scp order,
after the lines already in ``--out`` (those of its wav.scp among them too: a resumed run
writes the file an uninterrupted one writes). The text column is the transcript cleaned
as data prep cleans it (``crab.dataprep.clean_transcript``: no control characters).
The model hears the first ``max_duration`` seconds of each utterance (its
hyperparams.yaml; as in training); the log's last lines say how many were longer.

``--precision bf16`` (or ``fp16``, CUDA only) runs the model under autocast, for
the GPUs' low-precision throughput; the probabilities then differ from fp32's by
that rounding. The precision is one of the settings ``<out>.model`` records (a
results file holds the results of one precision).

Bad input never stops the run: a line of wav.scp that does not parse, a missing
or unreadable file, empty or silent audio, audio shorter than the speech
encoder's receptive field, or a missing or empty transcript fails that
utterance only, and so does a piped line (Kaldi's ``<utt-id> cmd |``), which is
never run. Failures go to ``<out>.errors`` (``id line reason``, the line
of wav.scp); the log names the first 10 and counts the rest. The exit status
is 1 when any utterance failed, unless ``--skip_errors``. A relative audio path is read from the current
directory (a missing one says where it was looked for). A ``segments`` file
beside wav.scp is refused: that wav.scp lists recordings, and crab-infer reads
no segments (it would classify the first ``max_duration`` seconds of each whole
recording); cut them into audio files first with ``python -m crab.bin.cut_segments``.

Resumable: each batch is appended to ``<out>`` and flushed, so an interrupted
run leaves valid results, and a re-run classifies only the utterances not
there yet (a cut-off last line, or one cut inside a UTF-8 character, is dropped
with a warning and done again). Results already in ``<out>`` are kept in place,
also those of utterances not in this wav.scp: one ``--out`` can collect the
results of several wav.scp files. ``<out>.model`` records the model (its path and
the SHA-256 of its files), the transcripts (the --text file and its SHA-256, or
the ASR model and settings, ``--asr_dtype auto`` as the dtype it ran in on the device)
and the output settings; a re-run with others stops,
saying what differs, instead of mixing results (``--overwrite`` starts over: the
new results replace the file, by a rename). The model and the --text file count by
content: moved, copied or linked elsewhere, they resume (the new path is logged). A
--text file whose content changed is checked result by result: a result whose
transcript (its text column) is not the one --text now gives is classified again, and
the run says how many; one whose utterance --text no longer lists is kept.
``<out>.sources`` records what each result was classified from (the audio path as
wav.scp gives it, the file's size and modification time): a re-run classifies again
an utterance whose audio changed (another path, or the file rewritten) and says how
many it redid; results with no record there (written by an older crab-infer) are
kept, unchecked, with a warning. ``--out`` may not be one of the inputs (wav.scp, --text, a file of the
model) nor a directory.

One run at a time writes an ``--out``: a run holds ``<out>.lock`` throughout, and
a second run with the same ``--out`` stops at once, naming the process that holds
it (runs in parallel need one ``--out`` each; to collect the results of several
wav.scp files in one, run them one after the other). The lock file stays after the
run, emptied: the lock is ``flock`` on it, released when that
process ends (``crab.locking``), and a file removed at exit could let two runs hold
it at once. The model is loaded before
anything is written: a missing or damaged model leaves no results behind.

Loading the model runs nothing from its directory: its hyperparams.yaml is
checked against what ``crab.bin.package`` writes before hyperpyyaml reads it
(``crab.inference.check_package_hparams``), and checkpoints are read with
``torch.load(weights_only=True)``. The model's digest reads the package's regular
files only, following links as loading does (a Hugging Face cache's snapshot links
each file to its blob): a FIFO, a device or a socket, or a link to one, is refused.
"""

import argparse
import dataclasses
import logging
import sys

from crab import cli
from crab.asr import BACKENDS, DTYPES
from crab.batch_inference import (
    DEFAULT_ASR_MODEL,
    FORMATS,
    PRECISIONS,
    TEXT_MODES,
    InferenceJob,
    classify_wav_scp,
)
from crab.cli import str2bool


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="crab-infer",
        description=__doc__,
        formatter_class=cli.HelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument(
        "--model",
        required=True,
        help="packaged model directory (crab.bin.package), or its Hugging Face Hub id (downloaded whole)",
    )
    parser.add_argument("--wav_scp", required=True, help="Kaldi-style '<utt-id> <audio path>' lines")
    parser.add_argument("--out", required=True, help="results file (resumed when it exists)")
    parser.add_argument(
        "--text_mode",
        required=True,
        choices=TEXT_MODES,
        help="gold: --text file; asr: transcribe with --asr_model; none: speech-only model",
    )
    parser.add_argument(
        "--text", default=None, help="with --text_mode gold: Kaldi text file '<utt-id> <transcript>'"
    )
    parser.add_argument(
        "--format", choices=FORMATS, default="auto", help="tsv or jsonl (auto: from --out's extension)"
    )
    parser.add_argument(
        "--device", default="auto", help="auto (cuda:0 when there is a GPU), cpu, cuda, cuda:1, ..."
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="fp32, or the model under autocast to bf16 or fp16 (fp16: CUDA only); part of the "
        "results' settings",
    )
    parser.add_argument("--batch_size", type=int, default=8, help="utterances per batch (sorted by length)")
    parser.add_argument(
        "--max_batch_seconds",
        type=float,
        default=0.0,
        help="> 0: at most this much padded audio per batch, in seconds; 0: no limit",
    )
    parser.add_argument(
        "--asr_model", default=DEFAULT_ASR_MODEL, help="--text_mode asr: hub id or local directory"
    )
    parser.add_argument("--asr_backend", choices=BACKENDS, default="auto", help="see crab.bin.transcribe")
    parser.add_argument(
        "--language", default=None, help="Whisper: spoken language, e.g. english (default: detected)"
    )
    parser.add_argument("--num_beams", type=int, default=1, help="ASR beam size")
    parser.add_argument("--max_new_tokens", type=int, default=128, help="longest ASR transcript, in tokens")
    parser.add_argument(
        "--asr_dtype", choices=DTYPES, default="auto", help="auto: float16 on CUDA, else float32"
    )
    parser.add_argument(
        "--skip_errors",
        type=str2bool,
        nargs="?",
        const=True,
        default=False,
        help="exit 0 even when some utterances failed (they are still listed in <out>.errors)",
    )
    parser.add_argument(
        "--overwrite",
        type=str2bool,
        nargs="?",
        const=True,
        default=False,
        help="start over instead of resuming",
    )
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch_size must be at least 1")
    return args


def run(args):
    """Classify with the options of ``args`` (``crab.batch_inference.classify_wav_scp``); returns
    its ``Tally``."""
    from crab.inference import package_dir  # torch and SpeechBrain: not for --help

    options = {field.name: getattr(args, field.name) for field in dataclasses.fields(InferenceJob)}
    options["model"] = package_dir(args.model)  # a hub id: downloaded whole first
    return classify_wav_scp(InferenceJob(**options))


def summary(out, tally):
    """The line that says what a run did (``tally``, a ``crab.batch_inference.Tally``)."""
    now, before = tally.now, tally.before
    line = f"{out}: {before + now} of {tally.total} utterances classified ({now} now, {before} before)"
    if tally.redone:
        line += f"; {tally.redone} redone: their audio changed (another path, size or modification time)"
    if tally.text_changed:
        line += f"; {tally.text_changed} redone: their transcript in --text changed"
    if tally.failed:
        line += f"; {len(tally.failed)} failed, listed in {out}.errors"
    return line


@cli.entry_point
def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        tally = run(args)
    except cli.UserError as err:  # UsageError, and a --text that is not UTF-8 (crab.datadir)
        sys.exit(f"ERROR: {err}")
    print(summary(args.out, tally))
    failed = tally.failed
    if failed and not args.skip_errors:
        print(
            f"ERROR: {len(failed)} utterance(s) failed (e.g. {failed[0].utt}, line {failed[0].line}: "
            f"{failed[0].reason}); --skip_errors to exit 0",
            file=sys.stderr,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
