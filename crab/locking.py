"""One process at a time in a folder (a training run's output folder, a feature cache)
or on a file (``crab-infer``'s results).

``folder_lock(folder)`` holds ``fcntl.flock`` on ``<folder>/.lock`` for the duration
of a ``with`` block and writes who holds it (pid, host, start time, command) into the
file. The operating system releases the lock when the process ends, however it ends
(``kill -9`` included), so no stale lock is ever left to remove by hand; the file
itself stays, with the last holder's line, and means nothing once unlocked.
``file_lock(path, ...)`` is the same on a lock file of the caller's choosing.

flock is advisory and per open file: it excludes other processes on the same host,
and on network file systems where the kernel maps it to a byte-range lock (NFS v4,
Lustre with ``flock`` mounted) those on other hosts too.
"""

import contextlib
import fcntl
import logging
import os
import shlex
import socket
import sys
import time

from crab.cli import UserError
from crab.fileio import WriteError

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
    try:  # a folder that cannot be written (read-only, not there): said here, before any work
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not truncated: the holder's line stays
    except OSError as err:
        raise WriteError.of(path, err) from err
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
            holder = holder or "a process that has not yet written its pid"
            if not wait:
                raise error(busy(holder)) from None
            logger.info("Waiting for %s, held by %s", path, holder)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        command = shlex.join([sys.executable, *sys.argv]).replace("\n", "\\n")  # one line
        line = (
            f"pid {os.getpid()} on {socket.gethostname()} since "
            f"{time.strftime('%Y-%m-%d %H:%M:%S %z')}: {command}\n"
        )
        try:
            os.pwrite(fd, line.encode("utf-8", "replace"), 0)
        except OSError as err:  # a full disk: said here, before the holder starts its work
            raise WriteError.of(path, err) from err
        yield path
    finally:
        os.close(fd)  # releases the lock


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
