"""Jobs through a cluster's scheduler: utils/slurm.sh against a stand-in ``sbatch``
that runs the job script at once and records its options."""

import os
import signal
import stat
import subprocess
import time

import pytest

from tests.conftest import ROOT

SLURM = os.path.join(ROOT, "utils", "slurm.sh")

# sbatch's options as slurm.sh passes them; the job runs here, its output to --output.
FAKE_SBATCH = """#!/usr/bin/env bash
printf '%s\\n' "$@" > "$FAKE_SBATCH_ARGS"
while [ $# -gt 1 ]; do
  case "$1" in --output) out=$2; shift 2 ;; --parsable|--wait) shift ;; *) shift 2 ;; esac
done
echo "4242"
bash "$1" > "$out" 2>&1
"""


@pytest.fixture
def slurm_env(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(FAKE_SBATCH)
    sbatch.chmod(sbatch.stat().st_mode | stat.S_IXUSR)
    scancel = bin_dir / "scancel"
    scancel.write_text(f'#!/usr/bin/env bash\necho "$@" > {tmp_path}/cancelled\n')
    scancel.chmod(scancel.stat().st_mode | stat.S_IXUSR)
    return dict(
        os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_SBATCH_ARGS=str(tmp_path / "sbatch_args")
    )


def slurm(env, cwd, *args):
    return subprocess.run(
        ["bash", SLURM, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )


def test_a_job_runs_its_command_as_given_and_asks_for_what_it_needs(tmp_path, slurm_env):
    log = tmp_path / "logs" / "train.session1.seed42.log"
    word = 'it\'s a "word" with $HOME; spaces'
    result = slurm(
        slurm_env, tmp_path, "--gpus", "2", "--time", "1:00:00", "--partition", "gpu",
        "--sbatch_opts", "--account lab --qos high", str(log), "printf", "%s|%s\\n", word, "$PWD",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"job 4242 done; its output: {log}"
    assert log.read_text() == f"{word}|$PWD\n"  # each word reaches the command unchanged
    args = (tmp_path / "sbatch_args").read_text().splitlines()
    assert args[-1] == f"{log}.sbatch"
    options = " ".join(args[:-1])
    for expected in (
        "--wait",
        f"--output {log}",
        "--job-name crab:train.session1.seed42",
        "--gres gpu:2",
        "--time 1:00:00",
        "--partition gpu",
        "--account lab --qos high",
    ):
        assert expected in options
    assert f"cd {tmp_path}" in (tmp_path / "logs" / "train.session1.seed42.log.sbatch").read_text()


def test_a_failed_job_fails_with_its_status_and_names_its_output(tmp_path, slurm_env):
    log = tmp_path / "job.log"
    result = slurm(slurm_env, tmp_path, str(log), "bash", "-c", "echo broken; exit 3")
    assert result.returncode == 3
    assert f"job 4242 failed (status 3); its output: {log}" in result.stderr
    assert log.read_text() == "broken\n"
    assert "--gres" not in (tmp_path / "sbatch_args").read_text()  # --gpus 0 by default


def test_an_interrupt_cancels_the_job(tmp_path, slurm_env):
    log, stderr = tmp_path / "job.log", tmp_path / "stderr"
    with open(stderr, "w") as stderr_file:  # not a pipe: the stand-in's job would hold it open
        process = subprocess.Popen(
            ["bash", SLURM, str(log), "bash", "-c", "echo started; sleep 20"],
            env=slurm_env,
            cwd=tmp_path,
            stderr=stderr_file,
            start_new_session=True,
        )
    try:
        for _ in range(200):  # the job has started
            if log.exists() and log.read_text():
                break
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the stand-in's job, which a real scancel would end
    assert process.returncode == 130 and "job 4242 cancelled" in stderr.read_text()
    assert (tmp_path / "cancelled").read_text().strip() == "4242"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gpus", "one", "log", "true"], "--gpus must be a whole number, not 'one'"),
        (["--nodes", "2", "log", "true"], "unknown option '--nodes'"),
        (["log"], "needs a LOG and a COMMAND"),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path, slurm_env, args, message):
    result = slurm(slurm_env, tmp_path, *args)
    assert result.returncode == 2 and message in result.stderr


def test_without_slurm_it_says_so(tmp_path):
    env = dict(os.environ, PATH="/usr/bin:/bin")
    result = slurm(env, tmp_path, str(tmp_path / "job.log"), "true")
    assert result.returncode == 2 and "sbatch not found" in result.stderr
