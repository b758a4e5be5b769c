"""torch.compile's compilers are looked for before a compiled run starts: a missing one is a
one-line error naming it, not an error from inside torch at the first step."""

import stat
import sysconfig

import pytest
from torch._inductor import config as inductor_config

from crab.bin.benchmark import parse_args
from crab.compilers import compiler_for, compiler_missing
from crab.experiment import check_compile
from crab.runconfig import ConfigError, parse_arguments


def fake_program(folder, name):
    path = folder / name
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def bare_path(tmp_path, monkeypatch):
    """A PATH with no compiler on it, neither CC nor CXX set, and Python's headers in
    ``tmp_path / "include"``."""
    folder = tmp_path / "bin"
    folder.mkdir()
    (tmp_path / "include").mkdir()
    (tmp_path / "include" / "Python.h").write_text("")
    real = sysconfig.get_paths()
    monkeypatch.setattr(sysconfig, "get_paths", lambda: {**real, "include": str(tmp_path / "include")})
    monkeypatch.setenv("PATH", str(folder))
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.delenv("CXX", raising=False)
    with inductor_config.patch({"cpp.cxx": (None, "g++")}):
        yield folder


def test_cuda_needs_the_c_compiler_triton_builds_with(bare_path, monkeypatch):
    missing = compiler_missing("cuda:0")
    assert "Triton needs a C compiler: no gcc or clang on PATH" in missing
    assert "apt-get install gcc g++), name it with CC, or leave --compile out" in missing
    clang = fake_program(bare_path, "clang")
    assert compiler_missing("cuda") is None and compiler_for("cuda") == str(clang)
    monkeypatch.setenv("CC", "/opt/cross/bin/cc")  # Triton takes CC as it is, gcc on PATH or not
    assert "$CC names '/opt/cross/bin/cc', not found" in compiler_missing("cuda")
    monkeypatch.setenv("CC", str(fake_program(bare_path, "cc")))
    assert compiler_missing("cuda") is None


def test_cuda_needs_pythons_headers_too(bare_path, tmp_path):
    """Triton compiles its launchers against Python.h, which Debian and Ubuntu ship apart."""
    fake_program(bare_path, "gcc")
    include = tmp_path / "include"
    (include / "Python.h").unlink()
    missing = compiler_missing("cuda:0")
    assert (
        f"whose launchers Triton compiles against Python's headers, and there is no Python.h in {include}"
        in (missing)
    )
    assert "apt-get install python3." in missing and "-dev), or leave --compile out" in missing
    assert compiler_missing("cpu") is not None and "Python.h" not in compiler_missing("cpu")  # g++ is missing
    (include / "Python.h").write_text("")
    assert compiler_missing("cuda:0") is None


def test_cpu_needs_the_cpp_compiler_inductor_is_set_to(bare_path):
    missing = compiler_missing("cpu")
    assert "no C++ compiler is found (looked for g++ on PATH)" in missing
    assert "name it with CXX" in missing
    gxx = fake_program(bare_path, "g++")
    assert compiler_missing("cpu") is None and compiler_for("cpu") == str(gxx)
    # inductor reads CXX once, into its setting: the setting is what is searched
    with inductor_config.patch({"cpp.cxx": (None, "clang++")}):
        assert "(looked for clang++ on PATH)" in compiler_missing("cpu")
    assert compiler_missing("meta") is None and compiler_for("meta") is None  # nothing built there


def test_compiled_training_is_refused_before_it_starts_without_a_compiler(bare_path):
    _, run_opts, _ = parse_arguments(
        ["hparams.yaml", "--compile", "--compile_using_dynamic_shape_tracing", "--device=cpu"]
    )
    with pytest.raises(ConfigError, match=r"^--compile: torch.compile on cpu builds C\+\+ code"):
        check_compile(run_opts, {})
    _, run_opts, _ = parse_arguments(["hparams.yaml", "--device=cpu"])
    check_compile(run_opts, {})  # not compiled: nothing to build


def test_compiled_benchmark_is_refused_without_a_compiler(bare_path, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--compile"])
    assert "--compile: torch.compile on cpu builds C++ code" in capsys.readouterr().err
    fake_program(bare_path, "g++")
    compiled = parse_args(["--compile", "--compile_mode", "reduce-overhead"])
    assert compiled.steps_only and compiled.compile_mode == "reduce-overhead"
