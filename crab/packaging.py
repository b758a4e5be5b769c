"""Packaging a trained run as a self-contained inference model directory (recipe stage 8).

``package(hparams, out, ...)`` writes the directory ``crab.bin.package`` describes:
model.ckpt, label_encoder.ckpt, class_weights.json, metadata.json, hyperparams.yaml
(checked by ``crab.inference.check_package_hparams`` when loaded), the encoders'
configs, custom_interface.py, README.md (``crab.model_card``); then loads it back and
checks it reproduces the model. metadata.json records every other file but README.md
with its size and sha256 (``crab.inference.package_files``): loading refuses a package
that lost or changed one.

Nothing shipped names the training machine's folders (``portable``): an absolute path in
the run's folder is written ``.../<tag>/<fold>/seed<seed>/...``, any other ``.../<its last
part>`` (``--data_root``, a local encoder or ASR model); the checkpoint is named by its folder.

hyperparams.yaml is the committed hyperpyyaml template ``crab/templates/inference.yaml``
(``INFERENCE_TEMPLATE``) with each ``!PLACEHOLDER`` value filled from the run's own
hyperparams.yaml, the training key of the same name (``train_text_source`` from the run's
record): nothing is read off the built model. One template serves every config: the paper
family (crab.yaml, crab_base.yaml, crab_tiny.yaml) and the authors'-code reference family
(crab_reference.yaml, crab_reference_tiny.yaml) have the same model and encoder keys and
differ only in their values.
"""

import datetime
import glob
import importlib.resources
import json
import logging
import os
import platform
import re
import shutil

import torch
import yaml

import crab
from crab import cli
from crab.checkpointing import TRAIN_SECONDS, VERSIONS, warn_version_drift
from crab.data import label_encoder
from crab.encoders import waveform_normalization_mode
from crab.fileio import is_write_failure, make_dirs, replace_dir
from crab.inference import ENCODER_DIRS, METADATA, CrabClassifier, load_weights, package_files
from crab.locking import beside_lock
from crab.metrics import METRICS
from crab.model_card import CARD, model_card, run_name
from crab.report import evaluated_checkpoint, git_commit

logger = logging.getLogger(__name__)

TEXT_SOURCES = ("gold", "asr", "unknown")
# what a package holds at its top (foreign_class's loading may add __pycache__)
PACKAGE_ENTRIES = {
    METADATA,
    CARD,
    "model.ckpt",
    "label_encoder.ckpt",
    "class_weights.json",
    "hyperparams.yaml",
    "train_hyperparams.yaml",
    "custom_interface.py",
    "__pycache__",
    *ENCODER_DIRS.values(),
}
INFERENCE_TEMPLATE = "templates/inference.yaml"  # in the crab package
# the template's keys that are not training keys: packaging fills them
PACKAGE_KEYS = ("train_text_source",)
PLACEHOLDER = re.compile(r"^([A-Za-z_]\w*):[ \t]*!PLACEHOLDER\b", re.MULTILINE)
WORD = re.compile(r"[A-Za-z_][\w.-]*")
# an absolute path: a slash after no name (conf/x, ./x, .../x, <tag>/x, {data_root}/x) and
# not a URL's (https://), up to a space, quote, comma or bracket
PATH_START, PATH_CHARS = r"(?<![\w.~/:>})\]-])", r"[^\s'\",()\[\]{}]"
ABSOLUTE_PATH = re.compile(PATH_START + "/" + PATH_CHARS + "+")
# one with spaces: the rest of its line (a yaml value, one argument), up to a comment; a space
# before a slash or a dash starts another word (a second path, an option), not this path's
SPACED_PATH = re.compile(
    PATH_START
    + "/"
    + PATH_CHARS
    + r"(?:[^\s'\",()\[\]{}]|[ \t](?![ \t]*[/-]))*?"
    + PATH_CHARS
    + r"(?=[ \t]*(?:[ \t]#[^\n]*)?$)",
    re.MULTILINE,
)

# the text of custom_interface.py (split in two so that its first line fits the line length)
CUSTOM_INTERFACE = (
    '''"""SpeechBrain foreign_class entry point of a packaged Crab model'''
    + ''' (needs the crab package).

    foreign_class(source=THIS_DIR, pymodule_file="custom_interface.py", classname="CrabClassifier")
"""

from crab.inference import CrabClassifier, check_interface_package  # noqa: F401

# foreign_class imports this file before hyperpyyaml loads hyperparams.yaml: refuse a
# package that is not whole, a yaml that would run code, a file lost or changed
check_interface_package(__file__)
'''
)


class PackageError(cli.UserError, RuntimeError):
    """The run cannot be packaged."""


def portable(text, output_folder):
    """``text`` (or each string of a JSON value) without the training machine's absolute
    paths: one in ``output_folder`` as ``.../<tag>/<fold>/seed<seed>/...``, any other as
    ``.../<its last part>`` (a path with a space: one that ends its line, or a comment)."""
    if isinstance(text, dict):
        return {k: portable(v, output_folder) for k, v in text.items()}
    if isinstance(text, list):
        return [portable(v, output_folder) for v in text]
    if not isinstance(text, str):
        return text
    run = ".../" + run_name(output_folder)
    roots = sorted({os.path.abspath(output_folder), os.path.realpath(output_folder)}, key=len, reverse=True)
    for root in roots:  # the run's folder, or its subfolders
        text = re.sub(PATH_START + re.escape(root) + f"(?=/|(?!{PATH_CHARS}))", lambda _: run, text)
    for path in (SPACED_PATH, ABSOLUTE_PATH):
        text = path.sub(lambda m: ".../" + os.path.basename(m.group().rstrip("/")), text)
    return text


def save_speech_encoder(encoder, out_dir):
    """Config (and feature extractor) of a ``SpeechEncoder``; returns its record."""
    from transformers import AutoFeatureExtractor

    os.makedirs(out_dir)
    config = encoder.model.config
    source = config.name_or_path
    config.save_pretrained(out_dir)
    if encoder.is_whisper:
        encoder.features.save_pretrained(out_dir)
    else:
        try:
            AutoFeatureExtractor.from_pretrained(source).save_pretrained(out_dir)
        except (OSError, ValueError):  # config-only directories (tiny encoders)
            pass
    return {"source": source, "model_type": config.model_type}


def save_text_encoder(encoder, out_dir):
    """Config and tokenizer of a ``TextEncoder``; returns its record."""
    os.makedirs(out_dir)
    config = encoder.model.config
    config.save_pretrained(out_dir)
    encoder.tokenizer.save_pretrained(out_dir)
    return {
        "source": config.name_or_path,
        "model_type": config.model_type,
        "tokenizer": {"source": encoder.tokenizer.name_or_path},
    }


def inference_template():
    """The text of the inference template, ``INFERENCE_TEMPLATE``."""
    return importlib.resources.files(crab).joinpath(INFERENCE_TEMPLATE).read_text(encoding="utf-8")


def training_keys(template, speech=True):
    """The run's training keys that fill ``template``: its ``!PLACEHOLDER`` keys but
    ``PACKAGE_KEYS``, in order, and with a speech encoder ``speech_encoder_source``, against
    which ``waveform_normalization: auto`` is resolved."""
    keys = [k for k in PLACEHOLDER.findall(template) if k not in PACKAGE_KEYS]
    return (keys + ["speech_encoder_source"]) if speech else keys


def _flow(key, value):
    """A value as one-line YAML: a word as itself where YAML reads it back as that string
    (``gold``, not ``true`` or ``null``), anything else as JSON (JSON is YAML)."""
    if isinstance(value, str) and WORD.fullmatch(value) and yaml.safe_load(value) == value:
        return value
    try:
        return json.dumps(value)
    except TypeError:
        raise PackageError(f"the run's {key} is not a plain value ({value!r}): cannot package it") from None


def package_hparams(hparams, text_source, speech):
    """The package's hyperparams.yaml: the inference template with each ``key: !PLACEHOLDER``
    given the run's training key ``key`` (``hparams``), and ``train_text_source: text_source``.

    With a speech encoder (``speech``), ``waveform_normalization: auto`` is written resolved
    against the training source, as the encoder resolved it: the package keeps the mode it was
    trained with, whatever preprocessor config its speech_encoder/ holds.
    """
    template = inference_template()
    keys = training_keys(template, speech)
    missing = [k for k in keys if k not in hparams]
    if missing:
        run_file = os.path.join(hparams["output_folder"], "hyperparams.yaml")
        raise PackageError(
            f"{run_file} has no {', '.join(missing)}, which the inference template needs: "
            "add them with the values the run was trained with"
        )
    values = {k: hparams[k] for k in keys}
    if speech:
        values["waveform_normalization"] = waveform_normalization_mode(
            values["waveform_normalization"], values["speech_encoder_source"]
        )
    values["train_text_source"] = text_source
    return PLACEHOLDER.sub(lambda m: f"{m.group(1)}: {_flow(m.group(1), values[m.group(1)])}", template)


def class_weights(hparams, checkpoint, classes):
    """``{class: {"count", "weight"}}``: weights from the checkpoint's wce.ckpt,
    counts from the run's class_weights.json when there is one."""
    weights = None
    if "wce" in checkpoint.paramfiles:
        weights = load_weights(checkpoint.paramfiles["wce"])["weight"].tolist()
    saved = {}
    saved_path = os.path.join(hparams["save_folder"], "class_weights.json")
    if os.path.isfile(saved_path):
        with open(saved_path, encoding="utf-8") as f:
            saved = json.load(f)
    table = {}
    for k, c in enumerate(classes):
        entry = {}
        if c in saved and "count" in saved[c]:
            entry["count"] = saved[c]["count"]
        entry["weight"] = weights[k] if weights is not None else saved.get(c, {}).get("weight")
        table[c] = entry
    return table


def versions():
    import speechbrain
    import transformers

    return {
        "crab": crab.__version__,
        "speechbrain": speechbrain.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def check_package(model_dir, model, needs, max_duration=None):
    """Load ``model_dir`` back and compare its outputs with ``model``'s on a probe input
    (one second of noise, or ``max_duration`` if shorter, and a short sentence)."""
    classifier = CrabClassifier.from_hparams(source=model_dir, run_opts={"device": "cpu"})
    generator = torch.Generator().manual_seed(0)
    samples = 16000 if max_duration is None else min(16000, int(max_duration * 16000))
    wavs = 0.1 * torch.randn(2, samples, generator=generator)
    wav_lens = torch.tensor([1.0, 0.75])
    texts = ["a probe sentence to check the package", "another one"] if needs["text"] else None
    model.eval()
    with torch.no_grad():
        logits, _ = model(wavs if needs["speech"] else None, wav_lens if needs["speech"] else None, texts)
    expected = torch.softmax(logits.float(), dim=-1)
    got = classifier.classify_batch(wavs, texts, wav_lens)[0]
    if not torch.allclose(got, expected, atol=1e-5):
        raise PackageError(
            f"the packaged model in {model_dir} does not reproduce the trained one "
            f"(max difference {float((got - expected).abs().max()):.3g})"
        )


def test_scores(output_folder, checkpoint):
    """``{test set: scores}`` of the run's evaluations (``eval_<name>/scores.json``) made with
    ``checkpoint`` (their ``checkpoint.txt`` names it): those of another checkpoint, or of
    none recorded, are left out."""
    found = {}
    for eval_dir in sorted(glob.glob(os.path.join(glob.escape(output_folder), "eval_*"))):
        try:
            evaluated = evaluated_checkpoint(eval_dir)
            with open(os.path.join(eval_dir, "scores.json"), encoding="utf-8") as f:
                scores = json.load(f)
        except (OSError, ValueError):
            continue
        if evaluated == os.path.basename(checkpoint.path) and isinstance(scores, dict):
            keys = ("num_utterances", *METRICS)
            found[os.path.basename(eval_dir)[len("eval_") :]] = {k: scores[k] for k in keys if k in scores}
    return found


def package(hparams, out, text_source="unknown", asr_model=None, arguments=None):
    """Write the package of the run ``hparams`` describes to ``out`` (its training ``arguments``
    recorded); returns metadata. Two packagings of one ``out`` at once (stage 8 run twice) take
    turns, ``<out>.lock``: they share ``out.tmp`` and ``out.old``."""
    with beside_lock(out, "package", wait=True):
        return _package(hparams, out, text_source, asr_model, arguments)


def _package(hparams, out, text_source, asr_model, arguments):
    """``package``'s work, under its lock."""
    metric = hparams["ckpt_metric"]
    checkpoint = hparams["checkpointer"].find_checkpoint(max_key=metric)
    if checkpoint is None:
        raise PackageError(f"no checkpoint with {metric} in {hparams['save_folder']}: train first")
    warn_version_drift(checkpoint.meta.get(VERSIONS), f"{checkpoint.path} was saved")
    model = hparams["model"]
    state = load_weights(checkpoint.paramfiles["model"])
    model.load_state_dict(state, strict=True)
    classes = list(hparams["classes"])
    encoder_path = os.path.join(hparams["save_folder"], "label_encoder.txt")
    labels = label_encoder(classes, encoder_path if os.path.isfile(encoder_path) else None)
    hparams_text = package_hparams(hparams, text_source, model.speech_encoder is not None)

    _refuse_other_folder(out)
    tmp = out.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    make_dirs(tmp, exist_ok=False)
    try:
        # saved again from the CPU copy: a run trained on a GPU tags its tensors cuda, which a
        # plain torch.load on a machine without one refuses
        torch.save(state, os.path.join(tmp, "model.ckpt"))
        labels.save(os.path.join(tmp, "label_encoder.ckpt"))
        with open(os.path.join(tmp, "class_weights.json"), "w", encoding="utf-8") as f:
            json.dump(class_weights(hparams, checkpoint, classes), f, indent=2)
        encoders = {}
        if model.speech_encoder is not None:
            folder = os.path.join(tmp, ENCODER_DIRS["speech"])
            encoders["speech"] = save_speech_encoder(model.speech_encoder, folder)
        if model.text_encoder is not None:
            encoders["text"] = save_text_encoder(model.text_encoder, os.path.join(tmp, ENCODER_DIRS["text"]))
        with open(os.path.join(tmp, "hyperparams.yaml"), "w", encoding="utf-8") as f:
            f.write(hparams_text)
        with open(os.path.join(tmp, "custom_interface.py"), "w", encoding="utf-8") as f:
            f.write(CUSTOM_INTERFACE)
        folder = hparams["output_folder"]
        resolved = os.path.join(folder, "hyperparams.yaml")
        hparams_file = None
        if os.path.isfile(resolved):
            hparams_file = "train_hyperparams.yaml"
            with open(resolved, encoding="utf-8") as f:
                text = portable(f.read(), folder)
            with open(os.path.join(tmp, hparams_file), "w", encoding="utf-8") as f:
                f.write(text)
        meta = checkpoint.meta
        epoch = meta.get("epoch")
        if "counter" in checkpoint.paramfiles:
            with open(checkpoint.paramfiles["counter"], encoding="utf-8") as f:
                epoch = int(f.read().strip())
        metadata = {
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "classes": classes,
            "modality": model.modality,
            "training": {
                "output_folder": os.path.abspath(folder),
                "hparams_file": hparams_file,
                "arguments": list(arguments or []),
                "checkpoint": os.path.basename(checkpoint.path),
                "epoch": epoch,
                "train_s": meta.get(TRAIN_SECONDS),
                "versions": meta.get(VERSIONS),  # of the training; "versions" below: of the packaging
                "ckpt_metric": metric,
                "valid_scores": {k: meta[k] for k in METRICS if k in meta},
                "text_source": text_source,
                "asr_model": asr_model if text_source == "asr" else None,
                "test_scores": test_scores(folder, checkpoint),
            },
            "encoders": encoders,
            "num_parameters": sum(p.numel() for p in model.parameters()),
            "git_commit": git_commit(short=False),
            "versions": versions(),
        }
        metadata = {**portable(metadata, folder), "files": package_files(tmp)}
        with open(os.path.join(tmp, METADATA), "w", encoding="utf-8") as f:
            json.dump(metadata, f, indent=2)
        # after the record: its owner may edit it
        with open(os.path.join(tmp, CARD), "w", encoding="utf-8") as f:
            f.write(model_card(metadata, hparams.get("max_duration")))
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)  # its space is freed at once
        if not is_write_failure(err):
            raise
        raise PackageError(
            f"cannot write the package {out} into {tmp} ({cli.first_line(err)}; a full disk or quota?): "
            f"{out} is left as it was"
        ) from err

    needs = {"speech": model.speech_encoder is not None, "text": model.text_encoder is not None}
    check_package(tmp, model, needs, hparams.get("max_duration"))
    replace_package(tmp, out)
    return metadata


def replace_package(new, out):
    """``crab.fileio.replace_dir`` of the package ``new`` into ``out``, the old one renamed
    aside to ``out.old`` (where a kill between the two renames leaves it, or a kill while
    removing it a part of it)."""
    old = out.rstrip("/") + ".old"
    if not _package_remains(old):
        _refuse_other_folder(old)
    if os.path.exists(old):
        shutil.rmtree(old)
    replace_dir(new, out, old)


def _package_remains(path):
    """Whether ``path`` is a folder of a package's entries alone (``PACKAGE_ENTRIES``), its
    metadata.json among them or not: the removal of an old package takes its files in no set
    order, and a kill during it leaves any part of them."""
    return os.path.isdir(path) and set(os.listdir(path)) <= PACKAGE_ENTRIES


def _refuse_other_folder(path):
    """A ``PackageError`` when ``path`` exists and is not a Crab package (no metadata.json),
    which packaging would replace."""
    if os.path.exists(path) and not os.path.isfile(os.path.join(path, METADATA)):
        raise PackageError(f"{path} exists and is not a Crab package: remove it or choose another --out")
