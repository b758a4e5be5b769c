"""Inference with a packaged Crab: ``CrabClassifier``, a SpeechBrain ``Pretrained``.

A model directory written by ``crab.bin.package`` (recipe stage 8) loads with

    from crab.inference import CrabClassifier
    classifier = CrabClassifier.from_hparams(source="exp/crab_tiny/main/seed42/model")
    out_prob, score, index, text_lab = classifier.classify_file("a.wav", text="I told you so")

or, without importing crab first, with SpeechBrain's ``foreign_class(source=DIR,
pymodule_file="custom_interface.py", classname="CrabClassifier")``. ``from_hparams``
loads the model in place: nothing (no symlink, no copy) is written next to it, unless a
``savedir`` is asked for; a ``savedir`` then takes the files of this package, never
keeping those of an earlier one. (``foreign_class`` imports custom_interface.py, for
which Python writes ``__pycache__`` into the package unless bytecode writing is off.)

The packaged ``hyperparams.yaml`` builds the encoders from the configs and
tokenizer stored in the directory (``pretrained: false``): no hub access, no
training data. Because hyperpyyaml cannot tell a yaml file where it lives,
``PackagedCrab`` builds the model when the ``Pretrainer`` hands it ``model.ckpt``,
from the directory that file is in.

Loading runs no code of the model directory through ``CrabClassifier.from_hparams``
(and so crab-infer): ``hyperparams.yaml`` is parsed, not constructed, and refused
(``UnsafeModelError``, naming the file, line and tag) unless it holds only what
``crab.bin.package`` writes (``check_package_hparams``); ``model.ckpt`` is read with
``torch.load(weights_only=True)`` (``load_weights``), ``label_encoder.ckpt`` as text
(``ast.literal_eval``). ``foreign_class`` imports ``custom_interface.py``, which is
Python: a package from someone else runs their code that way.

Loading also refuses a damaged package, naming the file: one missing, or differing from
the record of its files that packaging writes into ``metadata.json``
(``check_package_files``), a checkpoint that cannot be read, and classes that are not
the model's outputs.
"""

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import pickle
import re
import shutil

import soundfile as sf
import torch
from hyperpyyaml import load_hyperpyyaml
from speechbrain.inference.interfaces import Pretrained
from speechbrain.utils.checkpoints import mark_as_transfer, register_checkpoint_hooks
from speechbrain.utils.fetching import FetchConfig, LocalStrategy, fetch
from torch import nn

from crab.checkpointing import warn_version_drift
from crab.cli import UserError
from crab.data import SAMPLE_RATE, BadAudioError, read_audio, resample
from crab.dataprep import (
    MAX_PEAK,
    MAX_SAMPLE_RATE,
    MIN_SAMPLE_RATE,
    SILENCE_PEAK,
    clean_transcript,
    missing_file,
)
from crab.devices import device_problem, torch_device
from crab.encoders import SpeechEncoder, TextEncoder
from crab.model import Crab, NonFiniteOutputError, non_finite_rows

logger = logging.getLogger(__name__)

DEFAULT_ASR_MODEL = "openai/whisper-large-v3"  # as the MSP-Podcast recipe
ENCODER_DIRS = {"speech": "speech_encoder", "text": "text_encoder"}
METADATA = "metadata.json"
WEIGHTS = "model.ckpt"
LABELS = "label_encoder.ckpt"
# files every package needs, whether or not its metadata.json records its files
NEEDED_FILES = ("hyperparams.yaml", WEIGHTS, LABELS)
# the first line of every hyperparams.yaml that crab.bin.package wrote (each with a metadata.json)
PACKAGED_YAML = "# Crab inference hyperparameters, written by crab.bin.package"

# What crab.bin.package writes into hyperparams.yaml, and nothing else: the tags, and for
# each object the arguments it may get. Any other tag (!apply:, !name:, !module:,
# !include:, !!python/..., another class) is refused before hyperpyyaml sees the file.
PACKAGE_OBJECTS = {
    "!new:crab.inference.PackagedCrab": {
        "speech_encoder",
        "text_encoder",
        "num_classes",
        "modality",
        "hidden_dim",
        "num_heads",
        "attention_dropout",
        "scaled_pooling",
        "bottleneck_dim",
        "dropout",
        "unimodal_leg_input",
        "padding_masks",
    },
    "!new:speechbrain.dataio.encoder.CategoricalEncoder": set(),
    "!new:speechbrain.utils.parameter_transfer.Pretrainer": {"loadables"},
}
PLAIN_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "map", "seq")}
REF = re.compile(r"<([A-Za-z_][A-Za-z0-9_]*)>")


class UnsafeModelError(UserError, ValueError):
    """A packaged model whose files would run code, or that crab.bin.package did not write."""


class ModelFileError(UserError, ValueError):
    """A packaged model with a missing, damaged or changed file, or files that disagree."""


def check_package_hparams(path):
    """Refuse a hyperparams.yaml that holds anything crab.bin.package does not write.

    The file is parsed (not constructed) with PyYAML and every node checked: only plain
    scalars, lists and mappings, the objects of ``PACKAGE_OBJECTS`` with their own
    arguments, and ``!ref <key>`` to a top-level key; no anchor or alias. Nothing of the
    file is executed.
    Raises ``UnsafeModelError`` naming the file, line and tag.
    """
    import yaml

    try:
        with open(path, "rb") as f:
            raw = f.read()
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UnsafeModelError(f"{path}: not UTF-8 text: refusing to load this model") from None
    except OSError as err:
        raise UnsafeModelError(f"{path}: cannot be read ({err})") from None

    def refuse(node, what):
        raise UnsafeModelError(
            f"{path}:{node.start_mark.line + 1}: {what}: refusing to load this model "
            "(crab.bin.package writes "
            "only plain values, !ref and the objects crab.inference.PACKAGE_OBJECTS lists; loading it "
            "with hyperpyyaml could run code)"
        )

    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.DocumentStartEvent) and (event.tags or event.version):
                raise UnsafeModelError(
                    f"{path}:{event.start_mark.line + 1}: a %YAML or %TAG directive: "
                    "refusing to load this model"
                )
            # an alias repeats a node without copying it: a few lines can stand for billions
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                raise UnsafeModelError(
                    f"{path}:{event.start_mark.line + 1}: a YAML anchor or alias: refusing to load this "
                    "model (crab.bin.package writes none)"
                )
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        raise UnsafeModelError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(root, yaml.MappingNode):
        raise UnsafeModelError(f"{path}: not a mapping of hyperparameters: not written by crab.bin.package")
    keys = {k.value for k, _ in root.value if isinstance(k, yaml.ScalarNode)}

    def walk(node):
        tag = node.tag
        if tag == "!ref":
            if not isinstance(node, yaml.ScalarNode) or not REF.fullmatch(node.value.strip()):
                refuse(node, f"'!ref {getattr(node, 'value', '')}' (only '!ref <key>' is allowed)")
            if REF.fullmatch(node.value.strip()).group(1) not in keys:
                refuse(node, f"'!ref {node.value}' names no top-level key")
            return
        if tag in PACKAGE_OBJECTS:
            args = PACKAGE_OBJECTS[tag]
            if isinstance(node, yaml.ScalarNode) and not node.value.strip() and not args:
                return
            if not isinstance(node, yaml.MappingNode):
                refuse(node, f"tag {tag} with arguments that are not a mapping")
            for key, value in node.value:
                if (
                    not isinstance(key, yaml.ScalarNode)
                    or key.tag != "tag:yaml.org,2002:str"
                    or key.value not in args
                ):
                    refuse(key, f"argument '{getattr(key, 'value', key)}' of {tag}")
                walk(value)
            return
        if tag not in PLAIN_TAGS:
            refuse(node, f"tag {tag}")
        if isinstance(node, yaml.ScalarNode):
            # hyperpyyaml reads a plain '(...)' scalar as a !tuple, with yaml's unsafe Loader; a
            # quoted one too: it dumps the file with ruamel.yaml before loading it, which writes a
            # string '(...)' without its quotes
            if node.value.lstrip().startswith("("):
                style = "plain" if node.style is None else "quoted"
                refuse(node, f"{style} value '{node.value[:40]}' (hyperpyyaml would load it as a !tuple)")
            return
        for item in node.value:
            if isinstance(item, tuple):
                walk(item[0])
                walk(item[1])
            else:
                walk(item)

    walk(root)
    return text


def file_sha256(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def package_files(model_dir):
    """The record of the files of ``model_dir`` that packaging writes into metadata.json:
    ``{relative path: {"size": bytes, "sha256": hex}}``, metadata.json itself aside."""
    record = {}
    for base, dirs, files in os.walk(model_dir):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(base, name)
            relative = os.path.relpath(path, model_dir).replace(os.sep, "/")
            if relative != METADATA:
                record[relative] = {"size": os.path.getsize(path), "sha256": file_sha256(path)}
    return record


def _recorded_files(model_dir):
    """The record of metadata.json's ``files``, or None for a package made before it."""
    path = os.path.join(model_dir, METADATA)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f).get("files")
    except (OSError, ValueError, AttributeError) as err:
        raise ModelFileError(f"{path}: not a JSON object ({err}): the package is damaged") from None
    if record is None:
        return None
    if not isinstance(record, dict) or not all(
        isinstance(e, dict) and isinstance(e.get("size"), int) and isinstance(e.get("sha256"), str)
        for e in record.values()
    ):
        raise ModelFileError(f"{path}: 'files' is not a record of sizes and sha256: the package is damaged")
    unsafe = [r for r in record if os.path.isabs(r) or os.path.normpath(r).split(os.sep)[0] == ".."]
    if unsafe:
        raise ModelFileError(f"{path}: 'files' names {unsafe[0]}, outside the package")
    return record


def _recorded_versions(model_dir):
    """metadata.json's ``versions`` (those packaging checked the package's outputs with), or None."""
    try:
        with open(os.path.join(model_dir, METADATA), encoding="utf-8") as f:
            versions = json.load(f).get("versions")
    except (OSError, ValueError, AttributeError):  # none, or refused by check_package_files
        return None
    return versions if isinstance(versions, dict) else None


def _packaged(model_dir):
    """Whether crab.bin.package wrote the hyperparams.yaml of ``model_dir``."""
    try:
        with open(os.path.join(model_dir, "hyperparams.yaml"), encoding="utf-8") as f:
            return f.readline().startswith(PACKAGED_YAML)
    except (OSError, UnicodeDecodeError):
        return False


def check_package_files(model_dir):
    """Refuse a package with a missing file, or one that differs from its record.

    A package whose hyperparams.yaml crab.bin.package wrote needs its metadata.json; one put
    together by hand, without it, loads with a warning that its files are unchecked. A
    package made before the record (no ``files`` in metadata.json) needs ``NEEDED_FILES``.
    Otherwise every recorded file must be there with its size and its sha256 (the weights
    too: a changed byte loads, and predicts otherwise; about 2 s for a paper-size model); and the
    encoder folders, which transformers reads whole, may hold no other file. Raises
    ``ModelFileError`` naming the file.
    """
    if not os.path.isfile(os.path.join(model_dir, METADATA)):
        if _packaged(model_dir):
            raise ModelFileError(
                f"{os.path.join(model_dir, METADATA)} is missing: crab.bin.package wrote it with this "
                "package, and its record of the files is what checks them (copy the package whole)"
            )
        logger.warning("%s has no %s: its files are not checked", model_dir, METADATA)
    record = _recorded_files(model_dir)
    for name in NEEDED_FILES if record is None else sorted(record):
        _check_present(model_dir, [name])
        if record is None:
            continue
        path = os.path.join(model_dir, name)
        size, expected = os.path.getsize(path), record[name]
        if size != expected["size"]:
            raise ModelFileError(
                f"{path} has {size} bytes, but the package was made with {expected['size']} "
                f"({METADATA}): the file is truncated or changed"
            )
        if file_sha256(path) != expected["sha256"]:
            raise ModelFileError(
                f"{path} is not the file the package was made with (its sha256 differs from "
                f"{METADATA}'s): the file is damaged or changed"
            )
    for folder in ENCODER_DIRS.values() if record is not None else ():
        for base, _, files in os.walk(os.path.join(model_dir, folder)):
            for name in files:
                relative = os.path.relpath(os.path.join(base, name), model_dir).replace(os.sep, "/")
                if relative not in record:
                    raise ModelFileError(
                        f"{os.path.join(model_dir, relative)} is not a file of this package ({METADATA} "
                        "lists them), and transformers would read it: remove it"
                    )


def load_weights(path):
    """``torch.load(path, weights_only=True)``: tensors and plain containers only, never a pickled
    object that runs code; such a file is refused naming it, as is a missing or unreadable one."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeModelError(
            f"{path} holds more than weights (a pickled object that loading would run): refusing to load it "
            f"({str(err).splitlines()[0][:200]})"
        ) from None
    except FileNotFoundError:
        raise ModelFileError(f"{path} is missing") from None
    except (RuntimeError, EOFError, LookupError, ValueError, OSError) as err:
        first = (str(err).splitlines() or [type(err).__name__])[0][:200]
        raise ModelFileError(
            f"{path} is not a readable PyTorch checkpoint: truncated or damaged ({first})"
        ) from None


class DeviceError(UserError, ValueError):
    """A device that is not there (a CUDA device without a GPU, or an index past the last GPU)."""


def resolve_run_opts(run_opts):
    """``run_opts`` (a dict or SpeechBrain's ``RunOptions``, or None) with its ``device`` as
    torch names it (``torch_device``): SpeechBrain knows no ``auto`` and warns on ``cuda``
    without an index. A CUDA device that is not there is a ``DeviceError``."""
    is_dict = isinstance(run_opts, dict)
    device = run_opts.get("device") if is_dict else getattr(run_opts, "device", None)
    if device is None:
        return run_opts
    resolved = torch_device(device)
    problem = device_problem(resolved)
    if problem:
        raise DeviceError(
            f"run_opts device {device!r}: {problem}: use 'cpu', or 'auto' (a GPU when there is one)"
        )
    if is_dict:
        return {**run_opts, "device": resolved}
    return dataclasses.replace(run_opts, device=resolved)


class AudioError(ValueError):
    """Audio that the model cannot classify: missing, unreadable, empty, silent, too short,
    non-finite (NaN or infinite samples), out of range (amplitude beyond ``MAX_PEAK``, or a
    sample rate outside ``MIN_SAMPLE_RATE``-``MAX_SAMPLE_RATE``)."""


def check_audio(wav, min_samples):
    """Why the 16 kHz waveform ``wav`` (1-D) cannot be classified, or None.

    In order: no samples, fewer than ``min_samples``, NaN or infinite samples, a peak
    beyond ``crab.dataprep.MAX_PEAK`` (float audio lies within [-1, 1]), silence (peak at
    or below ``SILENCE_PEAK``): the limits data prep and training reading apply.

    Example
    -------
    >>> import torch
    >>> check_audio(torch.full((16000,), 0.1), min_samples=400) is None
    True
    >>> check_audio(torch.zeros(16000), min_samples=400)
    'silent audio (peak amplitude 0)'
    >>> check_audio(torch.full((100,), 0.1), min_samples=400)
    'audio too short for the speech encoder (100 samples at 16 kHz, need at least 400)'
    """
    if wav.numel() == 0:
        return "empty audio (no samples)"
    if wav.numel() < min_samples:
        return (
            f"audio too short for the speech encoder ({wav.numel()} samples at 16 kHz, "
            f"need at least {min_samples})"
        )
    peak = float(wav.abs().max())  # NaN when a sample is NaN
    if not math.isfinite(peak):
        return "NaN or infinite samples"
    if peak > MAX_PEAK:
        return f"amplitude out of range (peak {peak:.3g} > {MAX_PEAK:g}; audio should lie within [-1, 1])"
    if peak <= SILENCE_PEAK:
        return f"silent audio (peak amplitude {peak:.2g})"
    return None


def load_audio_file(path, max_duration=None):
    """Mono 16 kHz float32 waveform of ``path`` (any rate, any channel count).

    Raises ``AudioError`` naming the file when it is missing or unreadable, or holds
    NaN or infinite samples, an amplitude beyond ``MAX_PEAK`` or a sample rate outside
    ``MIN_SAMPLE_RATE``-``MAX_SAMPLE_RATE`` (``crab.data.read_audio``).
    """
    if not os.path.isfile(path):
        raise AudioError(missing_file(path))
    try:
        return read_audio(path, max_duration)
    except BadAudioError as err:  # its message names the file
        raise AudioError(str(err)) from None
    except (OSError, RuntimeError, sf.LibsndfileError) as err:
        raise AudioError(f"unreadable audio file {path} ({err})") from None


def _check_texts_type(texts):
    """Refuse ``texts`` unless None or a list (or tuple) of str: SpeechBrain's
    ``classify_batch(wavs, wav_lens)`` would put the lengths there, and a single string
    would be read character by character."""
    usage = (
        "CrabClassifier.classify_batch(wavs, texts=None, wav_lens=None, sample_rate=16000) takes a list "
        "of transcripts (str, one per utterance) second, and relative lengths by keyword: "
        "classify_batch(wavs, texts, wav_lens=lens), or classify_batch(wavs, wav_lens=lens) for a "
        "speech-only model"
    )
    if texts is None:
        return
    if isinstance(texts, str):
        raise TypeError(f"texts is one str, not a list of them: {usage} (for one utterance: [text])")
    if not isinstance(texts, (list, tuple)):
        raise TypeError(f"texts is a {type(texts).__name__}, not a list of str: {usage}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is a {type(text).__name__}, not a str: {usage}")


def _resolve(model_dir, source):
    """An encoder source of the yaml: a folder of the package, else a hub id or path."""
    local = os.path.join(model_dir, source)
    return local if os.path.isdir(local) else source


@register_checkpoint_hooks
class PackagedCrab(nn.Module):
    """A ``crab.model.Crab`` built from a package directory when its weights are loaded.

    Arguments
    ---------
    speech_encoder, text_encoder : dict or None
        ``crab.encoders.SpeechEncoder`` / ``TextEncoder`` options; ``source`` (and
        ``tokenizer``) are folders of the package directory (or hub ids). Built
        with ``pretrained=False``: the weights come from ``model.ckpt``. As in
        training, only the encoders of the ``modality`` are built (a package describes
        both, or, written before the template, gives None for the other).
    **crab_options
        ``crab.model.Crab`` arguments (num_classes, modality, hidden_dim, ...).
    """

    def __init__(self, speech_encoder=None, text_encoder=None, **crab_options):
        super().__init__()
        self.encoder_options = {"speech": speech_encoder, "text": text_encoder}
        self.crab_options = crab_options
        self.crab = None
        self.model_dir = None

    def _used_encoders(self):
        """``{branch: options}`` of the encoders the modality uses."""
        modality = self.crab_options.get("modality", "bimodal")
        return {b: o for b, o in self.encoder_options.items() if o and modality in ("bimodal", b)}

    def build(self, model_dir):
        """Build the (randomly initialised) Crab from the configs in ``model_dir``."""
        used = {b: dict(o) for b, o in self._used_encoders().items()}
        speech, text = used.get("speech"), used.get("text")
        if speech:
            speech["source"] = _resolve(model_dir, speech["source"])
        if text:
            text["source"] = _resolve(model_dir, text["source"])
            text["tokenizer"] = _resolve(model_dir, text.get("tokenizer") or text["source"])
        self.crab = Crab(
            speech_encoder=(lambda: SpeechEncoder(pretrained=False, **speech)) if speech else None,
            text_encoder=(lambda: TextEncoder(pretrained=False, **text)) if text else None,
            **self.crab_options,
        )
        self.model_dir = model_dir
        return self.crab

    @mark_as_transfer
    def load_package(self, path):
        """Build the model from the directory of ``path`` (model.ckpt) and load it (strict)."""
        model_dir = self._find_model_dir(path)
        self.build(model_dir)
        state = load_weights(path)
        try:
            self.crab.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise ModelFileError(
                f"{path} does not fit the model of {model_dir}/hyperparams.yaml: {' '.join(str(err).split())}"
            ) from None

    def _find_model_dir(self, path):
        """The package directory: where a link ``path`` points (never a folder left next to the
        link by an earlier model), or where it is."""
        needed = [o["source"] for o in self._used_encoders().values()]
        candidates = [os.path.dirname(os.path.realpath(path)), os.path.dirname(os.path.abspath(path))]
        for candidate in candidates:
            if all(os.path.isdir(os.path.join(candidate, s)) or not _is_local_name(s) for s in needed):
                return candidate
        raise FileNotFoundError(
            f"the encoder folders {needed} are not next to {path}: load the model from its "
            "package directory (no savedir), or copy the whole directory"
        )

    @property
    def min_samples(self):
        """Shortest waveform (16 kHz samples) the speech encoder can take; 0 without one."""
        encoder = self._model().speech_encoder
        return encoder.min_samples if encoder is not None else 0

    @property
    def needs_text(self):
        return self._model().text_encoder is not None

    @property
    def needs_speech(self):
        return self._model().speech_encoder is not None

    def _model(self):
        if self.crab is None:
            raise RuntimeError("PackagedCrab is built when its model.ckpt is loaded (by the Pretrainer)")
        return self.crab

    def forward(self, wavs=None, wav_lens=None, texts=None):
        return self._model()(wavs, wav_lens, texts)


HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


def package_dir(source, savedir=None, revision=None, allow_network=True):
    """The local directory of the package ``source``: ``source`` itself, or, for a Hugging
    Face Hub id (``owner/name``, not a directory here), the whole repository downloaded as
    plain files (no links into the hub's cache) into ``savedir``, else into
    ``<hub cache>/crab_packages/owner--name``. A package from the hub is then checked like
    any other (``check_package_files``: every file against metadata.json's record)."""
    source = str(source)
    if os.path.isdir(source):
        return source
    if os.path.exists(source) or not HUB_ID.fullmatch(source) or not allow_network:
        raise ModelFileError(f"{source} is not a directory (a package directory, or a Hugging Face Hub id)")
    from huggingface_hub import constants, snapshot_download

    target = savedir or os.path.join(constants.HF_HUB_CACHE, "crab_packages", source.replace("/", "--"))
    try:
        return snapshot_download(repo_id=source, revision=revision, local_dir=str(target))
    except (OSError, ValueError) as err:  # offline, no such repository, no access
        first = (str(err).splitlines() or [type(err).__name__])[0][:200]
        raise ModelFileError(
            f"{source} is not a directory here and could not be downloaded from the Hugging Face Hub "
            f"({type(err).__name__}: {first}): give a package directory"
        ) from None


def _check_present(folder, names):
    for name in names:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise ModelFileError(f"{path} is missing: the package is incomplete (copy it whole)")


def _bring_rest_of_package(source, savedir, local_strategy):
    """Put the package's files and folders that SpeechBrain does not fetch (metadata.json,
    the encoder folders, the card, ...) into ``savedir`` as it put the others: copies, or
    links (``LocalStrategy.SYMLINK``), replacing what an earlier model left there; so that
    the savedir is a whole package, which loads (and is checked) as one."""
    if os.path.realpath(source) == os.path.realpath(savedir):
        return
    fetched = set(NEEDED_FILES)  # hyperparams.yaml (fetched first) and the pretrainer's two
    for name in sorted(os.listdir(source)):
        if name in fetched or name == "__pycache__":
            continue
        origin, target = os.path.join(source, name), os.path.join(savedir, name)
        if os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target)
        elif os.path.lexists(target):
            os.remove(target)
        if local_strategy == LocalStrategy.SYMLINK:
            os.symlink(os.path.abspath(origin), target)
        elif os.path.isdir(origin):
            shutil.copytree(origin, target)
        else:
            shutil.copy2(origin, target)


def check_interface_package(interface_file):
    """Check the package of the ``custom_interface.py`` that ``foreign_class`` imports, before
    hyperpyyaml builds its yaml; returns the package directory. That is the file's own folder
    when it holds the package's metadata.json (in place, or a Hugging Face cache snapshot whose
    files are links into ``blobs/``), else the folder the file links to (a savedir of links).
    A folder without metadata.json (a copying savedir holds custom_interface.py alone) is a
    ``ModelFileError``; then ``check_package_hparams`` and ``check_package_files``."""
    here = os.path.dirname(os.path.abspath(interface_file))
    folders = dict.fromkeys([here, os.path.dirname(os.path.realpath(interface_file))])
    package = next((f for f in folders if os.path.isfile(os.path.join(f, METADATA))), None)
    if package is None:
        raise ModelFileError(
            f"{os.path.join(here, METADATA)} is missing: the package's record of its files, which "
            "checks them; give foreign_class the whole package directory and no copying savedir "
            "(CrabClassifier.from_hparams copies a package whole)"
        )
    if os.path.isfile(os.path.join(package, "hyperparams.yaml")):
        check_package_hparams(os.path.join(package, "hyperparams.yaml"))
    check_package_files(package)
    return package


def _is_local_name(source):
    """A package folder name (``speech_encoder``), as opposed to a hub id or absolute path."""
    return not os.path.isabs(source) and "/" not in source


class CrabClassifier(Pretrained):
    """Speech emotion recognition with a packaged Crab.

    ``classify_batch`` and ``classify_file`` return ``(out_prob, score, index,
    text_lab)`` as SpeechBrain's classifiers do: ``out_prob`` holds the class
    probabilities (softmax, batch x classes, in the label encoder's order),
    ``score`` the highest probability, ``index`` its class index and
    ``text_lab`` the label names.

    A bimodal or text model needs a transcript per utterance. Without one,
    transcribe explicitly: ``load_asr()`` then ``transcribe_file()`` /
    ``transcribe_batch()`` (what ``crab-infer --text_mode asr`` does).

    Arguments
    ---------
    As ``speechbrain.inference.interfaces.Pretrained``; build it with ``from_hparams(source=DIR)``,
    ``DIR`` a model packaged by stage 8 (``exp/<tag>/<fold>/seed<seed>/model``). Its
    ``hyperparams.yaml`` (``check_package_hparams``) and files (``check_package_files``)
    are checked before it is loaded.

    Returns
    -------
    ``classify_file(path, text=None)`` and ``classify_batch(wavs, texts=None, wav_lens=None,
    sample_rate=16000)``: ``(out_prob, score, index, text_lab)`` as above.

    Example
    -------
    Classifying needs a packaged model (skipped here):

    >>> classifier = CrabClassifier.from_hparams(source="exp/crab_tiny/main/seed42/model")  # doctest: +SKIP
    >>> out_prob, score, index, text_lab = classifier.classify_file(  # doctest: +SKIP
    ...     "angry.wav", text="I told you so"
    ... )
    >>> text_lab  # doctest: +SKIP
    ['angry']

    Audio it cannot classify is an ``AudioError`` naming the reason, the one ``check_audio`` gives:

    >>> import torch
    >>> check_audio(torch.tensor([0.1, float("nan")] * 8000), min_samples=400)
    'NaN or infinite samples'
    >>> check_audio(torch.full((16000,), 2000.0), min_samples=400)  # 16-bit integers, not floats
    'amplitude out of range (peak 2e+03 > 1000; audio should lie within [-1, 1])'
    """

    HPARAMS_NEEDED = ["classes", "label_encoder", "modality"]
    MODULES_NEEDED = ["model"]

    def __init__(self, modules=None, hparams=None, run_opts=None, freeze_params=True):
        # here too, not only in from_hparams: foreign_class builds the class directly
        super().__init__(modules, hparams, resolve_run_opts(run_opts), freeze_params)
        model_dir = self.mods.model.model_dir
        encoder = self.hparams.label_encoder
        labels = [encoder.ind2lab[i] for i in range(len(encoder))] if len(encoder) else []
        if labels != list(self.hparams.classes):
            raise ModelFileError(
                f"{os.path.join(model_dir, LABELS)} holds {labels}, but hyperparams.yaml says "
                f"{list(self.hparams.classes)}"
            )
        outputs = self.mods.model.crab_options.get("num_classes")
        if len(labels) != outputs:
            raise ModelFileError(
                f"{os.path.join(model_dir, 'hyperparams.yaml')}: {len(labels)} classes {labels}, but the "
                f"model ({WEIGHTS}, num_classes) gives {outputs} scores: its probabilities would be "
                "misnamed"
            )
        encoder.expect_len(len(labels))
        self.asr = None
        self.asr_model = None

    @classmethod
    def from_hparams(
        cls,
        source,
        hparams_file="hyperparams.yaml",
        local_strategy=LocalStrategy.NO_LINK,
        overrides=None,
        overrides_must_match=True,
        savedir=None,
        download_only=False,
        fetch_config=None,
        **kwargs,
    ):
        """Load from a package directory, or a Hugging Face Hub id (``package_dir``: the whole
        repository downloaded first); by default in place (``LocalStrategy.NO_LINK``).

        As SpeechBrain's ``Pretrained.from_hparams``, but the yaml built is the text that
        ``check_package_hparams`` checked, and a package directory is checked
        (``check_package_files``) before anything of it is loaded. With a ``savedir``, each
        file is fetched again from the package (one left there by another model is not
        used), and with a copying strategy the encoder folders are copied there too, so
        that the copy is complete.

        ``run_opts={"device": ...}`` takes ``cpu``, ``cuda``, ``cuda:<index>`` or ``auto`` (a GPU
        when there is one); a CUDA device that is not there is a ``DeviceError``.
        """
        if kwargs.get("run_opts") is not None:  # a device that is not there: before loading
            kwargs["run_opts"] = resolve_run_opts(kwargs["run_opts"])
        fetch_config = fetch_config or FetchConfig()
        if not os.path.isdir(str(source)):  # a hub id: the whole package, then loaded in place
            source = package_dir(source, savedir, fetch_config.revision, fetch_config.allow_network)
            savedir = None
        _check_present(str(source), [hparams_file, WEIGHTS, LABELS])
        if savedir is not None and local_strategy == LocalStrategy.NO_LINK:
            logger.warning(
                "savedir %s: nothing is put there with local_strategy NO_LINK (the default): %s loads in "
                "place; LocalStrategy.COPY or SYMLINK puts the package there",
                savedir,
                source,
            )
        if savedir is not None:
            fetch_config = dataclasses.replace(fetch_config, overwrite=True)
        hparams_path = fetch(
            filename=hparams_file,
            source=source,
            savedir=savedir,
            save_filename=None,
            local_strategy=local_strategy,
            fetch_config=fetch_config,
        )
        # refuse a yaml that would run anything but the package's own classes (hyperpyyaml
        # runs any !apply:, !new:, !name: it is given)
        text = check_package_hparams(hparams_path)
        check_package_files(str(source))
        warn_version_drift(_recorded_versions(str(source)), f"{source} was packaged")
        if savedir is not None and local_strategy != LocalStrategy.NO_LINK:
            _bring_rest_of_package(str(source), str(savedir), local_strategy)
        hparams = load_hyperpyyaml(text, overrides or {}, overrides_must_match)
        hparams["savedir"] = savedir
        pretrainer = hparams["pretrainer"]
        pretrainer.set_collect_in(savedir)
        paths = pretrainer.collect_files(
            default_source=source, local_strategy=local_strategy, fetch_config=fetch_config
        )
        for path in paths.values():  # SpeechBrain loads a missing label encoder as an empty one
            _check_present(os.path.dirname(str(path)), [os.path.basename(str(path))])
        if download_only:
            return None
        pretrainer.load_collected()
        return cls(modules=hparams["modules"], hparams=hparams, **kwargs)

    @property
    def classes(self):
        return list(self.hparams.classes)

    @property
    def needs_text(self):
        return self.mods.model.needs_text

    @property
    def min_samples(self):
        return self.mods.model.min_samples

    @property
    def max_samples(self):
        """Audio kept per utterance (as in training), in 16 kHz samples; None keeps all."""
        max_duration = getattr(self.hparams, "max_duration", None)
        return None if max_duration is None else int(max_duration * SAMPLE_RATE)

    def load_audio(self, path, savedir=None):
        """Mono 16 kHz waveform of ``path`` (any rate or channel count), cut to the
        training ``max_duration``; ``AudioError`` when missing or unreadable."""
        return load_audio_file(path, getattr(self.hparams, "max_duration", None))

    def classify_file(self, path, text=None):
        """Classify one audio file (any sample rate, any channel count). Audio longer than the
        model's ``max_duration`` is cut to it, as in training, with a warning."""
        if text is not None and not isinstance(text, str):
            raise TypeError(f"text must be the transcript (a str) of {path}, not a {type(text).__name__}")
        wav = self.load_audio(path) if self.mods.model.needs_speech else torch.zeros(0)
        if self.mods.model.needs_speech:
            problem = check_audio(wav, self.min_samples)
            if problem:
                raise AudioError(f"{path}: {problem}")
            max_duration = getattr(self.hparams, "max_duration", None)
            seconds = sf.info(path).duration  # the header: the file was read up to max_duration only
            if max_duration is not None and seconds > max_duration:
                logger.warning(
                    "%s: %.1f s of audio, longer than the model's max_duration: only its first %g s "
                    "are classified (cut it into segments to classify the rest)",
                    path,
                    seconds,
                    max_duration,
                )
        texts = None if text is None else [text]
        return self.classify_batch(wav.unsqueeze(0), texts)

    def classify_batch(self, wavs, texts=None, wav_lens=None, sample_rate=SAMPLE_RATE):
        """Classify a batch.

        Note the order: transcripts come second, so relative lengths go by keyword,
        ``classify_batch(wavs, wav_lens=lens)``, not second as in SpeechBrain's
        ``EncoderClassifier.classify_batch(wavs, wav_lens)`` (a tensor there is a ``TypeError``).

        Arguments
        ---------
        wavs : torch.Tensor
            Mono waveforms ``(batch, time)``, padded at the end; or ``(batch, time,
            channels)`` (averaged to mono); or one ``(time,)`` waveform. A 2-D tensor is
            always ``(batch, time)``: torchaudio's ``(channels, time)`` would be a batch of
            channels, so mix it down first (``wav.mean(0)``) or use ``classify_file``, which
            reads any channel count. A padded length shorter than the speech encoder reads
            (``min_samples`` at 16 kHz), as a ``(time, channels)`` tensor has, is an ``AudioError``.
            Utterances longer than the model's ``max_duration`` are cut to it, as in training,
            with one warning per batch. None for a text model.
        texts : list of str or None
            One transcript per utterance; a list of str is ignored by a speech-only model.
        wav_lens : torch.Tensor or None
            SpeechBrain relative lengths in (0, 1]: each utterance's samples over the padded
            length (1.0 = all of it); None: all full. Lengths in samples are a ``ValueError``.
        sample_rate : int
            Rate of ``wavs``; resampled to 16 kHz when different.

        Returns
        -------
        out_prob, score, index, text_lab

        Raises
        ------
        TypeError
            ``texts`` is not a list of str (a tensor of lengths, one string).
        AudioError
            An utterance's audio cannot be classified (``check_audio``), or
            ``sample_rate`` is outside ``MIN_SAMPLE_RATE``-``MAX_SAMPLE_RATE``;
            the message starts with ``utterance <i> of the batch:``.
        NonFiniteOutputError
            The model gave NaN or infinite scores for an utterance: ``utterance(s)
            [i, ...] of the batch: non-finite model output ...``. Never a prediction.
        """
        _check_texts_type(texts)
        wavs, wav_lens = self._prepare_audio(wavs, wav_lens, sample_rate)
        batch = wavs.shape[0] if wavs is not None else len(texts or [])
        texts = self._prepare_texts(texts, batch)
        with torch.no_grad(), self.inference_ctx:
            logits, _ = self.mods.model(wavs, wav_lens, texts)
        bad = non_finite_rows(logits)
        if bad:
            raise NonFiniteOutputError(
                f"utterance(s) {bad} of the batch: non-finite model output (NaN or infinite scores); "
                "no prediction"
            )
        out_prob = torch.softmax(logits.float(), dim=-1)
        score, index = torch.max(out_prob, dim=-1)
        # from one copy to the host: decode_torch reads each index on its own, a wait for the device each
        text_lab = self.hparams.label_encoder.decode_ndim(index.tolist())
        return out_prob, score, index, text_lab

    def forward(self, wavs, texts=None, wav_lens=None):
        return self.classify_batch(wavs, texts, wav_lens)

    def _prepare_audio(self, wavs, wav_lens, sample_rate):
        if not self.mods.model.needs_speech:
            return None, None
        wavs = torch.as_tensor(wavs, dtype=torch.float32)
        shape, layout = tuple(wavs.shape), "(batch, time)"
        if wavs.dim() == 1:
            wavs, layout = wavs.unsqueeze(0), None  # one waveform: too short is check_audio's
        elif wavs.dim() == 3:
            wavs, layout = wavs.mean(dim=-1), "(batch, time, channels)"
        elif wavs.dim() != 2:
            raise ValueError(
                f"wavs must be (batch, time) or (batch, time, channels), got shape {tuple(wavs.shape)}"
            )
        if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
            raise AudioError(
                f"sample rate {sample_rate} Hz outside {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz: not resampled"
            )
        # before resampling: soxr takes a (time, channels) tensor's time as its channels and fails
        if layout and wavs.shape[1] * SAMPLE_RATE < self.min_samples * sample_rate:
            raise AudioError(
                f"wavs of shape {shape} read as {layout}: {wavs.shape[1]} samples per utterance at "
                f"{sample_rate} Hz, fewer than the speech encoder reads ({self.min_samples} at 16 kHz). "
                "classify_batch takes mono (batch, time) waveforms, or (batch, time, channels): mix a "
                "(time, channels) tensor down first (wav.mean(-1)), put the channels of a (batch, "
                "channels, time) one last, or use classify_file, which reads any channel count"
            )
        wav_lens = self._check_wav_lens(wav_lens, wavs)
        wavs = resample(wavs, sample_rate, SAMPLE_RATE)  # soxr: memory does not grow with odd rates
        lengths = torch.round(wav_lens * wavs.shape[1]).long().clamp(0, wavs.shape[1])
        if self.max_samples is not None and wavs.shape[1] > self.max_samples:
            cut = int((lengths > self.max_samples).sum())
            if cut:
                logger.warning(
                    "%d of the %d utterances of the batch are longer than the model's max_duration: "
                    "only their first %g s are classified",
                    cut,
                    len(lengths),
                    self.max_samples / SAMPLE_RATE,
                )
            wavs = wavs[:, : self.max_samples]
            lengths = lengths.clamp(max=self.max_samples)
        for i, (wav, n) in enumerate(zip(wavs, lengths.tolist(), strict=True)):
            problem = check_audio(wav[:n], self.min_samples)
            if problem:
                raise AudioError(f"utterance {i} of the batch: {problem}")
        wav_lens = lengths.float() / wavs.shape[1]  # stays on the host: the encoder reads it there
        return wavs.to(self.device), wav_lens

    @staticmethod
    def _check_wav_lens(wav_lens, wavs):
        """``wav_lens`` as a float tensor on the host (all ones for None); refused unless one
        relative length per row of ``wavs``, each within [0, 1] (0 is check_audio's empty audio)."""
        if wav_lens is None:
            return torch.ones(wavs.shape[0])
        wav_lens = torch.as_tensor(wav_lens, dtype=torch.float32).cpu()
        if wav_lens.shape != (wavs.shape[0],):
            raise ValueError(
                f"wav_lens has shape {tuple(wav_lens.shape)} for {wavs.shape[0]} utterances: give one "
                "relative length per utterance"
            )
        if not bool(((wav_lens >= 0) & (wav_lens <= 1 + 1e-5)).all()):  # NaN fails both
            raise ValueError(
                f"wav_lens must be relative lengths in (0, 1] (SpeechBrain's: each utterance's samples "
                f"over the padded length, 1.0 = all of it), but the largest is {float(wav_lens.max()):g}"
                f" and the smallest {float(wav_lens.min()):g}: for lengths in samples, divide them by "
                f"wavs.shape[1] ({wavs.shape[1]})"
            )
        return wav_lens

    def _prepare_texts(self, texts, batch):
        if not self.needs_text:
            return None
        if texts is None:
            raise ValueError(
                f"this {self.hparams.modality} model needs a transcript per utterance: pass texts "
                "(or transcribe with load_asr() and transcribe_batch())"
            )
        texts = [clean_transcript(t)[0] for t in texts]  # as data prep and training do
        if len(texts) != batch:
            raise ValueError(
                f"{len(texts)} transcripts for {batch} utterances: give one per row of wavs, which is "
                "(batch, time) (mix a (channels, time) waveform down first: wav.mean(0))"
            )
        empty = [i for i, t in enumerate(texts) if not t.strip()]
        if empty:
            raise ValueError(f"empty transcript for utterance(s) {empty} of the batch")
        return texts

    def load_asr(
        self,
        model=DEFAULT_ASR_MODEL,
        device=None,
        backend="auto",
        language=None,
        task=None,
        num_beams=1,
        max_new_tokens=128,
        dtype="auto",
    ):
        """Load an ASR model for ``transcribe_batch`` / ``transcribe_file``.

        Any Hugging Face ASR model, through ``crab.asr``'s loaders
        (Whisper by default, as the MSP-Podcast recipe uses for its transcripts).
        """
        from crab.asr import load_transcriber

        args = argparse.Namespace(
            model=model,
            device=device or self.device,
            backend=backend,
            language=language,
            task=task,
            num_beams=num_beams,
            max_new_tokens=max_new_tokens,
            dtype=dtype,
        )
        self.asr = load_transcriber(args, option="model")
        self.asr_model = model
        return self

    def transcribe_batch(self, wavs, wav_lens=None):
        """Transcripts (one line each, single spaces) of 16 kHz mono audio: a padded
        ``(batch, time)`` tensor with relative ``wav_lens``, or a list of 1-D waveforms.

        Audio that ``check_audio`` rejects (empty, NaN or infinite, out of range,
        silent) is an ``AudioError`` starting ``utterance <i> of the batch:``."""
        if self.asr is None:
            raise RuntimeError("no ASR model: call load_asr() first")
        if isinstance(wavs, (list, tuple)):
            audios = [torch.as_tensor(w, dtype=torch.float32).cpu().numpy() for w in wavs]
        else:
            wavs = torch.as_tensor(wavs, dtype=torch.float32)
            if wavs.dim() == 1:
                wavs = wavs.unsqueeze(0)
            if wav_lens is None:
                wav_lens = torch.ones(wavs.shape[0])
            lengths = torch.round(torch.as_tensor(wav_lens) * wavs.shape[1]).long().tolist()
            audios = [wav[:n].cpu().numpy() for wav, n in zip(wavs, lengths, strict=True)]
        for i, audio in enumerate(audios):  # what the classifier refuses, the ASR model does not hear
            problem = check_audio(torch.from_numpy(audio), 1)
            if problem:
                raise AudioError(f"utterance {i} of the batch: {problem}")
        outputs = self.asr(audios) if audios else []
        if len(outputs) != len(audios):
            raise RuntimeError(f"the ASR model gave {len(outputs)} transcripts for {len(audios)} utterances")
        return [" ".join(text.split()) for text in outputs]

    def transcribe_file(self, path):
        """Transcript of one audio file (any rate or channel count; not cut to max_duration)."""
        return self.transcribe_batch(load_audio_file(path).unsqueeze(0))[0]
