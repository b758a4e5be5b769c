"""ser.sh and sweep.sh against a stand-in python: each stage runs in its --stage/--stop_stage range
only; every run gets its own fold, seed, folders, test set and device; a stage run as jobs (--nj,
--cmd) runs one job per fold and seed, each for its stage alone, and stops on a failed one; a
sweep runs each setting in its exp_dir with its overrides, and stops on a failed one."""

import os
import shlex

import pytest

from tests.test_recipe_shell import calls, copy_shell_parts, run, stand_in_venv

FOLDS, SEEDS, TEST_SETS = ("main", "other"), ("1", "2"), ("test", "dev")
# what each stage calls (the stand-in python records it): stage 0 and 1, the mini recipe's local/
STAGE_CALLS = {
    0: ["local/generate_corpus.py"],
    1: ["local/prepare_data.py"],
    2: ["-m", "crab.bin.transcribe"],
    3: ["-m", "crab.bin.make_manifest"],
    4: ["-m", "crab.bin.extract_features"],
    5: ["-m", "crab.bin.train"],
    6: ["-m", "crab.bin.evaluate"],
    7: ["-m", "crab.bin.score"],
    8: ["-m", "crab.bin.package"],
}


@pytest.fixture
def recipe(tmp_path):
    """The mini recipe of a copy of the shell parts with a stand-in python, manifests of two folds
    and four trained runs (what stages 5 and later read): run_sh(*options) runs its run.sh."""
    clone = copy_shell_parts(tmp_path / "clone")
    stand_in_venv(clone)
    (clone / "corpus").mkdir()
    for fold in FOLDS:
        (clone / "data" / fold).mkdir(parents=True)
        for split in ("train", "valid", *TEST_SETS):
            (clone / "data" / fold / f"{split}.json").write_text("{}")
        for seed in SEEDS:
            run_dir = clone / "exp" / "crab_tiny" / fold / f"seed{seed}"
            run_dir.mkdir(parents=True)
            (run_dir / "train_log.txt").write_text("epoch: 1\n")
    folders = ["--data_root", "corpus", "--data_dir", f"{clone}/data", "--exp_dir", f"{clone}/exp"]
    every = ["--folds", " ".join(FOLDS), "--seeds", " ".join(SEEDS), "--test_sets", " ".join(TEST_SETS)]

    def run_sh(*options, env=None):
        (clone / "argv").unlink(missing_ok=True)
        script = str(clone / "egs" / "mini" / "run.sh")
        return run(script, *folders, *every, *options, cwd=clone, env=env)

    return clone, run_sh


def stages_run(clone):
    """The stages whose calls the stand-in python of ``clone`` recorded, with their counts."""
    counts = {}
    for call in calls(clone):
        for stage, start in STAGE_CALLS.items():
            if call[: len(start)] == start:
                counts[stage] = counts.get(stage, 0) + 1
    return counts


def options_of(call, *names):
    """The values of the ``--name=value`` words ``names`` in ``call``, in that order."""
    values = dict(word[2:].split("=", 1) for word in call if word.startswith("--") and "=" in word)
    return tuple(values.get(name) for name in names)


def stage_calls(clone, stage):
    return [call for call in calls(clone) if call[: len(STAGE_CALLS[stage])] == STAGE_CALLS[stage]]


@pytest.mark.parametrize("first, last", [(s, s) for s in range(9)] + [(0, 8), (3, 6)])
def test_each_stage_runs_once_in_its_range_and_never_outside_it(recipe, first, last):
    clone, run_sh = recipe
    options = [
        "--asr_model",
        "m",
        "--feature_cache",
        "cache",
        "--stage",
        str(first),
        "--stop_stage",
        str(last),
    ]
    result = run_sh(*options, "--folds", "main", "--seeds", "1", "--test_sets", "test")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    once = {0: 1, 1: 1, 2: 3, 3: 3, 4: 1, 5: 1, 6: 1, 7: 1, 8: 1}  # stages 2, 3: train, valid, test
    assert stages_run(clone) == {stage: once[stage] for stage in range(first, last + 1)}


def test_every_run_gets_its_own_fold_seed_folders_and_test_set(recipe):
    clone, run_sh = recipe
    result = run_sh("--stage", "5", "--stop_stage", "8")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    runs = {(fold, seed): f"{clone}/exp/crab_tiny/{fold}/seed{seed}" for fold in FOLDS for seed in SEEDS}
    own = {(f"{clone}/data/{fold}", seed, out) for (fold, seed), out in runs.items()}
    names = ("data_folder", "seed", "output_folder")
    assert sorted(options_of(call, *names) for call in stage_calls(clone, 5)) == sorted(own)
    evaluated = sorted(
        options_of(call, *names, "test_manifest", "eval_name") for call in stage_calls(clone, 6)
    )
    assert evaluated == sorted(
        (data, seed, out, f"{data}/{test_set}.json", test_set)
        for data, seed, out in own
        for test_set in TEST_SETS
    )
    for test_set, call in zip(TEST_SETS, stage_calls(clone, 7), strict=True):  # every run's predictions
        predictions = [word for word in call if word.endswith("predictions.csv")]
        assert sorted(predictions) == sorted(
            f"{out}/eval_{test_set}/predictions.csv" for out in runs.values()
        )
        # each checked against the test manifest of its fold, given in the same order
        given = call[call.index("--test_manifests") + 1 :][: len(predictions)]
        assert given == [f"{clone}/data/{path.split('/')[-4]}/{test_set}.json" for path in predictions]
    packaged = sorted(
        (*options_of(call, *names), call[call.index("--out") + 1]) for call in stage_calls(clone, 8)
    )
    assert packaged == sorted((*run, f"{run[2]}/model") for run in own)


def job_logs(clone):
    return sorted(os.listdir(clone / "exp" / "crab_tiny" / "log"))


def test_a_stage_as_jobs_runs_each_fold_and_seed_once_for_that_stage_alone(recipe):
    clone, run_sh = recipe
    result = run_sh("--stage", "5", "--stop_stage", "6", "--nj", "2")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    runs = sorted((f"{clone}/data/{fold}", seed) for fold in FOLDS for seed in SEEDS)
    assert sorted(options_of(call, "data_folder", "seed") for call in stage_calls(clone, 5)) == runs
    evaluated = sorted(options_of(call, "data_folder", "seed", "eval_name") for call in stage_calls(clone, 6))
    assert evaluated == sorted((*run, test_set) for run in runs for test_set in TEST_SETS)
    assert job_logs(clone) == sorted(
        f"stage{stage}.{fold}.seed{seed}.log" for stage in (5, 6) for fold in FOLDS for seed in SEEDS
    )


def test_a_failed_job_stops_its_stage_before_the_next(recipe):
    clone, run_sh = recipe
    result = run_sh("--stage", "5", "--stop_stage", "6", "--nj", "2", env={"STAND_IN_FAIL": "--seed=2"})
    assert result.returncode == 1
    assert "Error: stage 5 failed (the end of each failed job's log says why)" in result.stdout
    assert stage_calls(clone, 5) and not stage_calls(clone, 6)


def test_a_stage_through_a_launcher_runs_as_jobs_even_one_at_a_time(recipe, tmp_path):
    clone, run_sh = recipe
    launcher = tmp_path / "launch.sh"  # as utils/slurm.sh is called: --gpus N LOG COMMAND...
    launcher.write_text(
        '#!/usr/bin/env bash\necho "$3" >> "${0%.sh}.jobs"\nshift 2\nlog=$1\nshift\n"$@" > "$log"\n'
    )
    launcher.chmod(0o755)
    result = run_sh("--stage", "6", "--stop_stage", "6", "--seeds", "1", "--cmd", str(launcher))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    logs = ["stage6.main.seed1.log", "stage6.other.seed1.log"]
    launched = (tmp_path / "launch.jobs").read_text().splitlines()
    assert launched == [f"{clone}/exp/crab_tiny/log/{log}" for log in logs] and job_logs(clone) == logs


def overrides_of_runs(clone):
    """The ``crab.report overrides`` calls of ser.sh (the runs' yaml overrides), not sweep.sh's checks."""
    made = [call for call in calls(clone) if call[:3] == ["-m", "crab.report", "overrides"]]
    return [call[3:] for call in made if "--keep_ablation" not in call and call[3:] != made[0][3:]]


@pytest.fixture
def sweep(recipe):
    """recipe's clone with runs of the settings of ``sweep_sh`` (ablation mlcs, alpha 0.5 and its
    baseline ce_only), in an exp_dir of the sweep's own: sweep_sh(*options) runs its sweep.sh."""
    clone, _ = recipe
    exp = clone / "sweep exp"
    for tag in ("mlcs", "ce_only", "alpha0.5"):
        (exp / tag / "main" / "seed42").mkdir(parents=True)
        (exp / tag / "main" / "seed42" / "train_log.txt").write_text("epoch: 1\n")
    table = clone / "my ablations.txt"
    table.write_text("mlcs | MLCS | | --alpha=2.0\nce_only | CE only | | --leg_names=[]\n")

    def sweep_sh(*options, env=None):
        (clone / "argv").unlink(missing_ok=True)
        folders = ["--data_root", "corpus", "--data_dir", f"{clone}/data", "--exp_dir", str(exp)]
        settings = ["--ablations", "mlcs", "--alphas", "0.5", "--ablation_table", str(table)]
        script = str(clone / "egs" / "mini" / "sweep.sh")
        return run(script, *folders, *settings, "--train_opts", "--lr=0.1", *options, cwd=clone, env=env)

    return clone, exp, table, sweep_sh


def test_a_sweep_runs_each_setting_in_its_exp_dir_with_its_overrides_and_stages(sweep):
    clone, exp, table, sweep_sh = sweep
    result = sweep_sh()
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    trained = sorted(options_of(call, "output_folder")[0] for call in stage_calls(clone, 5))
    assert trained == sorted(f"{exp}/{tag}/main/seed42" for tag in ("alpha0.5", "ce_only", "mlcs"))
    assert sorted(overrides_of_runs(clone)) == sorted(
        [
            ["--opts=--lr=0.1", "--table", str(table), "--ablation", "mlcs"],
            ["--opts=--lr=0.1", "--table", str(table), "--ablation", "ce_only"],
            ["--opts=--lr=0.1 --alpha=0.5"],
        ]
    )
    assert len(stage_calls(clone, 7)) == 3 and not stage_calls(clone, 8)  # stages 5-7, the default
    tables = [call for call in calls(clone) if call[:3] == ["-m", "crab.report", "test_sets"]]
    assert len(tables) == 1 and tables[0][-1] == f"{exp}/mlcs"  # what the tables read
    records = [call for call in calls(clone) if call[:3] == ["-m", "crab.report", "record_training"]]
    commands = {call[call.index("--command") + 1] for call in records}  # the sweep's, as typed
    assert len(records) == 3 and commands == {shlex.join(result.args[1:])}


def test_a_sweep_stops_on_a_failed_setting_run_at_once(sweep):
    clone, exp, _, sweep_sh = sweep
    failing = {"STAND_IN_FAIL": f"--output_folder={exp}/ce_only/main/seed42"}
    result = sweep_sh("--settings_nj", "2", env=failing)
    assert result.returncode == 1 and "Error: a setting failed" in result.stdout, result.stderr
    assert (exp / "ce_only.sweep.log").read_text().endswith("exit status 3\n")
    assert not [call for call in calls(clone) if call[:3] == ["-m", "crab.report", "test_sets"]]


def test_stage_5_records_a_run_that_trained_nothing_only_when_it_has_no_record(recipe):
    """A finished run trains no epoch again: its record stays as it was, unless a training killed
    before the recipe recorded it left none."""
    clone, run_sh = recipe
    run_dir = clone / "exp" / "crab_tiny" / "main" / "seed1"
    (run_dir / "train_info.json").write_text("{}")
    options = ("--stage", "5", "--stop_stage", "5", "--folds", "main", "--seeds", "1")
    recorded = [["-m", "crab.report", "record_training", "--run_dir", str(run_dir)]]
    for info, expected in ((True, []), (False, recorded)):
        if not info:
            (run_dir / "train_info.json").unlink()
        result = run_sh(*options)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        records = [call for call in calls(clone) if call[:3] == ["-m", "crab.report", "record_training"]]
        assert [call[:5] for call in records] == expected
        assert all(call[call.index("--trained_now") + 1] == "false" for call in records)


@pytest.mark.parametrize(
    "ngpu, launched, device", [("1", "crab.bin.train", "cuda:0"), ("2", "torch.distributed.run", None)]
)
def test_training_on_gpus_names_the_device_of_one_process_only(recipe, ngpu, launched, device):
    """Each DDP process takes cuda:LOCAL_RANK: a --device would put them all on one GPU."""
    clone, run_sh = recipe
    result = run_sh("--stage", "5", "--stop_stage", "5", "--folds", "main", "--seeds", "1", "--ngpu", ngpu)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    [train] = [call for call in calls(clone) if "crab.bin.train" in call]
    assert train[1] == launched and options_of(train, "device") == (device,)


@pytest.mark.parametrize("reevaluate, kept", [("false", True), ("true", False)])
def test_stage_6_keeps_a_current_evaluation_unless_asked_to_evaluate_again(recipe, reevaluate, kept):
    clone, run_sh = recipe
    result = run_sh("--stage", "6", "--stop_stage", "6", "--reevaluate", reevaluate)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    evaluated = stage_calls(clone, 6)
    assert len(evaluated) == 8 and all(("--skip_if_current" in call) == kept for call in evaluated)


def test_stage_7_checks_train_opts_given_again_against_every_run_it_scores(recipe):
    clone, run_sh = recipe
    runs = [f"{clone}/exp/crab_tiny/{fold}/seed{seed}" for fold in FOLDS for seed in SEEDS]
    for train_opts, checked in (("", []), ("--alpha=1.5", [["--opts=--alpha=1.5", *runs]])):
        result = run_sh("--stage", "7", "--stop_stage", "7", "--train_opts", train_opts)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        assert [
            call[3:] for call in calls(clone) if call[:3] == ["-m", "crab.report", "check_agree"]
        ] == checked
