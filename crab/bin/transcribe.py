"""ASR transcripts of a data directory's audio with a Hugging Face model (stage 2).

Writes ``<data_dir>/text.asr``: one ``utt transcript`` line per utterance of
``wav.scp``, in its order, UTF-8. Audio is read at 16 kHz with
``crab.data.read_audio``.

    python -m crab.bin.transcribe --data_dir data/official/train \\
        --model openai/whisper-large-v3 --language english --device cuda:0

Backends (``--backend auto`` picks from the model's config): ``seq2seq``
(``AutoModelForSpeechSeq2Seq`` + ``AutoProcessor``: Whisper, Speech2Text, ...),
``ctc`` (``AutoModelForCTC``: wav2vec 2.0, HuBERT, ... with greedy decoding) and
``pipeline`` (``pipeline("automatic-speech-recognition")``, for anything else).
Whisper hears the first 30 s of each file (``seq2seq``): fine for utterance-level
corpora such as MSP-Podcast.

Resumable: each batch is appended to ``text.asr`` as soon as it is decoded, and a
re-run transcribes only the utterances not there yet (a finished directory costs
nothing, not even loading the model); at the end the file is rewritten atomically
in ``wav.scp`` order. The model's name is kept in ``text.asr.model``, its decoding
settings (backend, language, task, beams, longest output, and the dtype as it ran:
``auto`` is float16 on CUDA, float32 elsewhere) in ``text.asr.settings``: a re-run with
another model stops, one with other settings (a run begun on a GPU, resumed on a CPU)
stops where utterances are left to transcribe, instead of mixing transcripts
(``--overwrite true`` starts over). Missing audio files are listed without loading the
model. ``--reuse DIR ...`` takes the
transcripts that the same model made with the same settings in other data directories
(a corpus's other folds) for the same ``wav.scp`` entries. Transcripts made before stage 2
kept a settings record are of unknown settings: a run that adds to them records its settings
with their count (``unrecorded_transcripts``), which no ``--reuse`` takes from. Transcripts
that no ``text.asr.model`` names (written by hand, or copied without it) stop the run: the
model that made them is not guessed from ``--model``. To keep them, write its name there (a run
adds to them only with that ``--model``), or leave stage 2 out: stage 3 reads ``text.asr`` as it is.
An empty ASR output, or audio too short for the speech encoder, gives an empty
transcript, counted and logged: the manifest checks of stage 3 then stop on it or,
with the skip policy, leave it out. A failure that may pass
(missing or unreadable audio, the model raising on a batch: each of its
utterances is then tried alone) is not recorded: the utterance gets no line, is
listed in ``text.asr.failed`` (``utt reason``) and tried again by the next run;
the exit status is 1 when the model failed on any. The log names the first 10 missing
files, and the first 10 other failures and audio too short, and counts the rest. A line
of ``text.asr`` cut inside a UTF-8 character by an interruption is dropped (the last line,
with a warning) or reported with its line number (a damaged line before the last).
One run at a time writes a data directory (``<data_dir>/.lock``, as data prep's
``write_data_dir``): a second one, of another experiment, waits for it, saying so.
"""

import argparse
import logging
import os

from crab import asr, cli
from crab.asr import (
    BACKENDS,
    DTYPES,
    check_model,
    check_settings,
    decoding_settings,
    record_model,
    recorded_model,
    transcribe_batches,
    write_transcripts,
)
from crab.cli import str2bool
from crab.datadir import DATA_DIR, read_table, read_transcripts
from crab.devices import device_problem
from crab.fileio import write_text_atomic
from crab.locking import folder_lock

logger = cli.module_logger(__name__, __spec__)
LISTED = asr.LOGGED  # missing audio files logged one by one


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=cli.HelpFormatter)
    parser.add_argument("--data_dir", required=True, help="holds wav.scp; text.asr is written there")
    parser.add_argument("--model", required=True, help="Hugging Face hub id or local directory")
    parser.add_argument("--device", default="cpu", help="cpu, cuda:0, ...")
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="seq2seq, ctc or pipeline; auto: picked from the model's config",
    )
    parser.add_argument("--batch_size", type=int, default=8, help="utterances per batch")
    parser.add_argument(
        "--language", default=None, help="Whisper: spoken language, e.g. english (default: detected)"
    )
    parser.add_argument(
        "--task",
        default=None,
        choices=("transcribe", "translate"),
        help="Whisper only (default: the model's own, transcribe)",
    )
    parser.add_argument("--num_beams", type=int, default=1, help="beam size (seq2seq, pipeline)")
    parser.add_argument("--max_new_tokens", type=int, default=128, help="longest transcript, in tokens")
    parser.add_argument("--dtype", choices=DTYPES, default="auto", help="auto: float16 on CUDA, else float32")
    parser.add_argument("--overwrite", type=str2bool, default=False, help="true: transcribe everything again")
    parser.add_argument(
        "--reuse",
        nargs="*",
        default=[],
        metavar="DATA_DIR",
        help="other data directories whose text.asr, made by the same --model, gives the "
        "transcripts of utterances with the same wav.scp entry (stage 2: a corpus's other folds)",
    )
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch_size must be at least 1")
    if problem := device_problem(args.device):  # before the model is loaded
        parser.error(f"--device {args.device}: {problem} (use --device cpu; a recipe: --ngpu 0)")
    return args


@cli.entry_point
def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    wavs = read_table(os.path.join(args.data_dir, "wav.scp"))  # a missing one: said before locking
    # stage 2 of another experiment on this data directory waits, then finds the transcripts
    # made rather than making them again (and its appends are never lost to the other's rename)
    with folder_lock(args.data_dir, DATA_DIR, wait=True):
        transcribe_data_dir(args, wavs)


def transcribe_data_dir(args, wavs):
    """``main``'s work, under the data directory's lock: transcribe ``wavs`` into text.asr."""
    out = os.path.join(args.data_dir, "text.asr")
    settings = decoding_settings(args)
    held = read_transcripts(out)
    there = {} if args.overwrite else held
    # none there (a run killed before its first transcript): another model or settings mix nothing
    if there:
        check_model(out, args.model)
    done = {utt: text for utt, text in there.items() if utt in wavs}
    if done and recorded_model(out + ".model") is None:  # recording --model as their maker: a guess
        raise cli.UserError(
            f"{out} holds transcripts and no {out}.model saying which model made them (written by "
            f"hand, or copied without it): to keep them, write that model's name into {out}.model "
            "(stage 2 adds to them only with that --model), or leave stage 2 out (no --asr_model: "
            "stage 3 reads text.asr as it is); or pass --overwrite true to transcribe again"
        )
    kept = bool(done)
    todo = [utt for utt in wavs if utt not in done]
    unrecorded = asr.unrecorded_transcripts(out, done)
    reused = asr.reusable_transcripts(todo, wavs, args.model, settings, args.reuse)
    done.update(reused)
    # missing audio fails without the model (a corpus copy that lacks files loads no ASR model)
    failed = {
        utt: ("audio", f"missing audio file {wavs[utt]}")
        for utt in todo
        if utt not in reused and not os.path.isfile(wavs[utt])
    }
    for utt, (_, reason) in list(failed.items())[:LISTED]:
        logger.warning("%s: %s: not transcribed (tried again next run)", utt, reason)
    if len(failed) > LISTED:  # an incomplete copy of a corpus: 1000s of them, all in text.asr.failed
        logger.warning("... and %d more missing audio files: not transcribed either", len(failed) - LISTED)
    todo = [utt for utt in todo if utt not in reused and utt not in failed]
    if (todo or reused) and there:  # transcripts are added to those there: their settings
        check_settings(out, settings)
    # a model that cannot be loaded (a typo) stops here, before anything is written
    transcriber = asr.load_transcriber(args) if todo else None  # through the module: tests patch it there
    if not kept:  # none there is kept: emptied, then recorded, so no transcript below is ever unrecorded
        if held:
            write_transcripts(out, {}, wavs)
        record_model(out, args.model, settings)
    # drops a cut-off line, utterances no longer in wav.scp and, with --overwrite, every transcript:
    # before the new record, so that a kill between them never leaves old transcripts recorded
    # as the new model's or settings'
    write_transcripts(out, done, wavs)
    if todo or reused:  # else the record of what is there stays (a model is recorded: checked above)
        if unrecorded:
            logger.warning(
                "%s: %d transcripts made before stage 2 recorded its decoding settings: recorded as of "
                "unknown settings in %s.settings (no --reuse takes them; --overwrite true transcribes "
                "them again)",
                out,
                unrecorded,
                out,
            )
        record_model(out, args.model, settings, unrecorded)
    logger.info(
        "%s: %d utterances, %d already transcribed (%d of them in --reuse directories)",
        args.data_dir,
        len(wavs),
        len(done),
        len(reused),
    )
    if todo:
        new, failed_now = transcribe_batches(todo, wavs, transcriber, out, args.batch_size)
        done.update(new)
        failed.update(failed_now)
    write_transcripts(out, done, wavs)
    failed_file = out + ".failed"
    if failed:
        write_text_atomic(failed_file, "".join(f"{utt}\t{reason}\n" for utt, (_, reason) in failed.items()))
    elif os.path.exists(failed_file):
        os.remove(failed_file)
    empty = [utt for utt in wavs if utt in done and not done[utt]]
    if empty:
        logger.warning(
            "%s: %d of %d empty transcripts (e.g. %s): stage 3 rejects them, "
            "or leaves them out with the skip policy",
            out,
            len(empty),
            len(wavs),
            ", ".join(empty[:5]),
        )
    summary = f"{out}: {len(wavs)} utterances, {len(empty)} empty transcripts"
    if failed:
        summary += (
            f", {len(failed)} failed (not recorded, tried again by the next run; listed in {failed_file})"
        )
    print(summary)
    model_failures = [utt for utt, (kind, _) in failed.items() if kind == "model"]
    if model_failures:
        raise cli.UserError(
            f"the model failed on {len(model_failures)} utterance(s) (e.g. {model_failures[0]}: "
            f"{failed[model_failures[0]][1]}): run again to retry them"
        )


if __name__ == "__main__":
    main()
