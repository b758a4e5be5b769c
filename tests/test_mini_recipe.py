"""The mini recipe end to end (a shortened corpus), resume, and what it writes."""

import csv
import json
import os
import re
import shutil
import subprocess

import pytest

from crab.metrics import compute_scores
from crab.report import checkpointed_training_seconds
from tests.conftest import ROOT, read_settings
from tests.test_cluster import FAKE_SUBMIT

pytestmark = pytest.mark.slow  # end-to-end recipe runs

RECIPE = os.path.join(ROOT, "egs", "mini")
EPOCHS = 4
CUT = "--max_duration=1.0"


def run_recipe(tmp, *options, script="run.sh", check=True, env=None):
    command = [
        "bash",
        os.path.join(RECIPE, script),
        "--data_root",
        str(tmp / "corpus"),
        "--data_dir",
        str(tmp / "data"),
        "--exp_dir",
        str(tmp / "exp"),
        "--corpus_opts",
        "--speakers 4 --sentences_per_emotion 8",
        "--data_opts",
        "--valid_speakers spk03 --test_speakers spk04",
        "--results_md",
        str(tmp / "RESULTS.md"),  # never the recipe's own
        *options,
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
        return result.stdout + result.stderr
    return result


def epoch_losses(train_log):
    with open(train_log) as f:
        return {
            int(m.group(1)): float(m.group(2))
            for m in re.finditer(r"epoch: (\d+),.* - train loss: ([0-9.e+-]+),", f.read())
        }


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    if shutil.which("espeak-ng") is None:
        pytest.fail(
            "espeak-ng is needed for the mini recipe: run tools/install.sh (or apt-get install espeak-ng)"
        )
    tmp = tmp_path_factory.mktemp("mini")
    # Train for EPOCHS - 1 epochs, then ask for EPOCHS: the second run must resume.
    # max_duration shorter than most utterances: a later stage that forgot it would differ.
    first = run_recipe(tmp, "--stop_stage", "5", "--train_opts", f"--number_of_epochs={EPOCHS - 1} {CUT}")
    second = run_recipe(tmp, "--stage", "5", "--train_opts", f"--number_of_epochs={EPOCHS} {CUT}")
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
        assert {e["spk"] for e in manifest.values()} == (
            {"spk01", "spk02"} if split == "train" else {speaker}
        )
    assert (tmp / "data" / "main" / "tokenizer" / "tokenizer.json").is_file()
    peaks = json.loads((tmp / "data" / "audio_peaks.json").read_text())["files"]
    assert len(peaks) == 64 + 32 + 32 and all(0 < peak <= 1 for _, _, peak in peaks.values())


def test_training_loss_goes_down_and_resume_continues(recipe):
    tmp, first, second = recipe
    run_dir = tmp / "exp" / "crab_tiny" / "main" / "seed42"
    losses = epoch_losses(run_dir / "train_log.txt")
    assert sorted(losses) == list(range(1, EPOCHS + 1)), losses  # each epoch trained once
    assert all(loss == loss and loss < 1e3 for loss in losses.values())  # finite
    assert losses[EPOCHS] < losses[1]
    assert "Going into epoch 1" in first and "Going into epoch 1" not in second
    assert f"Going into epoch {EPOCHS}" in second
    assert json.loads((run_dir / "train_info.json").read_text())["invocations"] == 2
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
    results = (tmp / "RESULTS.md").read_text()  # stage 7's entry, with the same table
    assert results.startswith("# mini results\n") and " UTC: crab_tiny on test\n" in results
    assert table[table.index("| run |") :].split("\n\nRuns")[0] in results


def test_rerunning_finished_training_changes_nothing(recipe):
    tmp, _, _ = recipe
    log = tmp / "exp" / "crab_tiny" / "main" / "seed42" / "train_log.txt"
    before = log.read_text()
    output = run_recipe(
        tmp, "--stage", "5", "--stop_stage", "5", "--train_opts", f"--number_of_epochs={EPOCHS} {CUT}"
    )
    assert "Going into epoch" not in output
    assert log.read_text() == before


def test_a_training_killed_before_it_was_recorded_is_recorded_by_the_next_stage_5(recipe):
    tmp, _, _ = recipe
    info = tmp / "exp" / "crab_tiny" / "main" / "seed42" / "train_info.json"
    recorded = info.read_text()
    info.unlink()  # as a kill after the last checkpoint, before the recipe recorded the training
    try:
        run_recipe(
            tmp, "--stage", "5", "--stop_stage", "5", "--train_opts", f"--number_of_epochs={EPOCHS} {CUT}"
        )
        again = json.loads(info.read_text())
        # the training's own record, from its latest checkpoint: its time, and its two trainings
        assert again["wall_s"] == json.loads(recorded)["wall_s"] and again["invocations"] == 2
        assert again["command"].endswith(
            f"--stage 5 --stop_stage 5 --train_opts '--number_of_epochs={EPOCHS} {CUT}'"
        )
    finally:
        info.write_text(recorded)


def test_later_stages_use_the_runs_own_configuration(recipe):
    tmp, _, _ = recipe
    run_dir = tmp / "exp" / "crab_tiny" / "main" / "seed42"
    predictions = run_dir / "eval_test" / "predictions.csv"
    repeated, inode = predictions.read_text(), predictions.stat().st_ino  # options given again
    output = run_recipe(tmp, "--stage", "6", "--stop_stage", "6")  # the same inputs: kept
    assert f"{predictions} is current (checkpoint CKPT+" in output and predictions.stat().st_ino == inode
    run_recipe(tmp, "--stage", "6", "--stop_stage", "8", "--reevaluate", "true")  # the run's hyperparams.yaml
    assert predictions.stat().st_ino != inode and predictions.read_text() == repeated
    assert read_settings(run_dir / "model" / "hyperparams.yaml")["max_duration"] == 1.0

    refused = run_recipe(
        tmp, "--stage", "6", "--stop_stage", "6", "--train_opts", "--max_duration=12.0", check=False
    )
    output = refused.stdout + refused.stderr
    assert refused.returncode != 0 and "Traceback" not in output
    assert "max_duration" in output and "12.0" in output and "1.0" in output
    assert (run_dir / "eval_test" / "predictions.csv").read_text() == repeated
    # nor does stage 7 score the runs under a title naming settings they were not trained with
    results = tmp / "exp" / "crab_tiny" / "results_test.md"
    inode = results.stat().st_ino
    refused = run_recipe(
        tmp, "--stage", "7", "--stop_stage", "7", "--train_opts", "--max_duration=12.0", check=False
    )
    output = refused.stdout + refused.stderr
    assert refused.returncode != 0 and "Traceback" not in output
    assert "--max_duration=12.0 contradicts the run's max_duration: 1.0" in output
    assert "Stage 7: results" not in output and results.stat().st_ino == inode


def test_results_record_the_command_as_typed(recipe):
    tmp, _, _ = recipe
    run = tmp / "exp" / "crab_tiny" / "main" / "seed42"
    info = json.loads((run / "train_info.json").read_text())
    assert 0 < info["wall_s"] == checkpointed_training_seconds(str(run))  # the training's own clock
    assert info["command"].startswith(f"{RECIPE}/run.sh --data_root {tmp}/corpus ")
    assert "--corpus_opts '--speakers 4 --sentences_per_emotion 8'" in info["command"]
    assert info["command"].endswith(f"--stage 5 --train_opts '--number_of_epochs={EPOCHS} {CUT}'")
    assert "ser.sh" not in info["command"]


def test_speechbrains_flags_go_through_the_recipe(recipe):
    tmp, _, _ = recipe
    opts = f"--number_of_epochs=1 {CUT} --compile"
    refused = run_recipe(
        tmp, "--stage", "5", "--stop_stage", "5", "--tag", "compiled", "--train_opts", opts, check=False
    )
    output = refused.stdout + refused.stderr
    assert refused.returncode != 0 and "Traceback" not in output
    assert "ERROR: --compile without --compile_using_dynamic_shape_tracing" in output  # training's own check
    assert not (tmp / "exp" / "compiled" / "main" / "seed42" / "train_info.json").exists()
    # a flag given again to a later stage is a run option there, not a setting the runs must agree with
    output = run_recipe(tmp, "--stage", "6", "--stop_stage", "6", "--train_opts", "--noprogressbar")
    assert "predictions.csv is current (checkpoint CKPT+" in output


def test_sweep_trains_each_setting_and_reevaluates_from_the_runs(recipe):
    tmp, _, _ = recipe
    exp = tmp / "exp_sweep"
    sweep = ("--exp_dir", str(exp), "--ablations", "ce_only mlcs")
    run_recipe(tmp, *sweep, "--train_opts", f"--number_of_epochs=1 {CUT}", script="sweep.sh")
    table = (exp / "ablations_test.md").read_text()
    assert "ce_only" in table and "mlcs" in table
    predictions = {
        name: (exp / name / "main" / "seed42" / "eval_test" / "predictions.csv").read_text()
        for name in ("ce_only", "mlcs")
    }
    legs = {
        name: read_settings(exp / name / "main" / "seed42" / "hyperparams.yaml")["leg_names"]
        for name in ("ce_only", "mlcs")
    }
    assert legs["ce_only"] == [] and len(legs["mlcs"]) == 5
    # evaluation again, no options; the two settings at once
    run_recipe(tmp, *sweep, "--stage", "6", "--settings_nj", "2", "--reevaluate", "true", script="sweep.sh")
    for name, before in predictions.items():
        assert (exp / name / "main" / "seed42" / "eval_test" / "predictions.csv").read_text() == before
        assert (exp / f"{name}.sweep.log").read_text().endswith("exit status 0\n")
    assert (exp / "ablations_test.md").read_text().split("\n", 1)[1] == table.split("\n", 1)[
        1
    ]  # but the title


def test_runs_as_jobs_through_a_scheduler_and_failed_jobs_are_named(recipe, tmp_path):
    """Stages 5 and 6 with --nj 2 --cmd utils/slurm.sh (a stand-in sbatch runs each job
    script at once): one job per seed, each the recipe's own stage with the options
    given, the user's command recorded; a failed job stops the stage, naming its log."""
    tmp, _, _ = recipe
    (tmp_path / "sbatch").write_text(FAKE_SUBMIT)
    (tmp_path / "sbatch").chmod(0o755)
    env = dict(
        os.environ,
        PATH=f"{tmp_path}:{os.environ['PATH']}",
        FAKE_SUBMIT_ARGS=str(tmp_path / "args"),
        OUTPUT_OPTION="--output",
        ID_SUFFIX="",
    )
    exp = tmp / "exp_jobs"
    train_opts = f"--number_of_epochs=1 {CUT}"
    launcher = "utils/slurm.sh --time 1:00:00"
    jobs = ("--exp_dir", str(exp), "--nj", "2")
    output = run_recipe(
        tmp, "--stage", "5", "--stop_stage", "6", *jobs, "--seeds", "1 2", "--cmd", launcher,
        "--train_opts", train_opts, env=env,
    )  # fmt: skip
    logs = exp / "crab_tiny" / "log"
    assert f"Stage 5: 2 job(s), at most 2 at once, each through {launcher}; their logs: {logs}/" in output
    for seed in (1, 2):
        run_dir = exp / "crab_tiny" / "main" / f"seed{seed}"
        settings = read_settings(run_dir / "hyperparams.yaml")
        assert (settings["seed"], settings["number_of_epochs"], settings["max_duration"]) == (seed, 1, 1.0)
        assert (run_dir / "eval_test" / "predictions.csv").is_file()
        info = json.loads((run_dir / "train_info.json").read_text())
        assert info["command"].startswith(f"{RECIPE}/run.sh ") and "--nj 2" in info["command"]
        for stage in (5, 6):
            log = (logs / f"stage{stage}.main.seed{seed}.log").read_text()
            assert log.endswith("exit status 0\n") and f"--stage {stage} --stop_stage {stage}" in log
            assert (logs / f"stage{stage}.main.seed{seed}.log.sbatch").is_file()
    assert "--job-name\ncrab:stage6.main.seed" in (tmp_path / "args").read_text()

    failed = run_recipe(tmp, "--stage", "6", "--stop_stage", "6", *jobs, "--seeds", "1 99", check=False)
    assert failed.returncode != 0
    assert f"1 of 2 job(s) failed, see the end of: {logs}/stage6.main.seed99.log" in failed.stderr
    assert (logs / "stage6.main.seed1.log").read_text().endswith("exit status 0\n")
