"""Checkpoints survive failures: kill -9 mid-epoch resumes exactly, a non-finite loss
stops training before it reaches a checkpoint, an interrupted save leaves no checkpoint."""

import logging
import math
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml

from crab.brain import CrabBrain, NonFiniteLossError, check_finite_losses
from crab.checkpointing import Checkpointer, RandomState
from crab.cli import UserError
from crab.losses import WeightedCrossEntropy
from crab.report import record_training
from crab.signals import Terminated, raise_on_sigterm
from tests.conftest import ROOT, write_tone_corpus
from tests.test_brain import CLASSES, corpus_options, fit

RECIPE = os.path.join(ROOT, "egs", "TEMPLATE")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """24 training utterances (6 per class), 4 validation; manifests and tokenizer."""
    root = tmp_path_factory.mktemp("resume_data")
    texts = {emo: [f"I feel {emo} today", f"so {emo} right now", f"this makes me {emo}"] for emo in CLASSES}
    write_tone_corpus(
        root, root, {"train": 6, "valid": 1}, CLASSES, lengths=(0.3, 0.5), seed=1, texts=texts, noise=0.01
    )
    return root


def train_command(data, out):
    return [
        sys.executable,
        "-m",
        "crab.bin.train",
        "conf/crab_tiny.yaml",
        *corpus_options(data, out),
        "--batch_size=4",
        "--number_of_epochs=3",
        "--ckpt_interval_minutes=0",
        "--ckpt_interval_steps=2",
        "--noprogressbar",
    ]


def start(data, out, log, *options, session=False):
    """The training command (with ``options``) as a subprocess, its output to the file
    ``log``; ``session``: in a process group of its own, as a scheduler's job."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=ROOT)
    with open(log, "w") as f:
        return subprocess.Popen(
            train_command(data, out) + list(options),
            cwd=RECIPE,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=session,
        )


def checkpoints(out):
    """``(meta, path)`` of each checkpoint in ``out/save``, oldest first."""
    found = []
    for path in (out / "save").glob("CKPT+*"):
        try:
            found.append((yaml.safe_load((path / "CKPT.yaml").read_text()), path))
        except FileNotFoundError:  # being deleted by the running training
            continue
    return sorted(found, key=lambda c: c[0]["unixtime"])


def is_intra_epoch(path, epoch):
    try:
        meta = yaml.safe_load((path / "CKPT.yaml").read_text())
        return meta.get("brain_intra_epoch_ckpt", False) and (path / "counter.ckpt").read_text() == str(epoch)
    except FileNotFoundError:  # being deleted by the running training
        return False


def assert_same(a, b, where):
    """Exact equality of loaded checkpoint contents (tensors bit for bit)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_kill_9_mid_epoch_then_rerun_equals_an_uninterrupted_run(data, tmp_path):
    logs = {name: tmp_path / f"{name}.log" for name in ("reference", "killed", "resumed")}
    reference = start(data, tmp_path / "reference", logs["reference"])
    killed_out = tmp_path / "killed"
    victim = start(data, killed_out, logs["killed"])
    deadline = time.time() + 120
    while not any(is_intra_epoch(path, 2) for _, path in checkpoints(killed_out)):
        assert victim.poll() is None, (
            "ended before a checkpoint inside epoch 2:\n" + logs["killed"].read_text()
        )
        assert time.time() < deadline, "no intra-epoch checkpoint of epoch 2 within 120 s"
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    # killed mid-epoch 2: the latest checkpoint is that intra-epoch one, epoch 2 was not logged
    assert is_intra_epoch(checkpoints(killed_out)[-1][1], 2)
    assert len((killed_out / "train_log.txt").read_text().splitlines()) == 1

    resumed = start(data, killed_out, logs["resumed"])  # the same command again
    for name, run in (("reference", reference), ("resumed", resumed)):
        assert run.wait(timeout=300) == 0, logs[name].read_text()
    assert "Loading a checkpoint" in logs["resumed"].read_text()

    # the same per-epoch log: train loss and its parts, lr, validation scores (3 significant digits)
    log = (tmp_path / "reference" / "train_log.txt").read_text()
    assert log.count("epoch: ") == 3 and (killed_out / "train_log.txt").read_text() == log
    # the same checkpoints kept, with the same validation scores at full precision
    ref, res = checkpoints(tmp_path / "reference"), checkpoints(killed_out)
    drop = lambda meta: {k: v for k, v in meta.items() if k not in ("unixtime", "train_s", "invocations")}  # noqa: E731
    assert [drop(m) for m, _ in ref] == [drop(m) for m, _ in res]
    assert (ref[-1][0]["invocations"], res[-1][0]["invocations"]) == (1, 2)  # the resume counted
    assert ref[-1][0]["end-of-epoch"] and (ref[-1][1] / "counter.ckpt").read_text() == "3"
    # and the final weights, optimizer and scheduler states and random state: bit for bit equal
    for (_, ref_path), (_, res_path) in zip(ref, res, strict=True):
        files = sorted(p.name for p in ref_path.glob("*.ckpt"))
        assert files == sorted(p.name for p in res_path.glob("*.ckpt"))
        assert {"model.ckpt", "legs.ckpt", "optimizer_head.ckpt", "random_state.ckpt"} <= set(files)
        for name in files:
            if name in ("brain.ckpt", "counter.ckpt", "dataloader-TRAIN.ckpt"):
                assert (ref_path / name).read_text() == (res_path / name).read_text(), name
            else:
                assert_same(torch.load(ref_path / name), torch.load(res_path / name), name)


def test_mid_epoch_checkpoints_are_saved_only_after_an_optimizer_step(data, tmp_path, monkeypatch):
    saved_at = []
    save = CrabBrain._save_intra_epoch_ckpt
    monkeypatch.setattr(
        CrabBrain, "_save_intra_epoch_ckpt", lambda self: saved_at.append(self.step) or save(self)
    )
    # a checkpoint due after every batch; an optimizer step after every third
    overrides = ("--batch_size=4", "--grad_accumulation_factor=3", "--ckpt_interval_minutes=0")
    fit(data, tmp_path / "exp", "--number_of_epochs=1", *overrides, "--ckpt_interval_steps=1")
    assert saved_at == [3, 6]  # 24 utterances: 6 batches, 2 accumulations
    # without accumulation, every ckpt_interval_steps optimizer steps
    saved_at.clear()
    overrides = ("--batch_size=4", "--grad_accumulation_factor=1", "--ckpt_interval_minutes=0")
    fit(data, tmp_path / "every2", "--number_of_epochs=1", *overrides, "--ckpt_interval_steps=2")
    assert saved_at == [2, 4, 6]


def sigterm_at(monkeypatch, epoch, step):
    """SIGTERM to this process as the training batch ``step`` of ``epoch`` starts."""
    start = CrabBrain.on_fit_batch_start

    def on_fit_batch_start(self, batch, should_step):
        start(self, batch, should_step)
        if (self.hparams.epoch_counter.current, self.step) == (epoch, step):
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(CrabBrain, "on_fit_batch_start", on_fit_batch_start)


def test_sigterm_saves_at_the_next_optimizer_step_and_the_rerun_ends_as_an_uninterrupted_run(
    data, tmp_path, monkeypatch, caplog
):
    overrides = (
        "--number_of_epochs=2",
        "--batch_size=4",
        "--grad_accumulation_factor=2",
        "--ckpt_interval_minutes=0",
    )
    fit(data, tmp_path / "reference", *overrides)
    out = tmp_path / "stopped"
    sigterm_at(monkeypatch, epoch=2, step=3)  # inside the second accumulation of epoch 2
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated), caplog.at_level("INFO", logger="crab.brain"):
        fit(data, out, *overrides)
    assert signal.getsignal(signal.SIGTERM) is before  # the training's handler is gone
    monkeypatch.undo()
    # saved after batch 4, the step that ended the accumulation, and nothing trained since
    meta, path = checkpoints(out)[-1]
    assert meta["brain_intra_epoch_ckpt"] and (path / "counter.ckpt").read_text() == "2"
    assert yaml.safe_load((path / "brain.ckpt").read_text())["step"] == 4
    assert f"SIGTERM: saved a checkpoint at epoch 2, step 4 in {out / 'save'}" in caplog.text
    fit(data, out, *overrides)  # the same command again
    (_, ref_path), (_, res_path) = checkpoints(tmp_path / "reference")[-1], checkpoints(out)[-1]
    for name in ("model.ckpt", "legs.ckpt", "optimizer_head.ckpt"):
        assert_same(torch.load(ref_path / name), torch.load(res_path / name), name)


def test_a_sigterm_after_the_epoch_s_last_optimizer_step_stops_at_the_epoch_s_end(
    data, tmp_path, monkeypatch
):
    """24 utterances in batches of 4, accumulations of 4: batches 5 and 6 are the epoch's dropped
    tail, after its last optimizer step; a SIGTERM there stops the run before validation."""
    sigterm_at(monkeypatch, epoch=1, step=5)
    overrides = ("--batch_size=4", "--grad_accumulation_factor=4", "--ckpt_interval_minutes=0")
    with pytest.raises(Terminated):
        fit(data, tmp_path / "exp", "--number_of_epochs=2", *overrides)
    assert checkpoints(tmp_path / "exp") == [] and not (tmp_path / "exp" / "train_log.txt").exists()


def test_a_training_job_stopped_by_sigterm_exits_143_and_resumes(data, tmp_path):
    out, log = tmp_path / "exp", tmp_path / "train.log"
    run = start(data, out, log, "--num_workers=2", session=True)  # data-loading processes too
    deadline = time.time() + 120
    while not checkpoints(out):
        assert run.poll() is None, "ended before its first checkpoint:\n" + log.read_text()
        assert time.time() < deadline, "no checkpoint within 120 s"
        time.sleep(0.01)
    os.killpg(run.pid, signal.SIGTERM)  # as Slurm at the time limit: every process of the job
    assert run.wait(timeout=120) == 143, log.read_text()
    assert log.read_text().splitlines()[-1] == "crab.bin.train: terminated (SIGTERM)"
    assert "Traceback" not in log.read_text()  # no data-loading process died of it
    train_log = out / "train_log.txt"
    assert not train_log.exists() or train_log.read_text().count("epoch: ") < 3  # stopped midway
    resumed = start(data, out, tmp_path / "resumed.log")  # the same command again
    assert resumed.wait(timeout=300) == 0, (tmp_path / "resumed.log").read_text()
    assert "Loading a checkpoint" in (tmp_path / "resumed.log").read_text()
    assert (out / "train_log.txt").read_text().count("epoch: ") == 3


def test_a_sigterm_outside_the_training_batches_stops_at_once(data, tmp_path, monkeypatch):
    evaluate = CrabBrain.evaluate_batch

    def evaluate_batch(self, batch, stage):
        os.kill(os.getpid(), signal.SIGTERM)  # during validation: the handler raises here
        time.sleep(10)
        return evaluate(self, batch, stage)

    monkeypatch.setattr(CrabBrain, "evaluate_batch", evaluate_batch)
    started = time.monotonic()
    with pytest.raises(Terminated), raise_on_sigterm():  # as every command has it (crab.cli)
        fit(data, tmp_path / "exp", "--number_of_epochs=1", "--ckpt_interval_minutes=0")
    assert time.monotonic() - started < 60 and not checkpoints(tmp_path / "exp")


def test_nonfinite_loss_stops_before_the_step_and_keeps_the_checkpoint(data, tmp_path, monkeypatch):
    out = tmp_path / "exp"
    fit(data, out, "--number_of_epochs=1")
    [(meta, path)] = checkpoints(out)
    saved = {name: torch.load(path / name) for name in ("model.ckpt", "legs.ckpt")}
    # finite scores, but a loss that overflows (bad audio is rejected before it reaches the model)
    forward = WeightedCrossEntropy.forward
    monkeypatch.setattr(WeightedCrossEntropy, "forward", lambda self, *a: forward(self, *a) * math.inf)
    with pytest.raises(NonFiniteLossError) as err:
        fit(data, out, "--number_of_epochs=2")  # resumes at epoch 2
    monkeypatch.undo()
    message = str(err.value)
    assert "epoch 2, step 1" in message and "wce=inf" in message and "train_" in message
    # no checkpoint was written or changed, and the one there loads with finite weights
    [(meta_after, path_after)] = checkpoints(out)
    assert path_after == path and meta_after == meta
    for name, state in saved.items():
        loaded = torch.load(path / name)
        assert_same(loaded, state, name)
        assert all(torch.isfinite(t).all() for t in loaded.values())


def test_check_finite_losses_names_the_bad_parts():
    check_finite_losses({"wce": 0.5, "leg_fusion": 2.0}, ["a", "b"], 1, 3)  # finite: no error
    with pytest.raises(NonFiniteLossError) as err:
        check_finite_losses(
            {"wce": 0.5, "leg_fusion": math.inf, "leg_text_pooled": math.nan}, ["u1", "u2"], 4, 7
        )
    message = str(err.value)
    assert "leg_fusion=inf" in message and "leg_text_pooled=nan" in message and "wce" not in message
    assert "epoch 4, step 7" in message and "u1, u2" in message


def test_random_state_restores_every_generator(tmp_path):
    state = RandomState()
    path = tmp_path / "random_state.ckpt"
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    state._save(path)
    draws = lambda: (torch.rand(3), torch.from_numpy(np.random.rand(3)), random.random())  # noqa: E731
    first = draws()
    state._recover(path, end_of_epoch=True)  # restored at once
    assert_same(draws(), first, "end of epoch")
    state._recover(path, end_of_epoch=False)  # kept until the first batch
    assert not torch.equal(draws()[0], first[0])
    state.restore_pending()
    assert_same(draws(), first, "intra-epoch")
    state.restore_pending()  # only once
    assert not torch.equal(draws()[0], first[0])


def test_rank_of_a_ddp_run_uses_its_own_file(tmp_path, monkeypatch):
    monkeypatch.setattr("crab.checkpointing._rank", lambda: 1)
    RandomState()._save(tmp_path / "random_state.ckpt")
    assert [p.name for p in tmp_path.iterdir()] == ["random_state.rank1.ckpt"]


class _Dies:
    """A recoverable whose save fails, as a process killed in the middle of a save."""


def test_interrupted_save_leaves_no_checkpoint(tmp_path, caplog):
    model = torch.nn.Linear(2, 2)
    checkpointer = Checkpointer(tmp_path, {"model": model})
    with caplog.at_level(logging.INFO):
        first = checkpointer.save_checkpoint(meta={"n": 1}, end_of_epoch=False)
    assert first.path.name.startswith("CKPT+") and (first.path / "model.ckpt").exists()
    assert first.paramfiles["model"] == first.path / "model.ckpt"
    # the log names the checkpoint where it is, not the hidden folder it was written in
    saved = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Saved")]
    assert saved == [f"Saved an intra-epoch checkpoint in {first.path}"]

    def die(obj, path):
        raise KeyboardInterrupt

    checkpointer.add_recoverable("dies", _Dies(), custom_save_hook=die)
    with pytest.raises(KeyboardInterrupt):
        checkpointer.save_checkpoint(meta={"n": 2})
    # CKPT.yaml and model.ckpt of the second one were written, under a name that is not listed
    [partial] = list(tmp_path.glob(".partial-CKPT+*"))
    assert (partial / "CKPT.yaml").exists() and (partial / "model.ckpt").exists()
    assert [c.meta["n"] for c in checkpointer.list_checkpoints()] == [1]
    del checkpointer.recoverables["dies"]
    assert checkpointer.recover_if_possible().meta["n"] == 1
    # as a kill in an earlier second leaves it (a save within the same second reuses the folder)
    partial.rename(partial.with_name(".partial-CKPT+2026-01-01+00-00-00+00"))

    third = checkpointer.save_and_keep_only(meta={"n": 3})
    assert third is None and not list(tmp_path.glob(".partial-*"))  # leftover removed
    assert [c.meta["n"] for c in checkpointer.list_checkpoints()] == [3]


def test_a_save_on_a_full_disk_is_an_error_naming_the_checkpoints_and_keeps_the_earlier_ones(tmp_path):
    model = torch.nn.Linear(2, 2)
    checkpointer = Checkpointer(tmp_path, {"model": model})
    checkpointer.save_checkpoint(meta={"n": 1})

    def full(obj, path):
        path.write_bytes(b"PK\x03\x04 the start of a zip")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 627328 vs 627220")

    checkpointer.add_recoverable("fills_the_disk", _Dies(), custom_save_hook=full)
    with pytest.raises(UserError, match=f"cannot save a checkpoint in {tmp_path} .*a full disk or quota"):
        checkpointer.save_checkpoint(meta={"n": 2})
    assert not list(tmp_path.glob(".partial-*"))  # its space is freed at once
    del checkpointer.recoverables["fills_the_disk"]
    assert checkpointer.recover_if_possible().meta["n"] == 1

    def broken(obj, path):  # not a write the system refused: its own error, not a full disk's
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    checkpointer.add_recoverable("breaks", _Dies(), custom_save_hook=broken)
    with pytest.raises(RuntimeError, match="^CUDA error") as err:
        checkpointer.save_checkpoint(meta={"n": 3})
    assert not isinstance(err.value, UserError) and not list(tmp_path.glob(".partial-*"))


def test_checkpoints_count_training_time_over_resumes(tmp_path, monkeypatch):
    clock = iter([100.0, 130.0, 500.0, 520.0, 900.0, 905.0])  # monotonic time at each call
    monkeypatch.setattr("crab.checkpointing.time.monotonic", lambda: next(clock))
    run, model = tmp_path / "run", torch.nn.Linear(2, 2)
    assert record_training(str(run), 7, "run.sh")["wall_s"] == 7  # no checkpoint: the invocation's time
    first = Checkpointer(run / "save", {"model": model})  # made at 100
    first_meta = first.save_checkpoint(meta={"n": 1}).meta  # at 130; then killed
    assert (first_meta["train_s"], first_meta["invocations"]) == (30.0, 1)
    resumed = Checkpointer(run / "save", {"model": model})  # a new process, made at 500
    assert resumed.recover_if_possible().meta["train_s"] == 30.0
    resumed_meta = resumed.save_checkpoint(meta={"n": 2}).meta  # 30 + (520 - 500)
    assert (resumed_meta["train_s"], resumed_meta["invocations"]) == (50.0, 2)
    # the run's record takes the latest checkpoint's time and count, not the invocations it saw
    recorded = record_training(str(run), 7, "run.sh")
    assert (recorded["wall_s"], recorded["invocations"]) == (50.0, 2)
    # resumed from a checkpoint without them (older code): none recorded, invocations summed
    old = Checkpointer(run / "save", {"model": model})  # at 900
    latest = old.find_checkpoint()
    latest.meta.pop("train_s")
    latest.meta.pop("invocations")
    old.load_checkpoint(latest)
    assert not {"train_s", "invocations"} & set(old.save_checkpoint(meta={"n": 3}).meta)  # at 905
    recorded = record_training(str(run), 7, "run.sh")
    assert (recorded["wall_s"], recorded["invocations"]) == (57.0, 3)


def test_a_mid_epoch_checkpoint_resumed_by_another_number_of_processes_warns(tmp_path, monkeypatch, caplog):
    """Each DDP process's loader saves its position in its own share of the epoch: resumed
    by another number of processes (4 GPUs, then one, or a CPU), the rest of that epoch is
    not the rest of the interrupted one. That is said; an end-of-epoch checkpoint resumes
    silently."""
    import crab.checkpointing

    model = torch.nn.Linear(2, 2)
    monkeypatch.setattr(crab.checkpointing, "world_size", lambda: 4)
    saver = Checkpointer(tmp_path, {"model": model})
    mid = saver.save_checkpoint(end_of_epoch=False)
    end = saver.save_checkpoint(end_of_epoch=True)
    assert mid.meta["processes"] == end.meta["processes"] == 4
    monkeypatch.setattr(crab.checkpointing, "world_size", lambda: 1)
    with caplog.at_level("WARNING", logger="crab.checkpointing"):
        Checkpointer(tmp_path, {"model": model}).load_checkpoint(end)
        assert "middle of an epoch" not in caplog.text
        Checkpointer(tmp_path, {"model": model}).load_checkpoint(mid)
    assert "saved in the middle of an epoch by 4 process(es) and is resumed by 1" in caplog.text


def test_a_run_whose_checkpoints_were_removed_says_it_trains_again(tmp_path, caplog):
    """Rerun with its save/ emptied, a finished run trained again from epoch 1 without a word."""
    from crab.runconfig import warn_if_trained_before

    log, save = tmp_path / "train_log.txt", tmp_path / "save"
    with caplog.at_level("WARNING", logger="crab.runconfig"):
        warn_if_trained_before(str(log), str(save))  # a new run: no log
        log.write_text("")
        warn_if_trained_before(str(log), str(save))  # nothing trained yet
        assert not caplog.records
        log.write_text("epoch: 1, lr: 1.0 - train loss: 2.0\nepoch: 2, lr: 0.5 - train loss: 1.0\n")
        warn_if_trained_before(str(log), str(save))
    assert caplog.records[-1].getMessage() == (
        f"{log} records 2 trained epoch(s), and {save} holds no checkpoint to resume from: the run trains "
        "again from epoch 1"
    )
