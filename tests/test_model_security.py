"""Loading a packaged model runs nothing from its directory (crab-infer, from_hparams,
the crab-written custom_interface.py of foreign_class): hyperparams.yaml is checked
against what crab.bin.package writes, checkpoints are read with weights_only=True, and
the yaml built is the one checked, whatever a savedir holds."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch
from speechbrain.inference.interfaces import foreign_class
from speechbrain.utils.fetching import LocalStrategy

from crab.inference import (
    CrabClassifier,
    UnsafeModelError,
    check_package_hparams,
    load_weights,
    package_files,
)
from tests import test_inference
from tests.test_inference import cli, write_inputs

# the fixtures of test_inference, found by pytest under the same names; assigned, not
# imported, so that the test parameters of that name redefine no unused import (ruff F811)
data, trained = test_inference.data, test_inference.trained

VARIANTS = {
    "apply": 'evil: !apply:os.system ["touch {marker}"]',
    "new": 'evil: !new:os.system ["touch {marker}"]',
    "name": "evil: !name:subprocess.run",
    "python_tag": 'evil: !!python/object/apply:os.system ["touch {marker}"]',
    "python_object": "evil: !!python/object:argparse.Namespace {{a: 1}}",
    # hyperpyyaml's !tuple: yaml.Loader
    "tuple": 'evil: (!!python/object/apply:os.system ["touch {marker}"])',
    # quoted too: hyperpyyaml dumps the yaml with ruamel.yaml, without the quotes, then loads it
    "tuple_quoted": "evil: \"(!!python/object/apply:os.system ['touch {marker}'])\"",
    "include": "evil: !include:other.yaml",
    "ref_attribute": "evil: !ref <model.load_package>",
    "pretrainer_paths": "pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer\n"
    "    paths: {{model: /elsewhere/model.ckpt}}",
}


class Bomb:
    """Unpickling it runs a command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def copy_model(trained, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(trained[2], model)
    return model


def record_files(model):
    """Write the record of the package's files anew, as a tamperer would."""
    meta = json.loads((model / "metadata.json").read_text())
    meta["files"] = package_files(model)
    (model / "metadata.json").write_text(json.dumps(meta))


def probe(classifier):
    wavs = 0.1 * torch.randn(2, 16000, generator=torch.Generator().manual_seed(0))
    return classifier.classify_batch(wavs, ["a probe sentence", "another one"])[0]


def add_line(model, line):
    path = model / "hyperparams.yaml"
    text = path.read_text()
    if line.startswith("pretrainer:"):  # replaces the package's own
        text = text[: text.index("pretrainer:")]
    path.write_text(text + line + "\n")
    return text.count("\n") + line.count("\n") + 1  # the line number of the (last) added line


def test_the_package_yaml_passes(trained):
    assert "PackagedCrab" in check_package_hparams(os.path.join(trained[2], "hyperparams.yaml"))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_code_in_hyperparams_is_refused(variant, trained, data, tmp_path):
    model = copy_model(trained, tmp_path)
    marker = tmp_path / "MARKER"
    lineno = add_line(model, VARIANTS[variant].format(marker=marker))
    yaml_path = str(model / "hyperparams.yaml")

    with pytest.raises(UnsafeModelError, match="refusing to load this model") as err:
        CrabClassifier.from_hparams(source=str(model))
    assert f"{yaml_path}:{lineno}:" in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()

    write_inputs(tmp_path, data)
    message = cli(
        "--model",
        model,
        "--wav_scp",
        tmp_path / "wav.scp",
        "--text",
        tmp_path / "text",
        "--text_mode",
        "gold",
        "--out",
        tmp_path / "r.tsv",
    )
    assert isinstance(message, str) and message.startswith("ERROR: ") and f"{yaml_path}:{lineno}:" in message
    assert "\n" not in message and not marker.exists()
    assert not (tmp_path / "r.tsv").exists()  # refused before anything is written

    if variant == "apply":  # the custom_interface.py crab.bin.package writes checks it too
        with pytest.raises(UnsafeModelError, match="refusing"):
            foreign_class(source=str(model), pymodule_file="custom_interface.py", classname="CrabClassifier")
        assert not marker.exists()


def test_pickle_bomb_checkpoint_is_refused(trained, data, tmp_path, monkeypatch):
    # even where the environment turns torch.load's weights_only default off
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    model = copy_model(trained, tmp_path)
    marker = tmp_path / "MARKER"
    state = torch.load(model / "model.ckpt", weights_only=True)
    state["bomb"] = Bomb(marker)
    torch.save(state, model / "model.ckpt")
    record_files(model)  # the record of the files is no defence: it is as easy to rewrite

    with pytest.raises(UnsafeModelError, match="model.ckpt holds more than weights") as err:
        CrabClassifier.from_hparams(source=str(model))
    assert "\n" not in str(err.value)
    assert not marker.exists()
    with pytest.raises(UnsafeModelError, match="holds more than weights"):
        load_weights(str(model / "model.ckpt"))  # as crab.bin.package reads a run's checkpoints
    assert not marker.exists()

    write_inputs(tmp_path, data)
    message = cli(
        "--model",
        model,
        "--wav_scp",
        tmp_path / "wav.scp",
        "--text",
        tmp_path / "text",
        "--text_mode",
        "gold",
        "--out",
        tmp_path / "r.tsv",
    )
    assert "holds more than weights" in message and "\n" not in message
    assert not marker.exists()


STRATEGIES = [LocalStrategy.NO_LINK, LocalStrategy.SYMLINK, LocalStrategy.COPY, LocalStrategy.COPY_SKIP_CACHE]


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.name)
def test_a_yaml_left_in_savedir_is_not_built(strategy, trained, tmp_path, caplog):
    model = copy_model(trained, tmp_path)
    marker = tmp_path / "MARKER"
    savedir = tmp_path / "save"
    savedir.mkdir()
    evil = (model / "hyperparams.yaml").read_text() + f'evil: !apply:os.system ["touch {marker}"]\n'
    (savedir / "hyperparams.yaml").write_text(evil)

    with caplog.at_level("WARNING", logger="crab.inference"):
        loaded = CrabClassifier.from_hparams(source=str(model), savedir=str(savedir), local_strategy=strategy)
    assert not marker.exists()
    assert torch.equal(probe(loaded), probe(CrabClassifier.from_hparams(source=str(model))))
    # a savedir that NO_LINK leaves as it is: said, as the caller asked for one
    assert ("nothing is put there with local_strategy NO_LINK" in caplog.text) == (
        strategy == LocalStrategy.NO_LINK
    )


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.name)
def test_a_savedir_reused_loads_the_model_asked_for(strategy, trained, tmp_path):
    first = copy_model(trained, tmp_path)
    second = tmp_path / "second"
    shutil.copytree(first, second)
    state = torch.load(second / "model.ckpt", weights_only=True)
    for key in state:
        if key.startswith("classifier."):
            state[key] = -state[key]
    torch.save(state, second / "model.ckpt")
    record_files(second)
    savedir = tmp_path / "save"

    CrabClassifier.from_hparams(source=str(first), savedir=str(savedir), local_strategy=LocalStrategy.COPY)
    loaded = CrabClassifier.from_hparams(source=str(second), savedir=str(savedir), local_strategy=strategy)
    expected = probe(CrabClassifier.from_hparams(source=str(second)))
    assert not torch.allclose(expected, probe(CrabClassifier.from_hparams(source=str(first))))
    assert torch.equal(probe(loaded), expected)


def test_yaml_anchors_and_aliases_are_refused(trained, tmp_path):
    model = copy_model(trained, tmp_path)
    lineno = add_line(model, "shared: &sizes [1, 2]\nagain: *sizes")
    with pytest.raises(UnsafeModelError, match="anchor or alias") as err:
        CrabClassifier.from_hparams(source=str(model))
    assert f"{model / 'hyperparams.yaml'}:{lineno - 1}:" in str(err.value)


def test_a_billion_laughs_yaml_is_refused_at_once(tmp_path):
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for level in range(1, 10):
        lines.append(f"l{level}: &l{level} [{', '.join([f'*l{level - 1}'] * 10)}]")
    path = tmp_path / "hyperparams.yaml"
    path.write_text("\n".join(lines) + "\n")
    start = time.monotonic()
    with pytest.raises(UnsafeModelError, match=f"{path}:1: a YAML anchor or alias"):
        check_package_hparams(str(path))
    assert time.monotonic() - start < 5


@pytest.mark.parametrize(
    "line",
    [
        "evil: \"(!!python/object/apply:os.system ['touch {marker}'])\"",
        "evil: '(!!python/object/apply:os.system [\"touch {marker}\"])'",
        "\"(!!python/object/apply:os.system ['touch {marker}'])\": 1",
    ],
    ids=["double_quoted", "single_quoted", "quoted_key"],
)
def test_a_quoted_tuple_is_refused(line, tmp_path):
    # hyperpyyaml round-trips the yaml through ruamel.yaml, which writes a quoted '(...)' string
    # plain, then loads it as a !tuple with yaml's unsafe Loader: the first load of a process
    # (later ones quote it again) runs the command
    marker = tmp_path / "MARKER"
    path = tmp_path / "hyperparams.yaml"
    path.write_text("sample_rate: 16000\n" + line.format(marker="MARKER") + "\n")  # short: a key over
    # 128 characters is written differently
    with pytest.raises(UnsafeModelError, match=f"{path}:2: quoted value"):
        check_package_hparams(str(path))
    load = "import sys; from hyperpyyaml import load_hyperpyyaml; load_hyperpyyaml(open(sys.argv[1]).read())"
    subprocess.run([sys.executable, "-c", load, str(path)], cwd=tmp_path, capture_output=True, timeout=120)
    assert marker.exists()  # the test's premise: what loading it would do
