"""The quality gates of CI (tools/gates.sh): each prints one line saying whether it passed, and a
failed gate fails the script; the shell scripts pass shellcheck."""

import os
import subprocess

import pytest
from conftest import ROOT

GATES = os.path.join(ROOT, "tools", "gates.sh")


def run_gates(*gates, path=None):
    env = dict(os.environ)
    if path is not None:
        env["PATH"] = path
    return subprocess.run(
        ["bash", GATES, *gates], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_shell_scripts_pass_shellcheck():
    result = run_gates("shellcheck")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "gate shellcheck: ok" in result.stdout


def test_a_failed_gate_fails_the_script_with_one_line(tmp_path):
    """A shellcheck that finds something (a stub) fails the gate and the script, loudly."""
    stub = tmp_path / "shellcheck"
    stub.write_text("#!/bin/sh\necho 'In x.sh line 1: SC2086 (info): Double quote'\nexit 1\n")
    stub.chmod(0o755)
    result = run_gates("shellcheck", path=f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert "In x.sh line 1: SC2086 (info): Double quote" in lines
    assert any(line.startswith("gate shellcheck: FAILED (") for line in lines)
    assert lines[-1].startswith("gates FAILED: shellcheck")


def test_unknown_gate_is_an_error():
    result = run_gates("pylint")
    assert result.returncode == 2
    assert "unknown gate 'pylint'" in result.stderr


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_lists_the_gates(flag):
    result = run_gates(flag)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("The quality gates CI runs")
    for gate in ("ruff-lint", "ruff-format", "shellcheck", "doctests"):
        assert f"  - {gate} " in result.stdout
    assert "gates ok" not in result.stdout and "gates FAILED" not in result.stdout  # no gate ran
