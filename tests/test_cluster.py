"""Jobs through a cluster's scheduler: utils/slurm.sh and utils/sge.sh against stand-ins for
``sbatch`` and ``qsub`` that run the job script at once and record their options."""

import os
import shlex
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest

from tests.conftest import ROOT

SLURM = os.path.join(ROOT, "utils", "slurm.sh")

# A submitter's options as the launcher passes them; the job runs here, its output to the
# file after OUTPUT_OPTION. It prints the job id first (sbatch --parsable: "ID;CLUSTER"),
# then, as qsub -sync y does, a line after the job; it exits with the job's status.
FAKE_SUBMIT = """#!/usr/bin/env bash
printf '%s\\n' "$@" > "$FAKE_SUBMIT_ARGS"
args=("$@")
for ((i = 0; i < ${#args[@]} - 1; i++)); do
  [ "${args[i]}" != "$OUTPUT_OPTION" ] || out=${args[i + 1]}
done
echo "4242$ID_SUFFIX"
rc=0
bash "${args[-1]}" > "$out" 2>&1 || rc=$?
echo "Job 4242 exited with exit code $rc."
exit $rc
"""


@dataclass
class Scheduler:
    launcher: str  # the script
    submit: str  # the program it submits with
    script_suffix: str  # of the job script kept beside the log
    env: dict

    def run(self, cwd, *args):
        return subprocess.run(
            ["bash", self.launcher, *args], env=self.env, cwd=cwd, capture_output=True, text=True, timeout=60
        )


SCHEDULERS = {  # launcher, submitter, cancel command, output option, job script suffix, id suffix
    "slurm": (SLURM, "sbatch", "scancel", "--output", ".sbatch", ";cluster1"),
    "sge": (os.path.join(ROOT, "utils", "sge.sh"), "qsub", "qdel", "-o", ".qsub", ""),
}


def stand_in(path, text):
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture(params=sorted(SCHEDULERS))
def scheduler(request, tmp_path):
    launcher, submit, cancel, output_option, suffix, id_suffix = SCHEDULERS[request.param]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stand_in(bin_dir / submit, FAKE_SUBMIT)
    stand_in(bin_dir / cancel, f'#!/usr/bin/env bash\necho "$@" > {tmp_path}/cancelled\n')
    env = dict(
        os.environ,
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        FAKE_SUBMIT_ARGS=str(tmp_path / "submit_args"),
        OUTPUT_OPTION=output_option,
        ID_SUFFIX=id_suffix,
    )
    return Scheduler(launcher, submit, suffix, env)


REQUESTS = {  # what each launcher asks its scheduler for, from the same options
    "sbatch": (
        ["--time", "1:00:00", "--partition", "gpu", "--sbatch_opts", "--account lab --qos high"],
        ["--wait", "--output {log}", "--job-name crab:train.session1.seed42", "--gres gpu:2",
         "--cpus-per-task 8", "--mem 64G", "--time 1:00:00", "--partition gpu", "--signal=B:USR1@300",
         "--account lab --qos high"],
    ),
    "qsub": (
        ["--time", "1:00:00", "--queue", "g.q", "--pe", "mpi", "--qsub_opts", "-P lab -l h_vmem=80G"],
        ["-sync y", "-V", "-S /bin/bash", "-j y", "-o {log}", "-N crab.train.session1.seed42",
         "-l gpu=2", "-pe mpi 8", "-l mem_free=64G", "-l h_rt=1:00:00", "-q g.q", "-P lab -l h_vmem=80G"],
    ),
}  # fmt: skip


def test_a_job_runs_its_command_as_given_and_asks_for_what_it_needs(tmp_path, scheduler):
    log = tmp_path / "logs" / "train.session1.seed42.log"
    word = 'it\'s a "word" with $HOME; spaces'
    own, expected = REQUESTS[scheduler.submit]
    result = scheduler.run(
        tmp_path,
        "--gpus",
        "2",
        "--cpus",
        "8",
        "--mem",
        "64G",
        *own,
        str(log),
        "printf",
        "%s|%s\\n",
        word,
        "$PWD",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"job 4242 done; its output: {log}"
    assert log.read_text() == f"{word}|$PWD\n"  # each word reaches the command unchanged
    args = (tmp_path / "submit_args").read_text().splitlines()
    script = f"{log}{scheduler.script_suffix}"
    assert args[-1] == script
    options = " ".join(args[:-1])
    for option in expected:
        assert option.format(log=log) in options
    assert f"cd {tmp_path}" in open(script).read()


def test_a_job_not_stopped_early_runs_its_command_as_given(tmp_path, scheduler):
    """--stop_before 0: the job script is the command itself (exec), each word as given."""
    log = tmp_path / "job.log"
    word = 'it\'s a "word" with $HOME; spaces'
    result = scheduler.run(tmp_path, "--stop_before", "0", str(log), "printf", "%s|\\n", word)
    assert result.returncode == 0, result.stderr
    assert log.read_text() == f"{word}|\n"


@pytest.mark.parametrize(
    ("granted", "threads"), [({"NSLOTS": "3"}, "3"), ({"SLURM_CPUS_PER_TASK": "5"}, "5"), ({}, None)]
)
def test_a_jobs_threads_are_what_the_scheduler_granted_it(tmp_path, scheduler, granted, threads):
    """Grid Engine's slots, Slurm's CPUs per task, else the cores the job may run on: not the
    submitting shell's count, nor a whole node's that Grid Engine did not bind the job to."""
    scheduler.env.update(granted, OMP_NUM_THREADS="99")
    log = tmp_path / "job.log"
    log.write_text("the output of an earlier attempt\n")
    result = scheduler.run(tmp_path, str(log), "printenv", "OMP_NUM_THREADS")
    assert result.returncode == 0, result.stderr
    assert log.read_text() == f"{threads or len(os.sched_getaffinity(0))}\n"  # this attempt's alone


def test_a_failed_job_fails_with_its_status_and_names_its_output(tmp_path, scheduler):
    log = tmp_path / "job.log"
    result = scheduler.run(tmp_path, str(log), "bash", "-c", "echo broken; exit 3")
    assert result.returncode == 3
    assert f"job 4242 failed (status 3); its output: {log}" in result.stderr
    assert log.read_text() == "broken\n"
    options = (tmp_path / "submit_args").read_text().splitlines()[:-1]
    assert not any("gpu" in option for option in options)  # --gpus 0 by default


def test_an_interrupt_cancels_the_job(tmp_path, scheduler):
    log, stderr = tmp_path / "job.log", tmp_path / "stderr"
    with open(stderr, "w") as stderr_file:  # not a pipe: the stand-in's job would hold it open
        process = subprocess.Popen(
            ["bash", scheduler.launcher, str(log), "bash", "-c", "echo started; sleep 20"],
            env=scheduler.env,
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
        os.killpg(process.pid, signal.SIGKILL)  # the stand-in's job, which a real scancel / qdel would end
    assert process.returncode == 130 and "job 4242 cancelled" in stderr.read_text()
    assert (tmp_path / "cancelled").read_text().strip() == "4242"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gpus", "one", "log", "true"], "--gpus must be a whole number, not 'one'"),
        (["--cpus", "0", "log", "true"], "--cpus must be a positive whole number, not '0'"),
        (["--nodes", "2", "log", "true"], "unknown option '--nodes'"),
        (["--time"], "--time needs a value"),
        (["log"], "needs a LOG and a COMMAND"),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path, scheduler, args, message):
    result = scheduler.run(tmp_path, *args)
    assert result.returncode == 2 and message in result.stderr
    assert not (tmp_path / "submit_args").exists()


@pytest.mark.parametrize("scheduler", ["sge"], indirect=True)
def test_a_log_path_that_qsub_would_read_as_a_host_is_an_error(tmp_path, scheduler):
    result = scheduler.run(tmp_path, str(tmp_path / "fold:1.log"), "true")
    assert result.returncode == 2 and "must not hold ':'" in result.stderr
    assert not (tmp_path / "submit_args").exists()


def test_without_the_scheduler_it_says_so(tmp_path, scheduler):
    env = dict(scheduler.env, PATH="/usr/bin:/bin")
    result = subprocess.run(
        ["bash", scheduler.launcher, str(tmp_path / "job.log"), "true"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and f"{scheduler.submit} not found" in result.stderr


def jobs(script, env=None):
    """``script`` run by bash after sourcing utils/jobs.sh, with the venv's python first
    on PATH (as path.sh puts it for ser.sh)."""
    env = env or dict(os.environ)
    env["PATH"] = f"{os.path.dirname(sys.executable)}:{env['PATH']}"
    return subprocess.run(
        ["bash", "-c", f"set -euo pipefail; . {shlex.quote(ROOT)}/utils/jobs.sh; {script}"],
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


def test_jobs_through_a_launcher(tmp_path, scheduler):
    launcher = f"{shlex.quote(scheduler.launcher)} --time '1:00:00'"
    env = dict(scheduler.env, OMP_NUM_THREADS="99")  # a scheduler's job: the cores it has, not this count
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
    assert (tmp_path / "log" / f"a.log{scheduler.script_suffix}").exists()


# A command that stops on its own on SIGTERM, as training does: it saves (a second), then exits 143.
STOPS_ON_TERM = """
import pathlib, signal, sys, time
mark = pathlib.Path(sys.argv[1])
def stop(signum, frame):
    time.sleep(1)
    mark.with_suffix(".saved").write_text("")
    sys.exit(143)
signal.signal(signal.SIGTERM, stop)
mark.with_suffix(".started").write_text("")
time.sleep(60)
"""


def sigterm_to_the_job(tmp_path, script, started):
    """``script`` (bash, after sourcing utils/jobs.sh and utils/wait_on_term.sh, as ser.sh does)
    as a job in a process group of its own, sent SIGTERM as a scheduler sends it (to every
    process of the job) once the files ``started`` exist: its status, and whether any of its
    processes outlived it."""
    stub = tmp_path / "stub.py"
    stub.write_text(STOPS_ON_TERM)
    env = dict(os.environ, STUB=f"{sys.executable} {stub}")
    sourced = f". {shlex.quote(ROOT)}/utils/jobs.sh; . {shlex.quote(ROOT)}/utils/wait_on_term.sh"
    job = subprocess.Popen(
        ["bash", "-c", f"set -euo pipefail; {sourced}; {script}"],
        env=env,
        cwd=tmp_path,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 30
    while not all((tmp_path / name).exists() for name in started):
        assert job.poll() is None and time.time() < deadline, "the job's commands did not start"
        time.sleep(0.01)
    os.killpg(job.pid, signal.SIGTERM)
    status = job.wait(timeout=30)
    try:
        os.killpg(job.pid, 0)
        outlived = True
    except ProcessLookupError:
        outlived = False
    if outlived:
        os.killpg(job.pid, signal.SIGKILL)
    return status, outlived


def test_on_sigterm_a_stage_waits_for_its_command_to_stop_and_runs_nothing_after_it(tmp_path):
    status, outlived = sigterm_to_the_job(tmp_path, "$STUB a.x; touch next_stage", ["a.started"])
    assert status == 143 and not outlived  # the shell ended after its command, not before
    assert (tmp_path / "a.saved").exists() and not (tmp_path / "next_stage").exists()


def test_on_sigterm_local_jobs_stop_and_no_other_starts(tmp_path):
    build = 'build() { local names=(a b c d); job=($STUB "${names[$1]}.x"); }'
    script = f"{build}; jobs_run 2 '' 0 {tmp_path}/log build a b c d"
    status, outlived = sigterm_to_the_job(tmp_path, script, ["a.started", "b.started"])
    assert status == 143 and not outlived
    for name in "ab":  # worker 0 ran a (then c), worker 1 b (then d)
        assert (tmp_path / f"{name}.saved").exists()
        assert (tmp_path / "log" / f"{name}.log").read_text().endswith("exit status 143\n")
    assert not (tmp_path / "log" / "c.log").exists() and not (tmp_path / "log" / "d.log").exists()


def test_jobs_stopped_by_sigterm_are_named_as_such(tmp_path):
    """Jobs elsewhere stopped (a Slurm time limit or its warning, a cancel) while the recipe
    ran on: the same command resumes them."""
    build = 'build() { local codes=(0 143 1); job=(bash -c "exit ${codes[$1]}"); }'
    script = f". {shlex.quote(ROOT)}/utils/jobs.sh; {build}; jobs_run 3 '' 0 {tmp_path}/log build a b c"
    result = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "2 of 3 job(s) failed" in result.stderr
    assert (
        "1 of them stopped on SIGTERM (a time limit, a cancel): the same command resumes them"
        in result.stderr
    )


def test_on_sigterm_parallel_commands_stop_and_their_status_is_written(tmp_path):
    script = "parallel_init 2; parallel_run a.log $STUB a.x; parallel_run b.log $STUB b.x; parallel_wait"
    status, outlived = sigterm_to_the_job(tmp_path, script, ["a.started", "b.started"])
    assert status == 143 and not outlived
    for name in "ab":
        assert (tmp_path / f"{name}.saved").exists()
        assert (tmp_path / f"{name}.log").read_text() == "exit status 143\n"


# A submitter that runs the job as the scheduler does when a warning before the time limit is
# asked for (sbatch --signal=B:USR1@N, qsub -l s_rt=N): the job script leads a process group
# of its own, and the warning comes, here (with WARN set) once the command has started, not N
# seconds before the limit, to the job script alone (Slurm's B:, WARN_TO "") or to every
# process of the job (Grid Engine, WARN_TO "-": the process group).
WARNING_SUBMIT = """#!/usr/bin/env bash
printf '%s\\n' "$@" > "$FAKE_SUBMIT_ARGS"
args=("$@")
for ((i = 0; i < ${#args[@]} - 1; i++)); do
  [ "${args[i]}" != "$OUTPUT_OPTION" ] || out=${args[i + 1]}
  case "${args[i]}" in --signal=B:USR1@*|s_rt=*) warned=1 ;; esac
done
echo "4242$ID_SUFFIX"
lead='import os, sys; os.setsid(); os.execvp("bash", ["bash", sys.argv[1]])'
"$PYTHON" -c "$lead" "${args[-1]}" > "$out" 2>&1 &
job=$!
echo "$job" > "$JOB_PID"
if [ -n "${warned-}" ] && [ -n "${WARN-}" ]; then
  while [ ! -e "$STARTED" ]; do sleep 0.05; done
  kill -USR1 -- "$WARN_TO$job"
fi
rc=0
wait "$job" || rc=$?
exit $rc
"""

# per scheduler: to whom the warning goes; what asks for it at --time 1:00:00 (300 s before);
# at other limits (None: no early stop): no longer than twice 300 s, longer, one it cannot read
EARLY_STOP = {
    "slurm": ("", "--signal=B:USR1@300", [("10", None), ("0-0:10:01", "--signal=B:USR1@300"),
                                          ("1-00:00", "--signal=B:USR1@300"),  # a day
                                          ("UNLIMITED", "--signal=B:USR1@300")]),
    "sge": ("-", "s_rt=3300", [("600", None), ("0:10:01", "s_rt=301"), ("INFINITY", None)]),
}  # fmt: skip
WARNING_OPTIONS = ("--signal", "s_rt")


@pytest.mark.parametrize("name", sorted(EARLY_STOP))
def test_the_schedulers_warning_before_the_time_limit_stops_the_job_as_sigterm_does(tmp_path, name):
    """--stop_before (default 300 s): the scheduler's USR1 becomes SIGTERM to every process of
    the job, so a recipe stage stops after its command has saved, with time to spare; where
    Grid Engine sends USR1 to every process, none dies of it unsaved."""
    launcher, submit, _, output_option, suffix, id_suffix = SCHEDULERS[name]
    warn_to, asked_option, limits = EARLY_STOP[name]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stand_in(bin_dir / submit, WARNING_SUBMIT)
    stub = tmp_path / "stub.py"
    stub.write_text(STOPS_ON_TERM)
    env = dict(
        os.environ,
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        PYTHON=sys.executable,
        FAKE_SUBMIT_ARGS=str(tmp_path / "submit_args"),
        OUTPUT_OPTION=output_option,
        ID_SUFFIX=id_suffix,
        JOB_PID=str(tmp_path / "job_pid"),
        STARTED=str(tmp_path / "a.started"),
        WARN="1",
        WARN_TO=warn_to,
    )
    stage = f". {shlex.quote(ROOT)}/utils/wait_on_term.sh; {sys.executable} {stub} a.x; touch next_stage"
    log = tmp_path / "job.log"

    def submitted(*args):
        result = subprocess.run(
            ["bash", launcher, *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
        return result, (tmp_path / "submit_args").read_text().splitlines() if result.returncode != 2 else []

    result, options = submitted("--time", "1:00:00", str(log), "bash", "-c", stage)
    assert result.returncode == 143, result.stderr + log.read_text()
    assert asked_option in options
    assert f"job 4242 failed (status 143); its output: {log}" in result.stderr
    assert (tmp_path / "a.saved").exists() and not (tmp_path / "next_stage").exists()
    with pytest.raises(ProcessLookupError):  # no process of the job outlived it
        os.killpg(int((tmp_path / "job_pid").read_text()), 0)

    env["WARN"] = ""  # what is asked for, not what comes
    for time_limit, asked in limits:
        result, options = submitted("--time", time_limit, str(log), "true")
        assert result.returncode == 0, result.stderr
        assert (asked in options) if asked else not any(a.startswith(WARNING_OPTIONS) for a in options)
        assert ("is not stopped early" in result.stderr) == (asked is None), time_limit
    # --stop_before 0: no warning asked for, and the job script is the command (exec)
    result, options = submitted("--time", "1:00:00", "--stop_before", "0", str(log), "true")
    assert result.returncode == 0, result.stderr
    assert not any(a.startswith(WARNING_OPTIONS) for a in options)
    assert open(f"{log}{suffix}").read().splitlines()[-1] == "exec true"
    result, _ = submitted("--stop_before", "5m", str(log), "true")
    assert (
        result.returncode == 2
        and "--stop_before must be a whole number of seconds, not '5m'" in result.stderr
    )


@pytest.mark.parametrize("launcher", ["slurm.sh", "sge.sh"])
def test_help_says_where_the_gpu_count_comes_from(launcher):
    """--gpus has a default, and a stage run as jobs replaces it with --ngpu's: a --gpus in --cmd
    is not what the jobs get."""
    result = subprocess.run(
        ["bash", os.path.join(ROOT, "utils", launcher), "--help"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "ser.sh's jobs give --ngpu's value, which replaces one in --cmd" in text
    assert "left out are the site's defaults" in text
