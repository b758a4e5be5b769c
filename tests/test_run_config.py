"""Every stage after training reads the run's own configuration (<output_folder>/hyperparams.yaml)."""

import builtins
import errno
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from crab.bin import embeddings, evaluate, extract_features, train
from crab.bin import package as package_cli
from crab.runconfig import ConfigError, check_against_run, load_run, relocated, resolved_values, same_value
from tests.conftest import ROOT, write_tone_corpus
from tests.test_brain import corpus_options

RECIPE = os.path.join(ROOT, "egs", "TEMPLATE")
CONFIG = "conf/crab_tiny.yaml"
CLASSES = ["angry", "happy", "neutral", "sad"]
# what the run is trained with beyond the recipe's yaml: a shorter max_duration, a shape-changing
# key, and SpeechBrain run options that are keys of the yaml too (its values: 1 and 5.0)
TRAIN_OPTS = [
    "--number_of_epochs=1",
    "--max_duration=0.5",
    "--hidden_dim=16",
    "--batch_size=4",
    "--grad_accumulation_factor=2",
    "--max_grad_norm=2.5",
]


def run_options(data, out):
    """What ser.sh passes to every stage of a run (run_opts)."""
    return [
        *corpus_options(data, out),
        "--seed=42",
        "--device=cpu",
    ]


def command(module, *args):
    """``python -m module args`` in the recipe directory; returns the CompletedProcess."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=ROOT)
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        cwd=RECIPE,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def train_run(data, out, *opts):
    """Stage 4 of one run: ``python -m crab.bin.train`` (saves out/hyperparams.yaml)."""
    result = command("crab.bin.train", CONFIG, *run_options(data, out), *opts, "--noprogressbar")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def in_recipe(fn, *args):
    cwd = os.getcwd()
    os.chdir(RECIPE)
    try:
        return fn(*args)
    finally:
        os.chdir(cwd)


def assert_one_line_error(result, *parts):
    """Exit status 1, one ``ERROR:`` line naming ``parts``, and no traceback."""
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 1, result.stderr
    for part in parts:
        assert part in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("run_config_data")
    write_tone_corpus(root, root, {"train": 2, "valid": 1, "test": 1}, CLASSES, lengths=(0.6, 0.9))
    return root


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run_config_exp") / "t" / "main" / "seed42"
    train_run(data, out, *TRAIN_OPTS)
    return out


def evaluate_run(data, out, name, *opts, manifest=None):
    in_recipe(
        evaluate.main,
        [
            CONFIG,
            *run_options(data, out),
            f"--test_manifest={manifest or data / 'test.json'}",
            f"--eval_name={name}",
            "--noprogressbar",
            *opts,
        ],
    )
    return (out / f"eval_{name}" / "predictions.csv").read_text()


def test_the_run_saves_its_resolved_hyperparameters(trained):
    saved = resolved_values((trained / "hyperparams.yaml").read_text())
    assert (
        saved["max_duration"] == 0.5 and saved["hidden_dim"] == 16 and saved["model"][1]["hidden_dim"] == 16
    )
    # the run options it trained with, not the yaml's values
    assert saved["grad_accumulation_factor"] == 2 and saved["max_grad_norm"] == 2.5
    assert "x batches of 4 x accumulation 2 = 8 utterances" in (trained / "log.txt").read_text()


def test_evaluation_without_the_training_options_is_the_run_with_them(trained, data):
    bare = evaluate_run(data, trained, "bare")
    repeated = evaluate_run(data, trained, "repeated", *TRAIN_OPTS)
    assert bare == repeated and bare.count("\n") == 5
    # another evaluation batch size is allowed (predictions do not depend on the batch, up to
    # float rounding: batched and single matrix products may differ in the last bits)
    alone, batched = (
        [line.split(",") for line in text.splitlines()]
        for text in (evaluate_run(data, trained, "batch1", "--batch_size=1"), bare)
    )
    assert [row[:3] for row in alone] == [row[:3] for row in batched]  # ids, labels, predictions
    probs = [float(p) for row in alone[1:] for p in row[3:]]
    assert probs == pytest.approx([float(p) for row in batched[1:] for p in row[3:]], abs=2e-6)


def test_an_evaluation_of_the_same_inputs_is_kept_and_one_of_changed_inputs_is_redone(
    trained, data, tmp_path
):
    """--skip_if_current (the recipe's stage 6) keeps an evaluation whose record of inputs is
    this one's; a changed input, a missing output or no flag evaluates again."""
    run = tmp_path / "run"
    shutil.copytree(trained, run, ignore=shutil.ignore_patterns("eval_*"))
    eval_dir = run / "eval_kept"
    predictions, record = eval_dir / "predictions.csv", eval_dir / "predictions.inputs.json"

    def evaluate_and_tell(*opts, manifest=None):
        """(was predictions.csv replaced, its rows)"""
        before = predictions.stat().st_ino if predictions.exists() else None
        rows = evaluate_run(data, run, "kept", *opts, manifest=manifest).count("\n") - 1
        return predictions.stat().st_ino != before, rows

    assert evaluate_and_tell("--skip_if_current") == (True, 4)  # nothing to keep yet
    inputs = json.loads(record.read_text())
    checkpoint = (eval_dir / "checkpoint.txt").read_text().strip()
    assert inputs["checkpoint"] == checkpoint and checkpoint.startswith("CKPT+")
    assert inputs["eval_precision"] == "fp32" and inputs["device_type"] == "cpu"
    assert inputs["data_root"] == str(data) and len(inputs["code_sha256"]) == 64
    assert evaluate_and_tell("--skip_if_current") == (False, 4)
    assert evaluate_and_tell("--skip_if_current", "--batch_size=1") == (False, 4)  # no effect on predictions
    assert evaluate_and_tell() == (True, 4)  # asked for without the flag
    # the manifest's contents (not its name), the checkpoint, the code: each evaluates again
    fewer = tmp_path / "test_3.json"
    entries = json.loads((data / "test.json").read_text())
    fewer.write_text(json.dumps(dict(list(entries.items())[:3])))
    assert evaluate_and_tell("--skip_if_current", manifest=fewer) == (True, 3)
    assert evaluate_and_tell("--skip_if_current", manifest=fewer) == (False, 3)
    for key, value in (("checkpoint", "CKPT+older"), ("code_sha256", "0" * 64), ("data_root", "/elsewhere")):
        record.write_text(json.dumps({**json.loads(record.read_text()), key: value}))
        assert evaluate_and_tell("--skip_if_current", manifest=fewer) == (True, 3), key
        assert json.loads(record.read_text())[key] != value
    (eval_dir / "scores.json").unlink()
    assert evaluate_and_tell("--skip_if_current", manifest=fewer) == (True, 3)
    record.write_text("{not json")
    assert evaluate_and_tell("--skip_if_current", manifest=fewer) == (True, 3)


def test_an_evaluation_batch_size_given_again_is_its_loaders(trained, data):
    """The run's file has copied its batch_size and num_workers into eval_dataloader_opts: an
    evaluation that gives others (a smaller batch for the GPU's memory) loads with them."""
    overrides = ["--batch_size=1", "--num_workers=1"]
    _, _, _, hparams = in_recipe(load_run, [CONFIG, *run_options(data, trained), *overrides])
    assert hparams["eval_dataloader_opts"] == {"batch_size": 1, "num_workers": 1}


def test_a_contradicting_option_is_one_line_naming_both_values(trained, data):
    result = command(
        "crab.bin.evaluate",
        CONFIG,
        *run_options(data, trained),
        f"--test_manifest={data}/test.json",
        "--eval_name=x",
        "--max_duration=12.0",
    )
    assert_one_line_error(
        result, f"--max_duration=12.0 contradicts the run's max_duration: 0.5 ({trained}/hyperparams.yaml)"
    )
    assert not (trained / "eval_x").exists()
    with pytest.raises(SystemExit, match="--hidden_dim=32 contradicts the run's hidden_dim: 16"):
        evaluate_run(data, trained, "y", "--hidden_dim=32")


@pytest.mark.slow
def test_training_resumed_with_other_settings_is_refused_before_anything_is_written(trained, data, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    record = (run / "hyperparams.yaml").read_text()
    result = command(
        "crab.bin.train", CONFIG, *run_options(data, run), *TRAIN_OPTS, "--alpha=0.5", "--hidden_dim=64"
    )
    assert_one_line_error(
        result,
        f"{run} holds a run trained with other settings",
        "alpha: 2.0 then, 0.5 now",
        "hidden_dim: 16 then",
    )
    assert (run / "hyperparams.yaml").read_text() == record
    assert "hidden_dim: 16 then, 64 now" in result.stderr and "the objects model, legs" in result.stderr
    # the yaml's 10 epochs, not asked for (the run's --number_of_epochs=1 forgotten): refused
    forgot = [opt for opt in TRAIN_OPTS if not opt.startswith("--number_of_epochs")]
    result = command("crab.bin.train", CONFIG, *run_options(data, run), *forgot)
    assert_one_line_error(
        result,
        f"{run} holds a run trained for 1 epochs ({run}/hyperparams.yaml), and {CONFIG} gives 10",
        "resume it with --number_of_epochs=1",
        "train it on to 10 with --number_of_epochs=10",
    )
    assert (run / "hyperparams.yaml").read_text() == record
    # more epochs asked for train on (with a warning: the checkpoint's schedule was made for fewer)
    more = command("crab.bin.train", CONFIG, *run_options(data, run), *TRAIN_OPTS, "--number_of_epochs=2")
    assert more.returncode == 0 and "number_of_epochs 2, trained with 1: training goes on" in more.stderr
    assert "(made for 1 epochs: epoch 2 gets head lr 0.00e+00, the cosine past its end)" in more.stderr
    assert "epoch: 2," in (run / "train_log.txt").read_text()
    # where things are, the data-loading processes (which the loaders' options hold too), the
    # encoders' gradient checkpointing, the evaluation precision, checkpoint intervals and the
    # accumulation (with a warning: another optimizer batch) may change
    resumed = (
        "--ckpt_interval_minutes=5",
        "--grad_accumulation_factor=1",
        "--num_workers=2",
        "--gradient_checkpointing=true",
        "--eval_precision=bf16",
    )
    result = train_run(data, run, *TRAIN_OPTS, "--number_of_epochs=3", *resumed)
    assert "epoch: 3," in (run / "train_log.txt").read_text()
    assert "accumulation 2 batches, now over 1 x 1" in result.stdout
    assert resolved_values((run / "hyperparams.yaml").read_text())["grad_accumulation_factor"] == 1
    # and a key only the recipe's yaml has is none of the run's
    (run / "hyperparams.yaml").write_text(record.replace("\nnum_workers:", "\nnum_workerz:"))
    train_run(data, run, *TRAIN_OPTS, "--ckpt_interval_minutes=5")
    assert "num_workers" in (run / "hyperparams.yaml").read_text()


def test_fewer_epochs_end_a_stopped_run_where_it_stands(trained, data, tmp_path):
    """A run stopped by a time limit (1 of its 2 epochs) ends there when asked for 1 epoch:
    later stages then take it as finished. Fewer epochs than it has trained are refused."""
    from crab.report import unfinished_training

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    more = [opt for opt in TRAIN_OPTS if not opt.startswith("--number_of_epochs")]
    assert (
        command("crab.bin.train", CONFIG, *run_options(data, run), *more, "--number_of_epochs=2").returncode
        == 0
    )
    record = (run / "hyperparams.yaml").read_text()
    result = command("crab.bin.train", CONFIG, *run_options(data, run), *TRAIN_OPTS)
    assert_one_line_error(
        result, f"{run} has trained 2 epochs (", "--number_of_epochs=1 would record fewer", "give 2 or more"
    )
    assert (run / "hyperparams.yaml").read_text() == record
    (counter,) = run.glob("save/CKPT+*/counter.ckpt")
    counter.write_text("1")  # as if killed after epoch 1 of 2
    assert unfinished_training(str(run))[:2] == (1, 2)
    log = (run / "train_log.txt").read_text()
    ended = command("crab.bin.train", CONFIG, *run_options(data, run), *TRAIN_OPTS)
    assert ended.returncode == 0, ended.stderr
    assert "number_of_epochs 1, started with 2: the run ends at epoch 1" in ended.stderr
    assert "Optimizer step: 1 process(es) x batches of 4 x accumulation" in (run / "log.txt").read_text()
    assert unfinished_training(str(run)) is None and (run / "train_log.txt").read_text() == log


class FullDisk:
    """A file open for writing on a disk that fills up: its first write lands in part, then fails."""

    def __init__(self, file):
        self.file = file

    def write(self, text):
        self.file.write(text[: len(text) // 2])
        self.file.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()

    def __getattr__(self, name):
        return getattr(self.file, name)


def test_a_full_disk_when_training_resumes_keeps_the_runs_record(trained, data, tmp_path, monkeypatch):
    """Every training invocation rewrites the run's hyperparams.yaml: the disk filling up then
    must leave it whole, for stages 6-8 and the next resume, and say which file it could not write."""
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    record = (run / "hyperparams.yaml").read_text()
    real_open = builtins.open

    def open_on_full_disk(file, mode="r", *args, **kwargs):
        opened = real_open(file, mode, *args, **kwargs)
        writing = "w" in mode and "hyperparams.yaml" in os.path.basename(str(file))
        return FullDisk(opened) if writing else opened

    monkeypatch.setattr(builtins, "open", open_on_full_disk)
    full = re.escape(f"cannot write {run}/hyperparams.yaml (No space left on device)")
    with pytest.raises(SystemExit, match=full):
        in_recipe(train.main, [CONFIG, *run_options(data, run), *TRAIN_OPTS, "--noprogressbar"])
    monkeypatch.setattr(builtins, "open", real_open)
    assert (run / "hyperparams.yaml").read_text() == record
    assert evaluate_run(data, run, "after") == evaluate_run(data, trained, "before")


def test_a_run_reads_only_the_tokenizer_it_was_trained_with(data, tmp_path):
    """A fold's BPE tokenizer rebuilt (stage 3 again) maps text to other ids: evaluating,
    packaging or training the run on with it is one line naming the run's record."""
    from crab.tokenizer import build_bpe_tokenizer

    data_copy, run = tmp_path / "data", tmp_path / "run"
    shutil.copytree(data, data_copy)
    train_run(data_copy, run, *TRAIN_OPTS)
    assert len(json.loads((run / "text_source.json").read_text())["tokenizer_sha256"]) == 64
    shutil.rmtree(data_copy / "tokenizer")
    build_bpe_tokenizer(
        ["other words entirely", "a new vocabulary here"] * 4, str(data_copy / "tokenizer"), 300
    )
    evaluation = command(
        "crab.bin.evaluate", CONFIG, *run_options(data_copy, run), f"--test_manifest={data_copy}/test.json"
    )
    assert_one_line_error(evaluation, f"{run}/text_source.json: the run was trained with another tokenizer")
    training = command("crab.bin.train", CONFIG, *run_options(data_copy, run), *TRAIN_OPTS)
    # how to go on, not only what is wrong
    assert_one_line_error(
        training, "the run was trained with another tokenizer", "train a new run (the recipe"
    )


def test_training_resumed_on_changed_manifests_is_refused(data, tmp_path):
    """Stage 3 run again on other labels: the run's weights would train on other data."""
    data_copy, run = tmp_path / "data", tmp_path / "run"
    shutil.copytree(data, data_copy)
    train_run(data_copy, run, *TRAIN_OPTS)
    digests = json.loads((run / "text_source.json").read_text())["manifests_sha256"]
    assert sorted(digests) == ["train", "valid"] and all(len(d) == 64 for d in digests.values())
    manifest = json.loads((data_copy / "train.json").read_text())
    first = next(iter(manifest))
    manifest[first]["emo"] = next(c for c in CLASSES if c != manifest[first]["emo"])
    (data_copy / "train.json").write_text(json.dumps(manifest, indent=2))
    record = (run / "text_source.json").read_text()
    more = command(
        "crab.bin.train", CONFIG, *run_options(data_copy, run), *TRAIN_OPTS, "--number_of_epochs=2"
    )
    assert_one_line_error(
        more, f"{run}/text_source.json: {data_copy}/train.json (train) changed since the run"
    )
    assert (run / "text_source.json").read_text() == record
    shutil.rmtree(run / "save")  # no checkpoint: a new training, on the manifests as they are now
    train_run(data_copy, run, *TRAIN_OPTS)
    assert json.loads((run / "text_source.json").read_text())["manifests_sha256"]["train"] != digests["train"]


def test_package_builds_the_trained_model_and_records_its_max_duration(trained, data, tmp_path):
    in_recipe(package_cli.main, [CONFIG, *run_options(data, trained), "--out", str(tmp_path / "model")])
    packaged = (tmp_path / "model" / "hyperparams.yaml").read_text()
    assert "max_duration: 0.5  # seconds of audio kept per utterance, as in training" in packaged
    assert "hidden_dim: 16" in packaged
    meta = json.loads((tmp_path / "model" / "metadata.json").read_text())
    assert meta["training"]["output_folder"] == ".../" + "/".join(trained.parts[-3:])
    # the shape-changing key given again with another value: one line, not a size-mismatch wall
    result = command(
        "crab.bin.package",
        CONFIG,
        *run_options(data, trained),
        "--hidden_dim=32",
        "--out",
        tmp_path / "model2",
    )
    assert_one_line_error(result, "--hidden_dim=32 contradicts the run's hidden_dim: 16")
    assert not (tmp_path / "model2").exists()


def test_a_moved_run_is_evaluated_and_packaged_where_it_is(trained, data, tmp_path):
    moved = tmp_path / "copied" / "seed42"
    shutil.copytree(trained, moved, ignore=shutil.ignore_patterns("eval_*"))
    (ckpt,) = (moved / "save").glob("CKPT+*")
    ckpt.rename(moved / "hidden")
    with pytest.raises(SystemExit, match=f"No checkpoint with .* in {moved / 'save'}"):
        evaluate_run(data, moved, "moved")  # the checkpoint is looked for in the moved folder only
    (moved / "hidden").rename(ckpt)
    assert evaluate_run(data, moved, "moved") == evaluate_run(data, trained, "bare")
    assert not (trained / "eval_moved").exists()
    _, _, _, hparams = in_recipe(load_run, [CONFIG, *run_options(data, moved)])
    assert hparams["save_folder"] == str(moved / "save")
    assert str(hparams["checkpointer"].checkpoints_dir) == str(moved / "save")
    in_recipe(package_cli.main, [CONFIG, *run_options(data, moved), "--out", str(tmp_path / "model")])
    meta = json.loads((tmp_path / "model" / "metadata.json").read_text())
    assert meta["training"]["output_folder"] == ".../" + "/".join(moved.parts[-3:])
    # a folder name that YAML would not read back as the same text: one line, not a wrong path
    odd = tmp_path / "runs #2" / "seed42"
    shutil.copytree(trained, odd, ignore=shutil.ignore_patterns("eval_*"))
    with pytest.raises(
        ConfigError, match=r"the run cannot be read in .*runs #2/seed42 \(its output folder becomes"
    ):
        in_recipe(load_run, [CONFIG, *run_options(data, odd)])


def test_relocation_moves_whole_path_values_only():
    text = (
        "output_folder: exp/a   # the run\nsave_folder: exp/a/save\nq: 'exp/a/log.txt'\n"
        "l: [exp/a/x, exp/a]\nother: exp/ab/save\nabs: /data/exp/a/save\nnote: see exp/a\n"
    )
    assert relocated(text, "exp/a", "/new/run") == (
        "output_folder: /new/run   # the run\nsave_folder: /new/run/save\nq: '/new/run/log.txt'\n"
        "l: [/new/run/x, /new/run]\nother: exp/ab/save\nabs: /data/exp/a/save\nnote: see /new/run\n"
    )
    assert relocated("l: [x,exp/a/y]\n", "exp/a", "/r") == "l: [x,/r/y]\n"  # a flow list without spaces


def test_training_that_would_never_update_is_refused(data, tmp_path):
    out = tmp_path / "never_updated"
    result = command(
        "crab.bin.train", CONFIG, *run_options(data, out), "--batch_size=4", "--grad_accumulation_factor=4"
    )
    assert_one_line_error(result, "2 training batch(es) per epoch, fewer than grad_accumulation_factor 4")
    assert not list(out.glob("save/CKPT+*"))


def test_no_saved_configuration_says_to_train_first(data, tmp_path):
    result = command(
        "crab.bin.evaluate",
        CONFIG,
        *run_options(data, tmp_path / "never"),
        f"--test_manifest={data}/test.json",
    )
    assert_one_line_error(result, f"{tmp_path / 'never'}/hyperparams.yaml not found", "train it first")


def test_values_given_again_compare_by_meaning(tmp_path):
    text = (
        "lr: 0.001\nencoder_lr: 0.0001\nmax_duration: 12.0\nclasses: [a, b]\nfreeze: false\n"
        "data_folder: data/main\nloss: !new:collections.Counter\n  a: 1\n"
        "other: !new:collections.Counter\n  a: 2\n"
    )
    run_file = str(tmp_path / "hyperparams.yaml")
    check_against_run(
        run_file,
        text,
        "lr: 1e-3\nencoder_lr: !ref <lr> / 10\nmax_duration: 12\n"
        "classes: [a, b]\nfreeze: false\ndata_folder: ./data/main/\n",
        (),
    )
    with pytest.raises(ConfigError, match=r"--encoder_lr=!ref <lr> contradicts the run's encoder_lr: 0.0001"):
        check_against_run(run_file, text, "encoder_lr: !ref <lr>\n", ())
    with pytest.raises(ConfigError, match=r"--freeze=true contradicts the run's freeze: false"):
        check_against_run(run_file, text, "freeze: true\n", ())
    with pytest.raises(ConfigError, match=r"--loss=!ref <other> contradicts"):
        check_against_run(run_file, text, "loss: !ref <other>\n", ())
    check_against_run(run_file, text, "max_duration: 3.0\n", ("max_duration",))  # a stage key may differ
    assert same_value(True, True) and not same_value(True, 1) and not same_value([1], [1, 2])
    assert same_value({"a": 1}, {"a": 1.0}) and not same_value({"a": 1}, {"a": 1, "b": 2})
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(
        tmp_path / "real"
    )  # a data folder reached through a link is the same folder
    assert same_value(str(tmp_path / "link"), str(tmp_path / "real")) and not same_value(
        str(tmp_path), "data/main"
    )


@pytest.mark.parametrize(
    "name, main",
    [
        ("train", train.main),
        ("evaluate", evaluate.main),
        ("package", package_cli.main),
        ("embeddings", embeddings.main),
        ("extract_features", extract_features.main),
    ],
)
def test_help_gives_the_commands_usage(name, main, capsys):
    """SpeechBrain's own help named the script train.py, with none of the command's arguments."""
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    out = capsys.readouterr().out
    assert (
        exit_.value.code == 0 and f"python -m crab.bin.{name} hparams.yaml" in out and "train.py" not in out
    )


def write_run(run, text):
    """A run folder as training leaves it: its hyperparams.yaml and a checkpoint."""
    (run / "save" / "CKPT+2026-01-01+00-00-00+00").mkdir(parents=True)
    (run / "hyperparams.yaml").write_text(f"output_folder: {run}\n" + text)


def test_a_resumed_training_is_checked_against_the_run_but_where_things_are_may_change(tmp_path):
    """What check_resume compares, on a run written by hand: any setting of both files but
    those of RESUME_KEYS (and what is built from them); another number_of_epochs from the
    yaml alone (the run's own option forgotten) is an error, one given trains on."""
    from crab.runconfig import check_resume

    run = tmp_path / "run"
    settings = (
        "save_folder: !ref <output_folder>/save\ndata_root: /data\nnumber_of_epochs: 1\nlr: 0.001\n"
        "num_workers: 0\ngrad_accumulation_factor: 2\n"
        "loader: {num_workers: !ref <num_workers>, shuffle: true}\n"
    )
    write_run(run, settings)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"output_folder: {run}\n" + settings)
    save = str(run / "save")
    check_resume(str(recipe), "", str(run), save)
    check_resume(str(recipe), "num_workers: 4\ndata_root: /elsewhere\n", str(run), save)
    check_resume(str(recipe), "grad_accumulation_factor: 1\n", str(run), save)  # warned of by the brain
    check_resume(str(recipe), "lr: 0.001", str(run), save)  # no last newline, as parse_arguments gives it
    with pytest.raises(
        ConfigError, match=re.escape(f"other settings (lr: 0.001 then, 0.01 now; {run}/hyperparams")
    ):
        check_resume(str(recipe), "lr: 0.01\n", str(run), save)
    recipe.write_text(f"output_folder: {run}\n" + settings.replace("shuffle: true", "shuffle: false"))
    with pytest.raises(
        ConfigError,
        match=r"loader: \{num_workers: 0, shuffle: true\} then, \{num_workers: 0, shuffle: false\} now",
    ):
        check_resume(str(recipe), "", str(run), save)
    recipe.write_text(
        f"output_folder: {run}\n" + settings.replace("number_of_epochs: 1", "number_of_epochs: 10")
    )
    with pytest.raises(
        ConfigError, match=r"trained for 1 epochs .* gives 10: resume it with --number_of_epochs=1"
    ):
        check_resume(str(recipe), "", str(run), save)
    check_resume(str(recipe), "number_of_epochs: 1\n", str(run), save)
    check_resume(str(recipe), "number_of_epochs: 3\n", str(run), save)  # trains on, with a warning
    # a key of the recipe's yaml alone (a newer crab's) is no setting of the run
    recipe.write_text(f"output_folder: {run}\n" + settings + "new_option: 3\n")
    check_resume(str(recipe), "", str(run), save)
    # a training killed before its first checkpoint trained nothing: it starts over with other settings
    (run / "save" / "CKPT+2026-01-01+00-00-00+00").rmdir()
    check_resume(str(recipe), "lr: 0.01\n", str(run), save)


def test_an_override_of_a_key_the_run_lacks_is_named(tmp_path):
    run_file = str(tmp_path / "hyperparams.yaml")
    with pytest.raises(
        ConfigError, match=rf"override --new_option: the run's {run_file} has no key 'new_option'"
    ):
        check_against_run(run_file, "lr: 0.001\n", "new_option: 3\n", ())


def test_a_run_moved_to_a_folder_yaml_cannot_read_back_is_an_error(tmp_path):
    from crab.runconfig import run_text

    (tmp_path / "exp").mkdir()
    run_file = tmp_path / "exp" / "hyperparams.yaml"
    run_file.write_text("output_folder: /trained/here\nsave_folder: /trained/here/save\n")
    assert "save_folder: /moved/run/save" in run_text(str(run_file), "/moved/run")
    with pytest.raises(
        ConfigError, match=r"cannot be read in /moved/run #1 \(its output folder becomes /moved/run\)"
    ):
        run_text(str(run_file), "/moved/run #1")


def test_a_placeholder_without_value_is_one_line_naming_the_override():
    """A recipe yaml run by hand without one of its ``!PLACEHOLDER`` keys (``data_root``)
    names the key and the override that fills it, not hyperpyyaml's traceback."""
    from crab.runconfig import ConfigError, load_hparams

    config = os.path.join(ROOT, "egs", "TEMPLATE", "conf", "crab_tiny.yaml")
    with pytest.raises(
        ConfigError,
        match=r"crab_tiny\.yaml: data_root is a !PLACEHOLDER with no value: give --data_root=VALUE",
    ):
        load_hparams(config, {})
    # so too through a command's own parsing (a training's seed check reads the yaml first)
    from crab.experiment import parse_and_load

    with pytest.raises(ConfigError, match=r"data_root is a !PLACEHOLDER with no value: give --data_root"):
        parse_and_load([config, "--output_folder=/nowhere/run"], record_run_options=True)
