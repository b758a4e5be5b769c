"""The packaged hyperparams.yaml is the template crab/templates/inference.yaml filled from the
run's training keys (nothing read off the built model), and a package of the layout written
before the template still loads."""

import glob
import json
import os
import re
import shutil

import pytest
import torch
import yaml

from crab.experiment import parse_and_load, prepare_labels_and_weights
from crab.inference import CrabClassifier, UnsafeModelError, check_package_hparams
from crab.packaging import PACKAGE_KEYS, _flow, inference_template, training_keys
from crab.runconfig import TagTolerantLoader
from tests import test_inference
from tests.test_inference import CONFIG, TEMPLATE, in_template, overrides, package, save_run_config

# the fixture of test_inference, found by pytest under the same name (see test_model_security)
data = test_inference.data

# training keys away from crab_tiny.yaml's values, the model's sizes among them (the legs' size is
# no key of the package: the legs are not packaged)
RUN_KEYS = {
    "hidden_dim": 24,
    "num_heads": 2,
    "attention_dropout": 0.2,
    "scaled_pooling": False,
    "bottleneck_dim": 16,
    "dropout": 0.3,
    "unimodal_leg_input": "projection",
    "padding_masks": False,
    "leg_output_dim": 8,
    "text_max_length": 64,
    "text_padding": "max_length",
    "max_duration": 5.0,
}

# hyperparams.yaml of the package of that run as crab.bin.package wrote it before the template
# (a Python string filled from the model's modules), header comments left out
OLD_LAYOUT = """# Crab inference hyperparameters, written by crab.bin.package.
sample_rate: 16000
classes: ["angry", "happy", "neutral", "sad"]
max_duration: 5.0  # seconds of audio kept per utterance, as in training
train_text_source: gold  # transcripts the model was trained on

# ---- model ----
num_classes: 4
modality: "bimodal"  # bimodal | speech | text
hidden_dim: 24
num_heads: 2
attention_dropout: 0.2
scaled_pooling: false
bottleneck_dim: 16
dropout: 0.3
unimodal_leg_input: "projection"
padding_masks: false

model: !new:crab.inference.PackagedCrab
    speech_encoder: {"source": "speech_encoder", "layer_weighting": "last", "normalize_waveform": "none", \
"normalize_states": false}
    text_encoder: {"source": "text_encoder", "tokenizer": "text_encoder", "layer_weighting": "last", \
"max_length": 64, "padding": "max_length", "normalize_states": false}
    num_classes: !ref <num_classes>
    modality: !ref <modality>
    hidden_dim: !ref <hidden_dim>
    num_heads: !ref <num_heads>
    attention_dropout: !ref <attention_dropout>
    scaled_pooling: !ref <scaled_pooling>
    bottleneck_dim: !ref <bottleneck_dim>
    dropout: !ref <dropout>
    unimodal_leg_input: !ref <unimodal_leg_input>
    padding_masks: !ref <padding_masks>

label_encoder: !new:speechbrain.dataio.encoder.CategoricalEncoder

modules:
    model: !ref <model>

pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        model: !ref <model>
        label_encoder: !ref <label_encoder>
"""


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    """A crab_tiny.yaml run with ``RUN_KEYS`` (its first checkpoint saved untrained), and its package."""
    tmp = tmp_path_factory.mktemp("template_run")
    run_dir = tmp / "run"

    def save_checkpoint():
        argv = [CONFIG, *overrides(data, run_dir, *(f"--{k}={json.dumps(v)}" for k, v in RUN_KEYS.items()))]
        _, _, applied, hparams = parse_and_load(argv)
        os.makedirs(hparams["save_folder"], exist_ok=True)
        save_run_config(CONFIG, applied, run_dir)
        prepare_labels_and_weights(hparams)
        hparams["checkpointer"].save_checkpoint(meta={"UAR": 0.5})
        return hparams

    hparams = in_template(save_checkpoint)
    package(data, run_dir, tmp / "model")  # loads the package back and checks its outputs
    return hparams, run_dir, tmp / "model"


def test_the_package_follows_the_training_keys(run):
    hparams, _, model_dir = run
    path = model_dir / "hyperparams.yaml"
    check_package_hparams(str(path))
    text = path.read_text()
    packaged = yaml.load(text, Loader=TagTolerantLoader)
    assert packaged["train_text_source"] == "gold"
    keys = training_keys(inference_template(), speech=False)
    # auto, as resolved for a WavLM directory without a preprocessor config
    expected = {k: hparams[k] for k in keys} | {"waveform_normalization": "none"}
    assert {k: packaged[k] for k in keys} == expected
    assert {k: packaged.get(k) for k in RUN_KEYS if k != "leg_output_dim"} == {
        k: v for k, v in RUN_KEYS.items() if k != "leg_output_dim"
    }
    assert "leg_output_dim" not in packaged
    crab = CrabClassifier.from_hparams(source=str(model_dir)).mods.model.crab
    assert crab.cross_modal.speech_to_text.num_heads == 2
    assert crab.unimodal["speech"].projection[0].out_features == 24
    assert (crab.text_encoder.max_length, crab.text_encoder.padding) == (64, "max_length")


CONFIGS = sorted(glob.glob(os.path.join(TEMPLATE, "conf", "*.yaml")))


def test_every_config_family_is_checked():
    assert {os.path.basename(c) for c in CONFIGS} >= {
        "crab.yaml",
        "crab_base.yaml",
        "crab_tiny.yaml",
        "crab_reference.yaml",
        "crab_reference_tiny.yaml",
    }


@pytest.mark.parametrize("config", CONFIGS, ids=os.path.basename)
def test_every_template_key_is_a_training_key_of_each_config(config):
    with open(config, encoding="utf-8") as f:
        keys = set(yaml.load(f, Loader=TagTolerantLoader))
    needed = training_keys(inference_template())
    assert "hidden_dim" in needed and not set(needed) - keys
    assert not set(PACKAGE_KEYS) & keys  # packaging's own keys shadow no training key


@pytest.mark.parametrize(
    "value", ["longest", "gold", "true", "null", "no", "1e-3", "12", "~", "a b", ["x", "y"]]
)
def test_a_filled_value_reads_back_as_itself(value):
    """A word YAML reads as another value (true, null, a number) is written quoted: the package
    would otherwise build its model with a bool, a None or a number in the place of a string."""
    assert yaml.safe_load(f"key: {_flow('key', value)}")["key"] == value


def test_an_unfilled_template_is_refused(tmp_path):
    path = tmp_path / "hyperparams.yaml"
    path.write_text(inference_template())
    with pytest.raises(UnsafeModelError, match="tag !PLACEHOLDER"):
        check_package_hparams(str(path))


def test_a_package_of_the_old_layout_still_loads(run, tmp_path):
    _, _, model_dir = run
    old = tmp_path / "model"
    shutil.copytree(model_dir, old)
    (old / "hyperparams.yaml").write_text(OLD_LAYOUT)
    meta = json.loads((old / "metadata.json").read_text())
    del meta["files"]  # packages of that layout were made before the record of their files
    (old / "metadata.json").write_text(json.dumps(meta))
    wavs = 0.1 * torch.randn(2, 16000, generator=torch.Generator().manual_seed(0))
    texts = ["a package of the old layout", "still loads"]
    expected = CrabClassifier.from_hparams(source=str(model_dir)).classify_batch(wavs, texts)[0]
    got = CrabClassifier.from_hparams(source=str(old)).classify_batch(wavs, texts)[0]
    torch.testing.assert_close(got, expected)


def test_a_run_without_a_template_key_is_refused_naming_it(run, data, tmp_path):
    _, run_dir, _ = run
    path = run_dir / "hyperparams.yaml"
    text = path.read_text()
    try:
        path.write_text(re.sub(r"^text_padding:.*\n", "", text, flags=re.MULTILINE))
        with pytest.raises(SystemExit, match="hyperparams.yaml has no text_padding, which the") as err:
            package(data, run_dir, tmp_path / "model")
    finally:
        path.write_text(text)
    assert "\n" not in str(err.value) and not os.path.exists(tmp_path / "model.tmp")
