"""SIGTERM, as a scheduler sends it (a Slurm time limit, ``scancel``, a preemption) or
``kill`` does: a command stops as it does on Ctrl-C, and training first ends its optimizer
step and saves a checkpoint (``crab.brain``), so that the same command resumes there.

Python's default for SIGTERM is to die at once, without running any clean-up: a
feature extraction lost the shards written since its index was last saved, a training
everything since its last checkpoint (up to ``ckpt_interval_minutes``).
"""

import contextlib
import functools
import multiprocessing.context
import os
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
    clears ``requested``. The data-loading processes need ``worker_init``."""

    active = None  # the block the main thread is in, if any (read by a forked worker_init)

    def __init__(self):
        self.requested = False
        self._block = None

    def _request(self, signum, frame):
        self.requested = True

    def __enter__(self):
        self.requested = False
        self._block = _sigterm_handler(self._request)
        self._block.__enter__()
        DeferredSigterm.active = self
        return self

    def __exit__(self, *exc):
        block, self._block = self._block, None
        DeferredSigterm.active = None
        return block.__exit__(*exc)


def _ignore_once(signum, frame):
    signal.signal(signal.SIGTERM, _exit_quietly)


def _exit_quietly(signum, frame):
    os._exit(0)  # as torch's workers end on their parent's SIGTERM: a signal death is an error there


def _init_worker(user_init, worker_id):
    # Forked from training, a worker has its copy of the deferring block: a SIGTERM noted there
    # came to training before the fork, so the next is the one that ends the worker; ignored,
    # its loader's exit would wait for it forever.
    noted = DeferredSigterm.active is not None and DeferredSigterm.active.requested
    signal.signal(signal.SIGTERM, _exit_quietly if noted else _ignore_once)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # one held since the fork comes now
    if user_init is not None:
        user_init(worker_id)


def worker_init(user_init=None):
    """A DataLoader ``worker_init_fn`` (calling ``user_init``, if any, after it) with which
    a data-loading process ignores its first SIGTERM. torch's workers die on a SIGTERM
    that their parent did not send, and the parent then raises at once (its SIGCHLD
    handler): a signal sent to every process of a job, as Slurm sends it, would stop
    training before it saved its step, and any command with a traceback. With it the
    workers serve the batches up to that step and end when their loader stops them, or
    at the next SIGTERM (Python's multiprocessing sends one to its children at exit).
    Use it with ``WORKER_CONTEXT``."""
    return functools.partial(_init_worker, user_init)


class _SigtermHeldForkProcess(multiprocessing.context.ForkProcess):
    @staticmethod
    def _Popen(process_obj):
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        try:
            return multiprocessing.context.ForkProcess._Popen(process_obj)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class _SigtermHeldForkContext(multiprocessing.context.ForkContext):
    Process = _SigtermHeldForkProcess


# The DataLoader ``multiprocessing_context`` of ``worker_init``: forked workers start with
# SIGTERM blocked, until ``worker_init`` has set its handler. torch sets its own (death on a
# SIGTERM from elsewhere) before it calls the init: a job's SIGTERM as the workers start (an
# epoch's first batch) killed one, and training stopped on the loader's error, unsaved.
WORKER_CONTEXT = _SigtermHeldForkContext()


def worker_loader_options(user_init=None):
    """The DataLoader options of data-loading processes that outlive a job's first SIGTERM:
    ``worker_init`` (over ``user_init``) and ``WORKER_CONTEXT``."""
    return {"worker_init_fn": worker_init(user_init), "multiprocessing_context": WORKER_CONTEXT}
