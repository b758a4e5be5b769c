"""Recipe configs: they load, every key is used, overrides are checked, variants build."""

import glob
import os
import re

import pytest
import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml
from speechbrain.utils.run_opts import RunOptions

from crab.runconfig import ConfigError, check_overrides, last_value_wins
from crab.tokenizer import build_bpe_tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(REPO, "egs", "*", "conf", "*.yaml")))
MINI_CONFIG = os.path.join(REPO, "egs", "mini", "conf", "crab_tiny.yaml")

TOP_LEVEL_KEY = re.compile(r"^([A-Za-z_][\w.]*)\s*:", re.MULTILINE)
PLACEHOLDER_KEY = re.compile(r"^([A-Za-z_][\w.]*)\s*:\s*!PLACEHOLDER\b", re.MULTILINE)
# <key>, <key[0]>, <key.attr> anywhere in a value (after !ref, !copy, in strings...).
REFERENCE = re.compile(r"<\s*([A-Za-z_]\w*)\s*[\[.>]")
# What the package reads: hparams["key"], hparams['key'], hparams.get("key"),
# hparams.key and self.hparams.key.
PY_READS = [
    re.compile(r"hparams\s*\[\s*[\"'](\w+)[\"']\s*\]"),
    re.compile(r"hparams\.get\(\s*[\"'](\w+)[\"']"),
    re.compile(r"hparams\.(\w+)"),
]
# Keys SpeechBrain's Brain reads from the hparams itself (run options).
RUN_OPTION_KEYS = {"grad_accumulation_factor", "max_grad_norm", "ckpt_interval_minutes"} | set(
    RunOptions().as_dict()
)

TEXTS = [
    "I am so angry with you",
    "what a lovely day it is",
    "the meeting is at noon",
    "I miss them so much",
    "kids are playing outside in the sun",
]


def config_id(path):
    return os.path.relpath(path, REPO)


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tokenizer")
    build_bpe_tokenizer(TEXTS * 4, str(out), vocab_size=300)
    return str(out)


TINY_CONF = os.path.join(REPO, "egs", "TEMPLATE", "conf")
CLASSES = ["anger", "joy", "neutral", "sadness", "fear"]


def base_overrides(path, tmp_path, tokenizer_dir):
    """Tmp paths for every !PLACEHOLDER key (a label list for ``classes``), tiny
    random-init encoders in place of hub models (tests never download), the test
    tokenizer, and an output folder outside the repository (loading builds the
    checkpointer, which creates it)."""
    text = read(path)
    overrides = {key: str(tmp_path / key) for key in PLACEHOLDER_KEY.findall(text)}
    if "classes" in overrides:
        overrides["classes"] = CLASSES
    keys = set(TOP_LEVEL_KEY.findall(text))
    if "speech_encoder_source" in keys:
        overrides["speech_encoder_source"] = os.path.join(TINY_CONF, "wavlm_tiny")
        overrides["text_encoder_source"] = os.path.join(TINY_CONF, "roberta_tiny")
        overrides["pretrained_encoders"] = False
    if "tokenizer_source" in keys:
        overrides["tokenizer_source"] = tokenizer_dir
    if "output_folder" in keys:
        overrides["output_folder"] = str(tmp_path / "exp")
    return overrides


def load(path, tmp_path, tokenizer_dir, monkeypatch, **extra):
    monkeypatch.chdir(os.path.dirname(os.path.dirname(path)))  # the recipe dir
    overrides = {**base_overrides(path, tmp_path, tokenizer_dir), **extra}
    with open(path, encoding="utf-8") as f:
        return load_hyperpyyaml(f, overrides)


def test_configs_found():
    assert MINI_CONFIG in CONFIGS


# ---------------------------------------------------------------- loading


@pytest.mark.parametrize("path", CONFIGS, ids=config_id)
def test_config_loads(path, tmp_path, tokenizer_dir, monkeypatch):
    placeholders = PLACEHOLDER_KEY.findall(read(path))
    hparams = load(path, tmp_path, tokenizer_dir, monkeypatch)
    for key in placeholders:
        assert hparams[key] == (CLASSES if key == "classes" else str(tmp_path / key))
    if "model" in hparams:
        model = hparams["model"]
        assert isinstance(model, torch.nn.Module)
        assert sum(p.numel() for p in model.parameters()) > 0
    if "legs" in hparams and "model" in hparams:
        assert set(hparams["legs"].names) <= set(hparams["model"].tap_dims)
    if "classes" in hparams and "num_classes" in hparams:
        assert hparams["num_classes"] == len(hparams["classes"])


def test_placeholders_are_required(tmp_path, tokenizer_dir, monkeypatch):
    """Without a value for a !PLACEHOLDER key the config does not load."""
    overrides = base_overrides(MINI_CONFIG, tmp_path, tokenizer_dir)
    assert {"data_root", "data_folder"} <= set(overrides)
    del overrides["data_root"]
    monkeypatch.chdir(os.path.dirname(os.path.dirname(MINI_CONFIG)))
    with pytest.raises(ValueError, match="data_root"):
        with open(MINI_CONFIG) as f:
            load_hyperpyyaml(f, overrides)


# ---------------------------------------------------------------- unused keys


def python_reads():
    keys = set()
    for path in glob.glob(os.path.join(REPO, "crab", "*.py")) + glob.glob(
        os.path.join(REPO, "crab", "bin", "*.py")
    ):
        text = read(path)
        for pattern in PY_READS:
            keys.update(pattern.findall(text))
    return keys


def unused_keys(text, py_keys):
    used = set(REFERENCE.findall(text)) | py_keys | RUN_OPTION_KEYS
    return [
        key
        for key in dict.fromkeys(TOP_LEVEL_KEY.findall(text))
        if not key.startswith("__") and key not in used
    ]


def test_python_reads_are_collected():
    keys = python_reads()
    # A few the code is known to read; guards the regexes above.
    for key in (
        "classes",
        "wce",
        "save_folder",
        "train_manifest",
        "alpha",
        "leg_loss",
        "opt_class",
        "ckpt_metric",
        "eval_name",
        "data_root",
        "max_duration",
    ):
        assert key in keys, key


def test_unused_key_detector_works():
    text = (
        "seed: 1\n__set_seed: !apply:print [!ref <seed>]\nlr: 0.1\n"
        "stray_key: 3\nfoo: !ref <bar[0]>\nbar: [1]\nbaz: !ref <qux.x>\nqux: 2\n"
    )
    assert unused_keys(text, {"lr"}) == ["stray_key", "foo", "baz"]


@pytest.mark.parametrize("path", CONFIGS, ids=config_id)
def test_every_key_is_used(path):
    unused = unused_keys(read(path), python_reads())
    assert not unused, f"{config_id(path)}: top-level keys nothing uses: {unused}"


# ---------------------------------------------------------------- overrides


def test_check_overrides_malformed_value():
    with pytest.raises(ConfigError, match=r"alpha") as err:
        check_overrides(MINI_CONFIG, "alpha: [1, 2")
    assert "[1, 2" in str(err.value)


def test_check_overrides_malformed_from_command_line():
    _, _, overrides = sb.parse_arguments([MINI_CONFIG, "--lr=0.5", "--alpha=[1, 2"])
    with pytest.raises(ConfigError, match=r"--alpha"):
        check_overrides(MINI_CONFIG, overrides)


def test_check_overrides_unknown_key():
    with pytest.raises(ConfigError, match=r"alpah") as err:
        check_overrides(MINI_CONFIG, "alpha: 1.0\nalpah: 1.5")
    assert "crab_tiny.yaml" in str(err.value)
    _, _, overrides = sb.parse_arguments([MINI_CONFIG, "--alpah=1.5"])
    with pytest.raises(ConfigError, match=r"alpah"):
        check_overrides(MINI_CONFIG, overrides)


def test_check_overrides_indented_key_is_not_top_level():
    # "source" only appears nested (under speech_encoder / text_encoder).
    with pytest.raises(ConfigError, match=r"source"):
        check_overrides(MINI_CONFIG, "source: x")


def test_check_overrides_valid():
    assert check_overrides(MINI_CONFIG, "") == {}
    assert check_overrides(MINI_CONFIG, None) == {}
    parsed = check_overrides(
        MINI_CONFIG,
        "alpha: 1.5\nleg_names: [fusion, speech_pooled]\n\nmodality: speech\n"
        "scaled_pooling: false\nbatch_size: 4\nlr: 1.0e-4\neval_name:",
    )
    assert parsed == {
        "alpha": 1.5,
        "leg_names": ["fusion", "speech_pooled"],
        "modality": "speech",
        "scaled_pooling": False,
        "batch_size": 4,
        "lr": 1.0e-4,
        "eval_name": None,
    }
    _, _, overrides = sb.parse_arguments(
        [MINI_CONFIG, "--device=cpu", "--alpha=0.5", "--data_root=/db/x", "--seed", "7"]
    )
    assert check_overrides(MINI_CONFIG, overrides) == {
        "alpha": 0.5,
        "data_root": "/db/x",
        "seed": 7,
    }


def test_a_repeated_override_takes_its_last_value():
    _, _, overrides = sb.parse_arguments(
        [
            MINI_CONFIG,
            "--lr=0.5",
            "--alpha=1.0",
            "--lr=!ref <alpha> / 4",
            "--leg_names=[fusion]",
            "--alpha=3.0",
        ]
    )
    merged = last_value_wins(overrides)
    assert sorted(merged.splitlines()) == ["alpha: 3.0", "leg_names: [fusion]", "lr: !ref <alpha> / 4"]
    assert check_overrides(MINI_CONFIG, merged)["alpha"] == 3.0
    assert last_value_wins("") == "" and last_value_wins(None) is None


def test_check_overrides_accepts_hyperpyyaml_tags():
    _, _, overrides = sb.parse_arguments([MINI_CONFIG, "--encoder_lr=!ref <lr> / 100"])
    check_overrides(MINI_CONFIG, overrides)


# ---------------------------------------------------------------- variants


def test_bimodal_default(tmp_path, tokenizer_dir, monkeypatch):
    hparams = load(MINI_CONFIG, tmp_path, tokenizer_dir, monkeypatch)
    model = hparams["model"]
    assert model.speech_encoder is not None and model.text_encoder is not None
    assert model.cross_modal is not None
    assert hparams["legs"].names == [
        "speech_unimodal",
        "text_unimodal",
        "speech_pooled",
        "text_pooled",
        "fusion",
    ]
    assert hparams["leg_loss"].kind == "mpcl"


PAPER_CONFIG = os.path.join(TINY_CONF, "crab.yaml")


def test_paper_config_has_the_paper_settings(tmp_path, tokenizer_dir, monkeypatch):
    text = read(PAPER_CONFIG)
    values = dict(re.findall(r"^(\w+):\s*([^#\n]*?)\s*(?:#.*)?$", text, re.MULTILINE))
    assert values["speech_encoder_source"] == "microsoft/wavlm-large"
    assert values["text_encoder_source"] == "roberta-large"
    assert float(values["lr"]) == 1e-5 and values["encoder_lr"] == "!ref <lr> / 10"
    assert (values["number_of_epochs"], values["batch_size"], values["grad_accumulation_factor"]) == (
        "20",
        "8",
        "4",
    )
    assert (values["alpha"], values["temperature"], values["max_duration"]) == ("2.0", "0.1", "12.0")
    assert (values["hidden_dim"], values["bottleneck_dim"], values["leg_output_dim"]) == ("512", "512", "512")
    assert values["ckpt_metric"] == "UAR" and values["contrastive_loss"] == "mpcl"
    hparams = load(PAPER_CONFIG, tmp_path, tokenizer_dir, monkeypatch)
    assert hparams["encoder_lr"] == pytest.approx(1e-6)
    assert (
        hparams["model"].speech_encoder.model.feature_extractor.conv_layers[0].conv.weight.requires_grad
        is False
    )


# Raised inside transformers' WavLM attention, not by crab.
@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")
def test_speech_modality(tmp_path, tokenizer_dir, monkeypatch):
    hparams = load(MINI_CONFIG, tmp_path, tokenizer_dir, monkeypatch, modality="speech")
    model, legs = hparams["model"], hparams["legs"]
    assert model.text_encoder is None
    assert list(model.encoders) == ["speech"]
    assert model.cross_modal is None
    assert legs.names == ["speech_unimodal", "speech_pooled", "fusion"]
    # The checkpointed module dict holds the same objects.
    assert hparams["modules"]["model"] is model and hparams["modules"]["legs"] is legs

    model.eval()
    with torch.no_grad():
        wavs = 0.1 * torch.randn(2, 3200)
        logits, taps = model(wavs, torch.tensor([1.0, 0.75]), None)
        outputs = legs(taps)
    assert logits.shape == (2, len(hparams["classes"]))
    assert set(outputs) == set(legs.names)
    assert all(o.shape == (2, hparams["leg_output_dim"]) for o in outputs.values())


def test_no_legs(tmp_path, tokenizer_dir, monkeypatch):
    hparams = load(MINI_CONFIG, tmp_path, tokenizer_dir, monkeypatch, leg_names=[])
    assert hparams["legs"].names == []
    assert len(list(hparams["legs"].parameters())) == 0


def test_supcon(tmp_path, tokenizer_dir, monkeypatch):
    hparams = load(
        MINI_CONFIG,
        tmp_path,
        tokenizer_dir,
        monkeypatch,
        contrastive_loss="supcon",
        modality="text",
    )
    assert hparams["leg_loss"].kind == "supcon"
    assert hparams["model"].speech_encoder is None
    assert hparams["legs"].names == ["text_unimodal", "text_pooled", "fusion"]
    embeddings = torch.randn(6, 8)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    loss = hparams["leg_loss"](embeddings, labels)
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.item() > 0


def test_bad_override_values_fail_to_build(tmp_path, tokenizer_dir, monkeypatch):
    with pytest.raises(ValueError, match="modality"):
        load(MINI_CONFIG, tmp_path, tokenizer_dir, monkeypatch, modality="audio")
    with pytest.raises(ValueError, match="contrastive"):
        load(MINI_CONFIG, tmp_path, tokenizer_dir, monkeypatch, contrastive_loss="triplet")
    with pytest.raises(ValueError, match="leg name"):
        load(MINI_CONFIG, tmp_path, tokenizer_dir, monkeypatch, leg_names=["speech_fused"])
