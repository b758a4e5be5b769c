"""One training per output folder: a second one stops at once naming the holder; the
lock dies with its process (kill -9); every process of one DDP job shares it. Paths
with '=', '#', ':' or spaces reach SpeechBrain's overrides unchanged."""

import errno
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from crab.bin import train
from crab.cli import UserError
from crab.experiment import parse_and_load
from crab.locking import FolderLockedError, beside_lock, folder_lock
from tests.conftest import ROOT
from tests.test_brain import data  # noqa: F401  (the tiny corpus fixture)
from tests.test_features import argv, run
from tests.test_resume import RECIPE, train_command

ENV = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=ROOT)
HOLD = (
    "import sys, time\nfrom crab.locking import folder_lock\n"
    "with folder_lock(sys.argv[1], 'training run'):\n    print('held', flush=True)\n    time.sleep(120)\n"
)


def hold(folder):
    """A process holding ``folder``'s lock (until killed)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder)], env=ENV, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline() == "held\n"
    return holder


def test_second_training_stops_at_once_naming_the_holder_and_kill_9_leaves_no_lock(data, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    holder = hold(out)
    try:
        started = time.time()
        with pytest.raises(SystemExit) as err:
            run(train.main, argv(data, out))
        assert time.time() - started < 30
        message = str(err.value)
        assert message.startswith("ERROR: training run ") and "\n" not in message
        assert f"is in use by another process (pid {holder.pid} on {socket.gethostname()} since " in message
        assert f"{sys.executable} -c {out}" in message  # the holder's command
        # nothing written: no log, no hyperparams, no checkpoint (loading the yaml makes the empty save/)
        assert [p.name for p in out.rglob("*") if p.is_file()] == [".lock"]
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # killed: the operating system released the lock, nothing to clean up
    with folder_lock(out, "training run") as lock:
        assert f"pid {os.getpid()} " in open(lock).read()


def test_concurrent_trainings_of_one_folder(data, tmp_path):  # noqa: F811
    # a folder name SpeechBrain's override parsing used to change ('=' became a space)
    out = tmp_path / "exp=1 #2, a:b"
    log = tmp_path / "first.log"
    command = [*train_command(data, out), "--number_of_epochs=1000"]  # still training when the second starts
    with open(log, "w") as f:
        first = subprocess.Popen(command, cwd=RECIPE, env=ENV, stdout=f, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while not (out / "train_log.txt").exists():  # the first has the lock and logged an epoch
            assert first.poll() is None, log.read_text()
            assert time.time() < deadline, "no epoch within 120 s"
            time.sleep(0.05)
        # a second training of the same folder, mid-training of the first
        second = subprocess.run(command, cwd=RECIPE, env=ENV, capture_output=True, text=True, timeout=120)
        assert first.poll() is None, log.read_text()
    finally:
        first.kill()
        first.wait()
    assert second.returncode == 1, second.stderr
    assert second.stderr.strip().splitlines()[-1].startswith("ERROR: training run ")
    assert f"(pid {first.pid} on " in second.stderr and "crab/bin/train.py" in second.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp=1 #2, a:b", "first.log"]  # the folder as given
    epochs = [line.split(",")[0] for line in (out / "train_log.txt").read_text().splitlines()]
    assert epochs == [f"epoch: {n}" for n in range(1, len(epochs) + 1)]  # the first run's lines only


def _ddp_worker(rank, rendezvous, out, result):
    import torch.distributed as dist

    from crab.experiment import run_lock

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2")  # as torchrun sets them
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    try:
        with run_lock(out):
            dist.barrier()  # both processes inside: rank 1 did not wait for rank 0's lock
            outcome = "ran"
    except FolderLockedError as err:
        outcome = f"locked: {err}"
    with open(f"{result}.{rank}", "w") as f:
        f.write(outcome)
    dist.destroy_process_group()


def _ddp_job(tmp_path, name, out):
    import torch.multiprocessing as mp

    result = tmp_path / name
    mp.start_processes(
        _ddp_worker,
        args=(str(tmp_path / f"{name}.rendezvous"), str(out), str(result)),
        nprocs=2,
        start_method="spawn",
    )
    return [(tmp_path / f"{name}.{rank}").read_text() for rank in range(2)]


@pytest.mark.slow
def test_the_processes_of_one_ddp_job_share_the_lock(tmp_path):
    out = tmp_path / "run"
    assert _ddp_job(tmp_path, "free", out) == ["ran", "ran"]
    holder = hold(out)  # another job holds it: every process stops, with the same message
    try:
        outcomes = _ddp_job(tmp_path, "held", out)
    finally:
        holder.kill()
        holder.wait()
    assert outcomes[0] == outcomes[1] and outcomes[0].startswith(f"locked: training run {out} is in use")
    assert f"pid {holder.pid} " in outcomes[0]


def test_a_lock_on_a_full_disk_is_an_error_naming_its_file(tmp_path, monkeypatch):
    def full_disk(fd, line, offset):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "pwrite", full_disk)
    lock = tmp_path / "run" / ".lock"
    with pytest.raises(UserError, match=f"cannot write {lock} \\(No space left on device\\)"):
        with folder_lock(str(tmp_path / "run"), "training run"):
            pass


@pytest.mark.parametrize(
    "name", ["exp=1", "a=b=c", "exp #1", "with space", "a:b", "a: b", "x#y", " padded ", "--x"]
)
def test_paths_reach_the_overrides_unchanged(data, tmp_path, name):  # noqa: F811
    out = str(tmp_path / name)
    cwd = os.getcwd()
    os.chdir(RECIPE)
    try:
        for args in (
            argv(data, out),
            [*argv(data, "unused"), "--output_folder", out],
        ):  # --key=value, --key value
            hparams = parse_and_load(args)[3]
            assert hparams["output_folder"] == out
            assert hparams["save_folder"] == os.path.join(out, "save")
    finally:
        os.chdir(cwd)


def test_a_value_yaml_cannot_read_is_refused_naming_the_option(data, tmp_path):  # noqa: F811
    with pytest.raises(SystemExit, match=r"ERROR: override --classes: value '\[a, b' is not valid YAML"):
        run(train.main, [*argv(data, tmp_path / "run"), "--classes=[a, b"])
    assert not (tmp_path / "run").exists()


def test_a_lock_in_a_folder_that_cannot_be_made_is_a_write_error_naming_what_is_in_the_way(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder\n")
    for folder in (blocker, blocker / "run"):
        in_the_way = rf"^cannot create output folder {folder}: a file named {blocker} is in the way$"
        with pytest.raises(UserError, match=in_the_way):
            with folder_lock(str(folder), "training run"):
                pass


SLOW_HOLDER = (  # takes the lock, then is slow to replace a killed holder's line with its own
    "import os, sys, time\nfrom crab.locking import folder_lock\nreal = os.ftruncate\n"
    "def slow(fd, size):\n    print('locked', flush=True)\n    time.sleep(0.5)\n    real(fd, size)\n"
    "os.ftruncate = slow\nwith folder_lock(sys.argv[1], 'training run'):\n    time.sleep(120)\n"
)


def test_a_lock_just_taken_is_said_to_be_its_new_holders(tmp_path):
    """The second of two trainings started together names the process that holds the lock,
    not one killed while it held it (its line still in the file), nor 'no pid yet'."""
    killed = hold(tmp_path)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert f"pid {killed.pid} " in (tmp_path / ".lock").read_text()
    holder = subprocess.Popen(
        [sys.executable, "-c", SLOW_HOLDER, str(tmp_path)], env=ENV, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(FolderLockedError, match=f"in use by another process \\(pid {holder.pid} on "):
            with folder_lock(tmp_path, "training run"):
                pass
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_of_a_folder_named_with_a_slash_is_beside_it(tmp_path):
    """``--out model/`` is locked by model.lock beside the folder, as ``--out model``: a lock in
    it would make the folder, which packaging then refuses to replace as no package of its own."""
    with beside_lock(f"{tmp_path / 'model'}/", "package") as lock:
        assert lock == str(tmp_path / "model.lock")
    assert os.listdir(tmp_path) == ["model.lock"]


def test_a_process_that_waited_for_the_lock_holds_it_once_it_goes_on(tmp_path):
    """``wait=True`` (packaging): the waiter goes on only once the lock is released, and
    then holds it itself, so that a third process finds it busy."""
    entered, leave = threading.Event(), threading.Event()

    def waiter():
        with folder_lock(tmp_path, "package", wait=True):  # an open file of its own: flock excludes it
            entered.set()
            leave.wait(30)

    with folder_lock(tmp_path, "package"):
        thread = threading.Thread(target=waiter)
        thread.start()
        assert not entered.wait(0.5)
    try:
        assert entered.wait(30)
        with pytest.raises(FolderLockedError, match="in use by another process"):
            with folder_lock(tmp_path, "package"):
                pass
    finally:
        leave.set()
        thread.join(30)
