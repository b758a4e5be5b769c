"""SIGTERM (crab.signals): noted only where training defers it, and a job's data-loading
processes outlive its first."""

import os
import signal
import subprocess
import sys
import time

import pytest
from torch.utils.data import DataLoader

from crab.signals import DeferredSigterm, Terminated, raise_on_sigterm, worker_init


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
