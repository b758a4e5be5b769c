"""SIGTERM (crab.signals): noted only where training defers it, and a job's data-loading
processes outlive its first."""

import os
import signal
import subprocess
import sys
import time

import pytest
from torch.utils.data import DataLoader

from crab.signals import WORKER_CONTEXT, DeferredSigterm, Terminated, raise_on_sigterm, worker_init


def sigterm_from_elsewhere(pid):
    """SIGTERM to ``pid`` from another process than its parent (torch's workers end quietly
    on their parent's)."""
    code = f"import os, signal; os.kill({pid}, signal.SIGTERM)"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_data_loading_process_serves_on_after_the_first_sigterm_of_its_job():
    loader = DataLoader(range(100), batch_size=1, num_workers=1, worker_init_fn=worker_init())
    batches = iter(loader)
    assert next(batches).item() == 0
    [worker] = batches._workers
    sigterm_from_elsewhere(worker.pid)  # Slurm signals every process of the job
    time.sleep(0.5)  # torch's own handler would have ended it by now, and the loader raised
    assert worker.is_alive()
    assert [next(batches).item() for _ in range(5)] == [1, 2, 3, 4, 5]
    sigterm_from_elsewhere(worker.pid)  # the next one (multiprocessing sends one at exit): it ends
    worker.join(timeout=10)
    assert worker.exitcode == 0  # not a death by signal, which torch reports as an error


def test_a_data_loading_process_started_as_the_sigterm_came_ends_on_the_next():
    """Training's loader starts its workers (an epoch's first batch) as the job's SIGTERM comes:
    a worker it reached before its init noted it in its copy of training's handler. Ignoring
    the next as well, it outlived multiprocessing's SIGTERM at exit, whose join then waited
    for it forever."""
    with raise_on_sigterm(), DeferredSigterm() as deferred:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
        assert deferred.requested  # what the forked worker's copy holds too
        loader = DataLoader(range(100), batch_size=1, num_workers=1, worker_init_fn=worker_init())
        batches = iter(loader)
        assert next(batches).item() == 0
        [worker] = batches._workers
        sigterm_from_elsewhere(worker.pid)
        worker.join(timeout=10)
        assert worker.exitcode == 0


def _worker_started_then_signalled(folder):
    """A data-loading process from WORKER_CONTEXT, up to worker_init: it says it has started and
    waits for its SIGTERM (sent between torch's handler and worker_init), then runs the init."""
    (folder / "started").write_text("")
    while not (folder / "sent").exists():
        time.sleep(0.01)
    worker_init()(0)
    (folder / "initialised").write_text("")
    time.sleep(30)


def test_a_sigterm_before_a_data_loading_process_s_init_waits_for_it(tmp_path):
    worker = WORKER_CONTEXT.Process(target=_worker_started_then_signalled, args=(tmp_path,))
    worker.start()
    deadline = time.time() + 30
    while not (tmp_path / "started").exists():
        assert time.time() < deadline
        time.sleep(0.01)
    sigterm_from_elsewhere(worker.pid)  # held: with the default handler it would end the process
    (tmp_path / "sent").write_text("")
    while not (tmp_path / "initialised").exists():
        assert worker.is_alive() and time.time() < deadline
        time.sleep(0.01)
    time.sleep(0.2)
    assert worker.is_alive()  # it was the first, ignored
    sigterm_from_elsewhere(worker.pid)
    worker.join(timeout=10)
    assert worker.exitcode == 0


def test_the_loader_s_own_worker_init_still_runs(tmp_path):
    def own_init(worker_id):
        (tmp_path / f"worker{worker_id}").write_text(
            str(signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL)
        )

    loader = DataLoader(range(4), batch_size=1, num_workers=2, worker_init_fn=worker_init(own_init))
    assert [int(batch) for batch in loader] == [0, 1, 2, 3]
    assert [(tmp_path / f"worker{i}").read_text() for i in range(2)] == ["True", "True"]


def test_a_deferred_sigterm_is_only_noted_until_the_block_ends():
    deferred = DeferredSigterm()
    with raise_on_sigterm():
        with deferred:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.1)  # the handler has run: it raised nothing
            assert deferred.requested
        with pytest.raises(Terminated):  # the command's handler is back
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)
        with deferred:
            assert not deferred.requested  # a new block starts clear
