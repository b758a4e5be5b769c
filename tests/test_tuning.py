"""Tuning files (conf/tuning/<name>.yaml, ser.sh --tuning): their overrides come first,
then the ablation's, then --train_opts; the tag defaults to the file's name; the run
records the file; a bad file stops with one line naming it."""

import glob
import json
import os
import subprocess

import pytest

from crab import report
from crab.runconfig import ConfigError, read_tuning
from tests.conftest import ROOT, read_settings, write_tone_corpus

RECIPE = os.path.join(ROOT, "egs", "mini")
CLASSES = ["angry", "happy", "neutral", "sad"]
TUNING = """\
# A test setting: a narrower head, alpha 1.5.
# (a second comment line)
config: conf/crab_tiny.yaml   # the mini recipe's config
overrides:
  hidden_dim: 8            # only here
  bottleneck_dim: 8        # the ablation sets 12
  alpha: 1.5               # the ablation sets 0.5, --train_opts 0.25
  encoder_lr: !ref <lr> / 10
  leg_names:               # a block list: passed in flow style
    - fusion
    - speech_pooled
"""
ABLATIONS = "probe | a test ablation | | --bottleneck_dim=12 --alpha=0.5\n"


def run_sh(*args, script="run.sh", cwd=None):
    return subprocess.run(
        ["bash", os.path.join(RECIPE, script), *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )


def write(path, text):
    path.write_text(text)
    return str(path)


# ---------------------------------------------------------------- the file


@pytest.mark.parametrize(
    "path",
    sorted(glob.glob(os.path.join(ROOT, "egs", "*", "conf", "tuning", "*.yaml"))),
    ids=os.path.basename,
)
def test_committed_tuning_files_are_valid(path):
    recipe = os.path.dirname(os.path.dirname(os.path.dirname(path)))
    tuning = read_tuning(path, recipe_dir=recipe)
    assert tuning["description"] and tuning["overrides"]  # what the setting is, and what it sets


def test_read_tuning_keeps_values_as_written_in_file_order(tmp_path):
    tuning = read_tuning(write(tmp_path / "narrow.yaml", TUNING), recipe_dir=RECIPE)
    assert tuning["config"] == "conf/crab_tiny.yaml"
    assert tuning["overrides"] == [
        "--hidden_dim=8",
        "--bottleneck_dim=8",
        "--alpha=1.5",
        "--encoder_lr=!ref <lr> / 10",
        "--leg_names=[fusion, speech_pooled]",
    ]
    assert tuning["description"] == "A test setting: a narrower head, alpha 1.5. (a second comment line)"


def test_overrides_command_orders_tuning_ablation_train_opts(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(RECIPE)
    tuning = write(tmp_path / "narrow.yaml", TUNING)
    table = write(tmp_path / "ablations.txt", ABLATIONS)
    args = ["overrides", "--tuning", tuning, "--table", table, "--ablation", "probe", "--opts=--alpha=0.25"]
    report.main(args)
    words = capsys.readouterr().out.splitlines()
    assert words == [
        "--hidden_dim=8",
        "--encoder_lr=!ref <lr> / 10",
        "--leg_names=[fusion, speech_pooled]",
        "--bottleneck_dim=12",
        "--alpha=0.25",
    ]


@pytest.mark.parametrize(
    "text, message",
    [
        (None, "No such file or directory"),
        ("- hidden_dim: 8\n", "expected a mapping with keys config and overrides"),
        ("config: conf/crab_tiny.yaml\noverride:\n  lr: 1\n", "unknown key 'override'"),
        ("overrides:\n  lr: 1\n", "'config:' must name the base config"),
        ("config: conf/no_such.yaml\n", "config conf/no_such.yaml: no such file"),
        ("config: conf/crab_tiny.yaml\noverrides: [lr]\n", "'overrides:' must be a mapping"),
        ("config: conf/crab_tiny.yaml\noverrides:\n  lr: [1\n", "not valid YAML at line 4"),
        (
            "config: conf/crab_tiny.yaml\noverrides:\n  hiden_dim: 8\n",
            "override --hiden_dim: no top-level key 'hiden_dim' in conf/crab_tiny.yaml",
        ),
    ],
)
def test_bad_tuning_files_are_named(tmp_path, monkeypatch, text, message):
    monkeypatch.chdir(RECIPE)
    path = tmp_path / "bad.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError) as err:
        read_tuning(str(path))
    assert str(err.value).startswith(f"tuning file {path}: ") and message in str(err.value)


@pytest.mark.parametrize(
    "text, message",
    [
        (None, "--tuning {path}: no such file"),
        ("- a\n", "ERROR: tuning file {path}: expected a mapping"),
        (
            "config: conf/crab_tiny.yaml\noverrides:\n  hiden_dim: 8\n",
            "ERROR: tuning file {path}: override --hiden_dim",
        ),
    ],
)
def test_recipe_stops_on_a_bad_tuning_file_with_one_line(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    if text is not None:
        path.write_text(text)
    result = run_sh("--stage", "9", "--data_root", str(tmp_path), "--tuning", str(path))
    assert result.returncode != 0
    assert result.stderr.strip() == result.stderr.strip().splitlines()[0], result.stderr
    assert message.format(path=path) in result.stderr and "Traceback" not in result.stderr


def test_tuning_sets_the_config_and_a_different_config_is_an_error(tmp_path):
    tuning = write(tmp_path / "narrow.yaml", TUNING)
    common = ("--stage", "9", "--data_root", str(tmp_path), "--tuning", tuning)
    assert run_sh(*common).returncode == 0  # run.sh's own --config is the recipe's default
    assert run_sh(*common, "--config", "conf/crab_tiny.yaml").returncode == 0  # the same file
    result = run_sh(*common, "--config", "conf/crab_reference_tiny.yaml")
    assert result.returncode != 0
    assert (
        f"--config conf/crab_reference_tiny.yaml contradicts --tuning {tuning}, "
        "whose config is conf/crab_tiny.yaml" in result.stderr
    )


# ---------------------------------------------------------------- a run


@pytest.fixture(scope="module")
def tuned_run(tmp_path_factory):
    """Stage 5 of the mini recipe with a tuning file, an ablation and --train_opts, on a
    tone corpus (stage-3 output written directly)."""
    root = tmp_path_factory.mktemp("tuning")
    corpus, data = root / "corpus", root / "data" / "main"
    corpus.mkdir()
    data.mkdir(parents=True)
    write_tone_corpus(corpus, data, {"train": 2, "valid": 1, "test": 1}, CLASSES, lengths=(0.3, 0.5))
    tuning = write(root / "narrow.yaml", TUNING)
    table = write(root / "ablations.txt", ABLATIONS)
    options = ["--data_root", str(corpus), "--data_dir", str(root / "data"), "--exp_dir", str(root / "exp")]
    result = run_sh(
        "--stage", "5", "--stop_stage", "5", *options, "--tuning", tuning, "--ablation", "probe",
        "--ablation_table", table, "--train_opts", "--alpha=0.25 --number_of_epochs=1 --batch_size=4",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return root, tuning, options


def test_overrides_reach_the_run_in_order(tuned_run):
    root, _, _ = tuned_run
    run = root / "exp" / "narrow_probe" / "main" / "seed42"  # the tag: the tuning's name _ the ablation's
    settings = read_settings(run / "hyperparams.yaml")
    assert settings["hidden_dim"] == 8  # the tuning file's
    assert settings["bottleneck_dim"] == 12  # the ablation's, over the tuning file's
    assert settings["alpha"] == 0.25  # --train_opts', over both
    assert settings["leg_names"] == ["fusion", "speech_pooled"]
    assert settings["number_of_epochs"] == 1


def test_the_run_records_its_tuning_file(tuned_run):
    root, tuning, _ = tuned_run
    info = json.loads((root / "exp" / "narrow_probe" / "main" / "seed42" / "train_info.json").read_text())
    assert (info["tuning"], info["config"]) == (tuning, "conf/crab_tiny.yaml")
    assert f"--tuning {tuning}" in info["command"]


@pytest.mark.slow
def test_sweep_runs_tuning_files_as_rows_of_the_table(tuned_run):
    root, tuning, options = tuned_run
    exp = root / "exp_sweep"
    options = [*options[:-1], str(exp)]
    result = run_sh(
        *options, "--tunings", tuning, "--ablations", "ce_only", "--results_md", str(root / "RESULTS.md"),
        "--train_opts", "--number_of_epochs=1 --batch_size=4", script="sweep.sh",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = (exp / "ablations_test.md").read_text()
    assert "| ce_only | 1 |" in table and "| narrow | narrow | 1 |" in table
    assert read_settings(exp / "narrow" / "main" / "seed42" / "hyperparams.yaml")["hidden_dim"] == 8
    assert read_settings(exp / "ce_only" / "main" / "seed42" / "hyperparams.yaml")["hidden_dim"] == 32
    scored = (exp / "narrow" / "results_test.md").read_text()
    assert f"narrow on test ({tuning})" in scored and f"`; tuning `{tuning}`" in scored  # each run's
    results = (root / "RESULTS.md").read_text()  # one entry per setting, the last one first
    assert results.index(" UTC: narrow on test") < results.index(" UTC: ce_only on test")
    assert f"- tuning: `{tuning}`: A test setting" in results
