"""What the commands log, read as a user reads it."""

import importlib.util
import json
import logging
import sys
import types

import pytest

import crab.bin.embeddings as embeddings_cli
from crab.experiment import prepare_labels_and_weights
from crab.losses import WeightedCrossEntropy


def test_embeddings_log_their_scores_rounded_and_named(monkeypatch, tmp_path, caplog):
    hparams = {"classes": ["a", "b"], "output_folder": str(tmp_path), "eval_name": "test"}
    hparams.update(ckpt_metric="UAR", eval_dataloader_opts={})
    brain = types.SimpleNamespace(
        eval_folder=lambda: str(tmp_path / "eval_test"), on_evaluate_start=lambda **_: None
    )
    scores = {
        "silhouette": 0.08626644814561815,
        "calinski_harabasz": 121.07621199347157,
        "davies_bouldin": None,
    }
    monkeypatch.setattr(embeddings_cli, "load_trained_run", lambda rest: (hparams, brain, None, None))
    monkeypatch.setattr("crab.evalrecord.embeddings_inputs", lambda *args: {})
    monkeypatch.setattr(embeddings_cli, "extract_embeddings", lambda *args: (["u1", "u2"], None, None))
    monkeypatch.setattr(embeddings_cli, "write_embeddings", lambda *args, **kwargs: scores)
    with caplog.at_level(logging.INFO, logger="crab.bin.embeddings"):
        embeddings_cli.main([])
    assert caplog.messages[-1] == (
        f"Fused embeddings of 2 utterances in {tmp_path / 'eval_test'}: "
        "silhouette 0.086, Calinski-Harabasz 121.076, Davies-Bouldin n/a"
    )


@pytest.mark.parametrize("command", ["embeddings", "extract_features", "train", "transcribe"])
def test_a_command_run_with_python_m_logs_under_its_own_name(monkeypatch, capsys, command):
    """python -m runs the module as __main__: its log lines still name it ('crab.bin.train - ...')."""
    spec = importlib.util.find_spec(f"crab.bin.{command}")
    module = types.ModuleType("__main__")
    module.__spec__ = spec
    monkeypatch.setattr(sys, "argv", [spec.origin, "--help"])
    with pytest.raises(SystemExit):
        exec(spec.loader.get_code(spec.name), module.__dict__)  # as python -m does: main() prints its help
    assert module.logger.name == f"crab.bin.{command}"


@pytest.mark.parametrize("weighting", [True, False])
def test_training_logs_its_class_counts_and_weights_by_class(tmp_path, caplog, weighting):
    """The counts and weights are named by class, and a plain cross-entropy says it has none
    (it logged 'weights N/N_c [1.0, 1.0]', weights it does not have)."""
    entries = {
        f"u{i}": {"wav": None, "duration": None, "text": "x", "emo": e, "spk": "s"}
        for i, e in enumerate("aaab")
    }
    (tmp_path / "train.json").write_text(json.dumps(entries))
    hparams = {
        "classes": ["a", "b"],
        "save_folder": str(tmp_path),
        "train_manifest": str(tmp_path / "train.json"),
    }
    hparams["wce"] = WeightedCrossEntropy(num_classes=2, class_weighting=weighting)
    with caplog.at_level(logging.INFO, logger="crab.experiment"):
        prepare_labels_and_weights(hparams)
    weights = "Class weights of the cross-entropy (N/N_c): a 1.33, b 4"
    assert caplog.messages == [
        "Training class counts: a 3, b 1",
        weights if weighting else "No class weights (class_weighting: false): plain cross-entropy",
    ]
