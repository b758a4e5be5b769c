"""The mini recipe end to end (a shortened corpus), resume, and what it writes."""

import csv
import json
import os
import re
import shutil
import subprocess

import pytest

from crab.metrics import compute_scores
from tests.conftest import ROOT

RECIPE = os.path.join(ROOT, "egs", "mini")
EPOCHS = 4


def run_recipe(tmp, *options):
    command = [
        "bash", os.path.join(RECIPE, "run.sh"),
        "--data_root", str(tmp / "corpus"), "--data_dir", str(tmp / "data"),
        "--exp_dir", str(tmp / "exp"), "--corpus_opts", "--speakers 4 --sentences_per_emotion 8",
        "--data_opts", "--valid_speakers spk03 --test_speakers spk04", *options,
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result.stdout + result.stderr


def epoch_losses(train_log):
    with open(train_log) as f:
        return {
            int(m.group(1)): float(m.group(2))
            for m in re.finditer(r"epoch: (\d+),.* - train loss: ([0-9.e+-]+),", f.read())
        }


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is needed for the mini recipe: run tools/install.sh (or apt-get install espeak-ng)")
    tmp = tmp_path_factory.mktemp("mini")
    # Train for EPOCHS - 1 epochs, then ask for EPOCHS: the second run must resume.
    first = run_recipe(tmp, "--stop_stage", "4", "--train_opts", f"--number_of_epochs={EPOCHS - 1}")
    second = run_recipe(tmp, "--stage", "4", "--train_opts", f"--number_of_epochs={EPOCHS}")
    return tmp, first, second


def test_stages_write_manifests_and_tokenizer(recipe):
    tmp, _, _ = recipe
    for split, speaker in (("train", "spk01"), ("valid", "spk03"), ("test", "spk04")):
        with open(tmp / "data" / "main" / f"{split}.json") as f:
            manifest = json.load(f)
        assert len(manifest) == (64 if split == "train" else 32)
        entry = next(iter(manifest.values()))
        assert entry["wav"].startswith("{data_root}/") and entry["duration"] > 0.3
        assert set(entry) >= {"wav", "duration", "text", "emo", "spk", "gender"}
        assert {e["spk"] for e in manifest.values()} == ({"spk01", "spk02"} if split == "train" else {speaker})
    assert (tmp / "data" / "main" / "tokenizer" / "tokenizer.json").is_file()


def test_training_loss_goes_down_and_resume_continues(recipe):
    tmp, first, second = recipe
    run_dir = tmp / "exp" / "crab_tiny" / "main" / "seed42"
    losses = epoch_losses(run_dir / "train_log.txt")
    assert sorted(losses) == list(range(1, EPOCHS + 1)), losses  # each epoch trained once
    assert all(loss == loss and loss < 1e3 for loss in losses.values())  # finite
    assert losses[EPOCHS] < losses[1]
    assert "Going into epoch 1" in first and "Going into epoch 1" not in second
    assert f"Going into epoch {EPOCHS}" in second
    save = run_dir / "save"
    assert (save / "label_encoder.txt").is_file()
    weights = json.loads((save / "class_weights.json").read_text())
    assert weights["angry"] == {"count": 16, "weight": 4.0}


def test_evaluation_writes_predictions_and_scores(recipe):
    tmp, _, second = recipe
    eval_dir = tmp / "exp" / "crab_tiny" / "main" / "seed42" / "eval_test"
    with open(eval_dir / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    classes = ["angry", "happy", "neutral", "sad"]
    assert list(rows[0]) == ["id", "true", "predicted"] + [f"prob_{c}" for c in classes]
    assert len(rows) == 32
    for row in rows:
        probs = [float(row[f"prob_{c}"]) for c in classes]
        assert abs(sum(probs) - 1) < 1e-4
        assert row["predicted"] == classes[probs.index(max(probs))]
    scores = json.loads((eval_dir / "scores.json").read_text())
    expected = compute_scores(
        [classes.index(r["true"]) for r in rows], [classes.index(r["predicted"]) for r in rows], 4
    )
    for metric, value in expected.items():
        assert scores[metric] == pytest.approx(value, abs=1e-9)
    table = (tmp / "exp" / "crab_tiny" / "results_test.md").read_text()
    assert f"{expected['UAR']:.4f}" in table and "| run | N | WAR | UAR |" in table
    assert f"{expected['UAR']:.4f}" in second  # printed at the end of the run


def test_rerunning_finished_training_changes_nothing(recipe):
    tmp, _, _ = recipe
    log = tmp / "exp" / "crab_tiny" / "main" / "seed42" / "train_log.txt"
    before = log.read_text()
    output = run_recipe(tmp, "--stage", "4", "--stop_stage", "4", "--train_opts", f"--number_of_epochs={EPOCHS}")
    assert "Going into epoch" not in output
    assert log.read_text() == before
