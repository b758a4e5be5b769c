"""The recipe shell explains itself: --help before anything is installed, validated
options, one-line errors, the user's relative paths, setup.sh and sweep.sh options."""

import glob
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys

import pytest
import yaml

from tests.conftest import ROOT

SER = os.path.join(ROOT, "egs", "TEMPLATE", "ser.sh")


def ser_options():
    """name -> default, from the options block of ser.sh."""
    with open(SER, encoding="utf-8") as f:
        block = f.read().split("# ---- options")[1].split("# ---- end of options")[0]
    return {name: value.strip('"') for name, value in re.findall(r"^([a-z_]+)=(\S*)", block, re.MULTILINE)}


def copy_shell_parts(clone):
    """The repository's shell parts copied into ``clone`` without tools/venv: nothing installed."""
    for part in ("utils", os.path.join("egs", "TEMPLATE"), os.path.join("egs", "mini")):
        shutil.copytree(
            os.path.join(ROOT, part),
            clone / part,
            symlinks=True,
            ignore=shutil.ignore_patterns("data", "exp"),
        )
    return clone


@pytest.fixture
def bare_clone(tmp_path):
    return copy_shell_parts(tmp_path)


def run(*command, cwd=None, env=None):
    return subprocess.run(
        ["bash", *command],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def test_help_lists_every_option_without_a_venv(bare_clone):
    result = run(str(bare_clone / "egs" / "mini" / "run.sh"), "--help")
    assert result.returncode == 0, result.stderr
    assert not (bare_clone / "tools").exists() and "No environment" not in result.stderr
    options = ser_options()
    assert len(options) >= 25
    for name, default in options.items():
        assert re.search(rf"^  --{name} +\[{re.escape(default)}\] +\S", result.stdout, re.MULTILINE), name
    assert "5  train" in result.stdout and "8  package" in result.stdout  # the stages
    assert result.stdout.startswith(f"Usage: {bare_clone}/egs/mini/run.sh ")
    # the recipe's own settings, which replace the defaults (its config, classes, BPE tokenizer)
    given = result.stdout.split("replace the defaults above")[1]
    assert "--config conf/crab_tiny.yaml" in given and "--bpe_vocab_size 1000" in given


def test_help_names_a_run_sh_whose_path_has_spaces(tmp_path):
    clone = copy_shell_parts(tmp_path / "My Projects" / "crab")
    result = run(str(clone / "egs" / "mini" / "run.sh"), "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"Usage: '{clone}/egs/mini/run.sh' [--option value ...]"), result.stdout[
        :200
    ]


def stand_in_venv(clone):
    """``clone``'s tools/venv with a stand-in python: ``python -c CODE`` runs in this python (ser.sh
    reads its shell-word options so), any other call only records its arguments (``calls``), and
    fails with status 3 where one of them is the environment's STAND_IN_FAIL."""
    venv_bin = clone / "tools" / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "activate").write_text(f'VIRTUAL_ENV="{venv_bin.parent}"\nPATH="{venv_bin}:$PATH"\n')
    (venv_bin / "python").write_text(
        f'#!/bin/sh\n[ "$1" != -c ] || exec {shlex.quote(sys.executable)} "$@"\n'
        f'printf "%s\\n" "$ python" "$@" >> "{clone}/argv"\n'
        'for word; do [ -z "${STAND_IN_FAIL-}" ] || [ "$word" != "$STAND_IN_FAIL" ] || exit 3; done\n'
        '[ -z "${TORCH_ELASTIC_SHUTDOWN_TIMEOUT+x}" ] || '
        f'echo "$2 $TORCH_ELASTIC_SHUTDOWN_TIMEOUT" >> "{clone}/shutdown_timeouts"\n'
    )
    (venv_bin / "python").chmod(0o755)


def calls(clone):
    """The arguments of each call of the stand-in python of ``clone`` (``stand_in_venv``)."""
    argv = (clone / "argv").read_text().split("$ python\n")[1:] if (clone / "argv").exists() else []
    return [call.splitlines() for call in argv]


def holds(call, words):
    """Whether ``words`` are in ``call`` (a list of arguments), one after the other."""
    return any(call[i : i + len(words)] == words for i in range(len(call)))


def test_run_options_reach_python_as_given(bare_clone):
    """A folder with two spaces in a row: ser.sh passes each option of a run as one word."""
    stand_in_venv(bare_clone)
    corpus, exp_dir = bare_clone / "my  corpus", bare_clone / "x  y" / "exp"
    corpus.mkdir()
    options = ("--stage", "8", "--data_root", str(corpus), "--exp_dir", str(exp_dir))
    result = run(str(bare_clone / "egs" / "mini" / "run.sh"), *options)
    assert result.returncode == 0, result.stderr
    argv = [word for call in calls(bare_clone) for word in call]
    assert f"--data_root={corpus}" in argv and f"--output_folder={exp_dir}/crab_tiny/main/seed42" in argv


def test_classes_reach_the_yaml_as_strings(bare_clone):
    """Labels such as 0 or null, unquoted in --classes=[...], were read by the yaml as numbers or
    null, which no label of the manifests equals."""
    stand_in_venv(bare_clone)
    (bare_clone / "corpus").mkdir()
    options = ("--stage", "8", "--data_root", str(bare_clone / "corpus"), "--classes", "0,1.5,null,it's")
    result = run(str(bare_clone / "egs" / "mini" / "run.sh"), *options)
    assert result.returncode == 0, result.stderr
    given = [
        word.split("=", 1)[1] for call in calls(bare_clone) for word in call if word.startswith("--classes=")
    ]
    assert given and all(yaml.safe_load(value) == ["0", "1.5", "null", "it's"] for value in given), given


def test_asr_opts_are_shell_words(bare_clone):
    stand_in_venv(bare_clone)
    (bare_clone / "corpus").mkdir()
    options = ["--stage", "2", "--stop_stage", "2", "--data_root", str(bare_clone / "corpus")]
    options += ["--asr_model", "/models/whisper", "--asr_opts", "--language 'old english' --max_new_tokens 8"]
    result = run(str(bare_clone / "egs" / "mini" / "run.sh"), *options)
    assert result.returncode == 0, result.stderr
    transcribe = [call for call in calls(bare_clone) if call[:2] == ["-m", "crab.bin.transcribe"]]
    assert len(transcribe) == 3  # train, valid, test
    words = ["--language", "old english", "--max_new_tokens", "8"]
    assert all(holds(call, words) for call in transcribe), transcribe


def stage_5_options(clone):
    """run.sh's options for stage 5 alone in ``clone`` (stand-in python, manifests, one run)."""
    stand_in_venv(clone)
    (clone / "corpus").mkdir()
    for split in ("train", "valid"):
        (clone / "data" / "main").mkdir(parents=True, exist_ok=True)
        (clone / "data" / "main" / f"{split}.json").write_text("{}")
    run_dir = clone / "exp" / "crab_tiny" / "main" / "seed42"
    run_dir.mkdir(parents=True)
    (run_dir / "train_log.txt").write_text("epoch: 1\n")
    options = ["--stage", "5", "--stop_stage", "5", "--data_root", str(clone / "corpus"), "--nproc", "2"]
    return options + ["--data_dir", str(clone / "data"), "--exp_dir", str(clone / "exp")]


@pytest.mark.parametrize("given, granted", [(None, "300"), ("900", "900")])
def test_torchrun_gives_its_processes_time_to_save_when_stopped(bare_clone, monkeypatch, given, granted):
    """Stopped (a time limit's SIGTERM, scancel), torchrun passes the signal on and kills its
    processes TORCH_ELASTIC_SHUTDOWN_TIMEOUT seconds later (30 by default; torch 2.12 on): a
    training saving its step at the paper's size needs more. The user's value is kept."""
    monkeypatch.delenv("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", raising=False)
    env = {"TORCH_ELASTIC_SHUTDOWN_TIMEOUT": given} if given else {}
    result = run(str(bare_clone / "egs" / "mini" / "run.sh"), *stage_5_options(bare_clone), env=env)
    assert result.returncode == 0, result.stderr
    seen = (bare_clone / "shutdown_timeouts").read_text().splitlines()
    assert [line for line in seen if line.startswith("torch.distributed.run ")] == [
        f"torch.distributed.run {granted}"
    ]
    assert given or len(seen) == 1  # the default is torchrun's alone


@pytest.mark.parametrize(
    "torchrun_opts, node_rank",
    [
        ("--nnodes 2 --node_rank=1 --log_dir '/scratch/my logs'", 1),
        ("--nnodes 2 --node-rank 1 --log_dir '/scratch/my logs'", 1),
        ("--nnodes 2 --node_rank 0 --log_dir '/scratch/my logs'", 0),
        ("--log_dir '/scratch/my logs'", 0),
    ],
)
def test_torchrun_opts_are_shell_words_and_tell_the_node_rank(bare_clone, torchrun_opts, node_rank):
    """Stage 5 under torchrun, the options as given; the node of rank 0 records the run."""
    options = stage_5_options(bare_clone)
    result = run(str(bare_clone / "egs" / "mini" / "run.sh"), *options, "--torchrun_opts", torchrun_opts)
    assert result.returncode == 0, result.stderr
    launched = [call for call in calls(bare_clone) if call[:2] == ["-m", "torch.distributed.run"]]
    assert len(launched) == 1 and holds(
        launched[0], ["--log_dir", "/scratch/my logs", "-m", "crab.bin.train"]
    )
    recorded = [call for call in calls(bare_clone) if call[:3] == ["-m", "crab.report", "record_training"]]
    assert len(recorded) == (node_rank == 0), calls(bare_clone)


@pytest.mark.parametrize("torchrun_opts", ["--nnodes 2 --node_rank --master_addr HOST", "--node_rank=x"])
def test_a_node_rank_that_is_not_a_number_is_an_error(bare_clone, torchrun_opts):
    stand_in_venv(bare_clone)
    (bare_clone / "corpus").mkdir()
    options = ["--data_root", str(bare_clone / "corpus"), "--nproc", "2", "--torchrun_opts", torchrun_opts]
    result = run(str(bare_clone / "egs" / "mini" / "run.sh"), *options)
    assert result.returncode == 1 and "--torchrun_opts: --node_rank '" in result.stderr, result.stderr
    assert "is not a number" in result.stderr and len(result.stderr.splitlines()) == 1
    assert not [call for call in calls(bare_clone) if "crab.bin" in call[1]]  # no stage ran


@pytest.mark.parametrize(
    "args, message",
    [
        (["--stage", "three"], "--stage must be a non-negative integer, got 'three'"),
        (["--stop_stage=-1"], "--stop_stage must be a non-negative integer, got '-1'"),
        (["--ngpu", "1.5"], "--ngpu must be a non-negative integer, got '1.5'"),
        (["--embeddings", "yes"], "--embeddings must be true or false, got 'yes'"),
        (["--text_only", "1"], "--text_only must be true or false, got '1'"),
        (["--policy", "ignore"], "--policy must be one of: error skip; got 'ignore'"),
        (["--text_source", "whisper"], "--text_source must be one of: gold asr; got 'whisper'"),
        (["--no_such_option", "1"], "unknown option --no_such_option"),
        (["--nj", "0"], "--nj must be at least 1"),
        (["--seeds", "42 42"], "--seeds gives 42 twice (its runs would count twice)"),
        (
            ["--seeds", "42 042"],
            "--seeds must be integers from 0 to 4294967295 without leading zeros, got '042'",
        ),
        (["--seeds=4294967296"], "without leading zeros, got '4294967296'"),  # seed_everything: seed 0
        (["--seeds=-1"], "without leading zeros, got '-1'"),
        (["--seeds", " "], "--seeds names no seed"),
        (["--seeds", "\t"], "--seeds names no seed"),
        (["--seeds", "*"], "without leading zeros, got '*'"),  # a value, not the recipe's file names
        (["--seeds", "42\n42"], "--seeds gives 42 twice"),
        (["--folds", "f1 f2 f1"], "--folds gives f1 twice"),
    ],
)
def test_bad_option_values_are_one_line_errors(bare_clone, args, message):
    result = run(str(bare_clone / "egs" / "mini" / "run.sh"), *args)
    assert result.returncode != 0
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


# the scripts a user starts (and utils/path.sh, which a user sources)
BASH_ENTRY_POINTS = sorted(
    {
        os.path.relpath(path, ROOT)
        for pattern in ("egs/*/run.sh", "egs/TEMPLATE/*.sh", "egs/*/local/*.sh", "tools/*.sh")
        for path in glob.glob(os.path.join(ROOT, pattern))
        if not path.endswith(("db.sh", "path.sh"))
    }
)


# the stage scripts ser.sh runs from the recipe directory
STAGE_SCRIPTS = sorted(
    os.path.relpath(path, ROOT)
    for name in ("data.sh", "corpus.sh")
    for path in glob.glob(os.path.join(ROOT, "egs", "*", "local", name))
)


@pytest.mark.parametrize("script", STAGE_SCRIPTS)
def test_a_stage_script_run_from_elsewhere_says_where_to_run_it(script):
    """From the repository root a stage script would read the root's db.sh and utils/ and
    write data/ there; it stops with one line naming its recipe directory instead."""
    recipe = os.path.dirname(os.path.dirname(os.path.join(ROOT, script)))
    result = subprocess.run(["bash", script, "--help"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 1 and result.stdout == ""
    where = os.path.realpath(recipe)
    assert (
        result.stderr
        == f"{script}: run it from its recipe directory, as the recipe's run.sh does: cd {where}\n"
    )
    local = os.path.relpath(script, os.path.relpath(recipe, ROOT))
    result = subprocess.run(["bash", local, "--help"], capture_output=True, text=True, cwd=recipe, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"Usage: {local} ")


@pytest.mark.skipif(shutil.which("dash") is None, reason="needs dash, a POSIX sh that is not bash")
@pytest.mark.parametrize("script", BASH_ENTRY_POINTS)
def test_run_by_sh_a_script_says_it_needs_bash(script):
    result = subprocess.run(["dash", script, "--help"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == f"{script} needs bash 4.4 or newer: run it as bash {script}\n"
    # an older bash (CentOS 7's 4.2, macOS's 3.2) is refused by name: its "${a[@]}" of an empty
    # array is an "unbound variable" under set -u, which the scripts use
    old = subprocess.run(
        ["dash", script, "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        env={**os.environ, "BASH_VERSION": "4.2.46(2)-release"},
    )
    assert old.returncode == 1 and old.stdout == ""
    assert (
        old.stderr
        == f"{script} needs bash 4.4 or newer (this is bash 4.2.46(2)-release): run it as bash {script}\n"
    )


@pytest.mark.skipif(shutil.which("dash") is None, reason="needs dash, a POSIX sh that is not bash")
@pytest.mark.parametrize(
    "version, passes",
    [("3.2.57(1)-release", False), ("4.3.48", False), ("4.4.20", True), ("5.2.15", True), ("10.0", True)],
)
def test_the_bash_version_check(version, passes):
    with open(os.path.join(ROOT, "egs", "TEMPLATE", "run.sh")) as f:
        [guard] = [line for line in f if "needs bash" in line]
    result = subprocess.run(
        ["dash", "-c", f"BASH_VERSION='{version}'\n{guard}echo passed"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.stdout == "passed\n") == passes and (result.returncode == 0) == passes, result.stderr


@pytest.mark.skipif(shutil.which("dash") is None, reason="needs dash, a POSIX sh that is not bash")
def test_path_sh_sourced_by_sh_says_it_needs_bash():
    result = subprocess.run(
        ["dash", "-c", ". utils/path.sh"], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert result.returncode == 1 and "utils/path.sh needs bash" in result.stderr
    assert "No environment" not in result.stderr


def test_path_sh_in_a_moved_checkout_says_to_make_the_venv_again(tmp_path):
    checkout = tmp_path / "moved"  # mv old moved: the venv's activate still names old/
    (checkout / "utils").mkdir(parents=True)
    shutil.copy(os.path.join(ROOT, "utils", "path.sh"), checkout / "utils" / "path.sh")
    (checkout / "tools" / "venv" / "bin").mkdir(parents=True)
    (checkout / "tools" / "venv" / "bin" / "activate").write_text(
        f'VIRTUAL_ENV="{tmp_path}/old/tools/venv"\nexport VIRTUAL_ENV\nPATH="$VIRTUAL_ENV/bin:$PATH"\n'
    )
    script = f". {shlex.quote(str(checkout))}/utils/path.sh && echo activated"
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert result.returncode == 1 and "activated" not in result.stdout
    assert (
        f"{checkout}/tools/venv was made in {tmp_path}/old/tools/venv (the checkout was moved or copied)"
        in result.stderr
    )
    assert f"run {checkout}/tools/install.sh, which makes it again here" in result.stderr


def test_path_sh_imports_this_checkouts_crab_before_the_users_pythonpath(tmp_path):
    other = tmp_path / "other_checkout"  # another checkout of crab on the user's PYTHONPATH
    (other / "crab").mkdir(parents=True)
    (other / "crab" / "__init__.py").write_text("")
    script = f". {shlex.quote(ROOT)}/utils/path.sh && python -c 'import crab; print(crab.__file__)'"
    result = subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(other)},
        timeout=60,
    )
    assert result.stdout == os.path.join(ROOT, "crab", "__init__.py") + "\n", result.stderr


def run_mini(tmp_path, *options):
    """The mini recipe's run.sh with its corpus, data and experiments under ``tmp_path``."""
    folders = (
        "--data_root",
        str(tmp_path),
        "--data_dir",
        str(tmp_path / "data"),
        "--exp_dir",
        str(tmp_path / "exp"),
    )
    return run(os.path.join(ROOT, "egs", "mini", "run.sh"), *options, *folders)


def test_a_launcher_that_is_not_found_stops_before_the_first_stage(tmp_path):
    result = run_mini(tmp_path, "--stage", "1", "--cmd", "utils/nosuch.sh --time 1:00")
    assert result.returncode == 1 and "no program utils/nosuch.sh" in result.stderr
    assert "Stage 1" not in result.stdout + result.stderr


def test_stage_5_before_stage_3_names_the_missing_manifest(tmp_path):
    result = run_mini(tmp_path, "--stage", "5")
    assert result.returncode != 0
    assert (
        f"{tmp_path}/data/main/train.json not found: "
        "stage 5 reads the manifests of stage 3 (run --stage 3 first)" in result.stdout
    )
    assert "Traceback" not in result.stdout + result.stderr


def test_a_mistyped_fold_names_the_folds_there(tmp_path):
    (tmp_path / "data" / "main").mkdir(parents=True)
    (tmp_path / "data" / "main" / "test.json").write_text("{}")
    result = run_mini(tmp_path, "--stage", "6", "--folds", "mian")
    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr
    assert f"no fold mian in {tmp_path}/data; the folds with manifests there: main (--folds" in result.stdout


def test_a_stage_after_the_stop_stage_is_an_error(tmp_path):
    result = run_mini(tmp_path, "--stage", "5", "--stop_stage", "3")
    assert result.returncode == 1 and "--stage 5 comes after --stop_stage 3: no stage to run" in result.stderr


def test_a_later_stage_without_runs_of_its_tag_notes_the_tags_there(tmp_path):
    (tmp_path / "exp" / "crab_tiny").mkdir(parents=True)
    result = run_mini(tmp_path, "--stage", "6", "--tag", "mlcs")
    assert result.returncode != 0 and "Traceback" not in result.stdout + result.stderr
    assert f"no runs in {tmp_path}/exp/mlcs (tag mlcs, from --tag" in result.stdout
    assert f"{tmp_path}/exp holds: crab_tiny" in result.stdout


def interrupted_run(run, trained, epochs, end_of_epoch=True):
    """A run folder as a training killed after ``trained`` of ``epochs`` epochs leaves it."""
    checkpoint = run / "save" / "CKPT+2026-01-01+00-00-00+00"
    checkpoint.mkdir(parents=True)
    (run / "hyperparams.yaml").write_text(
        f"seed: 42\nnumber_of_epochs: {epochs}\nmodel: !new:crab.model.Crab\n"
    )
    (checkpoint / "CKPT.yaml").write_text(f"end-of-epoch: {str(end_of_epoch).lower()}\nunixtime: 1.0\n")
    (checkpoint / "counter.ckpt").write_text(str(trained if end_of_epoch else trained + 1))


@pytest.mark.parametrize("stage", ["6", "7", "8"])
def test_a_later_stage_of_an_interrupted_training_names_the_run(tmp_path, stage):
    (tmp_path / "data" / "main").mkdir(parents=True)
    (tmp_path / "data" / "main" / "test.json").write_text("{}")
    run = tmp_path / "exp" / "crab_tiny" / "main" / "seed42"
    interrupted_run(run, 1, 2)
    result = run_mini(tmp_path, "--stage", stage, "--stop_stage", stage, "--results_md", "")  # alone
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in output
    assert (
        f"stage {stage} needs finished runs, and training stopped early in: {tmp_path}/exp/crab_tiny"
        in output
    )
    assert "seed42: trained 1 of its 2 epochs (latest checkpoint " in output and "rerun stage 5" in output
    assert (
        "or end one where it stands, at the epochs it has trained: run.sh --stage 5 --stop_stage 5 "
        '--folds main --seeds 42 --train_opts "<its options> --number_of_epochs=1"' in output
    )
    assert sorted(p.name for p in run.iterdir()) == ["hyperparams.yaml", "save"]  # nothing evaluated


@pytest.mark.parametrize("holder", ["running", "ended"])
def test_a_later_stage_of_a_run_that_trains_now_says_so(tmp_path, holder):
    """Stage 6 run beside a stage 5 that still trains: "stopped early" and "rerun stage 5" point
    the wrong way (a second training is refused); a holder that ended (killed) left its line."""
    (tmp_path / "data" / "main").mkdir(parents=True)
    (tmp_path / "data" / "main" / "test.json").write_text("{}")
    run = tmp_path / "exp" / "crab_tiny" / "main" / "seed42"
    interrupted_run(run, 1, 3)
    pid = os.getpid()  # this test runs
    if holder == "ended":
        done = subprocess.Popen(["true"])
        done.wait()
        pid = done.pid
    line = f"pid {pid} on {socket.gethostname()} since 2026-01-01 00:00:00 +0000: python -m crab.bin.train x"
    (run / ".lock").write_text(line + "\n")
    result = run_mini(tmp_path, "--stage", "6", "--stop_stage", "6", "--results_md", "")
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in output
    if holder == "running":
        assert (
            f"stage 6 needs finished runs, and these are still training: {run}: 1 of its 3 epochs so far, "
            f"trained by {line}. Run it once their training has ended" in output
        )
    else:
        assert "training stopped early in" in output and "still training" not in output


def test_unfinished_training_is_told_by_the_latest_checkpoint(tmp_path):
    from crab.report import unfinished_training

    interrupted_run(tmp_path / "mid", 1, 3, end_of_epoch=False)  # killed in epoch 2
    assert unfinished_training(str(tmp_path / "mid"))[:2] == (1, 3)
    interrupted_run(tmp_path / "done", 3, 3)
    assert unfinished_training(str(tmp_path / "done")) is None
    (tmp_path / "none").mkdir()  # no checkpoint, no hyperparams.yaml: nothing to tell
    assert unfinished_training(str(tmp_path / "none")) is None


def test_the_first_log_line_is_the_command_line_to_paste_back(tmp_path):
    result = run_mini(tmp_path, "--stage", "6", "--train_opts", "--alpha=1.5 --name='a b'")
    assert result.returncode != 0  # no manifests: the command line was logged before
    first = result.stdout.splitlines()[0]
    assert " ./ser.sh --config conf/crab_tiny.yaml --classes angry,happy,neutral,sad --data_root " in first
    quoted = "'--alpha=1.5 --name='\\''a b'\\'''"  # as bash's ${word@Q}
    assert first.endswith(
        f" --stage 6 --train_opts {quoted} --data_root {tmp_path} --data_dir {tmp_path}/data "
        f"--exp_dir {tmp_path}/exp"
    )
    words = first.split(") ", 1)[1]  # after log's time stamp and caller
    pasted = subprocess.run(["bash", "-c", f'printf "%s\\n" {words}'], capture_output=True, text=True)
    assert "--alpha=1.5 --name='a b'" in pasted.stdout.splitlines()


def test_backslashes_are_logged_as_typed(tmp_path):
    result = run_mini(tmp_path, "--stage", "6", "--tag", "C:\\new\\corpus")  # \c would end echo -e's output
    assert result.returncode != 0
    first = result.stdout.splitlines()[0]
    folders = f"--data_root {tmp_path} --data_dir {tmp_path}/data --exp_dir {tmp_path}/exp"
    assert first.endswith(f"--stage 6 --tag 'C:\\new\\corpus' {folders}")


@pytest.mark.parametrize("locale", ["C", "C.UTF-8"])
def test_a_non_ascii_path_is_logged_readable_in_any_locale(locale):
    # in the C locale ${word@Q} wrote ü as $'\\303\\274' (a docker shell, cron)
    words = ["/home/jürgen/My Projects/crab/run.sh", "it's", "tab\there"]
    script = '. utils/log.sh; quote_words "$@"'
    env = {**os.environ, "LC_ALL": locale}
    line = subprocess.run(
        ["bash", "-c", script, "bash", *words], capture_output=True, text=True, cwd=ROOT, env=env
    ).stdout
    assert line.startswith("'/home/jürgen/My Projects/crab/run.sh' 'it'\\''s' $'tab\\there'"), line
    pasted = subprocess.run(["bash", "-c", f'printf "%s\\n" {line}'], capture_output=True, text=True, env=env)
    assert pasted.stdout.splitlines() == words


def test_a_mistyped_fold_names_the_folds_of_a_data_dir_with_spaces(tmp_path):
    data = tmp_path / "My data"
    (data / "main").mkdir(parents=True)
    (data / "main" / "test.json").write_text("{}")
    result = run(
        os.path.join(ROOT, "egs", "mini", "run.sh"),
        *("--stage", "6", "--folds", "mian", "--data_root", str(tmp_path), "--data_dir", str(data)),
        *("--exp_dir", str(tmp_path / "exp")),
    )
    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr
    assert f"no fold mian in {data}; the folds with manifests there: main (--folds" in result.stdout


def test_stage_3_prints_one_count_table_per_fold(tmp_path):
    for fold, split in [(f, s) for f in ("main", "other") for s in ("train", "valid", "test")]:
        data = tmp_path / "data" / fold / split  # text only: no audio needed
        data.mkdir(parents=True)
        utts = [f"{fold}_{split}_{emotion}" for emotion in ("angry", "sad")]
        for name, value in (
            ("utt2emo", lambda u: u.split("_")[-1]),
            ("utt2spk", lambda u: u),
            ("text", lambda u: "a transcript"),
        ):
            (data / name).write_text("".join(f"{u} {value(u)}\n" for u in utts))
    result = run_mini(tmp_path, "--stage", "3", "--stop_stage", "3", "--text_only", "true",
                      "--bpe_vocab_size", "0", "--folds", "main other", "--classes", "angry,sad")  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = result.stdout.splitlines()
    tables = [lines[i : i + 5] for i, line in enumerate(lines) if line.startswith("fold ")]
    assert [table[0] for table in tables] == ["fold main:", "fold other:"]
    for table in tables:  # the column names once, then a row per split
        assert table[1].split() == ["split", "angry", "sad", "total"]
        assert [row.split() for row in table[2:]] == [[s, "1", "1", "2"] for s in ("train", "valid", "test")]


def test_corpus_variable_relative_to_the_users_directory(tmp_path):
    (tmp_path / "here").mkdir()
    run_sh = os.path.join(ROOT, "egs", "emodb", "run.sh")
    result = run(run_sh, "--stage", "7", cwd=tmp_path, env={"EMODB": "here/missing"})
    assert result.returncode != 0
    assert f"data_root {tmp_path}/here/missing is not a directory: set EMODB in db.sh" in result.stderr
    empty = run(run_sh, cwd=tmp_path, env={"EMODB": ""})
    assert empty.returncode != 0 and "EMODB is empty: set EMODB in db.sh (or export it)" in empty.stderr


def test_a_relative_config_is_read_in_the_recipe_else_in_the_users_directory(tmp_path):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "conf").mkdir()
    text_only = "modality: text\n"  # what stage 3 reads of the config, and says
    (tmp_path / "conf" / "mine.yaml").write_text(text_only)
    (tmp_path / "conf" / "crab_tiny.yaml").write_text(text_only)  # a namesake of the recipe's
    run_sh = os.path.join(ROOT, "egs", "emodb", "run.sh")

    def stage_3(config):
        result = run(run_sh, "--stage", "3", "--stop_stage", "3", "--config", config, cwd=tmp_path,
                     env={"EMODB": "corpus"})  # fmt: skip
        return result.stderr + result.stdout

    assert "modality: text" in stage_3("conf/mine.yaml")
    assert "modality: bimodal" in stage_3("conf/crab_tiny.yaml")  # the recipe's own first
    recipe_dir = os.path.join(ROOT, "egs", "emodb")
    missing = stage_3("conf/nosuch.yaml")
    assert f"--config conf/nosuch.yaml: no such file in {recipe_dir} or {tmp_path}" in missing


def test_sweep_needs_a_setting_and_checks_names(tmp_path):
    sweep = os.path.join(ROOT, "egs", "mini", "sweep.sh")
    result = run(sweep)
    assert result.returncode != 0 and "give --ablations" in result.stderr
    result = run(sweep, "--ablations", "ce_only no_such_ablation", "--exp_dir", str(tmp_path / "exp"))
    assert result.returncode != 0 and "no ablation 'no_such_ablation'" in result.stdout + result.stderr
    assert not (tmp_path / "exp").exists()  # nothing trained
    result = run(sweep, "--help")
    assert result.returncode == 0 and "--alphas" in result.stdout and "--settings_nj" in result.stdout
    # its options as run.sh --help lists its own: name, default, meaning
    assert "Options (default in brackets):" in result.stdout
    assert "  --exp_dir         [exp]   experiments" in result.stdout.splitlines()
    result = run(
        sweep, "--ablations", "ce_only mlcs", "--settings_nj", "2", "--ngpu=1", "--exp_dir", str(tmp_path)
    )
    assert result.returncode == 1 and "the settings would share the GPUs; give --cmd" in result.stderr


def test_sweep_by_a_relative_path_prints_its_help_and_finds_the_templates_table(tmp_path):
    # from the repository root, as egs/mini/run.sh is run: sweep.sh enters the recipe first
    result = run(os.path.join("egs", "mini", "sweep.sh"), "--help", cwd=ROOT)
    assert result.returncode == 0 and "--alphas" in result.stdout, result.stderr
    result = run(
        os.path.join("egs", "mini", "sweep.sh"),
        "--ablations",
        "no_such_ablation",
        "--exp_dir",
        str(tmp_path),
        cwd=ROOT,
    )
    table = os.path.join(ROOT, "egs", "TEMPLATE", "conf", "ablations.txt")
    assert (
        result.returncode != 0
        and f"no ablation 'no_such_ablation' in {table}" in result.stdout + result.stderr
    )


@pytest.mark.parametrize(
    "given, message",
    [
        (("--alphas", "0.5 abc"), "--alphas: 'abc' is not a number"),
        (("--alphas", "1e-1"), "--alphas: '1e-1' is not a number"),
        (("--alphas", "-1"), "--alphas: '-1' is not a number"),
        (("--alphas", "1 0.5 1.0"), "--alphas gives alpha 1 twice"),
        (("--ablations", "ce_only mlcs ce_only"), "--ablations names ce_only twice"),
        (
            ("--alphas", "0.5", "--exp_dir", "--stage"),
            "option --exp_dir needs a value: it is followed by the option --stage",
        ),
    ],
)
def test_sweep_refuses_bad_alphas_and_repeated_settings_before_training(tmp_path, given, message):
    """An alpha that is not a plain number would train every setting before it, then stop the
    table (its experiment alpha<a> names no alpha); a setting given twice would be a row twice."""
    sweep = os.path.join(ROOT, "egs", "mini", "sweep.sh")
    result = run(sweep, *given, "--exp_dir", str(tmp_path / "exp"), "--stage", "7")  # never trains
    assert result.returncode == 1 and message in result.stderr, result.stderr
    assert not (tmp_path / "exp").exists()  # nothing trained


def test_sweep_refuses_an_alpha_in_train_opts_with_alphas(tmp_path):
    """Each alpha setting's --alpha comes after --train_opts: an --alpha there would train none of
    them, yet the alpha table's title would name it."""
    sweep = os.path.join(ROOT, "egs", "mini", "sweep.sh")
    exp = tmp_path / "exp"
    result = run(sweep, "--alphas", "0.5 2", "--train_opts", "--lr=0.01 --alpha=3", "--exp_dir", str(exp),
                 "--stage", "7")  # fmt: skip
    assert result.returncode == 1 and "--train_opts gives --alpha=3, and --alphas sets alpha" in result.stderr
    assert not exp.exists()  # nothing trained


@pytest.mark.parametrize(
    "name, alphas", [("ce_only", "0.5"), ("alpha0.5", "0.5"), ("alpha0.5", ".50"), ("alpha2", "2.0")]
)
def test_sweep_refuses_a_tuning_file_named_as_an_alpha_setting(tmp_path, name, alphas):
    """The alpha sweep's experiments are exp/ce_only/ and exp/alpha<a>/, <a> written one way
    (2.0 is alpha2): a tuning file of that name would train into the same folder."""
    tuning = tmp_path / f"{name}.yaml"
    tuning.write_text("config: conf/crab_tiny.yaml\noverrides:\n  hidden_dim: 8\n")
    sweep = os.path.join(ROOT, "egs", "mini", "sweep.sh")
    exp = tmp_path / "exp"
    result = run(sweep, "--alphas", alphas, "--tunings", str(tuning), "--exp_dir", str(exp), "--stage", "7")
    assert result.returncode == 1 and f"two settings are named {name} (exp/{name}/)" in result.stderr
    assert not exp.exists()


@pytest.mark.parametrize("option", ["--tag", "--ablation"])
def test_sweep_refuses_run_options_that_each_setting_sets(tmp_path, option):
    """run.sh takes each setting's --tag and --ablation after the forwarded ones: a --tag would be
    ignored, an --ablation applied to the alpha settings alone (not their CE-only baseline)."""
    sweep = os.path.join(ROOT, "egs", "mini", "sweep.sh")
    result = run(sweep, "--alphas", "0.5", option, "mlcs_supcon", "--exp_dir", str(tmp_path), "--stage", "7")
    assert result.returncode == 1 and f"{option} is not a sweep's" in result.stderr, result.stderr


def test_sweep_refuses_train_opts_that_undo_an_ablation_before_training(tmp_path):
    """--train_opts come after a setting's ablation: one giving another value of its key would
    make the CE-only baseline of the alpha sweep, or an ablation's row, another setting."""
    sweep = os.path.join(ROOT, "egs", "mini", "sweep.sh")
    exp = str(tmp_path / "exp")
    result = run(
        sweep, "--alphas", "0.5", "--train_opts", "--leg_names=[fusion]", "--exp_dir", exp, "--stage", "7"
    )
    assert result.returncode == 1 and (
        "--train_opts gives --leg_names=[fusion], and ablation ce_only is --leg_names=[]: its row would "
        "not be ce_only" in result.stderr
    ), result.stderr
    result = run(
        sweep,
        "--ablations",
        "mlcs mlcs_no_hier_lr",
        "--train_opts",
        "--encoder_lr=1e-5",
        "--exp_dir",
        exp,
        "--stage",
        "7",
    )
    assert result.returncode == 1 and "ablation mlcs_no_hier_lr is --encoder_lr=!ref <lr>" in result.stderr
    assert not (tmp_path / "exp").exists()  # nothing trained
    # the same value is the ablation's own: no clash (stage 7 alone then finds nothing to score)
    result = run(
        sweep,
        "--ablations",
        "speech_only",
        "--train_opts",
        "--modality=speech",
        "--exp_dir",
        exp,
        "--stage",
        "7",
        "--data_root",
        str(tmp_path),  # the corpus need not be there
    )
    assert "would not be" not in result.stderr and "no predictions at" in result.stdout + result.stderr


def test_setup_makes_a_recipe_of_links_and_copies(tmp_path):
    target = tmp_path / "egs" / "mycorpus"
    result = run(os.path.join(ROOT, "egs", "TEMPLATE", "setup.sh"), str(target))
    assert result.returncode == 0, result.stderr
    for shared in ("ser.sh", "sweep.sh", "utils", "conf/crab.yaml", "conf/ablations.txt", "conf/wavlm_tiny"):
        assert os.path.islink(target / shared) and os.path.exists(target / shared), shared
    assert os.path.realpath(target / "ser.sh") == os.path.realpath(SER)
    for own in ("run.sh", "db.sh", "path.sh", "README.md", "local/data.sh"):
        assert (target / own).is_file() and not os.path.islink(target / own), own
    again = run(os.path.join(ROOT, "egs", "TEMPLATE", "setup.sh"), str(target))
    assert again.returncode != 0 and "exists" in again.stderr
    # outside egs/, its environment is found through its utils link
    env = subprocess.run(
        ["bash", "-c", f". {target}/path.sh && echo $CRAB_ROOT"], capture_output=True, text=True
    )
    assert env.returncode == 0 and env.stdout.strip() == ROOT, env.stderr


@pytest.mark.parametrize(
    "command",
    [["egs/mini/run.sh", "--help"], ["tools/install.sh", "--dry_run"], ["egs/TEMPLATE/setup.sh", "NEW"]],
)
def test_a_relative_cd_ignores_the_users_cdpath(tmp_path, command):
    decoy = tmp_path / "decoy"  # another checkout's folders of the same names, on CDPATH
    for folder in ("egs/mini", "egs/TEMPLATE", "tools"):
        (decoy / folder).mkdir(parents=True)
    command = [str(tmp_path / "new") if word == "NEW" else word for word in command]
    fake = {"CRAB_VENV": str(tmp_path / "venv"), "CRAB_INSTALL_TORCH_STATE": "none", "CRAB_INSTALL_GPU": "no"}
    result = subprocess.run(
        ["bash", *command],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **fake, "CDPATH": str(decoy)},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert str(decoy) not in result.stdout + result.stderr


def test_parallel_jobs_run_n_at_a_time_and_failures_are_named(tmp_path):
    script = f"""
. {shlex.quote(ROOT)}/utils/parallel.sh
job() {{ echo "start $1" >> {tmp_path}/events; sleep 0.3; echo "end $1" >> {tmp_path}/events; return "$2"; }}
parallel_init 2
echo "threads $OMP_NUM_THREADS"
for k in 1 2 3 4; do parallel_run {tmp_path}/job$k.log job $k $(( k == 3 ? 7 : 0 )); done
parallel_wait
echo "status $?"
"""
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert f"1 job(s) failed, see the end of: {tmp_path}/job3.log" in result.stderr
    threads = max(len(os.sched_getaffinity(0)) // 2, 1)  # the cores (nproc) shared by the 2 jobs
    assert "status 1" in result.stdout and f"threads {threads}" in result.stdout
    assert (tmp_path / "job3.log").read_text().endswith("exit status 7\n")
    running, most = 0, 0
    for event in (tmp_path / "events").read_text().split("\n")[:-1]:
        running += 1 if event.startswith("start") else -1
        most = max(most, running)
    assert most == 2 and running == 0


def test_feature_opts_reach_the_extraction(bare_clone):
    stand_in_venv(bare_clone)
    (bare_clone / "corpus").mkdir()
    (bare_clone / "data" / "main").mkdir(parents=True)
    for split in ("train", "valid", "test"):
        (bare_clone / "data" / "main" / f"{split}.json").write_text("{}")
    options = ["--stage", "4", "--stop_stage", "4", "--data_root", str(bare_clone / "corpus")]
    options += ["--data_dir", str(bare_clone / "data"), "--feature_cache", "cache"]
    options += ["--feature_opts", "--dtype float16 --shard_size 64"]
    result = run(str(bare_clone / "egs" / "mini" / "run.sh"), *options)
    assert result.returncode == 0, result.stderr
    extract = [call for call in calls(bare_clone) if call[:2] == ["-m", "crab.bin.extract_features"]]
    assert len(extract) == 1 and holds(extract[0], ["--dtype", "float16", "--shard_size", "64"]), extract


def test_a_stage_with_nothing_to_do_says_so(tmp_path):
    """Stages 2 and 4 without their option, and stage 0 of a recipe without local/corpus.sh,
    are named in the log with why they do nothing, not left out of it."""
    result = run_mini(tmp_path, "--stage", "2", "--stop_stage", "2")
    assert result.returncode == 0, result.stderr
    assert "Stage 2: skipped (no --asr_model: no ASR transcripts)" in result.stdout
    result = run_mini(tmp_path, "--stage", "4", "--stop_stage", "4")
    assert result.returncode == 0, result.stderr
    assert "Stage 4: skipped (no --feature_cache: training runs the encoders)" in result.stdout
    emodb = os.path.join(ROOT, "egs", "emodb", "run.sh")
    result = run(emodb, "--stage", "0", "--stop_stage", "0", "--data_root", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "Stage 0: nothing to do (this recipe has no local/corpus.sh: the corpus is read where it is)" in (
        result.stdout
    )
