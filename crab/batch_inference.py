"""Batch inference over a Kaldi-style wav.scp with a packaged Crab: what ``crab-infer`` runs.

    from crab.batch_inference import InferenceJob, classify_wav_scp

    # in egs/mini: relative paths are read from the current directory
    job = InferenceJob(model="exp/crab_tiny/main/seed42/model", wav_scp="data/main/test/wav.scp",
                       out="results.tsv", text_mode="gold", text="data/main/test/text")
    tally = classify_wav_scp(job)  # total, before, now, failed, redone, text_changed

Bad input fails the utterance, never the run: each failure is a ``crab.datadir.Failure``
in ``<out>.errors``; the log names the first ``LOGGED_FAILURES`` and counts the rest
(``FailureLog``). The run is resumable: results are appended batch by batch, and
``<out>.model`` records the model, the transcripts and the output settings
(``run_settings``), so that a re-run with other ones stops (``check_settings``) instead
of mixing results (a --text file is checked result by result instead). What makes the
whole run impossible (an option, a missing input, a results file of other settings) is a
``UsageError`` whose message names the ``crab-infer`` option to change. A run holds
``<out>.lock`` (``output_lock``) from its first read of ``out`` to its last write, and
loads the model before it writes anything. ``<out>.sources`` records what each result was
classified from (``Source``), so that a result whose audio changed is classified again,
and so is one whose transcript in --text changed (``resumed``). The command line, the
output format and the resume rules are described in ``crab.bin.infer``.
"""

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import stat
import sys
import time
from typing import NamedTuple

import yaml

from crab import cli
from crab.asr import dtype_name
from crab.datadir import Failure, parse_wav_scp, read_texts
from crab.dataprep import missing_file
from crab.fileio import append_lines, write_text_atomic
from crab.locking import file_lock

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
    "precision": "--precision",
}
PRECISIONS = ("fp32", "bf16", "fp16")
PATH_SETTINGS = ("model", "text")  # recorded for information only
# checked result by result (``resumed``): a result whose transcript changed is classified again
PER_RESULT_SETTINGS = ("text_sha256",)
# failures named one by one in the log: a large corpus can fail thousands, all in <out>.errors
LOGGED_FAILURES = 10


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
    precision : str
        ``fp32``, or the model under autocast to ``bf16`` or ``fp16`` (CUDA only).
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
    precision: str = "fp32"
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
    """What a run did: utterances in wav.scp, classified before, classified now, the failures,
    and how many earlier results were dropped to be redone because their audio changed
    (``redone``), or their transcript (``text_changed``)."""

    total: int
    before: int
    now: int
    failed: list
    redone: int
    text_changed: int


class Source(NamedTuple):
    """What a result was classified from: the audio file's size and modification time (ns),
    and its path as wav.scp gives it."""

    size: int
    mtime_ns: int
    path: str


def audio_source(path):
    """The ``Source`` of the audio file ``path`` as it is now, or None when it cannot be stat'ed."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return Source(info.st_size, info.st_mtime_ns, path)


def audio_changed(recorded, path):
    """Whether the audio of a result classified from ``recorded`` (a ``Source``) is not the
    file ``path`` as it is now: another path, or another size or modification time. A
    file gone since cannot be compared: its result stands."""
    if recorded.path != path:
        return True
    now = audio_source(path)
    return now is not None and now != recorded


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
    max_duration = info.get("max_duration")  # read before loading checks the package's files
    if max_duration is not None and (
        isinstance(max_duration, bool) or not isinstance(max_duration, (int, float)) or not max_duration > 0
    ):
        raise UsageError(
            f"{path}: max_duration is {max_duration!r}, not seconds (a number above 0, or null for "
            "all of the audio): an edited package? see crab.bin.package"
        )
    return info


def output_format(fmt, out):
    """``fmt``, or for ``auto`` the format of ``out``'s extension (jsonl for .jsonl, .json, .ndjson)."""
    if fmt != "auto":
        return fmt
    return "jsonl" if out.lower().endswith((".jsonl", ".json", ".ndjson")) else "tsv"


def _hash_file(digest, path, size, limit=None):
    """Add ``path``'s ``size`` and (all, or when under ``limit`` bytes) content to ``digest``."""
    digest.update(f"{size}\0".encode())
    if limit is not None and size > limit:
        return
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)


def readable_stat(path):
    """``os.stat`` of ``path`` (links followed, as loading the package follows them: a Hugging
    Face cache's snapshot links each file to its blob), a regular file or a directory; a
    ``UsageError`` naming it when it is anything else (a FIFO or device would block or never
    end: it is never opened) or a dangling link."""
    try:
        info = os.stat(path)
    except OSError as err:
        raise UsageError(f"{path} cannot be read ({err.strerror})") from None
    if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
        what = f"{path} is a link to {os.path.realpath(path)}, which" if os.path.islink(path) else path
        raise UsageError(f"{what} is not a regular file (a FIFO, device or socket): refusing to read it")
    return info


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

    Raises
    ------
    UsageError
        For an entry that is not a regular file or a directory (``readable_stat``).
    """
    digest = hashlib.sha256()
    info = readable_stat(root)
    if stat.S_ISREG(info.st_mode):
        _hash_file(digest, root, info.st_size, limit)
        return digest.hexdigest()
    for base, dirs, files in sorted(os.walk(root)):
        for name in dirs:  # a link to a folder is not walked into, only checked
            readable_stat(os.path.join(base, name))
        for name in sorted(files):
            path = os.path.join(base, name)
            size = readable_stat(path).st_size
            digest.update(os.path.relpath(path, root).encode("utf-8", "surrogateescape") + b"\0")
            _hash_file(digest, path, size, limit)
    return digest.hexdigest()


def model_digest(model_dir):
    """SHA-256 (hex) of what makes a package's predictions: model.ckpt, hyperparams.yaml,
    label_encoder.ckpt and the encoders' configs and tokenizer (``MODEL_FILES``), by content
    (``tree_digest``): the same package elsewhere, or as links to the same files, has the same."""
    digest = hashlib.sha256()
    for name in MODEL_FILES:
        path = os.path.join(model_dir, name)
        if os.path.lexists(path):
            digest.update(f"{name}\0{tree_digest(path)}\0".encode())
    return digest.hexdigest()


def run_settings(job, info, fmt, device):
    """What the results of a run depend on: the model, the transcripts, the format.

    Parameters
    ----------
    job : InferenceJob
        The run.
    info : dict
        The model's hyperparameters (``read_model_info``).
    fmt : str
        The output format, ``tsv`` or ``jsonl``.
    device : str
        The torch device the run uses (``resolve_device``): the ASR dtype ``auto`` is
        recorded as what it is there, float16 on CUDA, float32 elsewhere.

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
        "precision": job.precision,
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
            "dtype": dtype_name(job.asr_dtype, device),
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

    @staticmethod
    def clean(text):
        """``text`` as the text column holds it: no control characters (ESC, NUL, ...), one space
        between words."""
        from crab.dataprep import clean_transcript

        return " ".join(clean_transcript(text or "")[0].split())

    def line(self, utt, probs, text):
        """The results line of ``utt``: its class probabilities ``probs`` and transcript ``text``."""
        best = max(range(len(probs)), key=probs.__getitem__)
        text = self.clean(text)
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
        """``utt -> line`` of the lines already in the file, in file order (``read_records``)."""
        done = {}
        for line, utt in read_records(self.path, self._utt, self.header, "results"):
            done.setdefault(utt, line)
        return done

    def text(self, line):
        """The transcript a results ``line`` (one that ``read`` kept) was classified from."""
        return line.rstrip("\n").split("\t")[-1] if self.fmt == "tsv" else json.loads(line)["text"]

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
        write_text_atomic(self.path, self.header + "".join(lines))

    def holds_lines(self):
        """Whether the file has a line besides its header (and blank ones). A run killed after
        making it and before recording its settings (``<out>.model``) left it without."""
        if not os.path.isfile(self.path):
            return False
        with open(self.path, "rb") as f:
            return any(line.strip() and line != self.header.encode("utf-8") for line in f)


class Sources:
    """``<out>.sources``: the ``Source`` of each result, ``id size mtime_ns audio`` lines
    (tab-separated, after a header), appended before the results lines they describe."""

    header = "id\tsize\tmtime_ns\taudio\n"

    def __init__(self, path):
        self.path = path

    def line(self, utt, source):
        """The line recording that ``utt`` was classified from ``source``."""
        return f"{utt}\t{source.size}\t{source.mtime_ns}\t{source.path}\n"

    def read(self):
        """``utt -> Source`` of the lines already in the file (the last line of an utterance wins)."""
        return dict(parsed for _, parsed in read_records(self.path, self._parse, self.header, "sources"))

    @staticmethod
    def _parse(line):
        fields = line.rstrip("\n").split("\t", 3)
        if len(fields) != 4 or not fields[1].isdigit() or not fields[2].isdigit():
            return None
        return fields[0], Source(int(fields[1]), int(fields[2]), fields[3])

    def rewrite(self, sources):
        """Atomically replace the file with the header and ``sources`` (``utt -> Source``)."""
        write_text_atomic(self.path, self.header + "".join(self.line(u, s) for u, s in sources.items()))


def read_records(path, parse, header, kind):
    """``(line, parse(line))`` of the complete lines of ``path`` after its ``header``.

    ``parse`` returns None for a line that is not one of the file's (a ``kind`` file:
    ``results``, ``sources``). A torn last line (no newline, cut inside a UTF-8 character,
    or one ``parse`` refuses: an interrupted write) is dropped with a warning, and its
    utterance classified again; a damaged line before it, or another header, is a
    ``UsageError`` naming the file and line."""
    if not os.path.isfile(path):
        return []
    with open(path, "rb") as f:
        parts = f.read().split(b"\n")
    complete, tail = parts[:-1], parts[-1]  # after the last newline: nothing or a cut-off line
    if tail:
        logger.warning(
            "%s:%d: the last line is cut off (an interrupted write): dropped, its utterance is "
            "classified again",
            path,
            len(parts),
        )
    records = []
    for lineno, raw in enumerate(complete, 1):
        last = lineno == len(complete) and not tail
        try:
            line = raw.decode("utf-8") + "\n"
        except UnicodeDecodeError:
            line = None
        if header and lineno == 1 and line is not None:
            if line != header:
                raise UsageError(
                    f"{path} has another header (other classes, or not a {kind} file): use --overwrite "
                    "or another --out"
                )
            continue
        if line is not None and not line.strip():
            continue  # a blank line: nothing to keep
        parsed = parse(line) if line is not None else None
        if parsed is None:
            what = "not UTF-8 text" if line is None else f"not a {kind} line"
            if last:
                logger.warning(
                    "%s:%d: the last line is %s (an interrupted write): dropped, its utterance "
                    "is classified again",
                    path,
                    lineno,
                    what,
                )
                continue
            raise UsageError(
                f"{path}:{lineno}: {what} (a damaged {kind} file): repair or delete that "
                "line, or use another --out"
            )
        records.append((line, parsed))
    return records


@contextlib.contextmanager
def output_lock(out):
    """Hold ``<out>.lock`` (``crab.locking.file_lock``) inside the block.

    A run holds it from its first read of ``out`` to its last write, so that two runs never
    rewrite each other's results: a second run on the same ``out`` stops at once, naming
    the process that holds it. The lock goes with its process, however that ends.
    """

    def busy(holder):
        return (
            f"--out {out} is being written by another crab-infer ({holder}): wait for it to end, "
            "or give this run another --out (runs in parallel need one --out each)"
        )

    with file_lock(out + ".lock", busy, error=UsageError):
        yield


def check_settings(marker, settings, out, overwrite):
    """Stop when ``out`` holds results of another model, other transcripts or other settings.

    Transcripts of another source (``--text_mode``) or ASR model stop it; a ``--text`` file
    whose content changed does not: ``resumed`` checks its transcripts result by result.

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
    previous = {"precision": "fp32", **previous}  # recorded before --precision existed: fp32
    asr = previous.get("asr")
    if isinstance(asr, dict) and asr.get("dtype") == "auto" and isinstance(settings.get("asr"), dict):
        # recorded unresolved before the device counted: taken as this run's
        previous["asr"] = {**asr, "dtype": settings["asr"]["dtype"]}
    # the package and --text file by content (model_sha256, text_sha256): moved, they resume
    differ, moved, per_result = [], [], []
    for key in sorted(set(previous) | set(settings)):
        if previous.get(key) != settings.get(key):
            group = moved if key in PATH_SETTINGS else per_result if key in PER_RESULT_SETTINGS else differ
            group.append(key)
    if differ:
        what = "; ".join(_difference(key, previous.get(key), settings.get(key)) for key in differ)
        raise UsageError(
            f"{out} holds results of another model or other settings: {what}: "
            "use --overwrite to start over, or another --out"
        )
    for key in moved:
        logger.info(
            "%s: %s changed (%s then, %s now)%s: resumed",
            out,
            SETTING_NAMES[key],
            json.dumps(previous.get(key), ensure_ascii=False),
            json.dumps(settings.get(key), ensure_ascii=False),
            "" if f"{key}_sha256" in per_result else ", its content is the same",
        )
    for key in per_result:
        logger.info(
            "%s: %s changed: the results whose transcript changed are classified again",
            out,
            SETTING_NAMES[key],
        )


def _difference(key, then, now):
    """A setting's two values, in words; of a group of settings (the ASR's), those that differ."""
    name = SETTING_NAMES.get(key, key)
    if isinstance(then, dict) and isinstance(now, dict):
        keys = [k for k in sorted(set(then) | set(now)) if then.get(k) != now.get(k)]
        return f"{name}: " + ", ".join(
            f"{k} ({_short(then.get(k))} then, {_short(now.get(k))} now)" for k in keys
        )
    return f"{name} ({_short(then)} then, {_short(now)} now)"


def _short(value):
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 80 else text[:77] + "..."


def check_outputs(job):
    """Refuse an ``out`` (or ``<out>.model``, ``.errors``, ...) that is a directory or one
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
    for path in (out, *(out + suffix for suffix in (".model", ".errors", ".sources", ".lock"))):
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


def resolve_device(device, precision="fp32"):
    """The torch device of ``device`` (``crab.devices.torch_device``); a device that is not
    there or that torch does not know (``crab.devices.device_problem``), or fp16 ``precision``
    off CUDA, is a ``UsageError``; bf16 on a GPU without bf16 tensor cores, a warning."""
    from crab.devices import bf16_without_tensor_cores, device_problem, torch_device  # torch, once needed

    device = torch_device(device)
    problem = device_problem(device)
    if problem:
        raise UsageError(f"--device {device}: {problem} (use --device cpu or auto)")
    if precision == "fp16" and not device.startswith("cuda"):
        raise UsageError(f"--precision fp16 needs a CUDA device, not {device}: use bf16 or fp32")
    if precision == "bf16" and (slow := bf16_without_tensor_cores(device)):
        logger.warning("--precision bf16: %s", slow)
    return device


def autocast(precision, device):
    """The model's context for ``precision``: autocast to bf16 or fp16, nothing for fp32."""
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(torch.device(device).type, dtype=dtype)


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
        raise UsageError(f"--text {job.text}: {not_a_file(job.text)}")
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
    sources : Sources
        Formats the lines of what each utterance is classified from.
    files : dict
        Open for appending: ``out`` and ``sources``; and ``errors``, the ``FailureLog``.
    texts : dict
        ``utt -> transcript`` with ``text_mode="gold"``.
    """

    def __init__(self, job, classifier, results, sources, files, texts):
        self.job, self.classifier, self.results, self.sources = job, classifier, results, sources
        self.files, self.texts = files, texts
        self.done, self.failed, self.read_from = {}, [], {}

    def fail(self, utterance, reason):
        """Record ``utterance`` as failed for ``reason``."""
        self.failed.append(Failure(utterance.utt, utterance.line, reason))
        self.files["errors"].write(self.failed[-1])

    def run_batch(self, batch):
        """Load, check, transcribe (``text_mode="asr"``) and classify a batch of utterances."""
        from crab.inference import AudioError, check_audio, load_audio_file

        clf = self.classifier
        cut = clf.max_samples
        audios = {}
        for utterance in batch:
            # stat'ed before it is read: a file changed meanwhile is redone by the next run
            self.read_from[utterance.utt] = audio_source(utterance.path)
            if self.read_from[utterance.utt] is None:
                self.fail(utterance, missing_audio(utterance.path))
                continue
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
            lines = self.isolated(lambda group: self.classify(group, audios, texts), usable, "classification")
            self.record(lines)  # not isolated: a file that cannot be written stops the run

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
        """Classify ``usable``: ``utt -> results line``."""
        import torch

        cut = self.classifier.max_samples
        wavs = [audios[u.utt][:cut] if cut else audios[u.utt] for u in usable]
        lengths = torch.tensor([len(w) for w in wavs], dtype=torch.float32)
        padded = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True)
        batch_texts = [texts[u.utt] for u in usable] if self.job.text_mode != "none" else None
        with autocast(self.job.precision, self.classifier.device):
            out_prob = self.classifier.classify_batch(padded, batch_texts, lengths / padded.shape[1])[0]
        return {
            u.utt: self.results.line(u.utt, probs, texts.get(u.utt, ""))
            for u, probs in zip(usable, out_prob.cpu().tolist(), strict=True)
        }

    def record(self, lines):
        """Append the classified ``lines`` (``utt -> results line``) to the sources file, then
        to the results file: no result is ever there without its source."""
        append_lines(self.files["sources"], [self.sources.line(utt, self.read_from[utt]) for utt in lines])
        append_lines(self.files["out"], list(lines.values()))
        self.done.update(lines)


class FailureLog:
    """``<out>.errors`` (``file``, open for writing) and the log of the failures of ``wav_scp``:
    every failure is appended to the file, the first ``LOGGED_FAILURES`` are logged one by one,
    and ``close`` logs how many more there were, not one line each."""

    def __init__(self, file, wav_scp):
        self.file, self.wav_scp = file, wav_scp
        self.log = cli.CappedWarnings(logger, LOGGED_FAILURES)
        append_lines(file, ["id\tline\treason\n"], sync=False)

    def write(self, failure):
        """Append ``failure`` (a ``Failure`` of ``wav_scp``) to the file; log it if among the first."""
        self.log.warning("%s:%d: %s: %s", self.wav_scp, failure.line, failure.utt, failure.reason)
        append_lines(self.file, [f"{failure.utt}\t{failure.line}\t{failure.reason}\n"], sync=False)

    def close(self):
        """Log the count of the failures not logged one by one."""
        if self.log.unlogged:
            logger.warning(
                "%s: ... and %d more failed utterances; all %d listed in %s",
                self.wav_scp,
                self.log.unlogged,
                self.log.count,
                self.file.name,
            )


def transcript_problem(utt, texts, path):
    """Why the gold transcript of ``utt`` (in ``texts``, read from ``path``) cannot be used, or None."""
    if utt not in texts:
        return f"no transcript in {path}"
    if texts[utt] is None:
        return f"two transcripts in {path}"
    if not texts[utt]:
        return f"empty transcript in {path}"
    return None


def missing_audio(path):
    """Why ``path`` cannot be read when it is no file: for a relative path, where it was looked for."""
    where = "" if os.path.isabs(path) else f" (a relative path: looked for in {os.getcwd()})"
    return f"{missing_file(path)}{where}"


def not_a_file(path):
    """Why the input file ``path`` (not a regular file) cannot be read: none is there, or what is.
    A pipe (``<(...)``, a FIFO) is not read: a run reads its input twice (its digest, its lines)."""
    if not os.path.exists(path):
        return "no such file"
    if os.path.isdir(path):
        return "a directory, not a file"
    return (
        "not a regular file (a pipe, e.g. the shell's <(...), a FIFO or a device), which a run would "
        "read twice: write it to a file"
    )


def check_not_segmented(wav_scp):
    """Refuse the wav.scp of a Kaldi data directory with a ``segments`` file: its lines are
    recordings, which ``segments`` cuts into utterances, and crab-infer reads no segments."""
    segments = os.path.join(os.path.dirname(os.path.abspath(wav_scp)), "segments")
    if os.path.exists(segments):
        raise UsageError(
            f"--wav_scp {wav_scp}: {segments} cuts its recordings into utterances, and crab-infer "
            "reads no segments file (it would classify the first max_duration seconds of each "
            "whole recording): cut them into files first (python -m crab.bin.cut_segments "
            f"--data_dir {os.path.dirname(os.path.abspath(wav_scp))} --out_dir DIR, then --wav_scp "
            "DIR/wav.scp), or, to classify whole recordings, copy wav.scp to a folder without segments"
        )


def audio_seconds(utterance):
    """Duration of ``utterance``'s audio from the file header.

    Parameters
    ----------
    utterance : crab.datadir.Utterance
        The utterance and its audio path.

    Returns
    -------
    tuple of (float or None, str or None)
        The duration, or None and the reason the file cannot be read.
    """
    import soundfile as sf

    if not os.path.isfile(utterance.path):
        return None, missing_audio(utterance.path)
    try:
        info = sf.info(utterance.path)
    except (RuntimeError, sf.LibsndfileError) as err:
        return None, f"unreadable audio file {utterance.path} ({err})"
    return (info.frames / info.samplerate if info.samplerate else 0.0), None


def classify_wav_scp(job):
    """Classify the utterances of a wav.scp, resuming the results already in ``job.out``.

    Parameters
    ----------
    job : InferenceJob
        What to classify, with what, and where the results go.

    Returns
    -------
    Tally
        The number of utterances in wav.scp, those classified before and now, the
        failures (``crab.datadir.Failure``, also in ``<out>.errors``), and how many earlier
        results were dropped to be redone because their audio or their transcript changed.

    Raises
    ------
    UsageError
        When the options or inputs make the whole run impossible, or another run holds ``out``.
    """
    info = read_model_info(job.model)
    check_text_mode(job, info)
    if not os.path.isfile(job.wav_scp):
        raise UsageError(f"--wav_scp {job.wav_scp}: {not_a_file(job.wav_scp)}")
    check_not_segmented(job.wav_scp)
    check_outputs(job)
    utterances, failures = parse_wav_scp(job.wav_scp)
    if not utterances and not failures:
        raise UsageError(f"--wav_scp {job.wav_scp}: no utterances (the file is empty)")
    texts = read_texts(job.text) if job.text else {}
    if texts:
        listed = {u.utt for u in utterances} | {f.utt for f in failures}
        unknown = len(set(texts) - listed)
        if unknown:
            logger.info(
                "%s: %d transcripts of utterances not in %s (ignored)", job.text, unknown, job.wav_scp
            )
    device = resolve_device(job.device, job.precision)
    fmt = output_format(job.format, job.out)
    settings = run_settings(job, info, fmt, device)
    asr_model = job.asr_model if job.text_mode == "asr" else None
    results = Results(job.out, fmt, info["classes"], job.text_mode, asr_model)
    sources = Sources(job.out + ".sources")
    with output_lock(job.out):
        if results.holds_lines():  # else none of another model or other settings to keep apart
            check_settings(job.out + ".model", settings, job.out, job.overwrite)
        kept, read_from = ({}, {}) if job.overwrite else (results.read(), sources.read())
        previous, redo, retext = resumed(job, utterances, kept, read_from, texts, results)
        for utt in redo + retext:
            del kept[utt]
        todo, unusable, longer = usable_utterances(job, utterances, previous, texts, info)
        logger.info(
            "%s: %d utterances, %d classified before, %d to classify, %d unusable; results redone: %d "
            "their audio changed, %d their transcript",
            job.wav_scp,
            len(utterances) + len(failures),
            len(previous),
            len(todo),
            len(failures) + len(unusable),
            len(redo),
            len(retext),
        )
        # the model is loaded (and so checked) before anything is written; not for a resumed
        # run with nothing to do, whose files already record this model
        idle = not todo and not job.overwrite and os.path.exists(job.out)
        classifier = None if idle else load_classifier(job, device)
        # the results first (a cut-off line and the results to redo dropped; with --overwrite a new
        # file renamed over the old one), then the records of what made them
        results.rewrite(kept.values())
        sources.rewrite({utt: read_from[utt] for utt in kept if utt in read_from})
        write_text_atomic(job.out + ".model", json.dumps(settings, indent=2) + "\n")
        with open(job.out + ".errors", "w", encoding="utf-8") as errors_file:
            errors = FailureLog(errors_file, job.wav_scp)
            failed = failures + unusable
            for failure in failed:
                errors.write(failure)
            done = {}
            if todo:
                runner = classify_all(job, classifier, results, sources, todo, errors, texts)
                done, failed, read_from = runner.done, failed + runner.failed, read_from | runner.read_from
            errors.close()
        # the lines there before stay in place, this run's follow; this wav.scp's in its order
        order = in_wav_scp_order(list(kept) + [u.utt for u in utterances if u.utt in done], utterances)
        results.rewrite([kept[utt] if utt in kept else done[utt] for utt in order])
        sources.rewrite({utt: read_from[utt] for utt in order if utt in read_from})
    cut = len(longer.intersection(done))
    if cut:
        logger.warning(
            "%d utterances longer than %g s: classified from their first %g s%s",
            cut,
            info["max_duration"],
            info["max_duration"],
            " (their transcripts are of the whole audio)" if job.text_mode == "asr" else "",
        )
    return Tally(len(utterances) + len(failures), len(previous), len(done), failed, len(redo), len(retext))


def in_wav_scp_order(slots, utterances):
    """``slots`` (utterance ids) with those of ``utterances`` (a wav.scp's) sorted into wav.scp
    order among the places they take, the others left where they are. An interrupted run
    appended its results batch by batch, by length: resumed, it writes what an uninterrupted
    run writes."""
    rank = {u.utt: n for n, u in enumerate(utterances)}
    ours = iter(sorted((utt for utt in slots if utt in rank), key=rank.__getitem__))
    return [next(ours) if utt in rank else utt for utt in slots]


def resumed(job, utterances, kept, read_from, texts, results):
    """The results of this wav.scp's utterances already in ``out`` that stand, and those to redo.

    Parameters
    ----------
    job : InferenceJob
        The run.
    utterances : list of Utterance
        The utterances of wav.scp.
    kept : dict
        ``utt -> results line`` of ``out`` (``Results.read``).
    read_from : dict
        ``utt -> Source`` of ``<out>.sources`` (``Sources.read``).
    texts : dict
        ``utt -> transcript`` of ``--text`` (``text_mode="gold"``; else empty).
    results : Results
        The results file, which reads a results line's transcript.

    Returns
    -------
    tuple of (dict, list, list)
        ``utt -> results line`` of the results that stand; the utterances whose audio changed
        since their result (``audio_changed``); those whose transcript in ``texts`` is not the
        one their result was classified from. A result without a source (written by a
        crab-infer that recorded none) is not checked for its audio, with a warning; one whose
        audio or transcript is gone (no file, no line in ``texts``) stands.
    """
    previous, redo, retext, unchecked = {}, [], [], 0
    for utterance in utterances:
        utt = utterance.utt
        if utt not in kept:
            continue
        if utt not in read_from:
            unchecked += 1
        elif audio_changed(read_from[utt], utterance.path):
            redo.append(utt)
            continue
        if texts.get(utt) is not None and results.clean(texts[utt]) != results.text(kept[utt]):
            retext.append(utt)
            continue
        previous[utt] = kept[utt]
    if unchecked:
        logger.warning(
            "%s: %d results have no record of the audio they were classified from (an older "
            "crab-infer wrote them, without %s.sources): kept as they are, not checked against %s",
            job.out,
            unchecked,
            job.out,
            job.wav_scp,
        )
    return previous, redo, retext


def usable_utterances(job, utterances, previous, texts, info):
    """The utterances to classify, with the seconds of their audio the model hears (all of it,
    or its first ``max_duration``: ``audio_seconds``); the failures of those that cannot be (a
    missing or unreadable file, no gold transcript); and the set of those longer than
    ``max_duration``."""
    todo, failed, longer = [], [], set()
    max_duration = info.get("max_duration")
    for utterance in utterances:
        if utterance.utt in previous:
            continue
        seconds, problem = audio_seconds(utterance)
        if not problem and job.text_mode == "gold":
            problem = transcript_problem(utterance.utt, texts, job.text)
        if problem:
            failed.append(Failure(utterance.utt, utterance.line, problem))
            continue
        if max_duration and seconds > max_duration:
            longer.add(utterance.utt)
            seconds = max_duration
        todo.append((utterance, seconds))
    return todo, failed, longer


def load_classifier(job, device):
    """The packaged model (with its ASR model for ``text_mode="asr"``) on ``device``; one that
    cannot be loaded (a missing or damaged file) is a ``UsageError`` naming it."""
    from crab.encoders import ModelSourceError
    from crab.inference import CrabClassifier

    logger.info("Loading %s on %s", job.model, device)
    try:
        classifier = CrabClassifier.from_hparams(source=job.model, run_opts={"device": device})
    except cli.UserError:
        raise  # its message already names the file
    except (OSError, RuntimeError, ValueError) as err:
        raise UsageError(f"--model {job.model} cannot be loaded: {cli.first_line(err)}") from None
    if job.text_mode == "asr":
        try:
            classifier.load_asr(
                job.asr_model,
                device=device,
                backend=job.asr_backend,
                language=job.language,
                num_beams=job.num_beams,
                max_new_tokens=job.max_new_tokens,
                dtype=job.asr_dtype,
            )
        except ModelSourceError as err:  # it names load_asr's argument
            raise UsageError(f"--asr_model: {err.detail}") from None
        except cli.UserError:
            raise
        except (OSError, RuntimeError, ValueError) as err:
            raise UsageError(f"--asr_model {job.asr_model} cannot be loaded: {cli.first_line(err)}") from None
    return classifier


def classify_all(job, classifier, results, sources, todo, errors, texts):
    """Classify ``todo`` batch by batch.

    Parameters
    ----------
    job : InferenceJob
        The run.
    classifier : crab.inference.CrabClassifier
        The model (``load_classifier``).
    results, sources : Results, Sources
        The results file and the record of what they were classified from.
    todo : list of (Utterance, float)
        The utterances to classify, with their durations (``audio_seconds``).
    errors : FailureLog
        Where the failures go (``<out>.errors`` and the log).
    texts : dict
        ``utt -> transcript`` with ``text_mode="gold"``.

    Returns
    -------
    Runner
        Its ``done`` (``utt -> results line``), ``read_from`` (``utt -> Source``) and ``failed``.
    """
    from tqdm import tqdm

    batches = make_batches(todo, job.batch_size, job.max_batch_seconds)
    with open(job.out, "a", encoding="utf-8") as out_file, open(sources.path, "a", encoding="utf-8") as src:
        files = {"out": out_file, "sources": src, "errors": errors}
        runner = Runner(job, classifier, results, sources, files, texts)
        last_log, processed = time.monotonic(), 0
        with tqdm(total=len(todo), unit="utt", disable=not sys.stderr.isatty(), file=sys.stderr) as progress:
            for k, batch in enumerate(batches):
                runner.run_batch(batch)
                progress.update(len(batch))
                processed += len(batch)
                if progress.disable and (time.monotonic() - last_log > 30 or k == len(batches) - 1):
                    logger.info(
                        "%d of %d utterances to classify processed (%d failed)",
                        processed,
                        len(todo),
                        len(runner.failed),
                    )
                    last_log = time.monotonic()
    return runner
