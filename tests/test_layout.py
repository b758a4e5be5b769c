"""The package's layout: entry points (crab/bin/*) parse arguments and call the library;
the library never imports crab.bin, tests and recipes use crab.bin only as commands, and the
entry points stay a small part of the package; the README's layout names every module."""

import ast
import fnmatch
import glob
import os

from tests.conftest import ROOT

PACKAGE = os.path.join(ROOT, "crab")
BIN = os.path.join(PACKAGE, "bin")
# what a test or a recipe may take from an entry point: the command and its argument parser
COMMAND_NAMES = {"main", "parse_args"}


def python_files(folder):
    for base, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        yield from (os.path.join(base, name) for name in sorted(files) if name.endswith(".py"))


def imported_modules(path):
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def test_the_library_never_imports_crab_bin():
    offenders = [
        f"{os.path.relpath(path, ROOT)}: {module}"
        for path in python_files(PACKAGE)
        if not path.startswith(BIN + os.sep)
        for module in imported_modules(path)
        if module == "crab.bin" or module.startswith("crab.bin.")
    ]
    assert not offenders, "library modules importing entry points:\n" + "\n".join(offenders)


def bin_internals(path):
    """``(line, name)`` of each use in ``path`` of a name of a crab.bin module other than its command."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "crab.bin":
            modules.update(alias.asname or alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("crab.bin."):
            yield from (
                (node.lineno, f"{node.module}.{a.name}") for a in node.names if a.name not in COMMAND_NAMES
            )
        elif isinstance(node, ast.Import):
            modules.update(a.asname for a in node.names if a.asname and a.name.startswith("crab.bin."))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
            and node.attr not in COMMAND_NAMES
        ):
            yield node.lineno, f"{node.value.id}.{node.attr}"


def test_tests_and_recipes_use_entry_points_only_as_commands():
    paths = list(python_files(os.path.join(ROOT, "tests")))
    paths += sorted(glob.glob(os.path.join(ROOT, "egs", "*", "local", "*.py")))
    offenders = [
        f"{os.path.relpath(path, ROOT)}:{line}: {name}"
        for path in paths
        for line, name in bin_internals(path)
    ]
    assert not offenders, (
        "crab.bin internals used outside crab/bin (move them to the library):\n" + "\n".join(offenders)
    )


def non_empty_lines(path):
    with open(path, encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())


def test_entry_points_are_under_a_quarter_of_the_package():
    total = sum(non_empty_lines(path) for path in python_files(PACKAGE))
    entry_points = sum(non_empty_lines(path) for path in python_files(BIN))
    assert entry_points < 0.25 * total, f"crab/bin: {entry_points} of {total} non-empty lines"


def test_the_readme_layout_names_every_module():
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    layout = readme.split("## Layout", 1)[1]
    words = set(layout.replace("`", " ").split())
    modules = {os.path.basename(p) for p in glob.glob(os.path.join(PACKAGE, "*.py"))} - {"__init__.py"}
    named = {m for m in modules for word in words if fnmatch.fnmatchcase(m, word)}  # benchmarking*.py too
    assert sorted(modules - named) == []
