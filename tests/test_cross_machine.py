"""A run trained on one machine, evaluated, resumed or packaged on another: a CPU-only one after
a GPU (mixed precision), or with other library versions."""

import os
import subprocess
import sys

import pytest

from crab.experiment import make_brain, parse_and_load, prepare_labels_and_weights
from crab.runconfig import write_run_hparams
from tests.conftest import ROOT, write_tone_corpus

RECIPE = os.path.join(ROOT, "egs", "TEMPLATE")
CONFIG = os.path.join(RECIPE, "conf", "crab_tiny.yaml")
CLASSES = ["angry", "happy", "neutral", "sad"]


def options(root, run_dir):
    data = root / "data"
    return [
        f"--data_root={root / 'corpus'}",
        f"--data_folder={data}",
        f"--output_folder={run_dir}",
        f"--classes=[{','.join(CLASSES)}]",
        "--batch_size=4",
        "--number_of_epochs=1",
    ]


def in_recipe(fn, *args):
    """``fn(*args)`` in egs/TEMPLATE, where the config's relative paths lead."""
    cwd = os.getcwd()
    os.chdir(RECIPE)
    try:
        return fn(*args)
    finally:
        os.chdir(cwd)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run's record and its checkpoint of epoch 1 (untrained weights), as training leaves them."""
    root = tmp_path_factory.mktemp("cross_machine")
    (root / "corpus").mkdir()
    (root / "data").mkdir()
    write_tone_corpus(root / "corpus", root / "data", {"train": 2, "valid": 1, "test": 1}, CLASSES)
    run_dir = root / "exp" / "seed42"

    def save():
        hparams_file, run_opts, overrides, hparams = parse_and_load(
            [CONFIG, *options(root, run_dir), "--device=cpu"]
        )
        os.makedirs(hparams["save_folder"], exist_ok=True)
        write_run_hparams(hparams_file, overrides, str(run_dir))
        prepare_labels_and_weights(hparams)
        hparams["epoch_counter"].current = 1
        make_brain(hparams, run_opts).checkpointer.save_checkpoint(meta={"UAR": 0.5, "epoch": 1})

    in_recipe(save)
    return root, run_dir


def crab_command(module, *args):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=ROOT)
    command = [sys.executable, "-m", module, CONFIG, *args]
    return subprocess.run(command, cwd=RECIPE, env=env, capture_output=True, text=True, timeout=300)


def test_a_run_trained_in_fp16_evaluates_on_a_cpu_with_its_training_options(run):
    """The recipe gives every stage the run's --train_opts: --precision=fp16, training's, which
    evaluation does not use (it runs in --eval_precision), stopped stage 6 on a CPU with
    SpeechBrain's traceback ("fp16 ... not yet supported on CPU")."""
    root, run_dir = run
    test = root / "data" / "test.json"
    args = [*options(root, run_dir), f"--test_manifest={test}", "--eval_name=test", "--device=cpu"]
    evaluated = crab_command("crab.bin.evaluate", *args, "--precision=fp16")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "--precision=fp16 is training's: evaluation runs in --eval_precision=fp32" in evaluated.stdout
    assert (run_dir / "eval_test" / "predictions.csv").is_file()
    # an evaluation precision the CPU cannot run is one line, no traceback
    refused = crab_command("crab.bin.evaluate", *args, "--eval_precision=fp16")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
    assert refused.stderr.strip().splitlines()[-1] == (
        "ERROR: --eval_precision=fp16: fp16 autocast needs a CUDA device, and this runs on cpu: "
        "give --eval_precision=bf16 or fp32"
    )


def test_resuming_an_fp16_run_on_a_cpu_is_one_line_before_anything_is_written(run):
    root, run_dir = run
    record = (run_dir / "hyperparams.yaml").read_text()
    args = [*options(root, run_dir), "--number_of_epochs=2", "--device=cpu", "--precision=fp16"]
    refused = crab_command("crab.bin.train", *args)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
    assert (
        refused.stderr.strip()
        .splitlines()[-1]
        .startswith(
            "ERROR: --precision=fp16: fp16 autocast needs a CUDA device, and this runs on cpu: "
            "give --precision=bf16 or fp32 (a run trained in fp16 resumes in either"
        )
    )
    assert (run_dir / "hyperparams.yaml").read_text() == record
    assert len(list((run_dir / "save").glob("CKPT+*"))) == 1
