"""tools/install.sh decisions (through --dry_run, with the detection faked) and the
test suite's own precondition (tests/conftest.py stops at once without a system tool)."""

import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REQUIRED_TOOLS, ROOT

INSTALL = os.path.join(ROOT, "tools", "install.sh")
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
CPU_PIN = "torch==2.13.0+cpu"


def requirements_pin(package):
    with open(os.path.join(ROOT, "tools", "requirements.txt")) as f:
        return re.search(rf"^{package}==(\S+)", f.read(), re.M).group(1)


CUDA_VERSION = requirements_pin("torchaudio")  # the CUDA torch matches the torchaudio pin


def path_without(tmp_path, missing=(), present=()):
    """A PATH of one folder: symlinks to every command on PATH but ``missing``, plus
    stand-ins for ``present`` that succeed and do nothing."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for folder in reversed(os.environ["PATH"].split(os.pathsep)):  # earlier folders win
        for tool in os.listdir(folder) if os.path.isdir(folder) else ():
            if tool not in missing and os.access(os.path.join(folder, tool), os.X_OK):
                (bin_dir / tool).unlink(missing_ok=True)
                (bin_dir / tool).symlink_to(os.path.join(folder, tool))
    for tool in present:
        (bin_dir / tool).unlink(missing_ok=True)
        (bin_dir / tool).write_text("#!/bin/sh\nexit 0\n")
        (bin_dir / tool).chmod(0o755)
    return str(bin_dir)


def dry_run(tmp_path, *args, torch_state="none", gpu="no", apt="yes", path=None, **env):
    """Run install.sh --dry_run for a venv that does not exist yet; returns the result
    with ``.commands``, the "+ " lines with the venv path written VENV."""
    venv = tmp_path / "venv"
    full_env = dict(
        os.environ,
        CRAB_VENV=str(venv),
        CRAB_INSTALL_TORCH_STATE=torch_state,
        CRAB_INSTALL_GPU=gpu,
        CRAB_INSTALL_APT=apt,
    )
    full_env.pop("CRAB_TORCH", None)
    full_env.update(env)
    if path is not None:
        full_env["PATH"] = path
    result = subprocess.run(
        ["bash", INSTALL, "--dry_run", *args], env=full_env, capture_output=True, text=True, timeout=60
    )
    result.commands = [
        line[2:].replace(str(venv), "VENV") for line in result.stdout.splitlines() if line.startswith("+ ")
    ]
    return result


def pip(*args):
    return "VENV/bin/python -m pip --disable-pip-version-check -q " + " ".join(args)


def torch_commands(commands):
    return [c for c in commands if "torch" in c and "requirements.txt" not in c and "constraint" not in c]


@pytest.fixture
def tools_present(tmp_path):
    return path_without(tmp_path, present=REQUIRED_TOOLS)


def test_no_torch_no_gpu_installs_the_cpu_build_configured_pip_first(tmp_path, tools_present):
    result = dry_run(tmp_path, path=tools_present)
    assert result.returncode == 0, result.stderr
    assert result.commands == [
        "python3 -m venv VENV",
        pip("install", CPU_PIN),
        "(if that fails) " + pip("install", "--index-url", CPU_INDEX, CPU_PIN),
        "echo torch==2.13.0+cpu > VENV/torch-constraint.txt",
        pip(
            "install",
            "-c",
            "VENV/torch-constraint.txt",
            "-r",
            os.path.join(ROOT, "tools", "requirements.txt"),
        ),
        pip("install", "-c", "VENV/torch-constraint.txt", "--no-deps", "-e", ROOT),
        "(the stamp) > VENV/.crab-requirements",
    ]
    assert "NVIDIA GPU: no; --torch auto" in result.stdout
    assert "Dry run: nothing changed" in result.stdout
    assert not (tmp_path / "venv").exists()


def test_the_torch_of_an_active_virtual_environment_is_not_kept(tmp_path, tools_present):
    """A venv made from a venv's python sees the base interpreter's packages: keeping the
    active venv's torch (--system-site-packages) left the new venv without one."""
    assert sys.prefix != sys.base_prefix  # the tests run in tools/venv
    result = dry_run(tmp_path, torch_state="", PYTHON=sys.executable, path=tools_present)
    assert result.returncode == 0, result.stderr
    assert "is a virtual environment's python (one is active?): its torch cannot be kept" in result.stdout
    assert result.commands[:2] == [f"{sys.executable} -m venv VENV", pip("install", CPU_PIN)]


def test_another_system_than_linux_is_refused_before_anything_is_done(tmp_path, tools_present):
    uname = tmp_path / "bin" / "uname"
    uname.unlink()  # a link to the system's uname: written through, it would replace that
    uname.write_text("#!/bin/sh\necho Darwin\n")
    uname.chmod(0o755)
    result = dry_run(tmp_path, path=tools_present)
    assert result.returncode == 2 and result.commands == [], result.stdout
    assert result.stderr == (
        "install.sh: Crab runs on Linux only (the recipes use GNU coreutils and /proc), "
        "and this is Darwin: macOS and Windows are not supported\n"
    )


def test_no_torch_with_gpu_installs_the_cuda_build_from_pypi(tmp_path, tools_present):
    result = dry_run(tmp_path, gpu="yes", path=tools_present)
    assert result.returncode == 0, result.stderr
    assert torch_commands(result.commands) == [
        pip("install", f"torch=={CUDA_VERSION}", f"torchaudio=={CUDA_VERSION}")
    ]
    assert f"echo torch=={CUDA_VERSION} > VENV/torch-constraint.txt" in result.commands
    assert "--index-url" not in result.stdout and "+cpu" not in result.stdout


@pytest.mark.parametrize(
    "state,venv_cmd",
    [
        ("venv-cpu", None),
        ("venv-cuda", None),
        ("system-cuda", "python3 -m venv --system-site-packages VENV"),
        ("system-cpu:2.7.1", "python3 -m venv --system-site-packages VENV"),
    ],
)
@pytest.mark.parametrize("gpu", ["yes", "no"])
def test_a_working_torch_is_kept(tmp_path, tools_present, state, venv_cmd, gpu):
    result = dry_run(tmp_path, torch_state=state, gpu=gpu, path=tools_present)
    assert result.returncode == 0, result.stderr
    assert torch_commands(result.commands) == []
    assert "Keeping torch" in result.stdout
    assert [c for c in result.commands if " -m venv " in c] == ([venv_cmd] if venv_cmd else [])
    kept = state.partition(":")[2] or (CUDA_VERSION if "cuda" in state else "2.13.0+cpu")
    assert f"echo torch=={kept} > VENV/torch-constraint.txt" in result.commands


def test_a_torch_older_than_2_6_is_replaced(tmp_path, tools_present):
    result = dry_run(tmp_path, torch_state="venv-cpu:2.1.0", path=tools_present)
    assert result.returncode == 0, result.stderr
    assert "older than 2.6" in result.stdout
    assert torch_commands(result.commands)[0] == pip("install", CPU_PIN)
    # an old system torch is not shared with the venv either
    result = dry_run(tmp_path, torch_state="system-cuda:2.5.1", gpu="yes", path=tools_present)
    assert result.commands[0] == "python3 -m venv VENV"
    assert torch_commands(result.commands) == [
        pip("install", f"torch=={CUDA_VERSION}", f"torchaudio=={CUDA_VERSION}")
    ]


@pytest.mark.parametrize("how", ["option", "option=", "env"])
@pytest.mark.parametrize("state", ["none", "venv-cuda", "system-cuda"])
def test_torch_cpu_forces_the_cpu_build_over_a_gpu(tmp_path, tools_present, how, state):
    args, env = {
        "option": (["--torch", "cpu"], {}),
        "option=": (["--torch=cpu"], {}),
        "env": ([], {"CRAB_TORCH": "cpu"}),
    }[how]
    result = dry_run(tmp_path, *args, torch_state=state, gpu="yes", path=tools_present, **env)
    assert result.returncode == 0, result.stderr
    assert torch_commands(result.commands) == [
        pip("install", CPU_PIN),
        "(if that fails) " + pip("install", "--index-url", CPU_INDEX, CPU_PIN),
    ]
    assert "--system-site-packages" not in result.stdout


def test_the_option_overrides_crab_torch(tmp_path, tools_present):
    result = dry_run(tmp_path, "--torch", "cuda", gpu="no", path=tools_present, CRAB_TORCH="cpu")
    assert result.returncode == 0, result.stderr
    assert torch_commands(result.commands) == [
        pip("install", f"torch=={CUDA_VERSION}", f"torchaudio=={CUDA_VERSION}")
    ]
    assert "no NVIDIA GPU detected" in result.stdout


@pytest.mark.parametrize("state", ["none", "venv-cpu:2.4.0"])
def test_torch_keep_without_a_torch_is_an_error_naming_the_option(tmp_path, tools_present, state):
    result = dry_run(tmp_path, "--torch", "keep", torch_state=state, path=tools_present)
    assert result.returncode != 0
    assert "--torch keep" in result.stderr
    assert torch_commands(result.commands) == [] and " -m venv " not in result.stdout


@pytest.mark.parametrize(
    "args,env,message",
    [
        (["--torch", "gpu"], {}, "--torch must be auto, cpu, cuda or keep (got 'gpu')"),
        (["--torch"], {}, "--torch needs a value"),
        ([], {"CRAB_TORCH": "rocm"}, "CRAB_TORCH must be auto, cpu, cuda or keep (got 'rocm')"),
        (["--stage", "1"], {}, "unknown option '--stage'"),
    ],
)
def test_bad_options_are_errors(tmp_path, tools_present, args, env, message):
    result = dry_run(tmp_path, *args, path=tools_present, **env)
    assert result.returncode != 0
    assert message in result.stderr
    assert result.commands == []


def test_help_documents_the_torch_choice():
    result = subprocess.run(["bash", INSTALL, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for text in (
        "--torch auto|cpu|cuda|keep",
        "CRAB_TORCH",
        "--dry_run",
        CPU_INDEX,
        "nvidia-smi",
        "--system-site-packages",
        "ffmpeg",
        "espeak-ng",
        "CRAB_INSTALL_GPU",
        "CRAB_INSTALL_TORCH_STATE",
    ):
        assert text in result.stdout


def test_gpu_detection_uses_nvidia_smi(tmp_path):
    path = path_without(tmp_path, present=(*REQUIRED_TOOLS, "nvidia-smi"))
    result = dry_run(tmp_path, path=path, CRAB_INSTALL_GPU="")
    assert result.returncode == 0, result.stderr
    assert "NVIDIA GPU: yes" in result.stdout
    assert torch_commands(result.commands) == [
        pip("install", f"torch=={CUDA_VERSION}", f"torchaudio=={CUDA_VERSION}")
    ]


STUB_PYTHON = """#!/bin/bash
# A venv python that records its calls: pip fails to find the CPU torch on its configured
# sources and finds it on PyTorch's CPU index; everything else succeeds.
echo "$*" >> "$(dirname "$0")/calls.log"
case "$*" in
  "-m pip "*--index-url*) ;;
  "-m pip "*"install torch==2.13.0+cpu") echo "ERROR: No matching distribution found" >&2; exit 1 ;;
  "-c "*"version('torch')"*) echo 2.13.0+cpu ;;  # the installed distribution's version
esac
exit 0
"""


def test_cpu_build_falls_back_to_the_pytorch_index_and_a_second_run_changes_nothing(tmp_path, tools_present):
    """The real (not dry) run on a venv whose python is a stub: nothing is downloaded."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text(STUB_PYTHON)
    (venv / "bin" / "python").chmod(0o755)
    env = dict(
        os.environ,
        CRAB_VENV=str(venv),
        CRAB_INSTALL_GPU="no",
        CRAB_INSTALL_TORCH_STATE="none",
        PATH=tools_present,
    )
    result = subprocess.run(["bash", INSTALL], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    calls = (venv / "bin" / "calls.log").read_text().splitlines()
    pip_calls = [c.replace(str(venv), "VENV") for c in calls if c.startswith("-m pip")]
    assert [c for c in pip_calls if "torch==" in c] == [
        "-m pip --disable-pip-version-check -q install torch==2.13.0+cpu",
        f"-m pip --disable-pip-version-check -q install --index-url {CPU_INDEX} torch==2.13.0+cpu",
    ]
    assert len(pip_calls) == 4  # and the requirements, and crab
    assert f"trying {CPU_INDEX}" in result.stdout
    assert "No matching distribution" in (venv / "pip-torch.log").read_text()
    assert (venv / "torch-constraint.txt").read_text() == "torch==2.13.0+cpu\n"
    assert (venv / ".crab-requirements").is_file()

    (venv / "bin" / "calls.log").unlink()
    env["CRAB_INSTALL_TORCH_STATE"] = "venv-cpu"
    result = subprocess.run(["bash", INSTALL], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Dependencies and crab already installed" in result.stdout
    assert not [c for c in (venv / "bin" / "calls.log").read_text().splitlines() if c.startswith("-m pip")]


def test_a_cpu_build_found_nowhere_points_to_the_cuda_build_from_pypi(tmp_path, tools_present):
    """PyTorch's CPU index out of reach (and the CPU torch not on pip's own sources): the
    error says what installs a torch from PyPI alone, after pip's own error."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    stub = '#!/bin/bash\ncase "$*" in *"install"*"torch==2.13.0+cpu") exit 1 ;; esac\nexit 0\n'
    (venv / "bin" / "python").write_text(stub)
    (venv / "bin" / "python").chmod(0o755)
    env = dict(os.environ, CRAB_VENV=str(venv), CRAB_INSTALL_GPU="no", CRAB_INSTALL_TORCH_STATE="none")
    result = subprocess.run(
        ["bash", INSTALL], env=dict(env, PATH=tools_present), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert f"torch==2.13.0+cpu could not be installed from {CPU_INDEX} either" in result.stderr
    assert "tools/install.sh --torch cuda installs the CUDA build from PyPI" in result.stderr
    assert not (venv / ".crab-requirements").exists()


STUB_PYTHON_PYPI_CUDA = """#!/bin/bash
# A venv python after PyPI's CUDA torch: torch.__version__ has a local label (+cu130) that
# the installed distribution's version, the one pip compares pins with, does not have.
echo "$*" >> "$(dirname "$0")/calls.log"
case "$1" in  # code that asks for the distribution's version gets it, else torch.__version__
  -c) case "$2" in
        *"version('torch')"*) echo "${CUDA_VERSION}" ;;
        *"torch.__version__"*) echo "${CUDA_VERSION}+cu130" ;;
      esac ;;
  -) if grep -q "version('torch')" -; then echo "cuda ${CUDA_VERSION}"
     else echo "cuda ${CUDA_VERSION}+cu130"; fi ;;
esac
exit 0
"""


def test_the_cuda_build_from_pypi_is_pinned_by_its_installed_version(tmp_path, tools_present):
    """pip reads a pin of torch.__version__ (2.11.0+cu130) as a torch that is not installed,
    and the requirements fail to resolve; the pin is the distribution's version."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text(STUB_PYTHON_PYPI_CUDA)
    (venv / "bin" / "python").chmod(0o755)
    env = dict(os.environ, CRAB_VENV=str(venv), CRAB_INSTALL_GPU="no", PATH=tools_present)
    env.update(CUDA_VERSION=CUDA_VERSION, CRAB_INSTALL_TORCH_STATE="none")
    result = subprocess.run(
        ["bash", INSTALL, "--torch", "cuda"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (venv / "torch-constraint.txt").read_text() == f"torch=={CUDA_VERSION}\n"

    del env["CRAB_INSTALL_TORCH_STATE"]  # the real probe of the venv's torch
    result = subprocess.run(["bash", INSTALL], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"torch: {CUDA_VERSION} (cuda build) found in the venv python" in result.stdout
    assert "Dependencies and crab already installed" in result.stdout


def test_a_torch_without_package_metadata_is_probed_by_its_own_version(tmp_path):
    """A torch from a module system or a source tree on PYTHONPATH has no dist-info: its
    version is torch.__version__, and it is kept (it was read as no version, 'older than 2.6')."""
    fake = tmp_path / "site" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        "import types\n__version__ = '2.7.0'\nversion = types.SimpleNamespace(cuda='12.6')\n"
        "def zeros(n):\n    return types.SimpleNamespace(add=lambda x: None)\n"
    )
    python = tmp_path / "python3"  # without site-packages: no torch metadata anywhere
    python.write_text(f'#!/bin/sh\nexec {sys.executable} -S "$@"\n')
    python.chmod(0o755)
    result = dry_run(tmp_path, torch_state="", PYTHON=str(python), PYTHONPATH=str(tmp_path / "site"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "torch: 2.7.0 (cuda build) found in the system python" in result.stdout
    assert "not kept" not in result.stdout
    assert result.commands.count("echo torch==2.7.0 > VENV/torch-constraint.txt") == 1  # kept, pinned


def test_missing_system_tools_are_installed_with_apt_get(tmp_path):
    path = path_without(tmp_path, missing=REQUIRED_TOOLS)
    result = dry_run(tmp_path, torch_state="venv-cpu", path=path)
    assert result.returncode == 0, result.stderr
    for tool in REQUIRED_TOOLS:
        install = f"apt-get install -y -q --no-install-recommends {tool}"
        assert install in result.commands
        assert f"(if that fails) apt-get update -q && {install}" in result.commands


def test_missing_system_tools_without_root_say_how_to_install_them(tmp_path):
    path = path_without(tmp_path, missing=["ffmpeg"], present=["espeak-ng"])
    result = dry_run(tmp_path, torch_state="venv-cpu", apt="no", path=path)
    assert result.returncode == 0, result.stderr
    assert not [c for c in result.commands if "apt-get" in c]
    assert (
        "ffmpeg: not found and not installed (needs root and apt-get); install it by hand: "
        "sudo apt-get install ffmpeg" in result.stdout
    )
    assert "espeak-ng: already present" in result.stdout


@pytest.mark.skipif(
    not os.path.isfile(os.path.join(ROOT, "tools", "venv", ".crab-requirements")),
    reason="tools/install.sh has not been run",
)
def test_installed_environment_is_up_to_date():
    """The real detection on tools/venv: a second install run would change nothing."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRAB_")}
    result = subprocess.run(
        ["bash", INSTALL, "--dry_run"], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert [line for line in result.stdout.splitlines() if line.startswith("+ ")] == [], (
        "tools/venv is out of date: run tools/install.sh"
    )
    assert "Keeping torch" in result.stdout and "Dependencies and crab already installed" in result.stdout


@pytest.mark.parametrize("missing", [("ffmpeg",), REQUIRED_TOOLS])
def test_suite_stops_at_once_naming_a_missing_tool(tmp_path, missing):
    path = path_without(tmp_path, missing=missing)
    target = os.path.join(ROOT, "tests", "test_install.py") + "::test_help_documents_the_torch_choice"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", target],
        env=dict(os.environ, PATH=path),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = (result.stdout + result.stderr).strip()
    assert result.returncode != 0
    assert output.count("\n") == 0, output  # one line
    assert f"Missing system tool(s) on PATH: {', '.join(missing)}." in output
    assert "tools/install.sh" in output
    assert "Traceback" not in output and "passed" not in output


def test_suite_runs_with_the_tools_present(tmp_path):
    path = path_without(tmp_path, present=REQUIRED_TOOLS)
    target = os.path.join(ROOT, "tests", "test_install.py") + "::test_help_documents_the_torch_choice"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", target],
        env=dict(os.environ, PATH=path),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


def test_a_python_older_than_3_11_is_refused_before_anything_is_done(tmp_path, tools_present):
    old = tmp_path / "python3.10"
    old.write_text('#!/bin/sh\ncase "$1" in -V) echo "Python 3.10.12" ;; *) exit 1 ;; esac\n')
    old.chmod(0o755)
    result = dry_run(tmp_path, path=tools_present, PYTHON=str(old))
    assert result.returncode == 2 and result.commands == []
    assert f"Python 3.11 or newer is needed, {old} is Python 3.10.12: PYTHON=python3.11" in result.stderr
    missing = dry_run(tmp_path, path=tools_present, PYTHON=str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "install Python 3.11 or newer, or name it" in missing.stderr
    assert dry_run(tmp_path, path=tools_present, PYTHON=sys.executable).returncode == 0


def python_without_ensurepip(tmp_path):
    """The test's python, but without ensurepip (Debian and Ubuntu without pythonX.Y-venv)."""
    stub = tmp_path / "python3"
    stub.write_text(f'#!/bin/bash\n[ "$*" = "-c import ensurepip" ] && exit 1\nexec {sys.executable} "$@"\n')
    stub.chmod(0o755)
    return str(stub)


def test_a_python_without_ensurepip_gets_its_venv_package_with_apt_get(tmp_path, tools_present):
    """python -m venv would stop halfway, leaving a venv without pip."""
    package = "python{}.{}-venv".format(*sys.version_info[:2])
    result = dry_run(tmp_path, path=tools_present, PYTHON=python_without_ensurepip(tmp_path))
    assert result.returncode == 0, result.stderr
    install = f"apt-get install -y -q --no-install-recommends {package}"
    assert result.commands[:2] == [install, f"(if that fails) apt-get update -q && {install}"]
    assert "has no ensurepip module): installing the Debian package" in result.stdout


def test_a_python_without_ensurepip_and_no_apt_get_is_refused_naming_the_package(tmp_path, tools_present):
    package = "python{}.{}-venv".format(*sys.version_info[:2])
    result = dry_run(tmp_path, path=tools_present, apt="no", PYTHON=python_without_ensurepip(tmp_path))
    assert result.returncode == 2 and result.commands == []
    assert "cannot make a virtual environment with pip" in result.stderr
    assert f"sudo apt-get install {package}" in result.stderr


def test_a_venv_left_without_pip_is_named_with_how_to_start_again(tmp_path, tools_present):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text('#!/bin/bash\n[ "$*" = "-c import pip" ] && exit 1\nexit 0\n')
    (venv / "bin" / "python").chmod(0o755)
    env = dict(os.environ, CRAB_VENV=str(venv), CRAB_INSTALL_GPU="no", PATH=tools_present)
    result = subprocess.run(["bash", INSTALL], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"{venv} has no pip (python -m venv stopped halfway): remove it, rm -r {venv}" in result.stderr


def fake_venv(venv, made_in):
    """A venv whose python passes install.sh's checks, made (its activate says) in ``made_in``."""
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("#!/bin/bash\nexit 0\n")
    (venv / "bin" / "python").chmod(0o755)
    (venv / "bin" / "activate").write_text(f'VIRTUAL_ENV="{made_in}"\nexport VIRTUAL_ENV\n')


def test_a_venv_moved_with_its_checkout_is_made_again(tmp_path, tools_present):
    venv = tmp_path / "venv"
    fake_venv(venv, tmp_path / "old_checkout" / "tools" / "venv")  # the checkout was mv'd since
    result = dry_run(tmp_path, torch_state="venv-cpu", path=tools_present)
    assert result.returncode == 0, result.stderr
    assert f"{venv} was made in {tmp_path}/old_checkout/tools/venv (moved or copied since)" in result.stdout
    assert "rm -rf VENV" in result.commands


def test_a_venv_made_where_it_is_is_kept(tmp_path, tools_present):
    venv = tmp_path / "venv"
    fake_venv(venv, venv)
    result = dry_run(tmp_path, torch_state="venv-cpu", path=tools_present)
    assert result.returncode == 0, result.stderr
    assert "made in" not in result.stdout and "rm -rf VENV" not in result.commands


def test_the_torch_just_installed_is_pinned_without_importing_it(tmp_path, tools_present):
    """Just installed, before numpy, torch warns 'Failed to initialize NumPy' on import: the pin
    is read from its package metadata, and the install's log has no such warning."""
    site = tmp_path / "site"
    (site / "torch").mkdir(parents=True)
    (site / "torch" / "__init__.py").write_text(
        "import warnings\nwarnings.warn(\"Failed to initialize NumPy: No module named 'numpy'\")\n"
    )
    (site / "torch-2.13.0+cpu.dist-info").mkdir()
    (site / "torch-2.13.0+cpu.dist-info" / "METADATA").write_text("Name: torch\nVersion: 2.13.0+cpu\n")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text(  # pip and the final imports stubbed, the rest real
        '#!/bin/bash\ncase "$1 $2" in\n'
        '  "-m pip"*|*"import pip"|*"import torchaudio"|*"import crab"*) exit 0 ;;\nesac\n'
        f'PYTHONPATH={site} exec {sys.executable} -S "$@"\n'
    )
    (venv / "bin" / "python").chmod(0o755)
    env = dict(os.environ, CRAB_VENV=str(venv), CRAB_INSTALL_GPU="no", CRAB_INSTALL_TORCH_STATE="none")
    result = subprocess.run(
        ["bash", INSTALL], env=dict(env, PATH=tools_present), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (venv / "torch-constraint.txt").read_text() == "torch==2.13.0+cpu\n"
    assert "NumPy" not in result.stdout + result.stderr


@pytest.mark.parametrize("gpu", ["yes", "no"])
def test_where_there_is_a_gpu_the_install_ends_saying_whether_torch_uses_it(tmp_path, tools_present, gpu):
    """A CUDA torch that cannot use the GPU (a driver too old for its CUDA) installs and imports
    fine, and the first training stops on its device: the install says so where it can be fixed."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    answer = '  -c) case "$2" in *gpu_use*) echo "WARNING: stub torch cannot use the GPU" ;; esac ;;\n'
    (venv / "bin" / "python").write_text(
        STUB_PYTHON_PYPI_CUDA.replace('case "$1" in', 'case "$1" in\n' + answer, 1)
    )
    (venv / "bin" / "python").chmod(0o755)
    env = dict(os.environ, CRAB_VENV=str(venv), CRAB_INSTALL_GPU=gpu, PATH=tools_present)
    env.update(CUDA_VERSION=CUDA_VERSION, CRAB_INSTALL_TORCH_STATE="none")
    result = subprocess.run(["bash", INSTALL], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    asked = [call for call in (venv / "bin" / "calls.log").read_text().splitlines() if "gpu_use" in call]
    assert len(asked) == (gpu == "yes")
    assert ("WARNING: stub torch cannot use the GPU" in result.stdout) == (gpu == "yes")


def test_a_pip_install_of_the_checkout_holds_every_file_of_the_package(tmp_path):
    """``pip install <checkout>`` into another environment (to load a shared model with
    ``foreign_class``): the installed crab holds every file git tracks under crab/, its
    inference template among them, and its packaging reads that template from there."""
    tracked = subprocess.run(
        ["git", "ls-files", "setup.py", "crab"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    source, site = tmp_path / "checkout", tmp_path / "site"
    for name in tracked:  # a copy: pip builds in the source tree (its build/ folder)
        os.makedirs(source / os.path.dirname(name), exist_ok=True)
        shutil.copy(os.path.join(ROOT, name), source / name)
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
    subprocess.run([*pip, "--target", str(site), str(source)], check=True, capture_output=True, timeout=300)
    installed = {
        os.path.relpath(os.path.join(folder, name), site)
        for folder, dirs, names in os.walk(site / "crab")
        for name in names
        if "__pycache__" not in folder
    }
    assert installed == {name for name in tracked if name.startswith("crab/")}
    probe = "import crab, crab.packaging as p; print(crab.__file__); print(len(p.inference_template()))"
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out[0] == str(site / "crab" / "__init__.py") and int(out[1]) > 0
