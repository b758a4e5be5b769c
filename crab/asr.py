"""ASR for stage 2 and crab-infer: load a Hugging Face model as a transcriber, transcribe
a data directory's audio in resumable batches, and keep ``text.asr`` and the model that made it.

Backends (``auto`` picks from the model's config): ``seq2seq`` (``AutoModelForSpeechSeq2Seq``
+ ``AutoProcessor``: Whisper, Speech2Text, ...), ``ctc`` (``AutoModelForCTC``: wav2vec 2.0,
HuBERT, ... with greedy decoding) and ``pipeline`` (``pipeline("automatic-speech-recognition")``).
The command line is ``crab.bin.transcribe``.
"""

import json
import logging
import os
import time

import soundfile as sf

from crab.cli import CappedWarnings, UserError
from crab.dataprep import MIN_SAMPLES, missing_file
from crab.fileio import append_lines, write_text_atomic

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "seq2seq", "ctc", "pipeline")
DTYPES = ("auto", "float32", "float16", "bfloat16")
SAMPLE_RATE = 16000  # as crab.data.SAMPLE_RATE, whose import loads speechbrain
# warnings of single utterances (or batches) logged one by one, the others counted: a large corpus
# can have thousands of unreadable or too short files
LOGGED = 10


def format_line(utt, text):
    return f"{utt} {text}\n" if text else f"{utt}\n"


def write_transcripts(path, transcripts, order):
    """Atomically write the transcripts of the utterances in ``order`` that have one."""
    lines = (format_line(utt, transcripts[utt]) for utt in order if utt in transcripts)
    write_text_atomic(path, "".join(lines))


DECODING = ("backend", "language", "task", "num_beams", "max_new_tokens")  # crab.bin.transcribe's options
# the settings record's count of transcripts of unknown settings: made before stage 2 kept a record,
# then added to with the settings recorded beside it
UNRECORDED = "unrecorded_transcripts"


def decoding_settings(args):
    """What the transcripts depend on besides the model: the decoding options of ``args``
    (``crab.bin.transcribe``'s) and the dtype as it runs on ``args.device``."""
    return {**{key: getattr(args, key) for key in DECODING}, "dtype": dtype_name(args.dtype, args.device)}


def check_model(out, model):
    """Stop when the transcripts ``out`` (``text.asr``) came from another model."""
    previous = recorded_model(out + ".model")
    if previous is not None and previous != model:
        raise UserError(
            f"{out} was made with '{previous}', not '{model}': "
            "remove it, or pass --overwrite true to transcribe again"
        )


def check_settings(out, settings):
    """Stop when transcripts are to be added to ``out`` that its recorded decoding settings
    (``decoding_settings``; none recorded: made before they were, not checked) differ from."""
    before = recorded_settings(out)
    if before is not None:
        before = {key: value for key, value in before.items() if key != UNRECORDED}
    if before is not None and before != settings:
        differ = ", ".join(
            f"{key} {before.get(key)!r} then, {settings.get(key)!r} now"
            for key in sorted(set(before) | set(settings))
            if before.get(key) != settings.get(key)
        )
        raise UserError(
            f"{out} was made with other decoding settings ({differ}; float16 is the dtype on CUDA, "
            f"float32 elsewhere), and utterances are left to transcribe: run with those, or pass "
            "--overwrite true to transcribe again"
        )


def unrecorded_transcripts(out, kept):
    """How many of the transcripts ``kept`` in ``out`` have decoding settings that are not known:
    without a settings record (transcripts made before stage 2 kept one), all of them; else
    as many as the record counts (at most as many as are kept)."""
    before = recorded_settings(out)
    if before is None:
        return len(kept)
    return min(before.get(UNRECORDED, 0), len(kept))


def recorded_model(marker):
    """The model ``record_model`` wrote into ``marker``, or None without one."""
    if not os.path.isfile(marker):
        return None
    with open(marker, encoding="utf-8") as f:
        return f.read().strip()


def recorded_settings(out):
    """The decoding settings ``record_model`` kept beside the transcripts ``out`` (with
    ``UNRECORDED`` where some of them are of unknown settings), or None."""
    path = out + ".settings"
    if not os.path.isfile(path):
        return None
    broken = UserError(f"{path} is not the JSON stage 2 writes: remove it, or --overwrite true")
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except ValueError:
        raise broken from None
    count = record.get(UNRECORDED, 0) if isinstance(record, dict) else None
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise broken
    return record


def reusable_transcripts(utts, wavs, model, settings, data_dirs):
    """Transcripts of ``utts`` already made by ``model`` with the same decoding ``settings``
    in other data directories (``data_dirs``), for the same audio: the same ``wav.scp``
    entry. A corpus's folds hold each utterance once per fold; it is transcribed once."""
    from crab.datadir import read_table, read_transcripts

    found = {}
    for data_dir in data_dirs:
        if len(found) == len(utts):
            break
        out = os.path.join(data_dir, "text.asr")
        # a record counting transcripts of unknown settings differs too: none of them is taken
        if recorded_model(out + ".model") != model or recorded_settings(out) != settings:
            continue
        their_wavs = read_table(os.path.join(data_dir, "wav.scp"))
        theirs = read_transcripts(out)
        for utt in utts:
            if utt not in found and utt in theirs and their_wavs.get(utt) == wavs[utt]:
                found[utt] = theirs[utt]
    return found


def record_model(out, model, settings, unrecorded=0):
    """Record ``model`` as the one that makes the transcripts ``out`` (in ``out.model``: stage 3
    reads it, ``crab.provenance``) with its decoding ``settings`` (``out.settings``, JSON), and
    that ``unrecorded`` transcripts there are of unknown settings (``UNRECORDED``)."""
    record = {**settings, UNRECORDED: unrecorded} if unrecorded else settings
    write_text_atomic(out + ".settings", json.dumps(record, sort_keys=True) + "\n")
    write_text_atomic(out + ".model", model + "\n")


def dtype_name(name, device):
    """The dtype ``name`` (``auto``, ``float32``, ...) as it runs on ``device``: ``auto`` is
    float16 on CUDA, float32 elsewhere."""
    if name == "auto":
        return "float16" if str(device).startswith("cuda") else "float32"
    return name


def torch_dtype(name, device):
    import torch

    return getattr(torch, dtype_name(name, device))


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
        inputs = processor.feature_extractor(
            audios, sampling_rate=SAMPLE_RATE, return_tensors="pt", **padding
        )
        inputs = {
            k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype)
            for k, v in inputs.items()
        }
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
        inputs = processor.feature_extractor(
            audios, sampling_rate=SAMPLE_RATE, return_tensors="pt", padding=True
        )
        inputs = {
            k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype)
            for k, v in inputs.items()
        }
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


def load_transcriber(args, option="--model"):
    """A function from a list of 16 kHz float32 arrays to their transcripts; ``option`` is what
    the caller's user gave ``args.model`` as, for the one-line error of a model that cannot be
    loaded (``crab.encoders.ModelSourceError``)."""
    from transformers import AutoConfig

    from crab.encoders import from_source

    from_source(option, args.model, AutoConfig.from_pretrained)  # a typo: one line naming it
    backend = detect_backend(args.model) if args.backend == "auto" else args.backend
    dtype = torch_dtype(args.dtype, args.device)
    logger.info(
        "Loading %s (%s backend, %s on %s)", args.model, backend, str(dtype).split(".")[-1], args.device
    )
    return TRANSCRIBERS[backend](args, args.device, dtype)


class AudioFailure(Exception):
    """Audio that could not be read this time (missing or unreadable file): retried next run."""


def load_audio(path):
    """The 16 kHz waveform as a numpy array; ``AudioFailure`` when it cannot be read."""
    from crab.data import read_audio  # imports speechbrain: only when there is work

    if not os.path.isfile(path):
        raise AudioFailure(missing_file(path))
    try:
        audio = read_audio(path).numpy()
    except (OSError, RuntimeError, sf.LibsndfileError) as err:
        raise AudioFailure(f"unreadable audio {path} ({err})") from None
    return audio


def _transcribe(transcriber, utts, audios):
    outputs = transcriber([audios[utt] for utt in utts])
    if len(outputs) != len(utts):
        raise RuntimeError(f"the model gave {len(outputs)} transcripts for {len(utts)} utterances")
    return dict(zip(utts, outputs, strict=True))


def transcribe_batches(todo, wavs, transcriber, out, batch_size):
    """Transcribe ``todo`` in batches, appending each batch to ``out``; returns
    ``(utt -> text, utt -> (kind, reason))``: the failures (kind ``audio`` or ``model``)
    are not written, so that the next run tries them again. The first ``LOGGED`` warnings
    (a failure, audio too short) are logged, the others counted at the end."""
    results, failed, last_log = {}, {}, time.monotonic()
    warnings = CappedWarnings(logger, LOGGED)
    warn = warnings.warning

    with open(out, "a", encoding="utf-8") as f:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            audios = {}
            for utt in batch:
                try:
                    audios[utt] = load_audio(wavs[utt])
                except AudioFailure as err:
                    warn("%s: %s: not transcribed (tried again next run)", utt, err)
                    failed[utt] = ("audio", str(err))
                    continue
                if len(audios[utt]) < MIN_SAMPLES:
                    warn(
                        "%s: audio too short (%d samples) %s: empty transcript",
                        utt,
                        len(audios[utt]),
                        wavs[utt],
                    )
                    audios[utt] = None
            usable = [utt for utt in batch if audios.get(utt) is not None]
            texts = {}
            if usable:
                try:
                    texts = _transcribe(transcriber, usable, audios)
                except Exception as err:  # noqa: BLE001 - one bad batch must not stop (or poison) the run
                    warn(
                        "the model failed on a batch of %d (%s: %s): one utterance at a time",
                        len(usable),
                        type(err).__name__,
                        err,
                    )
                    for utt in usable:
                        try:
                            texts.update(_transcribe(transcriber, [utt], audios))
                        except Exception as err:  # noqa: BLE001
                            warn(
                                "%s: the model failed (%s: %s): not transcribed (tried again next run)",
                                utt,
                                type(err).__name__,
                                err,
                            )
                            failed[utt] = ("model", f"{type(err).__name__}: {err}")
            written = [utt for utt in batch if utt not in failed]
            for utt in written:
                results[utt] = " ".join(texts.get(utt, "").split())  # one line, single spaces
            append_lines(f, [format_line(utt, results[utt]) for utt in written])
            if time.monotonic() - last_log > 60 or start + batch_size >= len(todo):
                logger.info("%d of %d utterances transcribed", min(start + batch_size, len(todo)), len(todo))
                last_log = time.monotonic()
    if warnings.unlogged:
        logger.warning(
            "%s: ... and %d more warnings like these (utterances not transcribed, or too short: "
            "the summary counts them)",
            out,
            warnings.unlogged,
        )
    return results, failed
