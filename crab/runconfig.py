"""Configuration: command-line overrides, and a trained run's own configuration.

Stage 4 (``crab.bin.train``) saves the run's resolved hyperparameters, overrides
applied, in ``<output_folder>/hyperparams.yaml``. Everything after training that
rebuilds the run's model (``crab.bin.evaluate``, ``crab.bin.embeddings``,
``crab.bin.package``) loads that file with ``load_run``, not the recipe's yaml: an
option given at training need not be repeated, and the model is the one trained.
Only the keys of ``STAGE_KEYS`` may take another value at those stages; any other
override given again must equal the trained value, else a ``ConfigError`` names the
key and both values. A run copied or moved to another folder is read where it is
(``--output_folder``): the paths under the folder it was trained in are moved with it.
So is a data folder (``--data_folder``: manifests and tokenizer) moved since training.

A tuning file (``conf/tuning/<name>.yaml``, ``read_tuning``) is a committed setting: a
base config and the overrides applied over it (``ser.sh --tuning``), so that a results
row names a file rather than a long override string.

SpeechBrain, hyperpyyaml's loader and the encoders are imported where they are used:
the recipe reads tuning files and checks overrides with ``yaml`` alone.
"""

import datetime
import glob
import io
import json
import logging
import math
import os
import re
import sys

import yaml

from crab.cli import NEW_RUN, UserError
from crab.fileio import write_text_atomic

logger = logging.getLogger(__name__)

TOP_LEVEL_KEY = re.compile(r"^([A-Za-z_][\w.]*)\s*:", re.MULTILINE)
RUN_HPARAMS = "hyperparams.yaml"

# Keys a stage after training may set to another value than the run was trained
# with, and why that cannot change the trained model or its predictions.
STAGE_KEYS = {
    "test_manifest": "what to evaluate",
    "eval_name": "where the evaluation is written (<output_folder>/eval_<name>)",
    "data_root": "where the audio is now (manifests hold {data_root}); the audio itself is the manifest's",
    "data_folder": "where the manifests and the tokenizer are now (the run's paths under it move with it); "
    "the tokenizer is checked against the run's, the test manifest is given",
    "feature_cache": "where the frozen-encoder states are now; the cache is checked against the model",
    # Evaluation batching: every padded position is masked, so a prediction does not
    # depend on its batch (only on memory and speed; Whisper's last frames excepted,
    # see docs/training.md). Training's batching is over by then.
    "batch_size": "evaluation batch size",
    "dynamic_batching": "evaluation batches by length",
    "max_batch_length": "evaluation batch length (dynamic batching)",
    "num_buckets": "evaluation length buckets (dynamic batching)",
    "num_workers": "data-loading processes",
}
# Of those, the ones the saved file has already copied into the evaluation loader options.
EVAL_LOADER_KEYS = ("batch_size", "num_workers")


# hyperpyyaml's error for a ``key: !PLACEHOLDER`` that no override filled
UNSET_PLACEHOLDER = re.compile(r"'(\w+)' is a !PLACEHOLDER and must be replaced\.")


class ConfigError(UserError, ValueError):
    """A yaml file or a command-line override is not usable."""


class TagTolerantLoader(yaml.SafeLoader):
    """Reads a hyperpyyaml file's plain values; tagged ones (!ref, !new:, ...) load as None
    (for checking syntax and reading plain keys: the one such loader of the package)."""


TagTolerantLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


class _ComparableLoader(yaml.SafeLoader):
    """Loads a resolved hyperpyyaml file into plain values; a tagged node becomes
    ``(tag, value)``, so that two objects compare by their class and arguments."""


def _tagged(loader, suffix, node):
    if isinstance(node, yaml.MappingNode):
        value = loader.construct_mapping(node, deep=True)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_scalar(node)
    return ("!" + suffix, value)


_ComparableLoader.add_multi_constructor("!", _tagged)


def parse_arguments(argv):
    """``sb.parse_arguments`` with the ``--key=value`` overrides turned into YAML text
    that keeps each value as given.

    SpeechBrain splits the joined arguments on every ``=``: ``--output_folder=exp=1``
    became ``output_folder: exp 1``. Here an argument is split on its first ``=`` only
    (``--key value``, the value in the next words, as before), and a value that YAML
    would read as another string than the one given (``exp #1``: a comment; leading or
    trailing spaces; a line break), or not read at all after ``key:`` (``a: b``), is
    written quoted, so that it stays exact. Other values stay YAML (``1e-3``, ``true``,
    ``[a, b]``, ``'quoted'``, ``!ref <x>``); one of those that is not valid YAML
    (``[a, b``) is an error naming its option (``check_overrides``).
    """
    import speechbrain as sb
    from speechbrain.utils.run_opts import RunOptions

    hparams_file, run_opts, _ = sb.parse_arguments(argv)
    _, rest = RunOptions._create_parser().parse_known_args(argv)  # what SpeechBrain made overrides of
    items = []
    for arg in rest:
        if arg.startswith("--"):
            key, eq, value = arg[2:].partition("=")
            items.append([key, [value] if eq else []])
        elif items:
            items[-1][1].append(arg)
        else:
            raise ConfigError(f"unexpected argument '{arg}' (overrides are --key=value)")
    return hparams_file, run_opts, "\n".join(f"{k}: {_yaml_value(' '.join(v))}" for k, v in items)


def run_options_as_overrides(hparams_file, run_opts):
    """Override YAML text (``key: value`` lines) of the run options given on the command line
    whose names are top-level keys of ``hparams_file`` too: SpeechBrain's Brain takes the
    command line's value, and a run's hyperparams.yaml, written from the overrides, would
    record the yaml's."""
    with open(hparams_file, encoding="utf-8") as f:
        keys = yaml.load(f, Loader=TagTolerantLoader) or {}
    given = sorted(set(getattr(run_opts, "overridden_args", ())) & set(keys))
    return "".join(f"{key}: {json.dumps(run_opts[key])}\n" for key in given)


def _yaml_value(text):
    """``text`` as the YAML of an override value: as given, or quoted where YAML would
    read it as another string (see ``parse_arguments``)."""
    if not text or text[0] in "'\"!&*[{|>%@`":  # YAML syntax the user means (or nothing: null)
        return text
    try:
        value = yaml.load(f"k: {text}", Loader=TagTolerantLoader)
    except yaml.YAMLError:  # "a: b" cannot follow "key: ": a string the user means
        return json.dumps(text)
    value = value.get("k") if isinstance(value, dict) else text
    if (isinstance(value, str) and value != text) or (
        value is None and text not in ("null", "Null", "NULL", "~")
    ):
        return json.dumps(text)  # JSON strings are YAML double-quoted scalars
    return text


def check_overrides(hparams_file, overrides):
    """Check that every override is valid YAML for a key the file declares.

    ``overrides`` is the YAML text SpeechBrain builds from ``--key=value``
    arguments. Errors name the offending key.
    """
    if not overrides:
        return {}
    with open(hparams_file, encoding="utf-8") as f:
        known = set(TOP_LEVEL_KEY.findall(f.read()))
    parsed = {}
    for key, value in override_items(overrides):
        try:
            parsed[key] = yaml.load(value, Loader=TagTolerantLoader) if value else None
        except yaml.YAMLError as err:
            first = str(err).splitlines()[0]
            raise ConfigError(f"override --{key}: value '{value}' is not valid YAML ({first})") from None
        if key not in known:
            raise ConfigError(f"override --{key}: no top-level key '{key}' in {hparams_file}")
    return parsed


def override_items(overrides):
    """``(key, value text)`` of each line of SpeechBrain's override YAML text."""
    items = []
    for line in (overrides or "").splitlines():
        if line.strip():
            key, _, value = line.partition(":")
            items.append((key.strip(), value.strip()))
    return items


def _override_lines(overrides):
    """``{key: its last line}`` of an override YAML text, in the order of those lines."""
    lines = {}
    for line in (overrides or "").splitlines():
        if line.strip():
            key = line.partition(":")[0].strip()
            lines.pop(key, None)
            lines[key] = line
    return lines


def last_value_wins(overrides):
    """The override YAML text with each key once, at its last value: ``--lr=1 --lr=2``
    sets lr to 2, as repeated command-line options do (hyperpyyaml rejects a repeated key)."""
    if not overrides:
        return overrides
    return "\n".join(_override_lines(overrides).values()) + "\n"


def override_keys(overrides):
    """The keys an override YAML text sets."""
    return set(_override_lines(overrides))


def resolved_values(text, overrides=None):
    """Top-level values of a hyperpyyaml text with ``overrides`` applied and every
    ``!ref`` resolved, as plain values (``(tag, value)`` for objects); nothing is built."""
    from hyperpyyaml.core import resolve_references

    resolved = resolve_references(io.StringIO(text), overrides or None).getvalue()
    return yaml.load(resolved, Loader=_ComparableLoader) or {}


def load_hparams(hparams_file, overrides=None, text=None):
    """``load_hyperpyyaml`` of a file (or of its ``text``) with ``overrides``; a model
    or tokenizer source that cannot be loaded is named by its yaml key."""
    from hyperpyyaml import load_hyperpyyaml

    from crab.encoders import ModelSourceError

    if text is None:
        with open(hparams_file, encoding="utf-8") as f:
            text = f.read()
    try:
        return load_hyperpyyaml(text, overrides)
    except ModelSourceError as err:
        raise ModelSourceError(_source_key(text, overrides, err), err.source, err.detail) from None
    except ValueError as err:
        unset = UNSET_PLACEHOLDER.fullmatch(str(err))
        if unset is None:
            raise
        key = unset.group(1)
        where = hparams_file or "the yaml"
        raise ConfigError(f"{where}: {key} is a !PLACEHOLDER with no value: give --{key}=VALUE") from None


def _source_key(text, overrides, err):
    """The yaml key whose value is the source ``err`` names (``tokenizer_source``, ...)."""
    try:
        values = resolved_values(text, overrides)
    except Exception:  # noqa: BLE001 - only a nicer name is at stake
        return err.argument
    keys = [k for k, v in values.items() if v == err.source and isinstance(v, str)]
    prefix = err.argument.split()[0]  # speech_encoder / text_encoder / tokenizer
    for choice in (f"{prefix}_source", prefix):
        if choice in keys:
            return choice
    sources = [k for k in keys if k.endswith("_source")]
    return sources[0] if sources else (keys[0] if keys else err.argument)


# ---------------------------------------------------------------- tuning files

TUNING_KEYS = ("config", "overrides")


def read_tuning(path, recipe_dir=None):
    """A tuning file: a committed setting (ESPnet's ``conf/tuning/<name>.yaml``)::

        # Fine-tuned MiniLM-L6, text only: weighted CE + MLCS (alpha 2).
        config: conf/crab_base.yaml      # the base config, relative to the recipe directory
        overrides:                       # yaml overrides of it, as --key=value on the command line
          modality: text
          lr: 5e-4
          leg_names: [text_encoder, text_pooled]

    Returns ``{"config", "overrides", "description"}``: the base config as written, the
    overrides as ``--key=value`` words in file order (each value as written: ``1e-3``,
    ``!ref <lr> / 10``, ``[a, b]``; a block list or mapping in flow style), and the
    file's leading comment lines. ``recipe_dir`` (default: the current directory) is
    where ``config`` is found. A missing file, one that is not a mapping of ``config``
    and ``overrides``, a base config that does not exist, or an override the base
    config has no top-level key for (``check_overrides``) is a ``ConfigError`` naming
    the file.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as err:
        raise ConfigError(f"tuning file {path}: {err.strerror or err}") from None
    try:
        root = yaml.compose(text, Loader=TagTolerantLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"tuning file {path}: not valid YAML{where} ({problem})") from None
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError(f"tuning file {path}: expected a mapping with keys {' and '.join(TUNING_KEYS)}")
    fields = {}
    for key, value in root.value:
        if key.value not in TUNING_KEYS:
            known = " and ".join(TUNING_KEYS)
            raise ConfigError(f"tuning file {path}: unknown key '{key.value}' (a tuning file has {known})")
        fields[key.value] = value
    config = fields.get("config")
    if not isinstance(config, yaml.ScalarNode) or not config.value or config.tag != "tag:yaml.org,2002:str":
        raise ConfigError(f"tuning file {path}: 'config:' must name the base config (conf/<name>.yaml)")
    config = config.value
    where = os.path.join(recipe_dir, config) if recipe_dir else config
    if not os.path.isfile(where):
        raise ConfigError(
            f"tuning file {path}: config {config}: no such file in {os.path.abspath(recipe_dir or '.')}"
        )
    words = []
    node = fields.get("overrides")
    if node is not None and not (isinstance(node, yaml.ScalarNode) and node.value in ("", "null", "~")):
        if not isinstance(node, yaml.MappingNode):
            raise ConfigError(f"tuning file {path}: 'overrides:' must be a mapping of yaml keys to values")
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode) or not key.value:
                raise ConfigError(f"tuning file {path}: an override's key must be a plain name")
            words.append(f"--{key.value}={_node_text(text, value, path, key.value)}")
    try:
        check_overrides(where, "".join(f"{k}: {v}\n" for k, v in _word_items(words)))
    except ConfigError as err:
        raise ConfigError(f"tuning file {path}: {err}") from None
    description = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        description.append(line.lstrip("#").strip())
    return {"config": config, "overrides": words, "description": " ".join(filter(None, description))}


def _word_items(words):
    return [word[2:].partition("=")[::2] for word in words]


def _node_text(text, node, path, key):
    """A tuning override's value as written, on one line (collections in flow style)."""
    written = text[node.start_mark.index : node.end_mark.index].strip()
    if "\n" not in written:
        return written
    if isinstance(node, yaml.ScalarNode):
        raise ConfigError(f"tuning file {path}: override '{key}': write its value on one line")

    def flow(n):
        if isinstance(n, (yaml.SequenceNode, yaml.MappingNode)):
            n.flow_style = True
            for item in n.value:
                for sub in item if isinstance(item, tuple) else (item,):
                    flow(sub)

    flow(node)
    return yaml.serialize(node, width=1 << 30).strip()


# ---------------------------------------------------------------- a trained run's configuration


def _number(value):
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", value.strip()):
        return float(value)
    return None


def same_value(a, b):
    """Whether a value given again equals the trained one: numbers by value (1e-3 is
    0.001), paths once normalized or when they name the same file or directory, lists,
    mappings and objects item by item."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if _number(a) is not None and _number(b) is not None:
        return _number(a) == _number(b)
    if isinstance(a, str) and isinstance(b, str):  # paths: the same file or directory (links resolved)
        return (
            a == b
            or os.path.normpath(a) == os.path.normpath(b)
            or (os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b))
        )
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return (
            type(a) is type(b)
            and len(a) == len(b)
            and all(same_value(x, y) for x, y in zip(a, b, strict=True))
        )
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    return a == b


def is_object(value):
    """A resolved ``!new:`` / ``!name:`` / ``!apply:`` value (``resolved_values``'s (tag, args))."""
    tagged = isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str)
    return tagged and value[0].startswith("!")


def show(value):
    """A value as short YAML-like text, for messages."""
    if is_object(value):
        return f"{value[0]} {show(value[1])}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, list):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {show(v)}" for k, v in value.items()) + "}"
    return str(value)


def run_folder(hparams_file, overrides):
    """The run's output folder: ``--output_folder``, else the yaml's own value."""
    given = dict(override_items(overrides))
    if "output_folder" in given and not given["output_folder"].startswith("!"):
        return str(yaml.safe_load(given["output_folder"]))
    with open(hparams_file, encoding="utf-8") as f:
        text = f.read()
    try:
        return str(resolved_values(text, overrides)["output_folder"])
    except (ValueError, KeyError) as err:
        raise ConfigError(
            f"{hparams_file}: cannot tell the run's output folder ({err}): "
            "give --output_folder=<the run's folder>"
        ) from None


def relocated(text, old, new):
    """The run file's ``text`` with every path value under ``old`` (the output folder the
    run was trained in) moved under ``new``: a value equal to ``old`` or starting with
    ``old/``, unquoted, quoted or in a flow list; any other text is left as it is."""
    path = re.compile(r"(?<=[\s'\"\[,])" + re.escape(old) + r"(?=/|[\s'\"\],]|$)", re.MULTILINE)
    return path.sub(lambda _: new, text)


def write_run_hparams(hparams_file, overrides, folder):
    """Write ``<folder>/hyperparams.yaml``: ``hparams_file`` with ``overrides``, references
    resolved, as SpeechBrain's ``create_experiment_directory`` writes it, but atomically:
    every training invocation rewrites it, a resumed one too, and a full disk or a kill
    must leave the run's record whole for its resume and for stages 6-8."""
    from hyperpyyaml.core import resolve_references

    with open(hparams_file, encoding="utf-8") as f:
        resolved = resolve_references(f, overrides).getvalue()
    header = f"# Generated {datetime.date.today()} from:\n# {os.path.abspath(hparams_file)}\n"
    write_text_atomic(os.path.join(folder, RUN_HPARAMS), header + "# yamllint disable\n" + resolved)


def run_text(run_file, folder):
    """The text of a run's ``run_file`` (its hyperparams.yaml) read in ``folder``: for a run
    copied or moved there from the folder it was trained in, its paths under that folder are
    read under ``folder`` (``relocated``); a folder name YAML would not read back is an error."""
    with open(run_file, encoding="utf-8") as f:
        text = f.read()
    trained_in = str(resolved_values(text)["output_folder"])
    if os.path.abspath(trained_in) == os.path.abspath(folder):
        return text
    logger.info(
        "Run trained in %s, read in %s: its paths under the first are read under the second",
        trained_in,
        folder,
    )
    text = relocated(text, trained_in, folder)
    try:
        moved = str(resolved_values(text)["output_folder"])
    except Exception as err:  # any parse error of the rewritten text
        moved = f"unreadable ({err})"
    if moved != folder:
        raise ConfigError(
            f"{run_file}: the run cannot be read in {folder} (its output folder becomes {moved}); "
            "move it to a folder whose name YAML reads as plain text"
        )
    return text


def check_against_run(run_file, text, overrides, stage_keys):
    """A ``ConfigError`` for the first override, outside ``stage_keys``, whose value
    differs from the run's (``!ref`` values resolved against the run's file)."""
    items = [(k, v) for k, v in override_items(overrides) if k not in stage_keys]
    if not items:
        return
    saved = resolved_values(text)
    given = resolved_values(text, "".join(f"{k}: {v}\n" for k, v in items))
    for key, raw in items:
        if key not in saved:
            raise ConfigError(f"override --{key}: the run's {run_file} has no key '{key}'")
        if key == "output_folder":
            if os.path.abspath(str(given[key])) == os.path.abspath(str(saved[key])):
                continue
        elif same_value(given[key], saved[key]):
            continue
        raise ConfigError(f"--{key}={raw} contradicts the run's {key}: {show(saved[key])} ({run_file})")


def check_runs_agree(run_dirs, overrides):
    """A ``ConfigError`` for the first of ``overrides`` (``--key=value`` words: the recipe's
    ``--train_opts``) outside ``STAGE_KEYS`` that contradicts a run of ``run_dirs`` (its own
    ``hyperparams.yaml``): stage 7 scores the runs as they were trained, and its tables' titles
    name what was given. A tuning file's or an ablation's own values are not given again: a run
    may have been trained with them overridden (a local copy of the hub's encoder)."""
    _, _, text = parse_arguments([RUN_HPARAMS, *overrides])
    text = last_value_wins(text)
    for folder in run_dirs:
        run_file = os.path.join(folder, RUN_HPARAMS)
        if os.path.isfile(run_file):
            check_against_run(run_file, run_text(run_file, folder), text, STAGE_KEYS)


# Keys a resumed training may give another value than the run started with: where
# things are now, how much memory a step takes, how often checkpoints are written, and
# how many processes and batches an optimizer step averages over; nothing of what is trained.
RESUME_KEYS = {
    "data_root": "where the audio is now",
    "data_folder": "where the manifests and the tokenizer are now (checked: their sha256)",
    "feature_cache": "where the frozen-encoder states are now (checked against the model)",
    "num_workers": "data-loading processes",
    "gradient_checkpointing": "memory: the encoders' activations recomputed, the same gradients",
    "ckpt_interval_minutes": "how often a checkpoint is written inside an epoch",
    "grad_accumulation_factor": "the optimizer batch: another one is warned about (crab.brain), "
    "and can keep the batch on another number of processes",
    "find_unused_parameters": "a DDP setting (a model with parameters a step does not use)",
    "ckpt_interval_steps": "how often a checkpoint is written inside an epoch",
}


def has_checkpoint(save_folder):
    """Does a training in ``save_folder`` resume (a SpeechBrain ``CKPT+*`` there)?"""
    return bool(glob.glob(os.path.join(glob.escape(save_folder), "CKPT+*")))


def warn_if_trained_before(train_log, save_folder):
    """Log a warning where ``train_log`` records trained epochs and ``save_folder`` holds no
    checkpoint to resume from (removed by hand, or the run's folder copied without it): the
    run trains again from its first epoch, which a rerun would otherwise do without a word."""
    try:
        with open(train_log, encoding="utf-8", errors="replace") as f:
            epochs = sum(1 for line in f if line.startswith("epoch: "))
    except FileNotFoundError:  # a new run
        return
    if epochs:
        logger.warning(
            "%s records %d trained epoch(s), and %s holds no checkpoint to resume from: the run "
            "trains again from epoch 1",
            train_log,
            epochs,
            save_folder,
        )


def _beyond_schedule(saved, epochs):
    """What the head's cosine schedule (``CosineAnnealingLR``, ``T_max`` = the run's epochs)
    gives the epochs past its end, in words: it goes on as a cosine, to the floor and back up."""
    try:
        total, lr, floor = (
            int(saved["number_of_epochs"]),
            float(saved["lr"]),
            float(saved.get("lr_floor") or 0),
        )
    except (KeyError, TypeError, ValueError):
        return ""
    rates = [
        floor + (lr - floor) * (1 + math.cos(math.pi * e / total)) / 2 for e in range(total, int(epochs))
    ]
    if not rates:
        return ""
    shown = ", ".join(f"{r:.2e}" for r in rates[:4]) + (", ..." if len(rates) > 4 else "")
    which = f"epoch {total + 1} gets" if len(rates) == 1 else f"epochs {total + 1}-{int(epochs)} get"
    return f": {which} head lr {shown}, the cosine past its end"


def _check_epochs_trained(folder, save_folder, epochs):
    """A ``ConfigError`` when the run in ``folder`` has trained more than ``epochs``."""
    from crab.report import epochs_trained

    done = epochs_trained(folder, save_folder)
    if done is not None and done[0] > float(epochs):
        raise ConfigError(
            f"{folder} has trained {done[0]} epochs ({done[1]}): --number_of_epochs={show(epochs)} "
            f"would record fewer than its weights had; give {done[0]} or more"
        )


def check_resume(hparams_file, overrides, folder, save_folder):
    """A ``ConfigError`` when a training would go on, in ``folder``, with other settings
    than the run it holds was trained with (its ``hyperparams.yaml`` and a checkpoint in
    ``save_folder``): it would train the old weights on, and rewrite the run's record.
    Keys of both configurations are compared, once resolved with the run's own values of
    ``RESUME_KEYS`` (so neither they nor what is built from them count); a key
    only one of them has (a newer or older yaml) is not a setting of both. Another
    ``number_of_epochs`` (and what is built from it), given as an override, trains on to it,
    or ends the run there (not before the epochs it has trained), with a warning: the
    checkpoint's learning-rate schedule was made for the epochs first asked for; another
    number from the yaml alone is an error (the run's own overrides forgotten)."""
    run_file = os.path.join(folder, RUN_HPARAMS)
    if not os.path.isfile(run_file) or not has_checkpoint(save_folder):
        return
    saved = resolved_values(run_text(run_file, folder))
    with open(hparams_file, encoding="utf-8") as f:
        text = f.read()
    given = resolved_values(text, overrides)
    epochs = saved.get("number_of_epochs"), given.get("number_of_epochs")
    # compared at the run's own values, so that what is built from them (num_workers in the
    # loaders' options) compares equal too
    as_saved = {k: saved[k] for k in RESUME_KEYS if k in saved and k in given}
    if None not in epochs and not same_value(*epochs):
        if "number_of_epochs" not in override_keys(overrides):
            # the yaml's default, not a choice: an interrupted run rerun without its --train_opts
            raise ConfigError(
                f"{folder} holds a run trained for {show(epochs[0])} epochs ({run_file}), and "
                f"{hparams_file} gives {show(epochs[1])}: resume it with --number_of_epochs="
                f"{show(epochs[0])} (the command it was started with; run.sh: --train_opts "
                f'"--number_of_epochs={show(epochs[0])}"), or train it on to {show(epochs[1])} with '
                f"--number_of_epochs={show(epochs[1])}"
            )
        beyond, advice = "", ""
        if float(epochs[1]) < float(epochs[0]):  # a stopped run kept as it stands
            _check_epochs_trained(folder, save_folder, epochs[1])
            what = f"started with {show(epochs[0])}: the run ends at epoch {show(epochs[1])}"
        else:
            what = f"trained with {show(epochs[0])}: training goes on"
            beyond = _beyond_schedule(saved, epochs[1])
            advice = f"; train a new run for a schedule over {show(epochs[1])}"
        logger.warning(
            "%s: number_of_epochs %s, %s, under the learning-rate schedule of its checkpoint "
            "(made for %s epochs%s)%s",
            folder,
            show(epochs[1]),
            what,
            show(epochs[0]),
            beyond,
            advice,
        )
        as_saved["number_of_epochs"] = epochs[0]
    if as_saved:
        # on a line of their own: an override text need not end with a newline (parse_arguments')
        given = resolved_values(text, last_value_wins(f"{overrides or ''}\n{yaml.safe_dump(as_saved)}"))
    differ = [key for key in saved if key in given and not same_value(given[key], saved[key])]
    if not differ:
        return
    settings = [k for k in differ if not is_object(saved[k]) and not is_object(given[k])]
    shown = "; ".join(f"{k}: {show(saved[k])} then, {show(given[k])} now" for k in settings[:4])
    built = [k for k in differ if k not in settings]
    if built:
        objects = ", ".join(built[:6]) + (" ..." if len(built) > 6 else "")
        shown += ("; " if shown else "") + f"the objects {objects}"
    raise ConfigError(
        f"{folder} holds a run trained with other settings ({shown}; {run_file}): resuming would train "
        f"its weights on under these: {NEW_RUN}, or resume with the run's own settings"
    )


def _no_download(values):
    """Overrides that build the encoders from their configs alone (their weights then
    come from the checkpoint): ``pretrained: false`` wherever the run's file has it."""
    extra = {}
    for key, value in values.items():
        if key == "pretrained_encoders":
            extra[key] = False
        elif isinstance(value, tuple) and isinstance(value[1], dict) and "pretrained" in value[1]:
            extra[key] = {"pretrained": False}
    return extra


def _moved_data_folder(text, overrides):
    """The run file's ``text`` with its paths under its ``data_folder`` moved under the one
    ``overrides`` give, where that is another folder (data/ copied or moved since training:
    the tokenizer and training manifests are then read there)."""
    given = dict(override_items(overrides)).get("data_folder")
    saved = resolved_values(text).get("data_folder")
    if not given or given.startswith("!") or not saved:
        return text
    given = str(yaml.safe_load(given))
    if os.path.abspath(given) == os.path.abspath(str(saved)):
        return text
    logger.info(
        "Run's data folder %s, read in %s: its paths under the first are read under the second", saved, given
    )
    return relocated(text, str(saved), given)


def load_run(argv=None, pretrained_encoders=True):
    """Parse ``hparams.yaml [--run_opt ...] [--key=value ...]`` of a stage after training
    and load the run's own ``<output_folder>/hyperparams.yaml``.

    ``hparams.yaml`` is the recipe's yaml (or the run's file itself): it only tells the
    run's folder (``--output_folder``) and which keys exist. Overrides of ``STAGE_KEYS``
    apply; any other must equal the trained value. ``pretrained_encoders=False`` builds
    the encoders from their configs alone (packaging: the weights are the checkpoint's).

    Returns ``(run_file, run_opts, applied overrides, hparams)``.
    """
    from hyperpyyaml.core import resolve_references

    hparams_file, run_opts, overrides = parse_arguments(sys.argv[1:] if argv is None else argv)
    overrides = last_value_wins(overrides)
    check_overrides(hparams_file, overrides)
    folder = run_folder(hparams_file, overrides)
    run_file = os.path.join(folder, RUN_HPARAMS)
    if not os.path.isfile(run_file):
        raise ConfigError(
            f"{run_file} not found: no trained run in {folder}; "
            "train it first (crab.bin.train, the recipe's training stage)"
        )
    text = run_text(run_file, folder)
    text = _moved_data_folder(text, overrides)
    check_against_run(run_file, text, overrides, STAGE_KEYS)
    applied = [(k, v) for k, v in override_items(overrides) if k in STAGE_KEYS]
    loaded = resolve_references(io.StringIO(text), "".join(f"{k}: {v}\n" for k, v in applied) or None)
    extra = {} if pretrained_encoders else _no_download(resolved_values(text))
    hparams = load_hparams(run_file, extra or None, text=loaded.getvalue())
    if "model" in hparams:  # the tokenizer it reads now is the one it was trained with
        from crab.features import model_tokenizer_digest
        from crab.provenance import check_tokenizer

        check_tokenizer(folder, model_tokenizer_digest(hparams["model"]))
    given = dict(applied)
    for key in EVAL_LOADER_KEYS:  # copied into eval_dataloader_opts when the run's file was written
        if key in given and isinstance(hparams.get("eval_dataloader_opts"), dict):
            hparams["eval_dataloader_opts"][key] = hparams[key]
    logger.info(
        "Run configuration: %s%s",
        run_file,
        f" (with {', '.join(f'{k}={v}' for k, v in applied)})" if applied else "",
    )
    return run_file, run_opts, "".join(f"{k}: {v}\n" for k, v in applied), hparams
