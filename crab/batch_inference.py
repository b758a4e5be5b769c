"""Batch inference over a Kaldi-style wav.scp with a packaged Crab: what ``crab-infer`` runs.

    from crab.batch_inference import InferenceJob, classify_wav_scp

    job = InferenceJob(model="exp/crab/main/seed42/model", wav_scp="data/test/wav.scp",
                       out="results.tsv", text_mode="gold", text="data/test/text")
    total, before, now, failed = classify_wav_scp(job)

Bad input fails the utterance, never the run: each failure is a ``crab.datadir.Failure``
in ``<out>.errors`` and in the log. The run is resumable: results are appended batch by
batch, and ``<out>.model`` records the model, the transcripts and the output settings
(``run_settings``), so that a re-run with other ones stops (``check_settings``) instead
of mixing results. What makes the whole run impossible (an option, a missing input, a
results file of other settings) is a ``UsageError`` whose message names the
``crab-infer`` option to change. The command line, the output format and the resume
rules are described in ``crab.bin.infer``.
"""

import dataclasses
import hashlib
import json
import logging
import os
import sys
import time
from typing import NamedTuple

import yaml

from crab import cli
from crab.datadir import Failure, parse_wav_scp, read_texts

logger = logging.getLogger(__name__)

TEXT_MODES = ("gold", "asr", "none")
FORMATS = ("auto", "tsv", "jsonl")
DEFAULT_ASR_MODEL = "openai/whisper-large-v3"  # crab.inference.DEFAULT_ASR_MODEL, without importing torch
MODEL_FILES = ("hyperparams.yaml", "model.ckpt", "label_encoder.ckpt", "speech_encoder", "text_encoder")
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


class UsageError(cli.UserError, ValueError):
    """Options or inputs that make the whole run impossible."""


@dataclasses.dataclass(frozen=True)
class InferenceJob:
    """One batch-inference run: the options of ``crab-infer``, less ``--skip_errors``.

    Attributes
    ----------
    model : str
        Packaged model directory (``crab.bin.package``).
    wav_scp : str
        Kaldi-style ``<utt-id> <audio path>`` lines.
    out : str
        Results file, resumed when it exists; ``<out>.model`` and ``<out>.errors`` go beside it.
    text_mode : str
        Where the transcripts come from: ``gold`` (``text``), ``asr`` (``asr_model``) or
        ``none`` (a speech-only model).
    text : str or None
        With ``text_mode="gold"``: a Kaldi text file, ``<utt-id> <transcript>`` lines.
    format : str
        ``tsv``, ``jsonl`` or ``auto`` (from the extension of ``out``).
    device : str
        ``auto`` (``cuda:0`` when there is a GPU), ``cpu``, ``cuda``, ``cuda:1``, ...
    batch_size : int
        Utterances per batch (batched by length, longest first).
    max_batch_seconds : float
        When > 0, at most this much padded audio per batch, in seconds.
    asr_model, asr_backend, language, num_beams, max_new_tokens, asr_dtype
        With ``text_mode="asr"``: the ASR model and its settings (``crab.asr``).
    overwrite : bool
        Start over instead of resuming.
    """

    model: str
    wav_scp: str
    out: str
    text_mode: str
    text: str | None = None
    format: str = "auto"
    device: str = "auto"
    batch_size: int = 8
    max_batch_seconds: float = 0.0
    asr_model: str = DEFAULT_ASR_MODEL
    asr_backend: str = "auto"
    language: str | None = None
    num_beams: int = 1
    max_new_tokens: int = 128
    asr_dtype: str = "auto"
    overwrite: bool = False


class Tally(NamedTuple):
    """What a run did: utterances in wav.scp, classified before, classified now, and the failures."""

    total: int
    before: int
    now: int
    failed: list


def read_model_info(model_dir):
    """The package's hyperparams.yaml, checked before anything reads it.

    Parameters
    ----------
    model_dir : str
        Packaged model directory.

    Returns
    -------
    dict
        Its keys, among them ``classes``, ``modality``, ``max_duration`` and ``train_text_source``.
    """
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
    """``fmt``, or for ``auto`` the format of ``out``'s extension (jsonl for .jsonl, .json, .ndjson)."""
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
    """SHA-256 of the names, sizes and contents of the files under ``root``.

    Parameters
    ----------
    root : str
        A file or a directory.
    limit : int, optional
        Files over this many bytes count by name and size only.

    Returns
    -------
    str
        The hex digest.
    """
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


def model_digest(model_dir):
    """SHA-256 (hex) of what makes a package's predictions: model.ckpt, hyperparams.yaml,
    label_encoder.ckpt and the encoders' configs and tokenizer (``MODEL_FILES``)."""
    digest = hashlib.sha256()
    for name in MODEL_FILES:
        path = os.path.join(model_dir, name)
        if os.path.exists(path):
            digest.update(f"{name}\0{tree_digest(path)}\0".encode())
    return digest.hexdigest()


def run_settings(job, info, fmt):
    """What the results of a run depend on: the model, the transcripts, the format.

    Parameters
    ----------
    job : InferenceJob
        The run.
    info : dict
        The model's hyperparameters (``read_model_info``).
    fmt : str
        The output format, ``tsv`` or ``jsonl``.

    Returns
    -------
    dict
        The record of ``<out>.model``, JSON-ready; its keys are those of ``SETTING_NAMES``.
    """
    settings = {
        "model": os.path.abspath(job.model),
        "model_sha256": model_digest(job.model),
        "classes": list(info["classes"]),
        "format": fmt,
        "text_mode": job.text_mode,
        "text": None,
        "text_sha256": None,
        "asr": None,
    }
    if job.text_mode == "gold":
        settings.update(text=os.path.abspath(job.text), text_sha256=tree_digest(job.text))
    elif job.text_mode == "asr":
        local = os.path.exists(job.asr_model)
        settings["asr"] = {
            "model": os.path.abspath(job.asr_model) if local else job.asr_model,
            # a local model: its configs and tokenizer by content, its weights by size
            "files_sha256": tree_digest(job.asr_model, limit=16 << 20) if local else None,
            "backend": job.asr_backend,
            "language": job.language,
            "num_beams": job.num_beams,
            "max_new_tokens": job.max_new_tokens,
            "dtype": job.asr_dtype,
        }
    return settings


class Results:
    """The results file: formatting, reading back what is there, atomic rewrites.

    Parameters
    ----------
    path : str
        The results file.
    fmt : str
        ``tsv`` (a header line, then one line per utterance) or ``jsonl``.
    classes : list of str
        The model's classes, in order.
    text_mode : str
        The transcript source written on every line.
    asr_model : str, optional
        Written on every jsonl line when given.
    """

    def __init__(self, path, fmt, classes, text_mode, asr_model=None):
        self.path, self.fmt, self.classes = path, fmt, list(classes)
        self.text_mode, self.asr_model = text_mode, asr_model
        columns = ["id", "predicted", "score"] + [f"prob_{c}" for c in self.classes] + ["text_source", "text"]
        self.header = "\t".join(columns) + "\n" if fmt == "tsv" else ""

    def line(self, utt, probs, text):
        """The results line of ``utt``: its class probabilities ``probs`` and transcript ``text``."""
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
    """Stop when ``out`` holds results of another model, other transcripts or other settings.

    Parameters
    ----------
    marker : str
        ``<out>.model``, the record of the settings that made ``out``.
    settings : dict
        This run's settings (``run_settings``).
    out : str
        The results file.
    overwrite : bool
        The run starts over: nothing to check.

    Raises
    ------
    UsageError
        Saying what differs (nothing is written here).
    """
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


def check_outputs(job):
    """Refuse an ``out`` (or ``<out>.model``, ``.errors``, ``.tmp``) that is a directory or one
    of the inputs: wav.scp, the text file, a file of the model (or of the local ASR model).

    Parameters
    ----------
    job : InferenceJob
        The run.

    Raises
    ------
    UsageError
        Naming the output and what it would replace.
    """
    out = job.out
    if os.path.isdir(out):
        raise UsageError(f"--out {out} is a directory: give the results file's name")
    inputs = [("--wav_scp", job.wav_scp)] + ([("--text", job.text)] if job.text else [])
    dirs = [("--model", job.model)]
    if job.text_mode == "asr" and os.path.isdir(job.asr_model):
        dirs.append(("--asr_model", job.asr_model))
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
    """The torch device of ``device``: ``auto`` is ``cuda:0`` with a GPU, else ``cpu``;
    ``cuda`` is ``cuda:0``; a CUDA device without a GPU is a ``UsageError``."""
    import torch

    if device == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        device = "cuda:0"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: no CUDA GPU is available (use --device cpu or auto)")
    return device


def check_text_mode(job, info):
    """Refuse transcripts the model does not take, or none for a model that needs them.

    Parameters
    ----------
    job : InferenceJob
        The run: its ``text_mode`` and ``text``.
    info : dict
        The model's hyperparameters (``read_model_info``): ``modality``, ``train_text_source``.

    Raises
    ------
    UsageError
        When the model's modality and the transcripts given disagree. Gold transcripts for a
        model trained on ASR ones (or the reverse) only warn.
    """
    modality = info["modality"]
    if job.text_mode == "none" and modality != "speech":
        raise UsageError(
            f"the model is {modality}: it needs transcripts "
            "(--text_mode gold --text FILE, or --text_mode asr); "
            "--text_mode none is for speech-only models"
        )
    if job.text_mode != "none" and modality == "speech":
        raise UsageError("the model is speech-only: it takes no transcripts, use --text_mode none")
    if job.text_mode == "gold" and not job.text:
        raise UsageError("--text_mode gold needs --text (a Kaldi text file: '<utt-id> <transcript>' lines)")
    if job.text_mode != "gold" and job.text:
        raise UsageError(f"--text is for --text_mode gold; with --text_mode {job.text_mode} leave it out")
    if job.text and not os.path.isfile(job.text):
        raise UsageError(f"--text {job.text}: no such file")
    trained = info.get("train_text_source")
    if job.text_mode in ("gold", "asr") and trained in ("gold", "asr") and trained != job.text_mode:
        logger.warning("The model was trained on %s transcripts and is given %s ones", trained, job.text_mode)


def make_batches(items, batch_size, max_batch_seconds):
    """Group utterances by length into batches.

    Parameters
    ----------
    items : list of (Utterance, float)
        Each utterance with its duration in seconds.
    batch_size : int
        At most this many utterances a batch.
    max_batch_seconds : float
        When > 0, at most this much padded audio a batch (the longest duration times the size).

    Returns
    -------
    list of list of Utterance
        The batches, longest utterances first.
    """
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
    """Classifies batches, writes results and failures as they come.

    Parameters
    ----------
    job : InferenceJob
        The run.
    classifier : crab.inference.CrabClassifier
        The model (with its ASR model loaded for ``text_mode="asr"``).
    results : Results
        Formats the results lines.
    out_file, errors_file : file
        Open for appending the results lines and the failures.
    texts : dict
        ``utt -> transcript`` with ``text_mode="gold"``.
    """

    def __init__(self, job, classifier, results, out_file, errors_file, texts):
        self.job, self.classifier, self.results = job, classifier, results
        self.out_file, self.errors_file, self.texts = out_file, errors_file, texts
        self.done, self.failed = {}, []

    def fail(self, utterance, reason):
        """Record ``utterance`` as failed for ``reason``."""
        self.failed.append(Failure(utterance.utt, utterance.line, reason))
        write_failure(self.errors_file, self.job.wav_scp, self.failed[-1])

    def run_batch(self, batch):
        """Load, check, transcribe (``text_mode="asr"``) and classify a batch of utterances."""
        from crab.inference import AudioError, check_audio, load_audio_file

        clf = self.classifier
        cut = clf.max_samples
        audios = {}
        for utterance in batch:
            try:  # ASR hears the whole file, the model its first max_duration seconds (as in training)
                asr = self.job.text_mode == "asr"
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
        if self.job.text_mode == "gold":  # checked before: every one has a transcript
            texts = {u.utt: self.texts[u.utt] for u in usable}
        elif self.job.text_mode == "asr" and usable:

            def transcribe(group):
                transcripts = self.classifier.transcribe_batch([audios[u.utt] for u in group])
                return dict(zip([u.utt for u in group], transcripts, strict=True))

            for utt, text in self.isolated(transcribe, usable, "transcription").items():
                if text:
                    texts[utt] = text
                else:
                    self.fail(
                        next(u for u in usable if u.utt == utt),
                        f"the ASR model ({self.job.asr_model}) gave an empty transcript",
                    )
        if self.job.text_mode != "none":
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
        """Classify ``usable`` and append their lines to the results file (flushed, fsync'ed)."""
        import torch

        cut = self.classifier.max_samples
        wavs = [audios[u.utt][:cut] if cut else audios[u.utt] for u in usable]
        lengths = torch.tensor([len(w) for w in wavs], dtype=torch.float32)
        padded = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True)
        batch_texts = [texts[u.utt] for u in usable] if self.job.text_mode != "none" else None
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
    """Log ``failure`` (a ``Failure`` of ``wav_scp``) and append it to ``errors_file``, flushed."""
    logger.warning("%s:%d: %s: %s", wav_scp, failure.line, failure.utt, failure.reason)
    errors_file.write(f"{failure.utt}\t{failure.line}\t{failure.reason}\n")
    errors_file.flush()


def transcript_problem(utt, texts, path):
    """Why the gold transcript of ``utt`` (in ``texts``, read from ``path``) cannot be used, or None."""
    if utt not in texts:
        return f"no transcript in {path}"
    if texts[utt] is None:
        return f"two transcripts in {path}"
    if not texts[utt]:
        return f"empty transcript in {path}"
    return None


def audio_seconds(utterance, max_duration):
    """Duration of ``utterance``'s audio from the file header, for batching.

    Parameters
    ----------
    utterance : crab.datadir.Utterance
        The utterance and its audio path.
    max_duration : float or None
        When set, the model hears at most this many seconds: the duration is capped to it.

    Returns
    -------
    tuple of (float or None, str or None)
        The duration, or None and the reason the file cannot be read.
    """
    import soundfile as sf

    if not os.path.isfile(utterance.path):
        return None, f"missing audio file {utterance.path}"
    try:
        info = sf.info(utterance.path)
    except (RuntimeError, sf.LibsndfileError) as err:
        return None, f"unreadable audio file {utterance.path} ({err})"
    seconds = info.frames / info.samplerate if info.samplerate else 0.0
    return (min(seconds, max_duration) if max_duration else seconds), None


def classify_wav_scp(job):
    """Classify the utterances of a wav.scp, resuming the results already in ``job.out``.

    Parameters
    ----------
    job : InferenceJob
        What to classify, with what, and where the results go.

    Returns
    -------
    Tally
        The number of utterances in wav.scp, those classified before and now, and the
        failures (``crab.datadir.Failure``, also in ``<out>.errors``).

    Raises
    ------
    UsageError
        When the options or inputs make the whole run impossible.
    """
    info = read_model_info(job.model)
    check_text_mode(job, info)
    if not os.path.isfile(job.wav_scp):
        raise UsageError(f"--wav_scp {job.wav_scp}: no such file")
    check_outputs(job)
    utterances, failures = parse_wav_scp(job.wav_scp)
    if not utterances and not failures:
        raise UsageError(f"--wav_scp {job.wav_scp}: no utterances (the file is empty)")
    texts = read_texts(job.text) if job.text else {}
    device = resolve_device(job.device)
    fmt = output_format(job.format, job.out)
    asr_model = job.asr_model if job.text_mode == "asr" else None
    results = Results(job.out, fmt, info["classes"], job.text_mode, asr_model)
    settings = run_settings(job, info, fmt)
    marker = job.out + ".model"
    check_settings(marker, settings, job.out, job.overwrite)
    kept = {} if job.overwrite else results.read()  # every line there, this wav.scp's or not
    out_dir = os.path.dirname(os.path.abspath(job.out))
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
                "%s: %d transcripts of utterances not in %s (ignored)", job.text, unknown, job.wav_scp
            )

    with open(job.out + ".errors", "w", encoding="utf-8") as errors_file:
        errors_file.write("id\tline\treason\n")
        for failure in failures:
            write_failure(errors_file, job.wav_scp, failure)
        todo, failed = [], list(failures)
        for utterance in utterances:
            if utterance.utt in previous:
                continue
            seconds, problem = audio_seconds(utterance, info.get("max_duration"))
            if not problem and job.text_mode == "gold":
                problem = transcript_problem(utterance.utt, texts, job.text)
            if problem:
                failed.append(Failure(utterance.utt, utterance.line, problem))
                write_failure(errors_file, job.wav_scp, failed[-1])
            else:
                todo.append((utterance, seconds))
        logger.info(
            "%s: %d utterances, %d classified before, %d to classify, %d unusable",
            job.wav_scp,
            len(utterances) + len(failures),
            len(previous),
            len(todo),
            len(failed),
        )
        done = {}
        if todo:
            done, more = classify_all(job, device, results, todo, errors_file, texts)
            failed += more
    # the lines there before stay in place; this run's follow, in wav.scp order
    results.rewrite(list(kept.values()) + [done[utt] for utt in order if utt in done and utt not in kept])
    return Tally(len(utterances) + len(failures), len(previous), len(done), failed)


def classify_all(job, device, results, todo, errors_file, texts):
    """Load the model (and the ASR model) on ``device`` and classify ``todo`` batch by batch.

    Parameters
    ----------
    job : InferenceJob
        The run.
    device : str
        A torch device (``resolve_device``).
    results : Results
        The results file.
    todo : list of (Utterance, float)
        The utterances to classify, with their durations (``audio_seconds``).
    errors_file : file
        Open for appending the failures.
    texts : dict
        ``utt -> transcript`` with ``text_mode="gold"``.

    Returns
    -------
    tuple of (dict, list)
        ``utt -> results line`` of the utterances classified, and the failures.
    """
    from tqdm import tqdm

    from crab.inference import CrabClassifier

    logger.info("Loading %s on %s", job.model, device)
    classifier = CrabClassifier.from_hparams(source=job.model, run_opts={"device": device})
    if job.text_mode == "asr":
        classifier.load_asr(
            job.asr_model,
            device=device,
            backend=job.asr_backend,
            language=job.language,
            num_beams=job.num_beams,
            max_new_tokens=job.max_new_tokens,
            dtype=job.asr_dtype,
        )
    batches = make_batches(todo, job.batch_size, job.max_batch_seconds)
    with open(job.out, "a", encoding="utf-8") as out_file:
        runner = Runner(job, classifier, results, out_file, errors_file, texts)
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
