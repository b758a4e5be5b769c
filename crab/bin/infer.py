"""Classify the utterances of a Kaldi-style wav.scp with a packaged Crab (``crab-infer``).

    crab-infer --model exp/crab/main/seed42/model --wav_scp data/test/wav.scp \\
        --text data/test/text --text_mode gold --out results.tsv

``--model`` is a directory written by ``crab.bin.package`` (recipe stage 7).
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
after the lines already in ``--out``. The text column is the transcript cleaned
as data prep cleans it (``crab.dataprep.clean_transcript``: no control characters).

Bad input never stops the run: a line of wav.scp that does not parse, a missing
or unreadable file, empty or silent audio, audio shorter than the speech
encoder's receptive field, or a missing or empty transcript fails that
utterance only. Failures go to ``<out>.errors`` (``id line reason``, the line
of wav.scp) and to the log; the exit status is 1 when any utterance failed,
unless ``--skip_errors``.

Resumable: each batch is appended to ``<out>`` and flushed, so an interrupted
run leaves valid results, and a re-run classifies only the utterances not
there yet (a cut-off last line, or one cut inside a UTF-8 character, is dropped
with a warning and done again). Results already in ``<out>`` are kept in place,
also those of utterances not in this wav.scp: one ``--out`` can collect the
results of several wav.scp files. ``<out>.model`` records the model (its path and
the SHA-256 of its files), the transcripts (the --text file and its SHA-256, or
the ASR model and settings) and the output settings; a re-run with others stops,
saying what differs, instead of mixing results (``--overwrite`` starts over: the
new results replace the file, by a rename). ``--out`` may not be one of the
inputs (wav.scp, --text, a file of the model) nor a directory.

Loading the model runs nothing from its directory: its hyperparams.yaml is
checked against what ``crab.bin.package`` writes before hyperpyyaml reads it
(``crab.inference.check_package_hparams``), and checkpoints are read with
``torch.load(weights_only=True)``.
"""

import argparse
import hashlib
import json
import logging
import os
import sys
import time

import yaml

from crab import cli
from crab.cli import str2bool
from crab.datadir import Failure, parse_wav_scp, read_texts

logger = logging.getLogger(__name__)

TEXT_MODES = ("gold", "asr", "none")
FORMATS = ("auto", "tsv", "jsonl")
ASR_BACKENDS = ("auto", "seq2seq", "ctc", "pipeline")
ASR_DTYPES = ("auto", "float32", "float16", "bfloat16")
DEFAULT_ASR_MODEL = "openai/whisper-large-v3"  # crab.inference.DEFAULT_ASR_MODEL, without importing it


class UsageError(cli.UserError, ValueError):
    """Options or inputs that make the whole run impossible."""


def read_model_info(model_dir):
    """``classes``, ``modality``, ``max_duration`` and ``train_text_source`` of a package."""
    path = os.path.join(model_dir, "hyperparams.yaml")
    if not os.path.isfile(path):
        raise UsageError(
            f"{model_dir} is not a packaged Crab model (no hyperparams.yaml): see crab.bin.package"
        )
    from crab.inference import check_package_hparams
    from crab.runconfig import TagTolerantLoader

    # before anything else reads it: refuse a yaml that hyperpyyaml would run code from
    info = yaml.load(check_package_hparams(path), Loader=TagTolerantLoader)
    if not isinstance(info, dict) or "classes" not in info or "modality" not in info:
        raise UsageError(f"{path} lacks classes or modality: not written by crab.bin.package")
    return info


def output_format(fmt, out):
    if fmt != "auto":
        return fmt
    return "jsonl" if out.lower().endswith((".jsonl", ".json", ".ndjson")) else "tsv"


def write_atomic(path, text):
    """Write ``text`` to ``path`` through a temporary file, fsync'ed, then renamed over it."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _hash_file(digest, path, limit=None):
    """Add ``path``'s size and (all, or when under ``limit`` bytes) content to ``digest``."""
    size = os.path.getsize(path)
    digest.update(f"{size}\0".encode())
    if limit is not None and size > limit:
        return
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)


def tree_digest(root, limit=None):
    """SHA-256 of the names, sizes and contents of the files under ``root`` (a file or a
    directory; files over ``limit`` bytes by name and size only)."""
    digest = hashlib.sha256()
    if os.path.isfile(root):
        _hash_file(digest, root, limit)
        return digest.hexdigest()
    for base, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(base, name)
            digest.update(os.path.relpath(path, root).encode("utf-8", "surrogateescape") + b"\0")
            _hash_file(digest, path, limit)
    return digest.hexdigest()


MODEL_FILES = ("hyperparams.yaml", "model.ckpt", "label_encoder.ckpt", "speech_encoder", "text_encoder")


def model_digest(model_dir):
    """SHA-256 of what makes a package's predictions: model.ckpt, hyperparams.yaml,
    label_encoder.ckpt and the encoders' configs and tokenizer."""
    digest = hashlib.sha256()
    for name in MODEL_FILES:
        path = os.path.join(model_dir, name)
        if os.path.exists(path):
            digest.update(f"{name}\0{tree_digest(path)}\0".encode())
    return digest.hexdigest()


SETTING_NAMES = {
    "model": "the --model path",
    "model_sha256": (
        "the model's content (model.ckpt, hyperparams.yaml, label_encoder.ckpt or encoder configs)"
    ),
    "classes": "the model's classes",
    "format": "the output format",
    "text_mode": "--text_mode",
    "text": "the --text file",
    "text_sha256": "the --text file's content",
    "asr": "the ASR model or its settings",
}


def run_settings(args, info, fmt):
    """What the results of ``--out`` depend on: the model, the transcripts, the format."""
    settings = {
        "model": os.path.abspath(args.model),
        "model_sha256": model_digest(args.model),
        "classes": list(info["classes"]),
        "format": fmt,
        "text_mode": args.text_mode,
        "text": None,
        "text_sha256": None,
        "asr": None,
    }
    if args.text_mode == "gold":
        settings.update(text=os.path.abspath(args.text), text_sha256=tree_digest(args.text))
    elif args.text_mode == "asr":
        local = os.path.exists(args.asr_model)
        settings["asr"] = {
            "model": os.path.abspath(args.asr_model) if local else args.asr_model,
            # a local model: its configs and tokenizer by content, its weights by size
            "files_sha256": tree_digest(args.asr_model, limit=16 << 20) if local else None,
            "backend": args.asr_backend,
            "language": args.language,
            "num_beams": args.num_beams,
            "max_new_tokens": args.max_new_tokens,
            "dtype": args.asr_dtype,
        }
    return settings


class Results:
    """The output file: formatting, reading back what is there, atomic rewrites."""

    def __init__(self, path, fmt, classes, text_mode, asr_model=None):
        self.path, self.fmt, self.classes = path, fmt, list(classes)
        self.text_mode, self.asr_model = text_mode, asr_model
        columns = ["id", "predicted", "score"] + [f"prob_{c}" for c in self.classes] + ["text_source", "text"]
        self.header = "\t".join(columns) + "\n" if fmt == "tsv" else ""

    def line(self, utt, probs, text):
        from crab.dataprep import clean_transcript

        best = max(range(len(probs)), key=probs.__getitem__)
        text = " ".join(clean_transcript(text or "")[0].split())  # no control characters (ESC, NUL, ...)
        if self.fmt == "tsv":
            values = [utt, self.classes[best], f"{probs[best]:.6f}"] + [f"{p:.6f}" for p in probs]
            return "\t".join(values + [self.text_mode, text]) + "\n"
        record = {
            "id": utt,
            "predicted": self.classes[best],
            "score": round(probs[best], 6),
            "probs": {c: round(p, 6) for c, p in zip(self.classes, probs, strict=True)},
            "text_source": self.text_mode,
            "text": text,
        }
        if self.asr_model:
            record["asr_model"] = self.asr_model
        return json.dumps(record, ensure_ascii=False) + "\n"

    def read(self):
        """``utt -> line`` of the lines already in the file, in file order.

        A torn last line (no newline, cut inside a UTF-8 character, or not a results
        line: an interrupted write) is dropped with a warning; a damaged line before
        it is an error naming the file and line."""
        if not os.path.isfile(self.path):
            return {}
        with open(self.path, "rb") as f:
            parts = f.read().split(b"\n")
        complete, tail = parts[:-1], parts[-1]  # after the last newline: nothing or a cut-off line
        if tail:
            logger.warning(
                "%s:%d: the last line is cut off (an interrupted write): dropped, its utterance is "
                "classified again",
                self.path,
                len(parts),
            )
        done = {}
        for lineno, raw in enumerate(complete, 1):
            last = lineno == len(complete) and not tail
            try:
                line = raw.decode("utf-8") + "\n"
            except UnicodeDecodeError:
                line = None
            if self.fmt == "tsv" and lineno == 1 and line is not None:
                if line != self.header:
                    raise UsageError(
                        f"{self.path} has another header (other classes?): use --overwrite or another --out"
                    )
                continue
            if line is not None and not line.strip():
                continue  # a blank line: nothing to keep
            utt = self._utt(line) if line is not None else None
            if utt is None:
                what = "not UTF-8 text" if line is None else "not a results line"
                if last:
                    logger.warning(
                        "%s:%d: the last line is %s (an interrupted write): dropped, its utterance "
                        "is classified again",
                        self.path,
                        lineno,
                        what,
                    )
                    continue
                raise UsageError(
                    f"{self.path}:{lineno}: {what} (a damaged results file): repair or delete that "
                    "line, or use another --out"
                )
            done.setdefault(utt, line)
        return done

    def _utt(self, line):
        if self.fmt == "tsv":
            fields = line.rstrip("\n").split("\t")
            return fields[0] if len(fields) == len(self.header.split("\t")) else None
        try:
            return json.loads(line)["id"]
        except (ValueError, KeyError, TypeError):
            return None

    def rewrite(self, lines):
        """Atomically replace the file with the header and ``lines`` (temporary file, fsync, rename)."""
        write_atomic(self.path, self.header + "".join(lines))


def check_settings(marker, settings, out, overwrite):
    """Stop when ``out`` holds results of another model, other transcripts or other
    settings, saying what differs (nothing is written here)."""
    if overwrite or not os.path.exists(out):
        return
    previous = None
    if os.path.isfile(marker):
        with open(marker, "rb") as f:
            try:
                previous = json.loads(f.read().decode("utf-8"))
            except ValueError:
                previous = None
    if not isinstance(previous, dict):
        raise UsageError(
            f"{out} holds results of another model or other settings: {marker} is missing or damaged, "
            "so they cannot be told apart: use --overwrite to start over, or another --out"
        )
    differ = [key for key in sorted(set(previous) | set(settings)) if previous.get(key) != settings.get(key)]
    if differ:
        what = "; ".join(
            f"{SETTING_NAMES.get(key, key)} ({_short(previous.get(key))} then, {_short(settings.get(key))} "
            "now)"
            for key in differ
        )
        raise UsageError(
            f"{out} holds results of another model or other settings: {what}: "
            "use --overwrite to start over, or another --out"
        )


def _short(value):
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 80 else text[:77] + "..."


def check_outputs(args):
    """``--out`` (and ``<out>.model``, ``.errors``, ``.tmp``) may be neither a directory nor
    one of the inputs: wav.scp, --text, a file of the model (or the local ASR model)."""
    out = args.out
    if os.path.isdir(out):
        raise UsageError(f"--out {out} is a directory: give the results file's name")
    inputs = [("--wav_scp", args.wav_scp)] + ([("--text", args.text)] if args.text else [])
    dirs = [("--model", args.model)]
    if args.text_mode == "asr" and os.path.isdir(args.asr_model):
        dirs.append(("--asr_model", args.asr_model))
    for option, folder in dirs:
        for base, _, files in os.walk(folder):
            inputs += [(f"a file of {option}", os.path.join(base, name)) for name in files]
    for path in (out, out + ".model", out + ".errors", out + ".tmp"):
        if os.path.isdir(path):
            raise UsageError(f"--out {out}: {path} is a directory")
        real = os.path.realpath(path)
        for option, folder in dirs:
            top = os.path.realpath(folder)
            if os.path.commonpath([real, top]) == top:
                raise UsageError(
                    f"--out {out}: {path} is inside {option} {folder}: write the results elsewhere"
                )
        if not os.path.exists(path):
            continue
        for option, source in inputs:
            if os.path.exists(source) and os.path.samefile(path, source):
                raise UsageError(
                    f"--out {out}: {path} is {option} ({source}): the results would replace an "
                    "input; choose another --out"
                )


def resolve_device(device):
    import torch

    if device == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        device = "cuda:0"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: no CUDA GPU is available (use --device cpu or auto)")
    return device


def check_text_mode(args, info):
    """The transcripts the model needs and the ones the options give must agree."""
    modality = info["modality"]
    if args.text_mode == "none" and modality != "speech":
        raise UsageError(
            f"the model is {modality}: it needs transcripts "
            "(--text_mode gold --text FILE, or --text_mode asr); "
            "--text_mode none is for speech-only models"
        )
    if args.text_mode != "none" and modality == "speech":
        raise UsageError("the model is speech-only: it takes no transcripts, use --text_mode none")
    if args.text_mode == "gold" and not args.text:
        raise UsageError("--text_mode gold needs --text (a Kaldi text file: '<utt-id> <transcript>' lines)")
    if args.text_mode != "gold" and args.text:
        raise UsageError(f"--text is for --text_mode gold; with --text_mode {args.text_mode} leave it out")
    if args.text and not os.path.isfile(args.text):
        raise UsageError(f"--text {args.text}: no such file")
    trained = info.get("train_text_source")
    if args.text_mode in ("gold", "asr") and trained in ("gold", "asr") and trained != args.text_mode:
        logger.warning(
            "The model was trained on %s transcripts and is given %s ones", trained, args.text_mode
        )


def make_batches(items, batch_size, max_batch_seconds):
    """Group ``(utterance, seconds)`` pairs, longest first, into batches of at most
    ``batch_size`` utterances and (when > 0) ``max_batch_seconds`` of padded audio."""
    items = sorted(items, key=lambda item: -item[1])
    batches, current = [], []
    for utterance, seconds in items:
        longest = current[0][1] if current else seconds
        too_long = max_batch_seconds > 0 and longest * (len(current) + 1) > max_batch_seconds
        if current and (len(current) >= batch_size or too_long):
            batches.append(current)
            current = []
        current.append((utterance, seconds))
    if current:
        batches.append(current)
    return [[utterance for utterance, _ in batch] for batch in batches]


class Runner:
    """Classifies batches, writes results and failures as they come."""

    def __init__(self, args, classifier, results, out_file, errors_file, texts):
        self.args, self.classifier, self.results = args, classifier, results
        self.out_file, self.errors_file, self.texts = out_file, errors_file, texts
        self.done, self.failed = {}, []

    def fail(self, utterance, reason):
        self.failed.append(Failure(utterance.utt, utterance.line, reason))
        write_failure(self.errors_file, self.args.wav_scp, self.failed[-1])

    def run_batch(self, batch):
        from crab.inference import AudioError, check_audio, load_audio_file

        clf = self.classifier
        cut = clf.max_samples
        audios = {}
        for utterance in batch:
            try:  # ASR hears the whole file, the model its first max_duration seconds (as in training)
                asr = self.args.text_mode == "asr"
                wav = load_audio_file(utterance.path) if asr else clf.load_audio(utterance.path)
            except AudioError as err:
                self.fail(utterance, str(err))
                continue
            problem = check_audio(wav[:cut] if cut else wav, clf.min_samples)
            if problem:
                self.fail(utterance, f"{problem}: {utterance.path}")
                continue
            audios[utterance.utt] = wav
        usable = [u for u in batch if u.utt in audios]
        texts = {}
        if self.args.text_mode == "gold":  # checked before: every one has a transcript
            texts = {u.utt: self.texts[u.utt] for u in usable}
        elif self.args.text_mode == "asr" and usable:

            def transcribe(group):
                transcripts = self.classifier.transcribe_batch([audios[u.utt] for u in group])
                return dict(zip([u.utt for u in group], transcripts, strict=True))

            for utt, text in self.isolated(transcribe, usable, "transcription").items():
                if text:
                    texts[utt] = text
                else:
                    self.fail(
                        next(u for u in usable if u.utt == utt),
                        f"the ASR model ({self.args.asr_model}) gave an empty transcript",
                    )
        if self.args.text_mode != "none":
            usable = [u for u in usable if u.utt in texts]
        if usable:
            self.isolated(lambda group: self.classify(group, audios, texts), usable, "classification")

    def isolated(self, fn, usable, what):
        """``fn(usable)`` (a dict); when it raises, ``fn`` on each utterance alone, so that
        only the utterances that break it fail."""
        try:
            return fn(usable)
        except Exception as err:  # noqa: BLE001 - bad input must not stop the run
            if len(usable) > 1:
                logger.warning(
                    "%s of a batch of %d failed (%s): one utterance at a time", what, len(usable), err
                )
            else:
                self.fail(usable[0], f"{what} failed: {type(err).__name__}: {err}")
                return {}
        results = {}
        for utterance in usable:
            try:
                results.update(fn([utterance]))
            except Exception as err:  # noqa: BLE001
                self.fail(utterance, f"{what} failed: {type(err).__name__}: {err}")
        return results

    def classify(self, usable, audios, texts):
        import torch

        cut = self.classifier.max_samples
        wavs = [audios[u.utt][:cut] if cut else audios[u.utt] for u in usable]
        lengths = torch.tensor([len(w) for w in wavs], dtype=torch.float32)
        padded = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True)
        batch_texts = [texts[u.utt] for u in usable] if self.args.text_mode != "none" else None
        out_prob = self.classifier.classify_batch(padded, batch_texts, lengths / padded.shape[1])[0]
        lines = [
            self.results.line(u.utt, probs, texts.get(u.utt, ""))
            for u, probs in zip(usable, out_prob.cpu().tolist(), strict=True)
        ]
        self.out_file.writelines(lines)
        self.out_file.flush()
        os.fsync(self.out_file.fileno())
        self.done.update((u.utt, line) for u, line in zip(usable, lines, strict=True))
        return dict(zip([u.utt for u in usable], lines, strict=True))


def write_failure(errors_file, wav_scp, failure):
    logger.warning("%s:%d: %s: %s", wav_scp, failure.line, failure.utt, failure.reason)
    errors_file.write(f"{failure.utt}\t{failure.line}\t{failure.reason}\n")
    errors_file.flush()


def transcript_problem(utt, texts, path):
    """Why the gold transcript of ``utt`` cannot be used, or None."""
    if utt not in texts:
        return f"no transcript in {path}"
    if texts[utt] is None:
        return f"two transcripts in {path}"
    if not texts[utt]:
        return f"empty transcript in {path}"
    return None


def audio_seconds(utterance, max_duration):
    """Duration from the file header (for batching), or the reason it cannot be read."""
    import soundfile as sf

    if not os.path.isfile(utterance.path):
        return None, f"missing audio file {utterance.path}"
    try:
        info = sf.info(utterance.path)
    except (RuntimeError, sf.LibsndfileError) as err:
        return None, f"unreadable audio file {utterance.path} ({err})"
    seconds = info.frames / info.samplerate if info.samplerate else 0.0
    return (min(seconds, max_duration) if max_duration else seconds), None


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="crab-infer",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--model", required=True, help="packaged model directory (crab.bin.package)")
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
    parser.add_argument("--batch_size", type=int, default=8, help="utterances per batch (sorted by length)")
    parser.add_argument(
        "--max_batch_seconds",
        type=float,
        default=0.0,
        help="> 0: at most this much padded audio per batch (seconds)",
    )
    parser.add_argument(
        "--asr_model", default=DEFAULT_ASR_MODEL, help="--text_mode asr: hub id or local directory"
    )
    parser.add_argument("--asr_backend", choices=ASR_BACKENDS, default="auto", help="see crab.bin.transcribe")
    parser.add_argument(
        "--language", default=None, help="Whisper: spoken language, e.g. english (default: detected)"
    )
    parser.add_argument("--num_beams", type=int, default=1, help="ASR beam size")
    parser.add_argument("--max_new_tokens", type=int, default=128, help="longest ASR transcript, in tokens")
    parser.add_argument(
        "--asr_dtype", choices=ASR_DTYPES, default="auto", help="auto: float16 on CUDA, else float32"
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
    """Classify; returns ``(number of utterances, done before, done now, failures)``."""
    info = read_model_info(args.model)
    check_text_mode(args, info)
    if not os.path.isfile(args.wav_scp):
        raise UsageError(f"--wav_scp {args.wav_scp}: no such file")
    check_outputs(args)
    utterances, failures = parse_wav_scp(args.wav_scp)
    if not utterances and not failures:
        raise UsageError(f"--wav_scp {args.wav_scp}: no utterances (the file is empty)")
    texts = read_texts(args.text) if args.text else {}
    device = resolve_device(args.device)
    fmt = output_format(args.format, args.out)
    asr_model = args.asr_model if args.text_mode == "asr" else None
    results = Results(args.out, fmt, info["classes"], args.text_mode, asr_model)
    settings = run_settings(args, info, fmt)
    marker = args.out + ".model"
    check_settings(marker, settings, args.out, args.overwrite)
    kept = {} if args.overwrite else results.read()  # every line there, this wav.scp's or not
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    # the results first (a cut-off line dropped; with --overwrite a new file renamed over the old one),
    # then the record of what made them
    results.rewrite(kept.values())
    write_atomic(marker, json.dumps(settings, indent=2) + "\n")

    order = [u.utt for u in utterances]
    known = set(order)
    previous = {utt: line for utt, line in kept.items() if utt in known}
    if texts:
        unknown = len(set(texts) - known)
        if unknown:
            logger.info(
                "%s: %d transcripts of utterances not in %s (ignored)", args.text, unknown, args.wav_scp
            )

    with open(args.out + ".errors", "w", encoding="utf-8") as errors_file:
        errors_file.write("id\tline\treason\n")
        for failure in failures:
            write_failure(errors_file, args.wav_scp, failure)
        todo, failed = [], list(failures)
        for utterance in utterances:
            if utterance.utt in previous:
                continue
            seconds, problem = audio_seconds(utterance, info.get("max_duration"))
            if not problem and args.text_mode == "gold":
                problem = transcript_problem(utterance.utt, texts, args.text)
            if problem:
                failed.append(Failure(utterance.utt, utterance.line, problem))
                write_failure(errors_file, args.wav_scp, failed[-1])
            else:
                todo.append((utterance, seconds))
        logger.info(
            "%s: %d utterances, %d classified before, %d to classify, %d unusable",
            args.wav_scp,
            len(utterances) + len(failures),
            len(previous),
            len(todo),
            len(failed),
        )
        done = {}
        if todo:
            done, more = classify_all(args, device, results, todo, errors_file, texts)
            failed += more
    # the lines there before stay in place; this run's follow, in wav.scp order
    results.rewrite(list(kept.values()) + [done[utt] for utt in order if utt in done and utt not in kept])
    return len(utterances) + len(failures), len(previous), len(done), failed


def classify_all(args, device, results, todo, errors_file, texts):
    from tqdm import tqdm

    from crab.inference import CrabClassifier

    logger.info("Loading %s on %s", args.model, device)
    classifier = CrabClassifier.from_hparams(source=args.model, run_opts={"device": device})
    if args.text_mode == "asr":
        classifier.load_asr(
            args.asr_model,
            device=device,
            backend=args.asr_backend,
            language=args.language,
            num_beams=args.num_beams,
            max_new_tokens=args.max_new_tokens,
            dtype=args.asr_dtype,
        )
    batches = make_batches(todo, args.batch_size, args.max_batch_seconds)
    with open(args.out, "a", encoding="utf-8") as out_file:
        runner = Runner(args, classifier, results, out_file, errors_file, texts)
        last_log, processed = time.monotonic(), 0
        with tqdm(total=len(todo), unit="utt", disable=not sys.stderr.isatty(), file=sys.stderr) as progress:
            for k, batch in enumerate(batches):
                runner.run_batch(batch)
                progress.update(len(batch))
                processed += len(batch)
                if progress.disable and (time.monotonic() - last_log > 30 or k == len(batches) - 1):
                    logger.info(
                        "%d of %d utterances processed (%d failed)", processed, len(todo), len(runner.failed)
                    )
                    last_log = time.monotonic()
    return runner.done, runner.failed


@cli.entry_point
def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        total, before, now, failed = run(args)
    except cli.UserError as err:  # UsageError, and a --text that is not UTF-8 (crab.datadir)
        sys.exit(f"ERROR: {err}")
    summary = f"{args.out}: {before + now} of {total} utterances classified ({now} now, {before} before)"
    if failed:
        summary += f"; {len(failed)} failed, listed in {args.out}.errors"
    print(summary)
    if failed and not args.skip_errors:
        print(
            f"ERROR: {len(failed)} utterance(s) failed (e.g. {failed[0].utt}, line {failed[0].line}: "
            f"{failed[0].reason}); --skip_errors to exit 0",
            file=sys.stderr,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
