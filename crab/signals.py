"""SIGTERM, as a scheduler sends it (a Slurm time limit, ``scancel``, a preemption) or
``kill`` does: a command stops as it does on Ctrl-C, and training first ends its optimizer
step and saves a checkpoint (``crab.brain``), so that the same command resumes there.

Python's default for SIGTERM is to die at once, without running any clean-up: a
feature extraction lost the shards written since its index was last saved, a training
everything since its last checkpoint (up to ``ckpt_interval_minutes``).
"""

import contextlib
import signal
import threading

EXIT_STATUS = 128 + signal.SIGTERM  # 143: as the shell reports a process killed by SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived. A ``KeyboardInterrupt``, so that what cleans up after Ctrl-C (the
    feature cache's index, ``crab.fileio``'s staged files, a batch inference's output)
    runs for it too."""


def _raise_terminated(signum, frame):
    raise Terminated


@contextlib.contextmanager
def _sigterm_handler(handler):
    """``handler`` for SIGTERM inside the block, the previous one after it. Only the main
    thread may set a handler: elsewhere the block runs with what is there."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def raise_on_sigterm():
    """Context manager: SIGTERM raises ``Terminated`` wherever the main thread is."""
    return _sigterm_handler(_raise_terminated)


class DeferredSigterm:
    """Context manager: SIGTERM only sets ``requested``, for the code inside to stop
    where its state can be saved (training: at the end of an optimizer step). Entering
    clears ``requested``. Data-loading processes forked inside inherit the handler, so a
    signal sent to the whole job (Slurm signals every process of it) leaves them
    serving the batches up to that point."""

    def __init__(self):
        self.requested = False
        self._block = None

    def _request(self, signum, frame):
        self.requested = True

    def __enter__(self):
        self.requested = False
        self._block = _sigterm_handler(self._request)
        self._block.__enter__()
        return self

    def __exit__(self, *exc):
        block, self._block = self._block, None
        return block.__exit__(*exc)
