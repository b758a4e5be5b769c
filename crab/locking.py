"""One process at a time in a folder (a training run's output folder, a feature cache)
or on a file (``crab-infer``'s results).

``folder_lock(folder)`` holds ``fcntl.flock`` on ``<folder>/.lock`` for the duration
of a ``with`` block and writes who holds it (pid, host, start time, command) into the
file. The operating system releases the lock when the process ends, however it ends
(``kill -9`` included), so no stale lock is ever left to remove by hand; the file
itself stays, emptied on release (a killed holder's line stays, and means nothing once
unlocked): a line found in a locked file is then its holder's, once written.
``file_lock(path, ...)`` is the same on a lock file of the caller's choosing, and
``beside_lock(path)`` on ``<path>.lock``, for a file or folder that is replaced whole (a
lock inside a folder would be replaced with it).

flock is advisory and per open file: it excludes other processes on the same host,
and on network file systems where the kernel maps it to a byte-range lock (NFS v4,
Lustre with ``flock`` mounted) those on other hosts too.
"""

import contextlib
import fcntl
import logging
import os
import re
import shlex
import socket
import sys
import time

from crab.cli import UserError
from crab.fileio import WriteError, make_dirs

logger = logging.getLogger(__name__)

LOCK_FILE = ".lock"


class FolderLockedError(UserError, RuntimeError):
    """Another process holds the folder's lock."""


@contextlib.contextmanager
def file_lock(path, busy, error=FolderLockedError, wait=False):
    """Hold ``fcntl.flock`` on ``path`` (created) inside the block, with who holds it
    written into the file.

    Held by another process: ``wait`` blocks until it is released (logging who holds
    it), otherwise ``error(busy(holder))`` is raised at once, ``holder`` being the line
    the other process wrote. A lock file that cannot be created (a read-only folder) is a
    ``WriteError`` naming it.
    """
    make_dirs(os.path.dirname(os.path.abspath(path)))  # a file in the way of its folder: named
    try:  # a folder that cannot be written (read-only): said here, before any work
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not truncated: the holder's line stays
    except OSError as err:
        raise WriteError.of(path, err) from err
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            if not wait:
                raise error(busy(holder)) from None
            # a warning: said also by tools that configure no logging (Python's last resort)
            logger.warning("Waiting for %s, held by %s", path, holder)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)  # a killed holder's line
        command = shlex.join([sys.executable, *sys.argv]).replace("\n", "\\n")  # one line
        line = (
            f"pid {os.getpid()} on {socket.gethostname()} since "
            f"{time.strftime('%Y-%m-%d %H:%M:%S %z')}: {command}\n"
        )
        try:
            os.pwrite(fd, line.encode("utf-8", "replace"), 0)
        except OSError as err:  # a full disk: said here, before the holder starts its work
            raise WriteError.of(path, err) from err
        try:
            yield path
        finally:
            with contextlib.suppress(OSError):  # emptied: the next holder's line is the only one
                os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the lock


HOLDER_WAIT_S = 1.0  # how long a holder may take to write its line once it has the lock


def _holder(fd):
    """The line the holder of the lock on ``fd`` wrote. The holder writes it just after taking
    the lock: until then the file is empty, or holds the line of a holder that was killed; so
    such a line is read again for up to ``HOLDER_WAIT_S``."""
    deadline = time.monotonic() + HOLDER_WAIT_S
    while True:
        line = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        if (line and not _ended(line)) or time.monotonic() > deadline:
            return line or "a process that has not yet written its pid"
        time.sleep(0.02)


def _ended(line):
    """Whether the process a holder's ``line`` names ran on this host and has ended."""
    found = re.match(r"pid (\d+) on (\S+) since ", line)
    if not found or found[2] != socket.gethostname():
        return False
    try:
        os.kill(int(found[1]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's: it runs
        pass
    return False


def holder_now(folder):
    """The line of the process that holds ``<folder>/.lock`` now, as far as its file tells
    without taking the lock (which could make a holder starting at that moment fail): a line
    whose process runs, or ran on another host; None without one."""
    try:
        with open(os.path.join(folder, LOCK_FILE), encoding="utf-8", errors="replace") as f:
            line = f.read(4096).strip()
    except OSError:
        return None
    return line if line and not _ended(line) else None


@contextlib.contextmanager
def folder_lock(folder, what, wait=False):
    """Hold ``<folder>/.lock`` (created, with ``folder``) inside the block.

    ``what`` says what the folder is, for messages ("training run", "feature cache").
    Held by another process: ``wait`` blocks until it is released (logging who holds
    it), otherwise a ``FolderLockedError`` says who holds it, at once.
    """
    path = os.path.join(folder, LOCK_FILE)  # the folder is made by file_lock

    def busy(holder):
        return (
            f"{what} {folder} is in use by another process ({holder}): "
            f"wait for it to end, or use another folder (lock: {path})"
        )

    with file_lock(path, busy, wait=wait):
        yield path


@contextlib.contextmanager
def beside_lock(path, what, wait=False):
    """Hold ``<path>.lock`` inside the block: for a file or folder ``path`` that is replaced
    whole (a tokenizer, a package, a cache file read and written again), whose writers would
    otherwise interleave their renames or lose each other's entries.

    ``what`` says what ``path`` is, for messages. Held by another process: ``wait`` blocks
    until it is released (logging who holds it), otherwise a ``FolderLockedError`` says who
    holds it, at once.
    """
    path = os.path.normpath(path)
    lock = path + ".lock"

    def busy(holder):
        return (
            f"{what} {path} is being written by another process ({holder}): wait for it to end, "
            f"or write another one (lock: {lock})"
        )

    with file_lock(lock, busy, wait=wait):
        yield lock
