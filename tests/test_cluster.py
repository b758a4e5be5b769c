"""Jobs through a cluster's scheduler: utils/slurm.sh against a stand-in ``sbatch``
that runs the job script at once and records its options."""

import os
import signal
import stat
import subprocess
import sys
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


def jobs(script, env=None):
    """``script`` run by bash after sourcing utils/jobs.sh, with the venv's python first
    on PATH (as path.sh puts it for ser.sh)."""
    env = env or dict(os.environ)
    env["PATH"] = f"{os.path.dirname(sys.executable)}:{env['PATH']}"
    return subprocess.run(
        ["bash", "-c", f"set -euo pipefail; . {ROOT}/utils/jobs.sh; {script}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("visible", "nj", "ngpu", "expected"),
    [("0,1,2,3", 2, 2, ["0,1", "2,3"]), ("3,5,7", 3, 1, ["3", "5", "7"]), ("0,1,2", 2, 1, ["0", "1"])],
)
def test_local_workers_get_gpus_of_their_own(visible, nj, ngpu, expected):
    result = jobs(f"jobs_devices {nj} {ngpu}", env=dict(os.environ, CUDA_VISIBLE_DEVICES=visible))
    assert result.returncode == 0 and result.stdout.splitlines() == expected


def test_too_few_gpus_for_the_local_workers_is_an_error():
    result = jobs("jobs_devices 2 2", env=dict(os.environ, CUDA_VISIBLE_DEVICES="0,1,2"))
    assert result.returncode == 1
    assert "--nj 2 jobs of --ngpu 2 GPU(s) each need 4 GPUs at once; found 3" in result.stderr


BUILD = """
build() {  # job i: prints where it ran, sleeps a little, fails for c
  local names=(a b c d e)
  local run='echo "job $0 on GPUs ${CUDA_VISIBLE_DEVICES:-none}, $OMP_NUM_THREADS threads"; sleep 0.2
    [ "$0" != c ] || exit 4'
  job=(bash -c "$run" "${names[$1]}")
}
"""


def test_local_jobs_run_n_at_a_time_each_on_its_workers_gpus(tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="6,7", OMP_NUM_THREADS="5")
    result = jobs(f"{BUILD} jobs_run 2 '' 1 {tmp_path} build a b c d e", env=env)
    assert result.returncode == 1
    progress = [line.split(" ", 1)[1] for line in result.stdout.splitlines()]
    assert f"job c: started on GPUs 6 (log: {tmp_path}/c.log)" in progress
    assert any(line.startswith("job c: exit status 4 after ") for line in progress) and len(progress) == 10
    assert f"1 of 5 job(s) failed, see the end of: {tmp_path}/c.log" in result.stderr
    for name, gpu in zip("abcde", "67676", strict=True):  # worker 0: a, c, e; worker 1: b, d
        status = 4 if name == "c" else 0
        log = (tmp_path / f"{name}.log").read_text()
        assert log == f"job {name} on GPUs {gpu}, 2 threads\nexit status {status}\n"  # 5 cores / 2


def test_a_launcher_that_is_not_shell_words_is_an_error(tmp_path):
    result = jobs(f'{BUILD} jobs_run 1 "utils/slurm.sh --partition \'gpu" 0 {tmp_path} build a')
    assert (
        result.returncode == 1 and "--cmd 'utils/slurm.sh --partition 'gpu': not shell words" in result.stderr
    )
    assert not (tmp_path / "a.log").exists()  # nothing ran here instead


def test_a_launcher_that_is_not_found_is_an_error(tmp_path):
    result = jobs(f"{BUILD} jobs_run 1 'utils/slurmm.sh --time 1:00' 0 {tmp_path} build a")
    assert result.returncode == 1
    assert "--cmd 'utils/slurmm.sh --time 1:00': no program utils/slurmm.sh" in result.stderr


def test_jobs_through_a_launcher(tmp_path, slurm_env):
    launcher = f"{SLURM} --time '1:00:00'"
    env = dict(slurm_env, OMP_NUM_THREADS="99")  # a scheduler's job: the cores it has, not this count
    result = jobs(f'{BUILD} jobs_run 3 "{launcher}" 1 {tmp_path}/log build a b c', env=env)
    assert result.returncode == 1 and f"see the end of: {tmp_path}/log/c.log" in result.stderr
    a = (tmp_path / "log" / "a.log").read_text().splitlines()
    assert a == [
        f"job a on GPUs none, {len(os.sched_getaffinity(0))} threads",
        f"job 4242 done; its output: {tmp_path}/log/a.log",
        "exit status 0",
    ]
    c = (tmp_path / "log" / "c.log").read_text()
    assert c.endswith(f"job 4242 failed (status 4); its output: {tmp_path}/log/c.log\nexit status 4\n")
    assert (tmp_path / "log" / "a.log.sbatch").exists()
