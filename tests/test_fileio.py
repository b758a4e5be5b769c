"""crab.fileio: the one atomic write (temporary file, fsync, rename, fsync of the folder)."""

import errno
import os

import pytest

from crab.cli import UserError
from crab.fileio import remove_temps, temp_path, write_atomic, write_text_atomic


def test_a_write_that_raises_leaves_the_old_file_and_no_temporary_file(tmp_path):
    path = tmp_path / "table"
    path.write_text("old\n")

    def torn(tmp):
        with open(tmp, "w") as f:
            f.write("half of the ne")
        raise KeyboardInterrupt  # Ctrl-C midway

    with pytest.raises(KeyboardInterrupt):
        write_atomic(str(path), torn)
    assert path.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["table"]


def test_a_full_disk_is_an_error_naming_the_file_which_keeps_its_old_content(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("old\n")

    def full(tmp):
        with open(tmp, "w") as f:
            f.write("half of the ne")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(UserError, match=f"cannot write {path} \\(No space left on device\\)") as err:
        write_atomic(str(path), full)
    assert isinstance(err.value, OSError) and err.value.errno == errno.ENOSPC  # still an OSError
    assert path.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["RESULTS.md"]


def test_two_writers_of_one_file_never_share_a_temporary_file(tmp_path):
    path = str(tmp_path / "results")
    assert temp_path(path) != temp_path(path)
    assert os.path.basename(temp_path(path)).startswith(f".results.{os.getpid()}.")

    def outer(tmp):
        with open(tmp, "w") as f:
            f.write("outer\n")
        write_text_atomic(path, "inner\n")  # another writer, between this one's write and rename

    write_atomic(path, outer)
    with open(path) as f:
        assert f.read() == "outer\n"
    assert os.listdir(tmp_path) == ["results"]


def test_the_file_is_on_disk_before_its_rename_and_the_rename_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("rename", src))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    write_text_atomic(str(tmp_path / "index.json"), "{}")
    [(_, tmp)] = [e for e in events if e[0] == "rename"]
    assert events == [("fsync", tmp), ("rename", tmp), ("fsync", str(tmp_path))]


def test_remove_temps_removes_only_temporary_files(tmp_path):
    (tmp_path / "shard.safetensors").write_text("kept")
    (tmp_path / ".lock").write_text("kept")
    with open(temp_path(str(tmp_path / "shard.safetensors")), "w") as f:
        f.write("left by a kill")
    remove_temps(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == [".lock", "shard.safetensors"]
