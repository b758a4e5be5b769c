"""utils/parse_options.sh: --name value / --name=value into declared variables."""

import os
import re
import shutil
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARSE_OPTIONS = os.path.join(REPO, "utils", "parse_options.sh")
BASH = shutil.which("bash")

pytestmark = pytest.mark.skipif(BASH is None, reason="needs bash")

# Declares options like egs/*/run.sh, sources the parser with the script's own
# arguments, then prints every variable and positional argument.
SCRIPT = """\
set -euo pipefail
stage=0
stop_stage=100
train_opts=
seeds=42
config=conf/crab_tiny.yaml
help_message="Usage: $0 [--stage N] [--train_opts '--alpha=1.5']"
. "{parse_options}"
echo "reached=yes"
for name in stage stop_stage train_opts seeds config; do
  printf '%s=%s\\n' "$name" "${{!name}}"
done
echo "nargs=$#"
for arg in "$@"; do printf 'arg=%s\\n' "$arg"; done
for name in _crab_args _crab_name _crab_value; do
  if [ -n "${{!name+x}}" ]; then echo "leaked=$name"; fi
done
"""


@pytest.fixture
def run(tmp_path):
    script = tmp_path / "script.sh"
    script.write_text(SCRIPT.format(parse_options=PARSE_OPTIONS))

    def _run(*args, env=None):
        proc = subprocess.run(
            [BASH, str(script), *args],
            capture_output=True,
            text=True,
            timeout=20,
            env={**os.environ, **(env or {})},
        )
        values, positional = {}, []
        for line in proc.stdout.splitlines():
            key, _, value = line.partition("=")
            if key == "arg":
                positional.append(value)
            elif key:
                values[key] = value
        return proc, values, positional

    return _run


def test_defaults_without_arguments(run):
    proc, values, positional = run()
    assert proc.returncode == 0, proc.stderr
    assert values["stage"] == "0" and values["stop_stage"] == "100"
    assert values["train_opts"] == "" and values["seeds"] == "42"
    assert values["nargs"] == "0" and positional == []
    assert "leaked" not in values


def test_space_form(run):
    proc, values, _ = run("--stage", "3")
    assert proc.returncode == 0, proc.stderr
    assert values["stage"] == "3"
    assert values["stop_stage"] == "100"
    assert values["nargs"] == "0"


@pytest.mark.parametrize("args", [["--stop-stage=5"], ["--stop-stage", "5"], ["--stop_stage=5"]])
def test_dash_and_equals_forms(run, args):
    proc, values, _ = run(*args)
    assert proc.returncode == 0, proc.stderr
    assert values["stop_stage"] == "5"
    assert values["stage"] == "0"


def test_value_with_spaces_and_equals(run):
    proc, values, positional = run("--train_opts", "--alpha=1.5 --lr=1e-4", "--stage", "2")
    assert proc.returncode == 0, proc.stderr
    assert values["train_opts"] == "--alpha=1.5 --lr=1e-4"
    assert values["stage"] == "2"
    assert positional == []


def test_equals_form_keeps_later_equals(run):
    proc, values, _ = run("--train_opts=--alpha=1.5 --lr=1e-4", "--seeds=42 43 44")
    assert proc.returncode == 0, proc.stderr
    assert values["train_opts"] == "--alpha=1.5 --lr=1e-4"
    assert values["seeds"] == "42 43 44"


def test_empty_values(run):
    proc, values, _ = run("--config", "", "--seeds=")
    assert proc.returncode == 0, proc.stderr
    assert values["config"] == "" and values["seeds"] == ""


def test_last_occurrence_wins(run):
    proc, values, _ = run("--stage", "1", "--stage=4")
    assert proc.returncode == 0, proc.stderr
    assert values["stage"] == "4"


def test_positional_arguments_preserved(run):
    proc, values, positional = run("first", "--stage", "3", "second arg", "-x", "--stop-stage=4", "last")
    assert proc.returncode == 0, proc.stderr
    assert values["stage"] == "3" and values["stop_stage"] == "4"
    assert values["nargs"] == "4"
    assert positional == ["first", "second arg", "-x", "last"]
    assert "leaked" not in values


@pytest.mark.parametrize(
    "args, named",
    [
        (["--stge", "3"], "--stge"),
        (["--no-such-option=1"], "--no_such_option"),
        (["--stage", "1", "--bogus", "2"], "--bogus"),
        (["--bad.name=1"], "--bad.name"),
    ],
)
def test_unknown_option_is_an_error(run, args, named):
    proc, values, _ = run(*args)
    assert proc.returncode != 0
    assert "unknown option" in proc.stderr and named in proc.stderr
    assert "reached" not in values  # the calling script stops


def test_missing_value_is_an_error(run):
    proc, values, _ = run("--stage", "3", "--stop_stage")
    assert proc.returncode != 0
    assert "--stop_stage" in proc.stderr and "needs a value" in proc.stderr
    assert "reached" not in values


def test_help_prints_usage(run):
    proc, values, _ = run("--help")
    assert proc.returncode == 0
    assert "Usage:" in proc.stdout and "--train_opts" in proc.stdout
    assert "reached" not in values


WITHOUT_HELP_MESSAGE = """\
#!/usr/bin/env bash
# Stage 1 of a corpus: its data dirs.
set -euo pipefail
data_dir=data
num_folds=5                 # 5: a speaker pair per fold
partitions=                 # a partitions file to use instead of the
                            # labels' column
unset CDPATH
cd "$(dirname "$0")"
. "{parse_options}"
late=1                      # not an option: declared after the parser
"""


@pytest.mark.parametrize("where", ["here", "elsewhere"])
def test_help_without_help_message_lists_the_options(tmp_path, where):
    """A stage script without its own help_message lists its header and every option it
    declares, with default and meaning, also when it changed into its folder first."""
    folder = tmp_path / "recipe" / "local"
    folder.mkdir(parents=True)
    script = folder / "data.sh"
    script.write_text(WITHOUT_HELP_MESSAGE.format(parse_options=PARSE_OPTIONS))
    cwd = folder if where == "here" else tmp_path
    name = "./data.sh" if where == "here" else "recipe/local/data.sh"
    proc = subprocess.run([BASH, name, "--help"], capture_output=True, text=True, timeout=20, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"Usage: {name} ")
    assert "Stage 1 of a corpus: its data dirs." in lines
    assert "  --data_dir        [data]" in lines
    assert "  --num_folds       [5]     5: a speaker pair per fold" in lines
    assert "  --partitions      []      a partitions file to use instead of the" in lines
    assert (
        "labels' column"
        in lines[lines.index("  --partitions      []      a partitions file to use instead of the") + 1]
    )
    assert "late" not in proc.stdout and "#!" not in proc.stdout and not proc.stderr


def test_environment_variable_is_not_an_option(run):
    proc, _, _ = run("--CRAB_TEST_UNDECLARED", "x", env={"CRAB_TEST_UNDECLARED": "1"})
    assert proc.returncode != 0


@pytest.mark.parametrize("args", [["--config", "--stop_stage", "4"], ["--train_opts", "--stop-stage", "4"]])
def test_an_option_for_a_value_is_an_error(run, args):
    """A forgotten value would take the next option's name ('--config --stop_stage 4': a
    config file named --stop_stage, and 4 left as an argument)."""
    proc, values, _ = run(*args)
    assert proc.returncode != 0
    assert f"option {args[0]} needs a value: it is followed by the option {args[1]}" in proc.stderr
    assert "reached" not in values


@pytest.mark.parametrize(
    "args", [["--train_opts", "--alpha=2"], ["--train_opts", "--debug"], ["--config=--stage"]]
)
def test_a_value_like_an_option_is_kept(run, args):
    """Overrides begin with --; a value that names no option, or is given with '=', is a value."""
    proc, values, _ = run(*args)
    assert proc.returncode == 0, proc.stderr
    name, _, value = "=".join(args).partition("=")
    assert values[name[2:]] == value


def test_an_internal_variable_is_not_an_option(tmp_path):
    script = tmp_path / "script.sh"
    script.write_text(f'stage=0\n_seen=1  # the script\'s own\n. "{PARSE_OPTIONS}"\necho "seen=$_seen"\n')
    for name in ("--_seen", "---seen"):
        proc = subprocess.run([BASH, str(script), name, "2"], capture_output=True, text=True, timeout=20)
        assert proc.returncode != 0 and "unknown option" in proc.stderr and "seen=" not in proc.stdout


def _scripts_with_options():
    """(folder to run from, script) of each script that parses its options with the parser."""
    listed = subprocess.run(
        ["git", "grep", "-l", "utils/parse_options.sh", "--", "*.sh", ":!utils/*"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    # a recipe's local/ script runs from its recipe folder
    return [
        (os.path.join(REPO, path.split("/local/")[0]), "local/" + path.split("/local/")[1])
        if "/local/" in path
        else (REPO, path)
        for path in listed
    ]


@pytest.mark.parametrize("cwd, script", _scripts_with_options(), ids=lambda value: value.replace(REPO, "."))
def test_every_option_a_script_accepts_is_in_its_help(cwd, script):
    """A variable the script sets before parsing its options and does not list in --help
    (its own bookkeeping) must not be settable from the command line."""
    text = open(os.path.join(cwd, script)).read()
    before = re.split(r"^[^#\n]*utils/parse_options\.sh", text, maxsplit=1, flags=re.M)[0]
    assigned = set(re.findall(r"(?:^|[\s;(&|])([a-z][a-z0-9_]*)=", before, flags=re.M))
    shown = subprocess.run([BASH, script, "--help"], cwd=cwd, capture_output=True, text=True, timeout=60)
    listed = set(re.findall(r"^\s+--([a-z0-9_]+)", shown.stdout, flags=re.M))
    assert shown.returncode == 0 and listed, shown.stderr
    for name in sorted(assigned - listed):
        # "--zz_last" without a value stops the parser after it took --name, if it did
        proc = subprocess.run(
            [BASH, script, f"--{name}", "x", "--zz_last"], cwd=cwd, capture_output=True, text=True, timeout=60
        )
        assert f"unknown option --{name}" in proc.stderr, (script, name, proc.stderr[-500:])
