"""CrabBrain: optimizer groups, cosine schedule, accumulation, best checkpoint, evaluation."""

import json
import math
import os

import pytest
import torch

from crab.experiment import dataset, make_brain, parse_and_load, prepare_labels_and_weights
from tests.conftest import ROOT, write_tone_corpus

CONFIG = os.path.join(ROOT, "egs", "TEMPLATE", "conf", "crab_tiny.yaml")
CLASSES = ["angry", "happy", "neutral", "sad"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """12 training utterances (3 per class), 4 validation, 4 test; manifests and tokenizer."""
    root = tmp_path_factory.mktemp("brain_data")
    write_tone_corpus(root, root, {"train": 3, "valid": 1, "test": 1}, CLASSES)
    return root


def load(data, out, *overrides):
    argv = [CONFIG, f"--data_root={data}", f"--data_folder={data}", f"--output_folder={out}",
            f"--classes=[{','.join(CLASSES)}]", "--batch_size=2", *overrides]
    os.chdir(os.path.join(ROOT, "egs", "TEMPLATE"))  # conf/ paths are relative to the recipe
    _, run_opts, _, hparams = parse_and_load(argv)
    return hparams, run_opts


def fit(data, out, *overrides):
    cwd = os.getcwd()
    try:
        hparams, run_opts = load(data, out, *overrides)
        os.makedirs(hparams["save_folder"], exist_ok=True)
        encoder = prepare_labels_and_weights(hparams)
        brain = make_brain(hparams, run_opts)
        brain.fit(hparams["epoch_counter"], dataset(hparams, hparams["train_manifest"], encoder),
                  dataset(hparams, hparams["valid_manifest"], encoder, sort=True),
                  train_loader_kwargs=hparams["train_dataloader_opts"],
                  valid_loader_kwargs=hparams["eval_dataloader_opts"])
        return brain, hparams, encoder
    finally:
        os.chdir(cwd)


def test_hierarchical_lr_cosine_schedule_and_accumulation(data, tmp_path):
    brain, hparams, _ = fit(data, tmp_path / "exp", "--number_of_epochs=3", "--lr=1e-3",
                            "--encoder_lr=1e-4", "--grad_accumulation_factor=2", "--freeze_text_encoder=true")
    # a frozen text encoder gets no optimizer; the others get their own lr
    assert set(brain.optimizers_dict) == {"speech_encoder", "head"}
    head_params = {id(p) for p in brain.optimizers_dict["head"].param_groups[0]["params"]}
    assert {id(p) for p in brain.modules.legs.parameters()} <= head_params
    # cosine annealing per epoch over 3 epochs: after 3 steps lr = lr0 * (1 + cos(pi)) / 2 = 0
    for name, lr0 in (("head", 1e-3), ("speech_encoder", 1e-4)):
        scheduler = brain.schedulers[name]
        assert scheduler.last_epoch == 3
        assert scheduler.base_lrs == [pytest.approx(lr0)]
        assert brain.optimizers_dict[name].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    # 12 utterances in batches of 2 = 6 batches per epoch; one update per 2 batches
    assert brain.optimizer_step == 3 * 3
    log = (tmp_path / "exp" / "train_log.txt").read_text().splitlines()
    lrs = [float(line.split("lr_head: ")[1].split(" ")[0]) for line in log]
    assert lrs == pytest.approx([1e-3 * (1 + math.cos(math.pi * e / 3)) / 2 for e in range(3)], rel=1e-2)


def test_best_checkpoint_evaluation_and_saved_class_weights(data, tmp_path):
    out = tmp_path / "exp"
    brain, hparams, encoder = fit(data, out, "--number_of_epochs=2", "--ckpt_metric=macro_F1")
    checkpoints = brain.checkpointer.find_checkpoints(max_key="macro_F1")
    assert checkpoints and all("UAR" in c.meta and "weighted_F1" in c.meta for c in checkpoints)
    state = torch.load(os.path.join(checkpoints[0].path, "wce.ckpt"))
    assert state["weight"].tolist() == [4.0, 4.0, 4.0, 4.0]  # N / N_c = 12 / 3

    brain.eval_dir = str(tmp_path / "eval")
    cwd = os.getcwd()
    os.chdir(os.path.join(ROOT, "egs", "TEMPLATE"))
    try:
        brain.evaluate(dataset(hparams, hparams["test_manifest"], encoder, sort=True), max_key="macro_F1",
                       test_loader_kwargs=hparams["eval_dataloader_opts"])
    finally:
        os.chdir(cwd)
    scores = json.loads((tmp_path / "eval" / "scores.json").read_text())
    assert scores["num_utterances"] == 4 and set(scores) >= {"WAR", "UAR", "macro_F1", "weighted_F1"}
    assert (tmp_path / "eval" / "predictions.csv").read_text().count("\n") == 5
