"""tools/gpu_check.sh on CPU: its pieces that run in seconds (the full ``--device cpu
--quick`` dry run trains the mini recipe and takes minutes: run it by hand)."""

import os
import re
import subprocess

import pytest

from tests.conftest import ROOT

SCRIPT = os.path.join(ROOT, "tools", "gpu_check.sh")


def test_cpu_environment_check_and_summary(tmp_path):
    """The summary names the crab it measured: this checkout's, before another one on the
    user's PYTHONPATH (an editable install of another checkout). Without the compiler
    torch.compile builds with (here a CXX that names none), the compiled check is skipped
    and says why."""
    other = tmp_path / "other_checkout"
    (other / "crab").mkdir(parents=True)
    (other / "crab" / "__init__.py").write_text("")
    result = subprocess.run(
        ["bash", SCRIPT, "--device", "cpu", "--quick", "--checks", "env,train_fp16,train_compile"]
        + ["--work", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(other), "CXX": str(tmp_path / "no_such_g++")},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summaries = list(tmp_path.glob("gpu_check_*.md"))
    assert len(summaries) == 1
    text = summaries[0].read_text()
    assert "| env | pass |" in text and "| train_fp16 | skipped (fp16 needs CUDA) |" in text
    assert "torch " in text and "cuda available:" in text
    assert f"crab: {os.path.join(ROOT, 'crab')}\n" in text
    missing = "torch.compile on cpu builds C++ code, and no C++ compiler is found"
    missing += f" (looked for {tmp_path}/no_such_g++ on PATH)"
    assert f"torch.compile: {missing}" in text  # the environment's report
    assert f"| train_compile | skipped ({missing}" in text


@pytest.mark.parametrize("checks", ["env,train_bf16,bench_large", "train_bf16,bench_large"])
def test_without_a_gpu_the_cuda_checks_are_skipped_and_the_check_fails(tmp_path, checks):
    """Each would fail in turn, the benchmarks after loading a large model (on a machine without
    a GPU, or whose CUDA_VISIBLE_DEVICES hides them); env says so, or, not asked for, torch."""
    result = subprocess.run(
        ["bash", SCRIPT, "--checks", checks, "--work", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    [summary] = tmp_path.glob("gpu_check_*.md")
    text = summary.read_text()
    assert "| train_bf16 | skipped (torch sees no GPU) |" in text
    assert "| bench_large | skipped (torch sees no GPU) |" in text
    if checks.startswith("env"):  # with torch's reason where it has one (a CUDA build)
        assert (
            "--device cuda: torch sees no GPU: no CUDA GPU is available"
            in (tmp_path / "logs" / "env.log").read_text()
        )


def test_a_spent_time_budget_skips_the_checks_left(tmp_path):
    result = subprocess.run(
        ["bash", SCRIPT, "--device", "cpu", "--checks", "env", "--budget_s", "15", "--work", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [summary] = tmp_path.glob("gpu_check_*.md")
    assert "| env | skipped (--budget_s 15 spent) |" in summary.read_text()


def test_unknown_option_and_device_are_errors(tmp_path):
    # --budget_s 0 skips every check: a bad value that got through would exit 0 at once
    bad_ngpu = [["--budget_s", "0", "--ngpu", count] for count in ("two", "0")]
    typo = ["--checks", "env,train_bf61"]  # would run env alone, and pass
    bad_checks = [typo, ["--checks", ""], ["--checks", ","]]  # would run nothing, and pass
    for args in (["--bogus"], ["--device", "tpu"], ["--budget_s", "8m"], *bad_ngpu, *bad_checks):
        result = subprocess.run(
            ["bash", SCRIPT, *args, "--work", str(tmp_path)], capture_output=True, text=True
        )
        assert result.returncode == 1 and result.stderr


def test_help_names_every_check_and_marks_the_default_ones():
    with open(SCRIPT) as f:
        script = f.read()
    default = re.search(r"^default_checks=(\S+)$", script, re.M).group(1).split(",")
    others = re.search(r'^known_checks="\$\{default_checks\},(\S+)"$', script, re.M).group(1).split(",")
    result = subprocess.run(["bash", SCRIPT, "--help"], capture_output=True, text=True, timeout=60)
    described = {name: mark for mark, name in re.findall(r"^(\*| ) (\w+) ", result.stdout, re.M)}
    assert described == {**{name: "*" for name in default}, **{name: " " for name in others}}
    # each check the script runs is one of them
    assert set(re.findall(r"wanted (\w+)", script)) == set(default) | set(others)


def test_help_describes_every_option():
    result = subprocess.run(["bash", SCRIPT, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    with open(SCRIPT) as f:
        accepted = re.findall(r"^ +(--[a-z_]+)\)", f.read(), re.M)
    assert set(accepted) >= {"--device", "--quick", "--checks", "--work", "--ngpu", "--budget_s"}
    for option in accepted:
        assert option in result.stdout, f"--help does not describe {option}"


FAKE_TIMEOUT = """#!/usr/bin/env bash
# timeout LIMIT COMMAND...: runs nothing; once the GPU sampler wrote, prints FAKE_OUTPUT, exits FAKE_RC
for _ in $(seq 100); do [ -s "${FAKE_SAMPLES}" ] && break; sleep 0.1; done
echo "${FAKE_OUTPUT}"
exit "${FAKE_RC}"
"""
# two GPUs' memory.used, a line each per 0.5 s sample: the peak is 12000 MiB (9000 sorts last as text)
FAKE_NVIDIA_SMI = """#!/usr/bin/env bash
case "$*" in *--query-gpu=memory.used*-lms*) printf '%s\\n' 9000 350 12000 800; exec sleep 60 ;; esac
exit 1
"""


def fake_cuda_check(tmp_path, rc, output="", budget_s=480):
    """gpu_check.sh --device cuda --checks env, with a ``timeout`` that stands for the check
    (exit ``rc`` after printing ``output``) and an ``nvidia-smi`` of made-up samples: the
    exit status and the summary's row."""
    bin_dir, work = tmp_path / "bin", tmp_path / f"work_{rc}"
    bin_dir.mkdir(exist_ok=True)
    for name, text in (("timeout", FAKE_TIMEOUT), ("nvidia-smi", FAKE_NVIDIA_SMI)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = dict(
        os.environ,
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        FAKE_RC=str(rc),
        FAKE_OUTPUT=output,
        FAKE_SAMPLES=str(work / "logs" / "env.mem"),
    )
    command = ["bash", SCRIPT, "--device", "cuda", "--checks", "env", "--budget_s", str(budget_s)]
    result = subprocess.run(
        [*command, "--work", str(work)], capture_output=True, text=True, timeout=120, env=env
    )
    [summary] = work.glob("gpu_check_*.md")
    [row] = [line for line in summary.read_text().splitlines() if line.startswith("| env |")]
    return result.returncode, [cell.strip() for cell in row.strip("|").split("|")]


def test_a_check_passes_on_exit_0_with_the_peak_of_the_busiest_gpu(tmp_path):
    rc, (_, status, seconds, peak, log) = fake_cuda_check(tmp_path, 0)
    assert (rc, status, peak, log) == (0, "pass", "12000", "logs/env.log") and float(seconds) >= 0


def test_a_failed_check_fails_the_whole_check(tmp_path):
    rc, row = fake_cuda_check(tmp_path, 3)
    assert (rc, row[1]) == (1, "FAIL (exit 3)")
    rc, row = fake_cuda_check(tmp_path, 0, "Warning: destroy_process_group() was never called")
    assert (rc, row[1]) == (1, "FAIL (destroy_process_group() was never called)")
    compiled = tmp_path / "compiled"  # another exit-0 run: a work folder of its own
    compiled.mkdir()
    rc, row = fake_cuda_check(compiled, 0, "W1204 torch._dynamo hit config.recompile_limit (8)")
    assert (rc, row[1]) == (1, "FAIL (torch.compile hit its recompile limit)")
    rc, row = fake_cuda_check(tmp_path, 124, budget_s=100)  # env's own limit, 120 s, cut to what is left
    assert rc == 1 and re.fullmatch(r"FAIL \(timeout (99|100) s, cut by --budget_s\)", row[1]), row
