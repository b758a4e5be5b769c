"""Checkpoint pieces that make an interrupted training run resume exactly.

``Checkpointer`` is SpeechBrain's, with checkpoints that appear whole or not at
all and that record the training time up to them; ``RandomState`` saves and
restores the random generators, which SpeechBrain checkpoints do not hold (dropout
and the speech encoder's time masking draw from them).
"""

import functools
import logging
import os
import pathlib
import pickle
import random
import re
import shutil
import time
import zipfile
from importlib import metadata

import numpy as np
import torch
from speechbrain.utils import checkpoints
from speechbrain.utils.distributed import ddp_barrier, if_main_process

from crab.cli import UserError, first_line
from crab.distributed import world_size
from crab.fileio import fsync, is_write_failure

logger = logging.getLogger(__name__)

STAGING_PREFIX = ".partial-"
TRAIN_SECONDS = "train_s"  # checkpoint meta: wall time of training up to the checkpoint
PROCESSES = "processes"  # checkpoint meta: the processes of the run that saved it (DDP: several)
INVOCATIONS = "invocations"  # checkpoint meta: the trainings (launches) whose work it holds
VERSIONS = "versions"  # checkpoint meta: the releases of the libraries that computed it
DATA_ORDER_SEED = "data_order_seed"  # checkpoint meta: the seed of the run's training data order
MODEL_LIBRARIES = ("torch", "transformers", "speechbrain")  # what computes a model's outputs


def library_versions():
    """``{library: installed version}`` of ``MODEL_LIBRARIES`` (None: not installed)."""
    found = {}
    for name in MODEL_LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def _release(version):
    """A version's ``major.minor`` (``2.6.0+cu124`` and ``2.6.1+cpu``: ``2.6``)."""
    match = re.match(r"\d+(\.\d+)?", str(version or ""))
    return match.group() if match else version


def warn_version_drift(recorded, what):
    """Log a warning naming each library of ``recorded`` (``library_versions`` of where ``what``,
    a checkpoint or package, was made; None: not recorded) whose release is now another one:
    the same weights may give other outputs. Patch releases and builds (``+cu124``, ``+cpu``)
    are not compared; nothing is refused."""
    now = library_versions()
    drift = [
        f"{name} {then} then, {now[name]} now"
        for name, then in (recorded or {}).items()
        if name in now and _release(then) != _release(now[name])
    ]
    if drift:
        logger.warning(
            "%s with other library releases (%s): the same weights may give other outputs here; "
            "install those releases to reproduce its results exactly",
            what,
            "; ".join(drift),
        )


class CheckpointSaveError(UserError, RuntimeError):
    """A checkpoint could not be written (a full disk, a quota): the earlier ones are kept."""


class CheckpointLoadError(UserError, RuntimeError):
    """A checkpoint whose files cannot be read (cut short or damaged: a copy that stopped, a bad disk)."""


def _damaged_files(checkpoint):
    """``path (why)`` of each file of ``checkpoint`` that is empty, or that is a torch archive
    (a zip) whose index, at its end, cannot be read: a file cut short. Reads the ends of the
    archives only."""
    damaged = []
    for path in checkpoint.paramfiles.values():
        try:
            with open(path, "rb") as f:
                start = f.read(4)
            if not start:
                damaged.append(f"{path} (empty)")
            elif start == b"PK\x03\x04":
                zipfile.ZipFile(path).close()
        except (OSError, zipfile.BadZipFile) as err:
            damaged.append(f"{path} ({first_line(err)})")
    return damaged


def check_readable(checkpoint):
    """A ``CheckpointLoadError`` naming each file of ``checkpoint`` that is empty or cut short
    (``_damaged_files``): before a resumed training rewrites the run's record, and before loading."""
    damaged = _damaged_files(checkpoint)
    if damaged:
        raise _unreadable(checkpoint, f"{', '.join(damaged)}: cut short or damaged")


def _unreadable(checkpoint, what):
    return CheckpointLoadError(
        f"{checkpoint.path} cannot be loaded: {what}. Move that folder out of save/ (the run then "
        "resumes, or is evaluated, from the checkpoint kept before it, if any), or train the run again"
    )


class Checkpointer(checkpoints.Checkpointer):
    """SpeechBrain's Checkpointer, whose checkpoints appear whole or not at all.

    SpeechBrain writes a checkpoint's ``CKPT.yaml`` first and then each
    recoverable's file into the checkpoint directory: a process killed while
    saving leaves a directory that looks like the latest checkpoint and that
    the resumed run cannot load. Here the directory is written under a hidden
    name (``.partial-CKPT+...``, which SpeechBrain does not list) and renamed
    into place once every file is written and on disk (fsynced, files and
    directory, before the rename; the rename itself after), so that neither a
    kill nor a power cut leaves a listed checkpoint with missing or empty files.
    The next save removes what an interrupted one left; a save that fails (a full disk)
    removes it at once and is a ``CheckpointSaveError`` naming the checkpoint.

    Each checkpoint's meta holds ``train_s``: the wall time of the run up to it,
    from the checkpointer's creation (the run's yaml loaded) in each process that
    trained it, the resumed ones adding to the checkpoint they loaded. The time a
    killed process spent after its last checkpoint is not counted: that work is
    redone. A run resumed from a checkpoint without ``train_s`` records none.
    It holds ``invocations`` alike: the trainings (launches of the training command) that
    saved a checkpoint of the run up to it, this one included; and ``versions``, the releases
    of torch, transformers and speechbrain that computed it: loading it (a resumed training,
    an evaluation) where they are others logs a warning naming both (``warn_version_drift``).
    A training's also hold ``data_order_seed`` (``crab.experiment.data_order_seed``), which a
    resumed run shuffles its data with.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._started = time.monotonic()
        self._seconds_before = 0.0  # in the checkpoint this process resumed from; None: unknown
        self._invocations_before = 0  # likewise
        self.data_order_seed = None  # set by the training: recorded in each checkpoint's meta

    def save_checkpoint(self, meta=None, end_of_epoch=True, name=None, verbosity=logging.INFO):
        meta = {} if meta is None else dict(meta)  # no dict shared between calls
        if self._seconds_before is not None:
            meta[TRAIN_SECONDS] = round(self._seconds_before + time.monotonic() - self._started, 1)
        if self._invocations_before is not None:
            meta[INVOCATIONS] = self._invocations_before + 1
        meta[PROCESSES] = world_size()
        meta[VERSIONS] = library_versions()
        if self.data_order_seed is not None:
            meta[DATA_ORDER_SEED] = self.data_order_seed
        self._remove_partial()
        try:
            # SpeechBrain logs the save in the hidden folder: logged below once it has its name
            staged = super().save_checkpoint(meta, end_of_epoch, name, logging.DEBUG)
        except (OSError, RuntimeError) as err:
            if not is_write_failure(err):
                self._remove_partial()
                raise
            raise self._save_failed(err) from err
        ddp_barrier()  # every process has written its files
        checkpoint = None
        if staged is not None:  # the main process
            path = staged.path.with_name(staged.path.name[len(STAGING_PREFIX) :])
            try:
                for file in sorted(staged.path.iterdir()):  # every process's files
                    fsync(file)
                fsync(staged.path)
                os.rename(staged.path, path)
            except OSError as err:
                raise self._save_failed(err) from err
            fsync(path.parent)
            kind = "end-of-epoch" if end_of_epoch else "intra-epoch"
            logger.log(verbosity, "Saved an %s checkpoint in %s", kind, path)
            paramfiles = {key: path / file.name for key, file in staged.paramfiles.items()}
            checkpoint = checkpoints.Checkpoint(path, staged.meta, paramfiles)
        # Every process must see the renamed checkpoint before deciding (collectively)
        # which old ones to delete, or their lists differ and the deletions deadlock.
        ddp_barrier()
        return checkpoint

    def _remove_partial(self):
        """Remove the hidden folders of saves that did not finish."""
        if if_main_process():
            for leftover in self.checkpoints_dir.glob(STAGING_PREFIX + "*"):
                shutil.rmtree(leftover)

    def _save_failed(self, err):
        """The ``CheckpointSaveError`` of a save that failed with ``err``; what it wrote is removed,
        which frees its space at once."""
        self._remove_partial()
        return CheckpointSaveError(
            f"cannot save a checkpoint in {self.checkpoints_dir} ({first_line(err)}; "
            "a full disk or quota?): the earlier checkpoints are kept, "
            "and running the training again resumes from the latest"
        )

    def load_checkpoint(self, checkpoint):
        """SpeechBrain's, with a ``CheckpointLoadError`` naming the checkpoint, and its file where
        that is cut short or empty, for a file that torch cannot read (a traceback from inside it)."""
        check_readable(checkpoint)
        try:
            super().load_checkpoint(checkpoint)
        except UserError:  # a recoverable's own, which says what to do
            raise
        except (RuntimeError, EOFError, pickle.UnpicklingError) as err:
            raise _unreadable(checkpoint, first_line(err)) from err
        self._seconds_before = checkpoint.meta.get(TRAIN_SECONDS)
        self._invocations_before = checkpoint.meta.get(INVOCATIONS)
        warn_version_drift(checkpoint.meta.get(VERSIONS), f"{checkpoint.path} was saved")
        saved = checkpoint.meta.get(PROCESSES)
        if not checkpoint.meta.get("end-of-epoch", True) and saved not in (None, world_size()):
            # each process's loader resumes at its own count of batches of its share of the data
            logger.warning(
                "%s was saved in the middle of an epoch by %d process(es) and is resumed by %d: the "
                "rest of this epoch is not the rest of the interrupted one (some utterances are seen "
                "twice, others not at all); the later epochs are whole",
                checkpoint.path,
                saved,
                world_size(),
            )

    def _new_checkpoint_dirpath(self):
        path = super()._new_checkpoint_dirpath()
        return path.with_name(STAGING_PREFIX + path.name)

    def _custom_checkpoint_dirpath(self, name):
        path = super()._custom_checkpoint_dirpath(name)
        return path.with_name(STAGING_PREFIX + path.name)


def _rank():
    initialized = torch.distributed.is_available() and torch.distributed.is_initialized()
    return torch.distributed.get_rank() if initialized else 0


def _rank_path(path):
    """Rank 0 uses the checkpointer's file; each other process of a DDP run its own sibling."""
    path, rank = pathlib.Path(path), _rank()
    return path if rank == 0 else path.with_name(f"{path.stem}.rank{rank}{path.suffix}")


def _capture():
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    return {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if cuda else None,  # this process's device only
    }


def _apply(state):
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None:
        if torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda"])
        else:  # saved on a GPU, loaded where nothing draws from a CUDA generator (a CPU)
            logger.info("The checkpoint's CUDA random state is not restored: no CUDA device here")


@functools.partial(checkpoints.register_checkpoint_hooks, save_on_main_only=False)
class RandomState:
    """The Python, NumPy, torch CPU and CUDA random states, as a checkpoint recoverable.

    Every process of a DDP run saves and restores its own. The state of an
    end-of-epoch checkpoint is restored on loading. That of an intra-epoch one
    is restored by ``restore_pending()`` at the first training batch after
    loading: starting the resumed epoch's data loader draws a number from the
    torch generator, which the uninterrupted run drew before the checkpoint.
    """

    def __init__(self):
        self._pending = None

    @checkpoints.mark_as_saver
    def _save(self, path):
        torch.save(_capture(), _rank_path(path))

    @checkpoints.mark_as_loader
    def _recover(self, path, end_of_epoch):
        path = _rank_path(path)
        if not path.exists():  # resumed with more processes than were saved
            logger.warning("No random state for this process in %s: not restored", path.parent)
            return
        state = torch.load(path, map_location="cpu", weights_only=True)
        if end_of_epoch:
            _apply(state)
        else:
            self._pending = state

    def restore_pending(self):
        """Restore the state loaded from an intra-epoch checkpoint, once."""
        if self._pending is not None:
            _apply(self._pending)
            self._pending = None
