"""Whether torch.compile can build code here. Inductor writes C++ for the CPU and builds it
with the compiler its ``cpp.cxx`` setting names (``$CXX``, else ``g++``); on CUDA it writes
Triton kernels, and Triton builds their launchers with a C compiler (``$CC``, else ``gcc``,
else ``clang``) against Python's headers. Without them, the first compiled step stops with an
error from deep inside torch, after the data and the model were loaded; asking before saves
that wait."""

import os
import shutil
import sys
import sysconfig

import torch

INSTALL_HINT = (
    "install one (Debian, Ubuntu: apt-get install gcc g++), name it with {var}, or leave --compile out"
)


def _cpp_compilers():
    """The C++ compilers inductor looks for, in its order (``torch._inductor.config.cpp.cxx``,
    without its ``None`` entry: an opt-in download of gcc through conda, not done here)."""
    from torch._inductor import config

    candidates = config.cpp.cxx if isinstance(config.cpp.cxx, list | tuple) else (config.cpp.cxx,)
    return [name for name in candidates if name]


def _triton_c_compiler():
    """The C compiler Triton would use (``$CC``, else gcc, else clang), or None."""
    named = os.environ.get("CC")
    if named:
        return shutil.which(named)
    return shutil.which("gcc") or shutil.which("clang")


def compiler_for(device):
    """The path of the compiler torch.compile would build code for ``device`` with, or None
    (not found, or a device other than the CPU and CUDA)."""
    kind = torch.device(device).type
    if kind == "cuda":
        return _triton_c_compiler()
    if kind == "cpu":
        return next(filter(None, map(shutil.which, _cpp_compilers())), None)
    return None


def _python_headers_missing():
    """The folder where Python's headers should be, when it has no Python.h (Debian and Ubuntu
    ship them apart, in pythonX.Y-dev), else None."""
    include = sysconfig.get_paths()["include"]
    return None if os.path.exists(os.path.join(include, "Python.h")) else include


def compiler_missing(device):
    """Why torch.compile cannot build code for ``device`` (``"cpu"``, ``"cuda:0"``, ...) on
    the machine it runs on, or None when the compiler it needs is found (or ``device`` is neither)."""
    kind = torch.device(device).type
    if kind == "cuda" and compiler_for(device) and (include := _python_headers_missing()):
        version = f"python{sys.version_info.major}.{sys.version_info.minor}"
        return (
            f"torch.compile on {device} builds Triton kernels, whose launchers Triton compiles "
            f"against Python's headers, and there is no Python.h in {include}: install them "
            f"(Debian, Ubuntu: apt-get install {version}-dev), or leave --compile out"
        )
    if kind not in ("cpu", "cuda") or compiler_for(device):
        return None
    if kind == "cuda":
        named = os.environ.get("CC")
        found = f"$CC names {named!r}, not found" if named else "no gcc or clang on PATH"
        return (
            f"torch.compile on {device} builds Triton kernels, and Triton needs a C compiler: "
            f"{found}; " + INSTALL_HINT.format(var="CC")
        )
    return (
        f"torch.compile on {device} builds C++ code, and no C++ compiler is found "
        f"(looked for {', '.join(_cpp_compilers())} on PATH); " + INSTALL_HINT.format(var="CXX")
    )
