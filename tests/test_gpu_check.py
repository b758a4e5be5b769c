"""tools/gpu_check.sh on CPU: its pieces that run in seconds (the full ``--device cpu
--quick`` dry run trains the mini recipe and takes minutes: run it by hand)."""

import os
import re
import subprocess

from tests.conftest import ROOT

SCRIPT = os.path.join(ROOT, "tools", "gpu_check.sh")


def test_cpu_environment_check_and_summary(tmp_path):
    result = subprocess.run(
        ["bash", SCRIPT, "--device", "cpu", "--quick", "--checks", "env,train_fp16", "--work", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summaries = list(tmp_path.glob("gpu_check_*.md"))
    assert len(summaries) == 1
    text = summaries[0].read_text()
    assert "| env | pass |" in text and "| train_fp16 | skipped (fp16 needs CUDA) |" in text
    assert "torch " in text and "cuda available:" in text


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
    for args in (["--bogus"], ["--device", "tpu"], ["--budget_s", "8m"]):
        result = subprocess.run(
            ["bash", SCRIPT, *args, "--work", str(tmp_path)], capture_output=True, text=True
        )
        assert result.returncode == 1 and result.stderr


def test_help_describes_every_option():
    result = subprocess.run(["bash", SCRIPT, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    with open(SCRIPT) as f:
        accepted = re.findall(r"^ +(--[a-z_]+)\)", f.read(), re.M)
    assert set(accepted) >= {"--device", "--quick", "--checks", "--work", "--ngpu", "--budget_s"}
    for option in accepted:
        assert option in result.stdout, f"--help does not describe {option}"
