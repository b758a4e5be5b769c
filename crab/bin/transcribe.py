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
in ``wav.scp`` order. The model's name is kept in ``text.asr.model``: a re-run
with another model stops instead of mixing transcripts (``--overwrite true``
starts over). An empty ASR output, or audio too short for the speech encoder,
gives an empty transcript, counted and logged: the manifest checks of stage 3
then stop on it or, with the skip policy, leave it out. A failure that may pass
(missing or unreadable audio, the model raising on a batch: each of its
utterances is then tried alone) is not recorded: the utterance gets no line, is
listed in ``text.asr.failed`` (``utt reason``) and tried again by the next run;
the exit status is 1 when the model failed on any. A line of ``text.asr`` cut
inside a UTF-8 character by an interruption is dropped (the last line, with a
warning) or reported with its line number (a damaged line before the last).
"""

import argparse
import logging
import os
import sys
import time

import soundfile as sf

from crab import cli
from crab.bin.make_manifest import read_table
from crab.cli import str2bool
from crab.dataprep import MIN_SAMPLES

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "seq2seq", "ctc", "pipeline")
DTYPES = ("auto", "float32", "float16", "bfloat16")
SAMPLE_RATE = 16000  # as crab.data.SAMPLE_RATE, whose import loads speechbrain


def read_transcripts(path):
    """Transcripts already in ``path`` (utt -> text).

    A cut-off last line (no newline, or cut inside a UTF-8 character) is dropped with
    a warning, and so transcribed again; invalid UTF-8 before it is an error naming
    the file and line."""
    if not os.path.isfile(path):
        return {}
    with open(path, "rb") as f:
        parts = f.read().split(b"\n")
    complete, tail = parts[:-1], parts[-1]  # the part after the last newline is empty or a cut-off line
    if tail:
        logger.warning("%s:%d: the last line is cut off (an interrupted write): dropped, transcribed again",
                       path, len(parts))
    done = {}
    for lineno, raw in enumerate(complete, 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            if lineno == len(complete) and not tail:
                logger.warning("%s:%d: the last line is not UTF-8 (an interrupted write): dropped, transcribed "
                               "again", path, lineno)
                continue
            raise cli.UserError(f"{path}:{lineno}: not UTF-8 text (a damaged file): repair or delete that line, "
                                "or pass --overwrite true") from None
        if line.strip():
            utt, text = (line.split(maxsplit=1) + [""])[:2]
            done[utt] = text.strip()
    return done


def format_line(utt, text):
    return f"{utt} {text}\n" if text else f"{utt}\n"


def write_transcripts(path, transcripts, order):
    """Atomically write the transcripts of the utterances in ``order`` that have one."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(format_line(utt, transcripts[utt]) for utt in order if utt in transcripts)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def check_model(marker, model, overwrite):
    """Stop when the existing transcripts came from another model."""
    if os.path.isfile(marker) and not overwrite:
        with open(marker, encoding="utf-8") as f:
            previous = f.read().strip()
        if previous != model:
            sys.exit(
                f"ERROR: {os.path.dirname(marker)}/text.asr was made with '{previous}', not '{model}': "
                "remove it, or pass --overwrite true to transcribe again"
            )


def record_model(marker, model):
    """Record ``model`` as the one that makes the transcripts (stage 3 reads it: ``crab.provenance``)."""
    tmp = marker + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(model + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, marker)


def torch_dtype(name, device):
    import torch

    if name == "auto":
        name = "float16" if str(device).startswith("cuda") else "float32"
    return getattr(torch, name)


def detect_backend(model):
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CTC_MAPPING_NAMES,
        MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES,
    )

    model_type = AutoConfig.from_pretrained(model).model_type
    if model_type in MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES:
        return "seq2seq"
    if model_type in MODEL_FOR_CTC_MAPPING_NAMES:
        return "ctc"
    return "pipeline"


def language_kwargs(generation_config, language, task):
    """Whisper's ``language``/``task`` generate options, where the model takes them."""
    if not (language or task):
        return {}
    if not getattr(generation_config, "lang_to_id", None):
        logger.warning("--language/--task ignored: the model is not a multilingual Whisper")
        return {}
    return {k: v for k, v in (("language", language), ("task", task)) if v}


def seq2seq_transcriber(args, device, dtype):
    import torch
    from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor

    processor = AutoProcessor.from_pretrained(args.model)
    model = AutoModelForSpeechSeq2Seq.from_pretrained(args.model).to(device=device, dtype=dtype).eval()
    generate = language_kwargs(model.generation_config, args.language, args.task)
    generate.update(num_beams=args.num_beams, max_new_tokens=args.max_new_tokens)
    # Whisper pads every input to a 30 s window (the mask tells generate where the
    # audio ends); other models pad to the longest input of the batch.
    padding = {"return_attention_mask": True} if model.config.model_type == "whisper" else {"padding": True}

    def transcribe(audios):
        inputs = processor.feature_extractor(audios, sampling_rate=SAMPLE_RATE, return_tensors="pt", **padding)
        inputs = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype) for k, v in inputs.items()}
        with torch.inference_mode():
            ids = model.generate(**inputs, **generate)
        return processor.batch_decode(ids, skip_special_tokens=True)

    return transcribe


def ctc_transcriber(args, device, dtype):
    import torch
    from transformers import AutoModelForCTC, AutoProcessor

    processor = AutoProcessor.from_pretrained(args.model)
    model = AutoModelForCTC.from_pretrained(args.model).to(device=device, dtype=dtype).eval()

    def transcribe(audios):
        inputs = processor.feature_extractor(audios, sampling_rate=SAMPLE_RATE, return_tensors="pt", padding=True)
        inputs = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype) for k, v in inputs.items()}
        with torch.inference_mode():
            ids = model(**inputs).logits.argmax(dim=-1)
        return processor.batch_decode(ids)

    return transcribe


def pipeline_transcriber(args, device, dtype):
    from transformers import pipeline

    asr = pipeline("automatic-speech-recognition", model=args.model, device=device, dtype=dtype)
    generate = language_kwargs(asr.model.generation_config, args.language, args.task)
    generate.update(num_beams=args.num_beams, max_new_tokens=args.max_new_tokens)

    def transcribe(audios):
        inputs = [{"raw": audio, "sampling_rate": SAMPLE_RATE} for audio in audios]
        return [out["text"] for out in asr(inputs, batch_size=len(inputs), generate_kwargs=generate)]

    return transcribe


TRANSCRIBERS = {"seq2seq": seq2seq_transcriber, "ctc": ctc_transcriber, "pipeline": pipeline_transcriber}


def load_transcriber(args):
    """A function from a list of 16 kHz float32 arrays to their transcripts."""
    from transformers import AutoConfig

    from crab.encoders import from_source

    from_source("--model", args.model, AutoConfig.from_pretrained)  # a typo: one line naming it
    backend = detect_backend(args.model) if args.backend == "auto" else args.backend
    dtype = torch_dtype(args.dtype, args.device)
    logger.info("Loading %s (%s backend, %s on %s)", args.model, backend, str(dtype).split(".")[-1], args.device)
    return TRANSCRIBERS[backend](args, args.device, dtype)


class AudioFailure(Exception):
    """Audio that could not be read this time (missing or unreadable file): retried next run."""


def load_audio(utt, path):
    """The 16 kHz waveform as a numpy array, or None (logged) when too short to transcribe;
    ``AudioFailure`` when it cannot be read."""
    from crab.data import read_audio  # imports speechbrain: only when there is work

    if not os.path.isfile(path):
        raise AudioFailure(f"missing audio file {path}")
    try:
        audio = read_audio(path).numpy()
    except (OSError, RuntimeError, sf.LibsndfileError) as err:
        raise AudioFailure(f"unreadable audio {path} ({err})") from None
    if len(audio) < MIN_SAMPLES:
        logger.warning("%s: audio too short (%d samples) %s: empty transcript", utt, len(audio), path)
        return None
    return audio


def _transcribe(transcriber, utts, audios):
    outputs = transcriber([audios[utt] for utt in utts])
    if len(outputs) != len(utts):
        raise RuntimeError(f"the model gave {len(outputs)} transcripts for {len(utts)} utterances")
    return dict(zip(utts, outputs))


def transcribe_batches(todo, wavs, transcriber, out, batch_size):
    """Transcribe ``todo`` in batches, appending each batch to ``out``; returns
    ``(utt -> text, utt -> (kind, reason))``: the failures (kind ``audio`` or ``model``)
    are not written, so that the next run tries them again."""
    results, failed, last_log = {}, {}, time.monotonic()
    with open(out, "a", encoding="utf-8") as f:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            audios = {}
            for utt in batch:
                try:
                    audios[utt] = load_audio(utt, wavs[utt])
                except AudioFailure as err:
                    logger.warning("%s: %s: not transcribed (tried again next run)", utt, err)
                    failed[utt] = ("audio", str(err))
            usable = [utt for utt in batch if audios.get(utt) is not None]
            texts = {}
            if usable:
                try:
                    texts = _transcribe(transcriber, usable, audios)
                except Exception as err:  # noqa: BLE001 - one bad batch must not stop (or poison) the run
                    logger.warning("the model failed on a batch of %d (%s: %s): one utterance at a time",
                                   len(usable), type(err).__name__, err)
                    for utt in usable:
                        try:
                            texts.update(_transcribe(transcriber, [utt], audios))
                        except Exception as err:  # noqa: BLE001
                            logger.warning("%s: the model failed (%s: %s): not transcribed (tried again next run)",
                                           utt, type(err).__name__, err)
                            failed[utt] = ("model", f"{type(err).__name__}: {err}")
            written = [utt for utt in batch if utt not in failed]
            for utt in written:
                results[utt] = " ".join(texts.get(utt, "").split())  # one line, single spaces
            f.writelines(format_line(utt, results[utt]) for utt in written)
            f.flush()
            os.fsync(f.fileno())
            if time.monotonic() - last_log > 60 or start + batch_size >= len(todo):
                logger.info("%d of %d utterances transcribed", min(start + batch_size, len(todo)), len(todo))
                last_log = time.monotonic()
    return results, failed


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", required=True, help="holds wav.scp; text.asr is written there")
    parser.add_argument("--model", required=True, help="Hugging Face hub id or local directory")
    parser.add_argument("--device", default="cpu", help="cpu, cuda:0, ...")
    parser.add_argument("--backend", choices=BACKENDS, default="auto")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--language", default=None, help="Whisper: spoken language, e.g. english (default: detected)")
    parser.add_argument("--task", default=None, choices=("transcribe", "translate"), help="Whisper only")
    parser.add_argument("--num_beams", type=int, default=1, help="beam size (seq2seq, pipeline)")
    parser.add_argument("--max_new_tokens", type=int, default=128, help="longest transcript, in tokens")
    parser.add_argument("--dtype", choices=DTYPES, default="auto", help="auto: float16 on CUDA, else float32")
    parser.add_argument("--overwrite", type=str2bool, default=False, help="true: transcribe everything again")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch_size must be at least 1")
    return args


@cli.entry_point
def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    out = os.path.join(args.data_dir, "text.asr")
    wavs = read_table(os.path.join(args.data_dir, "wav.scp"))
    check_model(out + ".model", args.model, args.overwrite)
    done = {} if args.overwrite else read_transcripts(out)
    done = {utt: text for utt, text in done.items() if utt in wavs}
    todo = [utt for utt in wavs if utt not in done]
    # a model that cannot be loaded (a typo) stops here, before anything is written
    transcriber = load_transcriber(args) if todo else None
    record_model(out + ".model", args.model)
    write_transcripts(out, done, wavs)  # drops a cut-off line and utterances no longer in wav.scp
    logger.info("%s: %d utterances, %d already transcribed", args.data_dir, len(wavs), len(done))
    failed = {}
    if todo:
        new, failed = transcribe_batches(todo, wavs, transcriber, out, args.batch_size)
        done.update(new)
    write_transcripts(out, done, wavs)
    failed_file = out + ".failed"
    if failed:
        with open(failed_file, "w", encoding="utf-8") as f:
            f.writelines(f"{utt}\t{reason}\n" for utt, (_, reason) in failed.items())
    elif os.path.exists(failed_file):
        os.remove(failed_file)
    empty = [utt for utt in wavs if utt in done and not done[utt]]
    if empty:
        logger.warning(
            "%s: %d of %d empty transcripts (e.g. %s): stage 3 rejects them, or leaves them out with the skip policy",
            out, len(empty), len(wavs), ", ".join(empty[:5]),
        )
    summary = f"{out}: {len(wavs)} utterances, {len(empty)} empty transcripts"
    if failed:
        summary += f", {len(failed)} failed (not recorded, tried again by the next run; listed in {failed_file})"
    print(summary)
    model_failures = [utt for utt, (kind, _) in failed.items() if kind == "model"]
    if model_failures:
        raise cli.UserError(f"the model failed on {len(model_failures)} utterance(s) (e.g. {model_failures[0]}: "
                            f"{failed[model_failures[0]][1]}): run again to retry them")


if __name__ == "__main__":
    main()
