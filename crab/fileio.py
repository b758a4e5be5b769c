"""Atomic file writes, for every file that must survive a kill or a power cut.

A file is written to a temporary file beside it, flushed to disk (fsync), renamed
over the old one, and the rename flushed too: a reader finds the old file or the
whole new one, never a torn one. A temporary name is hidden and unique to its
writer (``.<name>.<pid>.<random>.tmp``): two processes never write the same one,
and no glob of a folder's files (``utt2*``, ``*.wav``) sees it. A ``write`` that
raises leaves nothing behind; a kill leaves its temporary file, which a writer
holding the folder (a lock) may remove (``remove_temps``). A write the system refuses
(a full disk, a quota) is a ``WriteError`` naming the file, which is left as it was;
an output folder that cannot be made (``make_dirs``) is one naming the folder and why.
"""

import glob
import os
import secrets
import shutil

from crab.cli import UserError

TEMP_SUFFIX = ".tmp"


# torch.save's writer reports a failed write (a full disk) as a RuntimeError saying one of these
TORCH_WRITE_ERRORS = ("PytorchStreamWriter", "unexpected pos")


def is_write_failure(err):
    """Whether ``err`` is a write the system refused: an ``OSError``, or torch's writer's."""
    return isinstance(err, OSError) or (
        isinstance(err, RuntimeError) and any(text in str(err) for text in TORCH_WRITE_ERRORS)
    )


class WriteError(UserError, OSError):
    """A file could not be written (a full disk, a quota exceeded): the message names it; ``errno``
    is the failed write's."""

    def __init__(self, errno, message):
        super().__init__(message)
        self.errno = errno

    @classmethod
    def of(cls, path, err, then=None):
        """``cannot write <path> (<why>)[: <then>]`` for ``err``, the failed write of ``path``;
        ``then``: what is kept, and what to do."""
        why = getattr(err, "strerror", None) or err
        return cls(
            getattr(err, "errno", None), f"cannot write {path} ({why})" + (f": {then}" if then else "")
        )


def make_dirs(path, exist_ok=True):
    """``os.makedirs(path, exist_ok=exist_ok)`` for an output folder: one that cannot be made is a
    ``WriteError`` naming it and why (a file in the way of one of its folders, no permission, a
    full disk)."""
    try:
        os.makedirs(path, exist_ok=exist_ok)
    except OSError as err:
        blocker = file_in_the_way(path)
        why = f"a file named {blocker} is in the way" if blocker else err.strerror or err
        raise WriteError(err.errno, f"cannot create output folder {path}: {why}") from err


def file_in_the_way(path):
    """The first of ``path``'s folders, ``path`` included, that is there but is not a folder (a
    file, a dangling link), or None."""
    parts = os.path.normpath(path).split(os.sep)
    for end in range(1, len(parts) + 1):
        folder = os.sep.join(parts[:end]) or os.sep
        if os.path.lexists(folder) and not os.path.isdir(folder):
            return folder
    return None


def fsync(path):
    """Flush a file's or a directory's data and metadata to disk."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if os.path.isdir(path) else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_path(path):
    """A new temporary name beside ``path``, hidden, unique to this process and call."""
    folder, name = os.path.split(os.fspath(path))
    return os.path.join(folder, f".{name}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}")


def remove_temps(folder):
    """Remove the temporary files that killed writers left in ``folder``. Only for a
    writer that holds the folder: another one's temporary files would go too."""
    for tmp in glob.glob(os.path.join(glob.escape(folder), f".*{TEMP_SUFFIX}")):
        os.remove(tmp)


def stage(writes):
    """Write each ``(path, write)`` of ``writes`` to a temporary file, ``write(tmp)``,
    flushed to disk; returns the ``(tmp, path)`` pairs, for ``commit``. If one raises,
    every temporary file written so far is removed (an ``OSError`` becomes a ``WriteError``
    naming its ``path``)."""
    staged = []
    try:
        for path, write in writes:
            tmp = temp_path(path)
            staged.append((tmp, path))
            write(tmp)
            fsync(tmp)
    except BaseException as err:  # a KeyboardInterrupt too
        for tmp, _ in staged:
            if os.path.exists(tmp):
                os.remove(tmp)
        if staged and isinstance(err, OSError) and not isinstance(err, WriteError):
            raise WriteError.of(staged[-1][1], err, "it is left as it was") from err
        raise
    return staged


def commit(staged):
    """Rename each staged ``(tmp, path)`` over its ``path``, then flush the renames to disk."""
    for tmp, path in staged:
        os.replace(tmp, path)
    for folder in dict.fromkeys(os.path.dirname(os.path.abspath(path)) for _, path in staged):
        fsync(folder)


def write_atomic(path, write):
    """Replace ``path`` with what ``write(tmp)`` writes to a temporary file: after a
    kill or a power cut ``path`` is the old file or the whole new one."""
    commit(stage([(path, write)]))


def replace_dir(new, out, old):
    """Put the directory ``new`` in the place of ``out``: the old one is renamed to ``old``,
    ``new`` renamed to ``out``, then ``old`` removed; when the second rename fails, the old
    one is put back. At no point is there no ``out`` (bar a kill between the two renames,
    which leaves it at ``old``)."""
    if os.path.exists(out):
        os.replace(out, old)
    try:
        os.replace(new, out)
    except BaseException:
        if os.path.exists(old) and not os.path.exists(out):
            os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def append_lines(file, lines, sync=True):
    """Append ``lines`` to ``file`` (open in text mode for writing), fsync'ed with ``sync``.
    Written past the file's buffer, which a write that fails (a full disk) would leave for
    closing to write again: the failure is one ``WriteError`` naming the file, whose earlier
    lines stay (and a cut-off last one, for its reader to drop)."""
    data = memoryview("".join(lines).encode(file.encoding))
    try:
        file.flush()
        while data:
            data = data[os.write(file.fileno(), data) :]
        if sync:
            os.fsync(file.fileno())
    except OSError as err:
        raise WriteError.of(
            file.name,
            err,
            "its lines before are kept, and the same command run again (once there is room) goes on "
            "from them",
        ) from err


def text_writer(text):
    """A ``write(tmp)`` of ``text``, UTF-8, for ``stage`` and ``write_atomic``."""

    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return write


def write_text_atomic(path, text):
    """``write_atomic`` of ``text``, UTF-8."""
    write_atomic(path, text_writer(text))
