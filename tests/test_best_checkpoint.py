"""Which weights a run ends up evaluating: the best checkpoint on ``ckpt_metric``, scored on the
validation split; the evaluation's files agree with each other and with the test manifest; the
class weights are each class's own."""

import csv
import json
import os

import pytest
import yaml

import crab.brain
from crab.bin import evaluate, train
from crab.experiment import prepare_labels_and_weights
from crab.losses import WeightedCrossEntropy
from tests import test_brain
from tests.conftest import ROOT
from tests.test_brain import CLASSES, CONFIG, corpus_options

data = test_brain.data  # 12 training utterances (3 per class), 4 validation, 4 test

VALID_UAR = [0.5, 0.9, 0.6]  # per epoch: the best is epoch 2, the last epoch 3


def scripted_validation(monkeypatch):
    """Give the validation of epoch e the UAR ``VALID_UAR[e - 1]`` (its other scores as computed);
    returns the list of how many utterances each validation scored."""
    scored = []
    real = crab.brain.compute_scores

    def compute_scores(y_true, y_pred, num_classes):
        scores = real(y_true, y_pred, num_classes)
        if len(scored) < len(VALID_UAR):  # then the evaluation: its own scores
            scores["UAR"] = VALID_UAR[len(scored)]
            scored.append(len(y_true))
        return scores

    monkeypatch.setattr(crab.brain, "compute_scores", compute_scores)
    return scored


def run_argv(data, out):
    """The train and evaluate commands' arguments for a run of ``data`` in ``out``."""
    return [
        CONFIG,
        *corpus_options(data, out),
        "--noprogressbar",
    ]


def checkpoint_epochs(save):
    """``{epoch: checkpoint name}`` of the end-of-epoch checkpoints in ``save``."""
    metas = {path.name: yaml.safe_load((path / "CKPT.yaml").read_text()) for path in save.glob("CKPT+*")}
    return {meta["epoch"]: name for name, meta in metas.items()}


@pytest.mark.parametrize(
    "ckpt_metric, kept_epochs, evaluated", [("UAR", [2, 3], 2), ("epoch", [3], 3)], ids=["UAR", "epoch"]
)
def test_the_evaluation_is_of_the_checkpoint_ckpt_metric_chooses(
    data, tmp_path, monkeypatch, ckpt_metric, kept_epochs, evaluated
):
    """Through the commands: the best on validation UAR (not the last), or with ``epoch`` the last."""
    out = tmp_path / "run"
    argv = run_argv(data, out)
    scored = scripted_validation(monkeypatch)
    monkeypatch.chdir(os.path.join(ROOT, "egs", "TEMPLATE"))  # conf/ paths are relative to the recipe
    train.main([*argv, "--batch_size=4", "--number_of_epochs=3", f"--ckpt_metric={ckpt_metric}"])
    assert scored == [4, 4, 4]  # the validation split's utterances, not the training split's 12
    kept = checkpoint_epochs(out / "save")
    assert sorted(kept) == kept_epochs  # the best and the last (to resume from)

    evaluate.main(argv)
    eval_dir = out / "eval_test"
    assert (eval_dir / "checkpoint.txt").read_text().strip() == kept[evaluated]
    assert json.loads((eval_dir / "predictions.inputs.json").read_text())["checkpoint"] == kept[evaluated]


def test_the_predictions_are_the_manifests_utterances_and_the_scores_theirs(data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    argv = run_argv(data, out)
    monkeypatch.chdir(os.path.join(ROOT, "egs", "TEMPLATE"))
    train.main([*argv, "--batch_size=4", "--number_of_epochs=1"])
    evaluate.main(argv)
    with open(out / "eval_test" / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    labels = {utt: entry["emo"] for utt, entry in json.loads((data / "test.json").read_text()).items()}
    assert {row["id"]: row["true"] for row in rows} == labels
    for row in rows:
        probs = [float(row[f"prob_{c}"]) for c in CLASSES]
        assert row["predicted"] == CLASSES[probs.index(max(probs))]
    scores = json.loads((out / "eval_test" / "scores.json").read_text())
    expected = crab.brain.compute_scores(
        [CLASSES.index(row["true"]) for row in rows],
        [CLASSES.index(row["predicted"]) for row in rows],
        len(CLASSES),
    )
    assert scores == {"num_utterances": len(labels), **expected}


def test_each_class_gets_its_own_count_and_weight(data, tmp_path):
    """An unbalanced training set: 1, 2, 3 and 3 utterances of the four classes."""
    entries = json.loads((data / "train.json").read_text())
    wanted = dict(zip(CLASSES, (1, 2, 3, 3), strict=True))
    kept = {}
    for utt, entry in entries.items():
        if sum(e["emo"] == entry["emo"] for e in kept.values()) < wanted[entry["emo"]]:
            kept[utt] = entry
    manifest = tmp_path / "train.json"
    manifest.write_text(json.dumps(kept))
    wce = WeightedCrossEntropy(num_classes=4)
    hparams = {"classes": CLASSES, "save_folder": str(tmp_path), "train_manifest": str(manifest), "wce": wce}
    prepare_labels_and_weights(hparams)
    weights = {"angry": 9.0, "happy": 4.5, "neutral": 3.0, "sad": 3.0}  # N / N_c
    saved = json.loads((tmp_path / "class_weights.json").read_text())
    assert saved == {c: {"count": wanted[c], "weight": weights[c]} for c in CLASSES}
    assert wce.weight.tolist() == [weights[c] for c in CLASSES]  # the loss's order is the classes'
