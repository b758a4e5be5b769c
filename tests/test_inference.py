"""Packaging (stage 8), CrabClassifier and the crab-infer CLI, on a tiny model trained here.

The round trip: train the tiny config for two epochs, package the best checkpoint,
load the package with ``from_hparams`` and with ``foreign_class``, and get the
probabilities of the trained model (and of stage 5's evaluation) on the same inputs.
"""

import csv
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from hyperpyyaml.core import resolve_references
from speechbrain.inference.interfaces import foreign_class

from crab.batch_inference import InferenceJob
from crab.bin import infer
from crab.bin import package as package_cli
from crab.data import read_audio
from crab.encoders import ModelSourceError
from crab.experiment import dataset, make_brain, parse_and_load, prepare_labels_and_weights
from crab.inference import AudioError, CrabClassifier, ModelFileError, file_sha256
from crab.tokenizer import build_bpe_tokenizer
from tests.conftest import ROOT, write_tiny_whisper
from tests.test_brain import corpus_options
from tests.test_transcribe import build_tiny_whisper

TEMPLATE = os.path.join(ROOT, "egs", "TEMPLATE")
CONFIG = os.path.join(TEMPLATE, "conf", "crab_tiny.yaml")
CLASSES = ["angry", "happy", "neutral", "sad"]


def tone(seconds, freq, rate=16000, amplitude=0.3, seed=0):
    t = np.arange(int(seconds * rate)) / rate
    noise = np.random.default_rng(seed).normal(0, 0.01, t.shape)
    return (amplitude * np.sin(2 * np.pi * freq * t) + noise).astype("float32")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Train 8 (2 per class), valid 4, test 4 utterances; manifests, a Kaldi data dir of test, tokenizer."""
    root = tmp_path_factory.mktemp("inference_data")
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 2), ("valid", 1), ("test", 1)):
        manifest = {}
        for k, emo in enumerate(CLASSES):
            for n in range(per_class):
                utt = f"{split}_{emo}_{n}"
                seconds = rng.uniform(0.4, 0.9)
                sf.write(root / f"{utt}.wav", tone(seconds, 100 + 80 * k, seed=n), 16000)
                manifest[utt] = {
                    "wav": f"{{data_root}}/{utt}.wav",
                    "duration": seconds,
                    "text": f"I feel {emo} today",
                    "emo": emo,
                    "spk": f"{split}{n}",
                }
        (root / f"{split}.json").write_text(json.dumps(manifest))
    build_bpe_tokenizer([f"I feel {e} today" for e in CLASSES] * 3, str(root / "tokenizer"), 300)
    return root


def overrides(data, out, *extra):
    return [
        *corpus_options(data, out),
        "--batch_size=4",
        "--number_of_epochs=2",
        *extra,
    ]


def in_template(fn, *args):
    """Run ``fn`` in egs/TEMPLATE (the config's conf/ paths are relative to the recipe)."""
    cwd = os.getcwd()
    os.chdir(TEMPLATE)
    try:
        return fn(*args)
    finally:
        os.chdir(cwd)


def train(data, out, *extra):
    def fit():
        _, run_opts, applied, hparams = parse_and_load([CONFIG, *overrides(data, out, *extra)])
        os.makedirs(hparams["save_folder"], exist_ok=True)
        save_run_config(CONFIG, applied, out)  # as stage 4 does: later stages load the run from it
        encoder = prepare_labels_and_weights(hparams)
        brain = make_brain(hparams, run_opts)
        train_set = dataset(hparams, hparams["train_manifest"], encoder)
        brain.fit_state_normalization(
            train_set, hparams["eval_dataloader_opts"], hparams["state_norm_utterances"]
        )
        brain.fit(
            hparams["epoch_counter"],
            train_set,
            dataset(hparams, hparams["valid_manifest"], encoder, sort=True),
            train_loader_kwargs=hparams["train_dataloader_opts"],
            valid_loader_kwargs=hparams["eval_dataloader_opts"],
        )
        brain.evaluate(
            dataset(hparams, hparams["test_manifest"], encoder, sort=True),
            max_key="UAR",
            test_loader_kwargs=hparams["eval_dataloader_opts"],
        )  # loads the best checkpoint
        return brain, hparams

    return in_template(fit)


def save_run_config(config, applied, out):
    """The run's resolved hyperparams.yaml, as crab.bin.train saves it (sb.create_experiment_directory)."""
    with open(config, encoding="utf-8") as f:
        (out / "hyperparams.yaml").write_text(resolve_references(f, applied).getvalue())


def package(data, out, model_dir, *extra):
    in_template(
        package_cli.main,
        [CONFIG, *overrides(data, out, *extra), "--text_source", "gold", "--out", str(model_dir)],
    )


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("inference_exp")
    brain, hparams = train(data, tmp / "run")
    package(data, tmp / "run", tmp / "model")
    return brain, hparams, tmp / "model", tmp / "run"


def tree(path):
    """Every entry under ``path`` (relative), and whether any is a symlink."""
    entries, links = set(), False
    for base, dirs, files in os.walk(path):
        for name in dirs + files:
            full = os.path.join(base, name)
            entries.add(os.path.relpath(full, path))
            links = links or os.path.islink(full)
    return entries, links


def test_package_is_self_contained_and_has_no_legs(trained, data):
    brain, hparams, model_dir, _ = trained
    files = set(os.listdir(model_dir))
    assert files >= {
        "hyperparams.yaml",
        "model.ckpt",
        "label_encoder.ckpt",
        "class_weights.json",
        "metadata.json",
        "custom_interface.py",
        "speech_encoder",
        "text_encoder",
    }
    assert "legs.ckpt" not in files
    state = torch.load(model_dir / "model.ckpt")
    assert set(state) == set(hparams["model"].state_dict())  # the Crab alone
    assert len(hparams["legs"].legs) == 5 and not any("leg" in key for key in state)
    legs = {id(p) for p in hparams["legs"].parameters()}
    assert not legs & {id(p) for p in hparams["model"].parameters()}
    assert (model_dir / "label_encoder.ckpt").read_text().splitlines()[:4] == [
        f"'{c}' => {i}" for i, c in enumerate(CLASSES)
    ]
    weights = json.loads((model_dir / "class_weights.json").read_text())
    assert weights == {c: {"count": 2, "weight": 4.0} for c in CLASSES}  # N / N_c = 8 / 2
    meta = json.loads((model_dir / "metadata.json").read_text())
    assert meta["encoders"]["speech"]["source"] == "conf/wavlm_tiny"
    assert meta["encoders"]["text"]["tokenizer"]["source"] == ".../tokenizer"  # data / "tokenizer"
    assert meta["training"]["ckpt_metric"] == "UAR" and "UAR" in meta["training"]["valid_scores"]
    assert meta["training"]["text_source"] == "gold"
    assert (model_dir / "text_encoder" / "tokenizer.json").is_file()
    assert (model_dir / "speech_encoder" / "config.json").is_file()
    hparams_text = (model_dir / "hyperparams.yaml").read_text()
    assert str(data) not in hparams_text and "PLACEHOLDER" not in hparams_text  # needs no training data


def test_the_package_records_its_files(trained):
    model_dir = trained[2]
    files = json.loads((model_dir / "metadata.json").read_text())["files"]
    on_disk = {
        os.path.relpath(os.path.join(base, name), model_dir)
        for base, _, names in os.walk(model_dir)
        for name in names
    }
    assert set(files) == on_disk - {"metadata.json", "README.md"} and "text_encoder/tokenizer.json" in files
    for name, entry in files.items():
        path = model_dir / name
        assert entry == {"size": path.stat().st_size, "sha256": file_sha256(path)}


def test_the_model_card_says_what_the_model_expects_and_may_be_edited(trained, tmp_path):
    model_dir = copy_package(trained, tmp_path)
    card = (model_dir / "README.md").read_text()
    meta = json.loads((model_dir / "metadata.json").read_text())
    assert card.startswith("---\nlibrary_name: speechbrain\npipeline_tag: audio-classification\n")
    assert f"| classes (output order) | {', '.join(CLASSES)} |" in card
    assert "| transcripts | trained on human (gold) transcripts: give it those" in card
    assert "| speech encoder | `conf/wavlm_tiny` (wavlm) |" in card
    valid = meta["training"]["valid_scores"]
    validation = ", ".join(f"{k} {valid[k]:.4f}" for k in ("WAR", "UAR", "macro_F1", "weighted_F1"))
    assert f"| validation | {validation} |" in card
    scores = json.loads((trained[3] / "eval_test" / "scores.json").read_text())  # the fixture's evaluation
    assert meta["training"]["test_scores"] == {"test": scores}
    test = ", ".join(f"{k} {scores[k]:.4f}" for k in ("WAR", "UAR", "macro_F1", "weighted_F1"))
    assert f"| test set test (4 utterances) | {test} |" in card
    assert str(trained[3]) not in card
    (model_dir / "README.md").write_text("# our emotion model\n")  # the owner's own card
    assert CrabClassifier.from_hparams(source=str(model_dir)).classes == CLASSES


def test_only_evaluations_of_the_packaged_checkpoint_reach_the_card(tmp_path):
    from types import SimpleNamespace

    from crab.packaging import test_scores

    for name, evaluated in (("same", "CKPT+1\n"), ("other", "CKPT+0\n"), ("unrecorded", None)):
        (tmp_path / f"eval_{name}").mkdir()
        (tmp_path / f"eval_{name}" / "scores.json").write_text('{"num_utterances": 3, "UAR": 0.5, "loss": 1}')
        if evaluated:
            (tmp_path / f"eval_{name}" / "checkpoint.txt").write_text(evaluated)
    checkpoint = SimpleNamespace(path=str(tmp_path / "save" / "CKPT+1"))
    assert test_scores(str(tmp_path), checkpoint) == {"same": {"num_utterances": 3, "UAR": 0.5}}


@pytest.mark.parametrize(
    ("modality", "text_source", "asr_model", "expected"),
    [
        (
            "bimodal",
            "asr",
            "openai/whisper-large-v3",
            "`crab-infer --text_mode asr --asr_model openai/whisper-large-v3`",
        ),
        ("text", "gold", None, "pipeline_tag: text-classification"),
        ("speech", "unknown", None, 'clf.classify_file("utt.wav")\n'),
    ],
)
def test_the_model_card_of_each_modality_and_transcript_source(modality, text_source, asr_model, expected):
    from crab.model_card import model_card

    encoders = {"speech": {"source": "microsoft/wavlm-large", "model_type": "wavlm"}}
    encoders["text"] = {
        "source": "roberta-large",
        "model_type": "roberta",
        "tokenizer": {"source": "roberta-large"},
    }
    metadata = {
        "created": "2026-11-30T00:00:00+00:00",
        "classes": ["angry", "sad"],
        "modality": modality,
        "training": {
            "output_folder": "/home/someone/exp/crab/session1/seed42",
            "epoch": 7,
            "ckpt_metric": "UAR",
            "valid_scores": {"UAR": 0.7},
            "text_source": text_source,
            "asr_model": asr_model,
        },
        "encoders": {b: e for b, e in encoders.items() if modality in ("bimodal", b)},
        "num_parameters": 600_000_000,
        "git_commit": "0123abcd",
        "versions": {"crab": "0.1.0", "torch": "2.11"},
    }
    card = model_card(metadata, max_duration=12.0)
    assert expected in card
    assert "from the run `crab/session1/seed42`" in card and "/home/someone" not in card
    assert ("| text encoder | `roberta-large` (roberta) |" in card) == (modality != "speech")
    assert "| code | crab 0.1.0, commit 0123abcd |" in card
    assert ("the first 12 s of each utterance" in card) == (modality != "text")
    assert "| checkpoint | epoch 7, best validation UAR |" in card and "| parameters | 600,000,000 |" in card
    if modality != "speech":  # a tokenizer other than the encoder's own (a fold's BPE) is named
        metadata["encoders"]["text"]["tokenizer"] = {"source": ".../tokenizer"}
        row = "| text encoder | `roberta-large` (roberta), tokenizer `.../tokenizer` |"
        assert row in model_card(metadata)


def copy_package(trained, tmp_path, recorded=True):
    """A copy of the trained package; without the record of its files (``recorded=False``),
    as packaged before the record existed."""
    model = tmp_path / "model"
    shutil.copytree(trained[2], model)
    if not recorded:
        meta = json.loads((model / "metadata.json").read_text())
        del meta["files"]
        (model / "metadata.json").write_text(json.dumps(meta))
    return model


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_bytes(path):
    """Four bytes in the middle of ``path`` changed, its size kept (a weight file still loads)."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4] = bytes(b ^ 0xFF for b in data[middle : middle + 4])
    path.write_bytes(bytes(data))


def refused(model, error, message):
    """``from_hparams`` and crab-infer both refuse ``model`` with one line matching ``message``."""
    with pytest.raises(error, match=message) as err:
        CrabClassifier.from_hparams(source=str(model))
    assert "\n" not in str(err.value)
    out, scp, text = (model.parent / name for name in ("r.tsv", "wav.scp", "text"))
    sf.write(model.parent / "u.wav", tone(0.5, 200), 16000)
    scp.write_text(f"u {model.parent}/u.wav\n")
    text.write_text("u hello\n")
    answer = cli("--model", model, "--wav_scp", scp, "--text", text, "--text_mode", "gold", "--out", out)
    assert isinstance(answer, str) and answer.startswith("ERROR: ") and "\n" not in answer
    assert re.search(message, answer)


DAMAGES = {
    "missing_tokenizer": (
        lambda m: (m / "text_encoder" / "tokenizer.json").unlink(),
        "text_encoder/tokenizer.json is missing",
    ),
    "truncated_weights": (
        lambda m: truncate(m / "model.ckpt"),
        r"model.ckpt has \d+ bytes, but the package was made with \d+",
    ),
    "changed_weights": (
        lambda m: flip_bytes(m / "model.ckpt"),
        "model.ckpt is not the file the package was made with",
    ),
    "changed_config": (
        lambda m: (m / "speech_encoder" / "config.json").write_text(
            (m / "speech_encoder" / "config.json").read_text().replace("  ", "\t")
        ),
        "speech_encoder/config.json (has|is not the file)",
    ),
    "extra_file": (
        lambda m: (m / "text_encoder" / "vocab.json").write_text("{}"),
        "text_encoder/vocab.json is not a file of this package",
    ),
    "missing_class_weights": (lambda m: (m / "class_weights.json").unlink(), "class_weights.json is missing"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_package_unlike_its_record_is_refused_naming_the_file(damage, trained, tmp_path):
    model = copy_package(trained, tmp_path)
    harm, message = DAMAGES[damage]
    harm(model)
    refused(model, ModelFileError, message)


def test_a_package_made_before_the_record_still_loads(trained, tmp_path):
    model = copy_package(trained, tmp_path, recorded=False)
    wavs = 0.1 * torch.randn(1, 16000, generator=torch.Generator().manual_seed(0))
    expected = CrabClassifier.from_hparams(source=str(trained[2])).classify_batch(wavs, ["hello"])[0]
    got = CrabClassifier.from_hparams(source=str(model)).classify_batch(wavs, ["hello"])[0]
    assert torch.equal(got, expected)


OLD_DAMAGES = {
    "missing_tokenizer": (
        lambda m: (m / "text_encoder" / "tokenizer.json").unlink(),
        ModelSourceError,
        "has no tokens but its 5 special ones",
    ),
    "truncated_weights": (
        lambda m: truncate(m / "model.ckpt"),
        ModelFileError,
        "model.ckpt is not a readable PyTorch checkpoint: truncated or damaged",
    ),
    "missing_weights": (lambda m: (m / "model.ckpt").unlink(), ModelFileError, "model.ckpt is missing"),
    "missing_labels": (
        lambda m: (m / "label_encoder.ckpt").unlink(),
        ModelFileError,
        "label_encoder.ckpt is missing",
    ),
}


@pytest.mark.parametrize("damage", sorted(OLD_DAMAGES))
def test_a_damaged_package_without_a_record_is_refused_naming_the_file(damage, trained, tmp_path):
    model = copy_package(trained, tmp_path, recorded=False)
    harm, error, message = OLD_DAMAGES[damage]
    harm(model)
    refused(model, error, message)


def test_classes_that_are_not_the_model_outputs_are_refused(trained, tmp_path):
    model = copy_package(trained, tmp_path, recorded=False)
    yaml_path = model / "hyperparams.yaml"
    text = yaml_path.read_text()
    yaml_path.write_text(re.sub(r"(?m)^classes:.*$", "classes: [angry, happy, neutral]", text))
    (model / "label_encoder.ckpt").write_text(
        "'angry' => 0\n'happy' => 1\n'neutral' => 2\n================\n'starting_index' => 0\n"
    )
    refused(model, ModelFileError, f"{yaml_path}: 3 classes .* gives 4 scores")

    yaml_path.write_text(re.sub(r"(?m)^num_classes:.*$", "num_classes: 3", yaml_path.read_text()))
    sizes = r"Size\(\[4, \d+\]\) from checkpoint, the shape in current model is torch.Size\(\[3, \d+\]\)"
    refused(model, ModelFileError, f"model.ckpt does not fit the model .*{sizes}")


def test_packaging_again_gives_the_same_package(trained, data, tmp_path):
    _, _, model_dir, run_dir = trained
    names = ("model.ckpt", "hyperparams.yaml", "label_encoder.ckpt")
    before = {name: (model_dir / name).read_bytes() for name in names}
    package(data, run_dir, model_dir)
    assert {name: (model_dir / name).read_bytes() for name in before} == before
    assert not os.path.exists(f"{model_dir}.tmp")
    (tmp_path / "notes").mkdir()
    with pytest.raises(SystemExit, match="not a Crab package"):
        package(data, run_dir, tmp_path / "notes")


class StandInHub:
    """``huggingface_hub.snapshot_download`` that copies ``package`` (after ``damage``) into
    ``local_dir``, or raises ``error``; its calls are recorded."""

    def __init__(self, package=None, damage=None, error=None):
        self.package, self.damage, self.error, self.calls = package, damage, error, []

    def __call__(self, repo_id, revision=None, local_dir=None, **kwargs):
        self.calls.append((repo_id, local_dir))
        if self.error:
            raise self.error
        shutil.copytree(self.package, local_dir, dirs_exist_ok=True)
        if self.damage:
            self.damage(Path(local_dir))
        return local_dir


def test_a_package_on_the_hub_is_downloaded_whole_then_checked(trained, tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    hub = StandInHub(trained[2])
    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub)
    assert (
        CrabClassifier.from_hparams(source="someone/crab-model", savedir=str(tmp_path / "dl")).classes
        == CLASSES
    )
    cached = tmp_path / "hub" / "crab_packages" / "someone--crab-model"
    out, scp, text = (tmp_path / name for name in ("r.tsv", "wav.scp", "text"))
    sf.write(tmp_path / "u.wav", tone(0.5, 200), 16000)
    scp.write_text(f"u {tmp_path}/u.wav\n")
    text.write_text("u hello\n")
    args = ("--wav_scp", scp, "--text", text, "--text_mode", "gold", "--out", out)
    assert cli("--model", "someone/crab-model", *args) == 0
    assert hub.calls == [("someone/crab-model", str(tmp_path / "dl")), ("someone/crab-model", str(cached))]
    assert out.read_text().splitlines()[1].startswith("u\t")

    # checked like a directory: a repository that lost a file is refused, naming it
    hub.damage = lambda m: (m / "text_encoder" / "tokenizer.json").unlink()
    with pytest.raises(ModelFileError, match="text_encoder/tokenizer.json is missing"):
        CrabClassifier.from_hparams(source="someone/crab-model", savedir=str(tmp_path / "dl2"))


def test_a_model_that_is_neither_here_nor_on_the_hub_is_a_one_line_error(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(
        huggingface_hub, "snapshot_download", StandInHub(error=OSError("no connection\nmore"))
    )
    message = "someone/crab-model is not a directory here and could not be downloaded.*OSError: no connection"
    (tmp_path / "model.yaml").write_text("classes: [a]\n")  # a file: not looked for on the hub
    monkeypatch.chdir(tmp_path.parent)
    cases = ((message, "someone/crab-model"), ("is not a directory", str(tmp_path / "gone")))
    for error, source in (*cases, (r"model.yaml is not a directory \(", f"{tmp_path.name}/model.yaml")):
        with pytest.raises(ModelFileError, match=error) as err:
            CrabClassifier.from_hparams(source=source)
        assert "\n" not in str(err.value)
    answer = cli("--model", "someone/crab-model", "--wav_scp", tmp_path / "w", "--out", tmp_path / "o",
                 "--text_mode", "none")  # fmt: skip
    assert re.match(f"ERROR: {message}", answer) and not (tmp_path / "o").exists()


def test_round_trip_from_hparams_and_foreign_class(trained, data, tmp_path, monkeypatch):
    brain, hparams, model_dir, run_dir = trained
    monkeypatch.chdir(tmp_path)  # loading depends on no working directory
    before, _ = tree(model_dir)
    audio_before, _ = tree(data)
    by_hparams = CrabClassifier.from_hparams(source=str(model_dir))
    by_foreign = foreign_class(
        source=str(model_dir), pymodule_file="custom_interface.py", classname="CrabClassifier"
    )
    assert type(by_foreign).__name__ == "CrabClassifier" and by_foreign.classes == CLASSES

    # the trained model at its best checkpoint (brain.evaluate loaded it) on a padded batch
    utts = [f"test_{emo}_0" for emo in CLASSES]
    wavs = [read_audio(str(data / f"{u}.wav")) for u in utts]
    padded = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True)
    lens = torch.tensor([len(w) for w in wavs]) / padded.shape[1]
    texts = [f"I feel {emo} today" for emo in CLASSES]
    model = brain.modules.model.eval()
    with torch.no_grad():
        expected = torch.softmax(model(padded, lens, texts)[0], dim=-1)
    for classifier in (by_hparams, by_foreign):
        out_prob, score, index, text_lab = classifier.classify_batch(padded, texts, lens)
        assert torch.allclose(out_prob, expected, atol=1e-5)
        assert torch.equal(index, expected.argmax(dim=1)) and torch.allclose(
            score, expected.max(dim=1).values
        )
        assert text_lab == [CLASSES[i] for i in expected.argmax(dim=1).tolist()]

    # one file at a time gives stage 5's probabilities
    with open(run_dir / "eval_test" / "predictions.csv", newline="") as f:
        rows = {r["id"]: r for r in csv.DictReader(f)}
    for utt, text in zip(utts, texts, strict=True):
        out_prob, _, _, text_lab = by_hparams.classify_file(str(data / f"{utt}.wav"), text=text)
        assert out_prob.shape == (1, 4)
        stage5 = torch.tensor([float(rows[utt][f"prob_{c}"]) for c in CLASSES])
        assert torch.allclose(out_prob[0], stage5, atol=1e-5)
        assert text_lab == [rows[utt]["predicted"]]

    after, links = tree(model_dir)
    # foreign_class imports custom_interface.py from the package: Python caches its bytecode
    # there unless bytecode writing is off (PYTHONDONTWRITEBYTECODE), as crab.inference says
    after = {entry for entry in after if entry.split(os.sep)[0] != "__pycache__"}
    assert not links and after == before
    assert tree(data) == (audio_before, False) and os.listdir(tmp_path) == []


def test_any_rate_and_channels_and_bad_audio(trained, data, tmp_path):
    _, _, model_dir, _ = trained
    classifier = CrabClassifier.from_hparams(source=str(model_dir))
    mono = tone(0.7, 180, rate=44100)
    sf.write(tmp_path / "stereo.wav", np.stack([mono, mono], axis=1), 44100)
    sf.write(tmp_path / "mono.wav", mono, 44100)
    text = "I feel happy today"
    stereo_prob = classifier.classify_file(str(tmp_path / "stereo.wav"), text)[0]
    assert torch.allclose(
        stereo_prob, classifier.classify_file(str(tmp_path / "mono.wav"), text)[0], atol=1e-6
    )
    # a batch at 44.1 kHz, with channels last, is converted the same way
    batch = torch.from_numpy(np.stack([mono, mono], axis=1))[None]
    assert torch.allclose(
        classifier.classify_batch(batch, [text], sample_rate=44100)[0], stereo_prob, atol=1e-3
    )

    sf.write(tmp_path / "silent.wav", np.zeros(16000, dtype="float32"), 16000)
    sf.write(tmp_path / "short.wav", tone(0.01, 200), 16000)
    sf.write(tmp_path / "empty.wav", np.zeros(0, dtype="float32"), 16000)
    for name, message in (
        ("missing.wav", "missing audio file"),
        ("silent.wav", "silent audio"),
        ("short.wav", "too short"),
        ("empty.wav", "empty audio"),
    ):
        with pytest.raises(AudioError, match=message) as err:
            classifier.classify_file(str(tmp_path / name), text)
        assert name in str(err.value)
    with pytest.raises(ValueError, match="needs a transcript"):
        classifier.classify_file(str(tmp_path / "mono.wav"))
    # control characters are cleaned as in data prep: same prediction, and a transcript of
    # control characters only is empty
    noisy = classifier.classify_file(str(tmp_path / "mono.wav"), "I feel\x00 happy\ttoday\r\n")[0]
    assert torch.allclose(noisy, classifier.classify_file(str(tmp_path / "mono.wav"), text)[0], atol=1e-6)
    with pytest.raises(ValueError, match="empty transcript"):
        classifier.classify_file(str(tmp_path / "mono.wav"), "\x00\x1b")


@pytest.fixture(scope="module")
def speech_only(data, tmp_path_factory):
    """A packaged speech-only model: the directory."""
    tmp = tmp_path_factory.mktemp("speech_only")
    train(data, tmp / "run", "--modality=speech")
    package(data, tmp / "run", tmp / "model", "--modality=speech")
    return tmp / "model"


def padded_test_batch(data):
    wavs = [read_audio(str(data / f"test_{emo}_0.wav")) for emo in CLASSES]
    padded = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True)
    return padded, torch.tensor([len(w) for w in wavs]) / padded.shape[1]


def test_lengths_given_second_as_in_speechbrain_are_refused(trained, speech_only, data):
    padded, lens = padded_test_batch(data)
    texts = [f"I feel {emo} today" for emo in CLASSES]
    bimodal = CrabClassifier.from_hparams(source=str(trained[2]))
    speech = CrabClassifier.from_hparams(source=str(speech_only))
    for classifier in (bimodal, speech):
        # SpeechBrain's classify_batch(wavs, wav_lens): the lengths would be read as transcripts
        # (bimodal) or dropped (speech-only, which then classifies the padding)
        with pytest.raises(TypeError, match=r"texts is a Tensor.*wav_lens=lens"):
            classifier.classify_batch(padded, lens)
        with pytest.raises(TypeError, match=r"texts\[0\] is a Tensor"):
            classifier.classify_batch(padded, list(lens))
    # one string as long as the batch was read character by character
    with pytest.raises(TypeError, match=r"texts is one str.*\[text\]"):
        bimodal.classify_batch(padded, "abcd", lens)
    with pytest.raises(TypeError, match="text must be the transcript"):
        bimodal.classify_file(str(data / "test_sad_0.wav"), text=texts)
    # a speech-only model still ignores transcripts
    expected = speech.classify_batch(padded, wav_lens=lens)[0]
    torch.testing.assert_close(speech.classify_batch(padded, texts, lens)[0], expected)


def test_wav_lens_must_be_relative(trained, data):
    classifier = CrabClassifier.from_hparams(source=str(trained[2]))
    padded, lens = padded_test_batch(data)
    texts = [f"I feel {emo} today" for emo in CLASSES]
    samples = torch.round(lens * padded.shape[1])
    largest = int(samples.max())
    with pytest.raises(ValueError, match=rf"relative lengths in \(0, 1\].*the largest is {largest}\b"):
        classifier.classify_batch(padded, texts, samples)
    with pytest.raises(ValueError, match="one relative length per utterance"):
        classifier.classify_batch(padded, texts, lens[:2])
    exact = classifier.classify_batch(padded, texts, lens)[0]
    torch.testing.assert_close(classifier.classify_batch(padded, texts, lens * (1 + 1e-7))[0], exact)


def test_a_tensor_of_channels_is_refused_with_the_layout_it_needs(speech_only, tmp_path):
    classifier = CrabClassifier.from_hparams(source=str(speech_only))
    stereo = torch.from_numpy(np.stack([tone(0.5, 180, 44100), tone(0.5, 180, 44100, seed=1)], axis=1))
    # (time, channels), as soundfile reads it: the resampler failed on 22050 "channels"
    with pytest.raises(
        AudioError, match=r"shape \(22050, 2\) read as \(batch, time\): 2 samples.*classify_file"
    ):
        classifier.classify_batch(stereo, sample_rate=44100)
    # (batch, channels, time): channels last is the 3-D layout
    with pytest.raises(AudioError, match=r"read as \(batch, time, channels\): 2 samples"):
        classifier.classify_batch(stereo.T[None], sample_rate=44100)
    assert classifier.classify_batch(stereo[None], sample_rate=44100)[0].shape == (1, 4)


def test_a_bimodal_model_names_the_layout_of_a_batch_of_channels(trained):
    classifier = CrabClassifier.from_hparams(source=str(trained[2]))
    channels = torch.from_numpy(np.stack([tone(0.7, 180), tone(0.7, 180, seed=1)]))
    with pytest.raises(ValueError, match=r"1 transcripts for 2 utterances.*\(batch, time\).*wav.mean\(0\)"):
        classifier.classify_batch(channels, ["I feel happy today"])


def test_a_cuda_device_without_a_gpu_is_a_clear_error(trained, monkeypatch):
    from crab.batch_inference import UsageError, resolve_device
    from crab.inference import DeviceError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("cuda", "cuda:1"):
        with pytest.raises(
            DeviceError, match=f"run_opts device '{device}': no CUDA GPU is available: use 'cpu'"
        ):
            CrabClassifier.from_hparams(source=str(trained[2]), run_opts={"device": device})
    with pytest.raises(UsageError, match=r"--device cuda:0: no CUDA GPU is available \(use --device cpu"):
        resolve_device("cuda")
    assert CrabClassifier.from_hparams(source=str(trained[2]), run_opts={"device": "auto"}).device == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(DeviceError, match=r"'cuda:1': there are 1 CUDA GPU\(s\) here \(cuda:0 to cuda:0\)"):
        CrabClassifier.from_hparams(source=str(trained[2]), run_opts={"device": "cuda:1"})
    with pytest.raises(UsageError, match="--device cuda:1: there are 1 CUDA GPU"):
        resolve_device("cuda:1")


@pytest.mark.parametrize("device", ["gpu", "cpu:x"])
def test_a_device_name_torch_cannot_use_is_a_clear_error(device):
    # before: crab-infer said "--model DIR cannot be loaded: RuntimeError: Expected one of cpu, ..."
    from crab.batch_inference import UsageError, resolve_device
    from crab.inference import DeviceError, resolve_run_opts

    with pytest.raises(UsageError, match=f"^--device {re.escape(device)}: not a device this torch can use"):
        resolve_device(device)
    with pytest.raises(DeviceError, match=f"run_opts device '{re.escape(device)}': not a device"):
        resolve_run_opts({"device": device})
    assert resolve_device("cpu") == "cpu"


def test_foreign_class_and_run_options_take_the_same_device_names(trained, monkeypatch):
    """``foreign_class`` builds CrabClassifier without ``from_hparams``, and SpeechBrain's
    ``RunOptions`` is no dict: both take ``auto`` and refuse a missing GPU as ``from_hparams``
    does with a dict (before: ``auto`` reached torch as a device name, ``cuda`` failed
    inside torch)."""
    from speechbrain.utils.run_opts import RunOptions

    from crab.inference import DeviceError

    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # nothing written into the package
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def by_foreign(device):
        return foreign_class(
            source=str(trained[2]),
            pymodule_file="custom_interface.py",
            classname="CrabClassifier",
            run_opts={"device": device},
        )

    assert by_foreign("auto").device == "cpu"
    with pytest.raises(DeviceError, match="run_opts device 'cuda': no CUDA GPU is available"):
        by_foreign("cuda")
    options = RunOptions.from_dictionary({"device": "auto"})
    assert CrabClassifier.from_hparams(source=str(trained[2]), run_opts=options).device == "cpu"


def test_audio_longer_than_max_duration_is_cut_with_a_warning(speech_only, tmp_path, caplog):
    classifier = CrabClassifier.from_hparams(source=str(speech_only))
    assert classifier.hparams.max_duration == 12.0
    long_wav = tone(13.5, 180)
    sf.write(tmp_path / "long.wav", long_wav, 16000)
    with caplog.at_level("WARNING", logger="crab.inference"):
        cut = classifier.classify_file(str(tmp_path / "long.wav"))[0]
    assert [r.getMessage() for r in caplog.records if r.name == "crab.inference"] == [
        f"{tmp_path / 'long.wav'}: 13.5 s of audio, longer than the model's max_duration: only its first "
        "12 s are classified (cut it into segments to classify the rest)"
    ]
    torch.testing.assert_close(
        cut, classifier.classify_batch(read_audio(str(tmp_path / "long.wav"))[: 12 * 16000])[0]
    )
    caplog.clear()
    # one warning per batch; the padding of a short utterance is not counted
    short = np.pad(tone(1, 180), (0, len(long_wav) - 16000))
    with caplog.at_level("WARNING", logger="crab.inference"):
        classifier.classify_batch(
            torch.from_numpy(np.stack([long_wav, long_wav, short])),
            wav_lens=torch.tensor([1.0, 1.0, 16000 / len(long_wav)]),
        )
    assert [r.getMessage() for r in caplog.records if r.name == "crab.inference"] == [
        "2 of the 3 utterances of the batch are longer than the model's max_duration: only their first "
        "12 s are classified"
    ]


def write_inputs(tmp_path, data):
    """wav.scp: two good lines, a broken line, a missing file, stereo 44.1 kHz, a silent and an empty file,
    and one utterance with no transcript in text."""
    sf.write(
        tmp_path / "stereo.wav", np.stack([tone(0.6, 260, 44100), tone(0.6, 260, 44100, seed=1)], 1), 44100
    )
    sf.write(tmp_path / "silent.wav", np.zeros(8000, dtype="float32"), 16000)
    (tmp_path / "empty.wav").write_bytes(b"")
    lines = [
        f"good_a {data}/test_angry_0.wav",
        f"good_s {data}/test_sad_0.wav",
        "broken_line_without_path",
        f"gone {tmp_path}/nowhere.wav",
        f"stereo {tmp_path}/stereo.wav",
        f"silent {tmp_path}/silent.wav",
        f"empty {tmp_path}/empty.wav",
        f"notext {data}/test_happy_0.wav",
    ]
    (tmp_path / "wav.scp").write_text("\n".join(lines) + "\n")
    texts = {
        "good_a": "I feel angry today",
        "good_s": "I feel sad today",
        "stereo": "I feel happy today",
        "silent": "hello",
        "empty": "hello",
        "gone": "hello",
    }
    (tmp_path / "text").write_text("".join(f"{u} {t}\n" for u, t in texts.items()))
    return texts


def cli(*args):
    try:
        infer.main([str(a) for a in args])
    except SystemExit as exit_:
        return exit_.code
    return 0


def test_cli_defaults_are_the_library_defaults():
    required = {"model": "m", "wav_scp": "w", "out": "o", "text_mode": "none"}
    args = vars(infer.parse_args([word for k, v in required.items() for word in (f"--{k}", v)]))
    library = dataclasses.asdict(InferenceJob(**required))
    assert {k: args[k] for k in library} == library


def test_cli_writes_results_and_reports_bad_input(trained, data, tmp_path, capsys, caplog):
    _, _, model_dir, _ = trained
    texts = write_inputs(tmp_path, data)
    out = tmp_path / "out" / "results.tsv"
    args = [
        "--model",
        model_dir,
        "--wav_scp",
        tmp_path / "wav.scp",
        "--text",
        tmp_path / "text",
        "--text_mode",
        "gold",
        "--out",
        out,
        "--batch_size",
        2,
    ]
    with caplog.at_level("INFO", logger="crab.batch_inference"):
        assert cli(*args) == 1  # failures without --skip_errors
    assert "5 failed" in capsys.readouterr().out
    # the progress counts the utterances classified, not those unusable before (failed above)
    progress = [m for m in caplog.messages if " processed (" in m]
    assert progress and all(
        re.fullmatch(r"\d+ of 4 utterances to classify processed \(\d+ failed\)", m) for m in progress
    )
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert [r["id"] for r in rows] == ["good_a", "good_s", "stereo"]  # wav.scp order
    assert list(rows[0]) == ["id", "predicted", "score"] + [f"prob_{c}" for c in CLASSES] + [
        "text_source",
        "text",
    ]
    classifier = CrabClassifier.from_hparams(source=str(model_dir))
    paths = {
        "good_a": data / "test_angry_0.wav",
        "good_s": data / "test_sad_0.wav",
        "stereo": tmp_path / "stereo.wav",
    }
    for row in rows:
        probs = torch.tensor([float(row[f"prob_{c}"]) for c in CLASSES])
        path = paths[row["id"]]
        expected = classifier.classify_file(str(path), texts[row["id"]])[0][0]
        assert torch.allclose(probs, expected, atol=1e-5)
        assert row["predicted"] == CLASSES[int(probs.argmax())] and row["text_source"] == "gold"
        assert row["text"] == texts[row["id"]]
    errors = {r["id"]: r for r in csv.DictReader(open(f"{out}.errors"), delimiter="\t")}
    assert set(errors) == {"broken_line_without_path", "gone", "silent", "empty", "notext"}
    broken = errors["broken_line_without_path"]
    assert broken["line"] == "3" and "does not parse" in broken["reason"]
    assert errors["gone"]["line"] == "4" and "missing audio file" in errors["gone"]["reason"]
    assert errors["silent"]["line"] == "6" and "silent" in errors["silent"]["reason"]
    assert errors["empty"]["line"] == "7"
    assert errors["notext"]["line"] == "8" and "no transcript in" in errors["notext"]["reason"]
    # the same run with --skip_errors resumes (nothing left to classify) and exits 0
    assert cli(*args, "--skip_errors") == 0
    assert "0 now, 3 before" in capsys.readouterr().out


def test_cli_resumes_after_an_interruption(trained, data, tmp_path, capsys):
    _, _, model_dir, _ = trained
    write_inputs(tmp_path, data)
    out = tmp_path / "results.jsonl"
    args = [
        "--model",
        model_dir,
        "--wav_scp",
        tmp_path / "wav.scp",
        "--text",
        tmp_path / "text",
        "--text_mode",
        "gold",
        "--out",
        out,
        "--skip_errors",
    ]
    assert cli(*args) == 0
    complete = out.read_text()
    records = [json.loads(line) for line in complete.splitlines()]
    assert [r["id"] for r in records] == ["good_a", "good_s", "stereo"]
    assert set(records[0]["probs"]) == set(CLASSES) and records[0]["text_source"] == "gold"
    # killed while writing the third line: a cut-off line is dropped and redone
    lines = complete.splitlines(keepends=True)
    out.write_text(lines[0] + lines[2][:25])
    capsys.readouterr()
    assert cli(*args) == 0
    assert "2 now, 1 before" in capsys.readouterr().out
    assert out.read_text() == complete
    # another text mode into the same file stops instead of mixing results
    assert "another model or other settings" in str(
        cli("--model", model_dir, "--wav_scp", tmp_path / "wav.scp", "--text_mode", "asr", "--out", out)
    )


def test_cli_text_mode_is_explicit(trained, data, tmp_path):
    _, _, model_dir, _ = trained
    write_inputs(tmp_path, data)
    base = ["--model", model_dir, "--wav_scp", tmp_path / "wav.scp", "--out", tmp_path / "r.tsv"]
    assert cli(*base) == 2  # --text_mode is required
    assert "needs transcripts" in cli(*base, "--text_mode", "none")
    assert "needs --text" in cli(*base, "--text_mode", "gold")
    assert "leave it out" in cli(*base, "--text_mode", "asr", "--text", tmp_path / "text")
    assert not (tmp_path / "r.tsv").exists()


def test_cli_transcribes_when_asked(trained, data, tmp_path):
    _, _, model_dir, _ = trained
    write_inputs(tmp_path, data)
    whisper = build_tiny_whisper(tmp_path / "whisper")
    out = tmp_path / "asr.jsonl"
    assert (
        cli(
            "--model",
            model_dir,
            "--wav_scp",
            tmp_path / "wav.scp",
            "--text_mode",
            "asr",
            "--asr_model",
            whisper,
            "--language",
            "english",
            "--max_new_tokens",
            6,
            "--out",
            out,
            "--skip_errors",
            "true",
        )
        == 0
    )
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in records] == ["good_a", "good_s", "stereo", "notext"]
    assert all(r["text_source"] == "asr" and r["text"] and r["asr_model"] == whisper for r in records)


def test_speech_only_model_and_stage_8(data, tmp_path):
    run = tmp_path / "exp" / "speech" / "main" / "seed42"
    train(data, run, "--modality=speech")
    # ser.sh stage 8 packages every fold and seed into <exp>/<tag>/<fold>/seed<seed>/model
    (tmp_path / "data").mkdir()
    os.symlink(data, tmp_path / "data" / "main")
    result = subprocess.run(
        [
            "bash",
            "ser.sh",
            "--stage",
            "8",
            "--stop_stage",
            "8",
            "--config",
            "conf/crab_tiny.yaml",
            "--tag",
            "speech",
            "--classes",
            ",".join(CLASSES),
            "--data_root",
            str(data),
            "--data_dir",
            str(tmp_path / "data"),
            "--exp_dir",
            str(tmp_path / "exp"),
            "--train_opts",
            "--modality=speech --batch_size=4 --number_of_epochs=2",
        ],
        cwd=os.path.join(ROOT, "egs", "mini"),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "Stage 8" in result.stdout + result.stderr
    model_dir = run / "model"
    assert not (model_dir / "text_encoder").exists()
    assert json.loads((model_dir / "metadata.json").read_text())["modality"] == "speech"
    write_inputs(tmp_path, data)
    args = [
        "--model",
        model_dir,
        "--wav_scp",
        tmp_path / "wav.scp",
        "--out",
        tmp_path / "r.tsv",
        "--skip_errors",
    ]
    assert "speech-only" in cli(*args, "--text_mode", "gold", "--text", tmp_path / "text")
    assert cli(*args, "--text_mode", "none") == 0
    with open(tmp_path / "r.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert [r["id"] for r in rows] == ["good_a", "good_s", "stereo", "notext"]
    assert {r["text_source"] for r in rows} == {"none"}
    classifier = CrabClassifier.from_hparams(source=str(model_dir))
    assert classifier.classify_file(str(data / "test_sad_0.wav"))[0].shape == (1, 4)


def test_package_keeps_state_normalization_and_the_layer_read(data, tmp_path):
    whisper = write_tiny_whisper(tmp_path / "whisper")
    opts = [
        "--modality=speech",
        f"--speech_encoder_source={whisper}",
        "--layer_weighting=2",
        "--normalize_encoder_states=true",
        "--finetune_top_speech_layers=1",
    ]
    brain, _ = train(data, tmp_path / "run", *opts)
    package(data, tmp_path / "run", tmp_path / "model", *opts)
    classifier = CrabClassifier.from_hparams(source=str(tmp_path / "model"))
    assert bool(classifier.mods.model.crab.speech_encoder.state_norm.ready)
    wavs = [read_audio(str(data / f"test_{emo}_0.wav")) for emo in CLASSES]
    padded = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True)
    lens = torch.tensor([len(w) for w in wavs]) / padded.shape[1]
    with torch.no_grad():
        expected = torch.softmax(brain.modules.model.eval()(padded, lens)[0], dim=-1)
    torch.testing.assert_close(
        classifier.classify_batch(padded, wav_lens=lens)[0], expected, atol=1e-5, rtol=1e-5
    )
