"""The global batch of a DDP run for the contrastive legs (``gather_contrastive``).

Each process gathers every process's embeddings and labels, in rank order, and
computes the contrastive loss over all of them: the same loss, on every process,
as one process would compute over the concatenated batch. Local batches may
differ in size (the last batch of an epoch, dynamic batching).

Gradient scaling. Let L(Z) be the loss of the gathered batch Z = [Z_0; ...; Z_{W-1}]
over W processes, and Z_r = f(X_r; theta) the local embeddings of process r. The
single-process gradient is dL/dtheta = sum_r (dL/dZ_r) (dZ_r/dtheta). Process r
back-propagates through its own part only, so it gets g_r = (dL/dZ_r) (dZ_r/dtheta),
and DDP averages: (1/W) sum_r g_r = (1/W) dL/dtheta. Hence the gathered embeddings
pass W * dL/dZ_r back to the local part: after DDP's average the update is the
single-process one. (The exact adjoint of an all-gather sums every process's
gradient of its local rows; each process computes the same L from the same Z, so
that sum is W times the local one, and no communication is needed.) The loss value
itself is not scaled.

The weighted cross-entropy is not gathered: it stays each process's local mean, and
DDP's average of the gradients makes it the global batch's mean when the local
batches are equal in size (for the class-weighted mean, when their weight sums are);
otherwise it is the mean of the local means.
"""

import dataclasses
import gc
import os

import torch
import torch.distributed as dist

from crab.masks import to_device


def world_size():
    """Number of processes of the DDP run (1 without one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_sizes(tensor):
    """Every process's number of rows of ``tensor``, in rank order: one wait for the device
    (each size read on its own would be one per process)."""
    size = to_device(torch.tensor([tensor.shape[0]]), tensor.device)  # no wait to send it
    sizes = [torch.empty_like(size) for _ in range(world_size())]
    dist.all_gather(sizes, size)
    return torch.cat(sizes).tolist()


def all_gather_rows(tensor, sizes=None):
    """Every process's ``tensor``, concatenated along dim 0 in rank order, and the
    offset of this process's rows. Sizes along dim 0 may differ between processes
    (``sizes``, else exchanged first; each tensor is padded to the largest, gathered,
    trimmed). No gradient: see ``gather_batch``."""
    world = world_size()
    if world == 1:
        return tensor, 0
    if sizes is None:
        sizes = gather_sizes(tensor)
    padded = tensor.new_zeros((max(sizes), *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    rank = dist.get_rank()
    return torch.cat([part[:n] for part, n in zip(parts, sizes, strict=True)]), sum(sizes[:rank])


class _GatherWithLocalGradient(torch.autograd.Function):
    """All-gather along dim 0 whose backward returns ``world_size`` times the
    gradient of the local rows (module docstring) and nothing to the others."""

    @staticmethod
    def forward(ctx, local, sizes):
        gathered, offset = all_gather_rows(local.detach(), sizes)
        ctx.rows = slice(offset, offset + local.shape[0])
        ctx.world = world_size()
        return gathered

    @staticmethod
    def backward(ctx, grad):
        return grad[ctx.rows] * ctx.world, None


def gather_batch(embeddings, labels):
    """``(embeddings, labels)`` of every process of a DDP run, in rank order, with
    gradients flowing to this process's embeddings only, scaled for DDP's
    averaging (module docstring). Unchanged without a DDP run. The sizes are
    exchanged once for both (one row of each per utterance)."""
    if world_size() == 1:
        return embeddings, labels
    sizes = gather_sizes(embeddings)
    return _GatherWithLocalGradient.apply(embeddings, sizes), all_gather_rows(labels, sizes)[0]


def end_process_group():
    """End the DDP process group at the end of a run started by torchrun (torch warns at exit
    when a group is never destroyed), its threads with it; nothing without one.

    Destroying the group only unlists it while DDP's modules hold it, and its gloo threads run
    on. Left to the interpreter's exit, a thread still freeing the last collective's tensors needs
    the GIL then, and the process aborts ("terminate called without an active exception") after
    a finished training. Freed from DDP's reducer, which keeps the GIL, the group would wait for
    that thread, which waits for the GIL: a hang. So the caller drops its references to the
    trained modules, the collection here frees them while the group is still listed, and
    destroying the group drops its last reference through its Python object, which lets go of
    the GIL while the group ends its threads."""
    if dist.is_available() and dist.is_initialized():
        gc.collect()  # the modules' reference cycles (a brain and its checkpointer), DDP's reducer with them
        dist.barrier()  # none tears its connections down while another still uses them
        dist.destroy_process_group()


def short_torchrun_grace():
    """Under a torchrun that kills its processes 30 s after it is stopped (a time limit's SIGTERM,
    ``scancel``) whatever ``TORCH_ELASTIC_SHUTDOWN_TIMEOUT`` says (torch before 2.12), a warning
    that a training's step saved then may not be written in time; else None."""
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return None
    from torch.distributed.launcher.api import LaunchConfig

    if any(field.name == "shutdown_timeout" for field in dataclasses.fields(LaunchConfig)):
        return None
    return (
        f"torch {torch.__version__}: torchrun kills its processes 30 s after it is stopped (a time "
        "limit's SIGTERM, scancel): a step's checkpoint not written by then is lost, and the run "
        "resumes from the one before (torch 2.12 or newer waits TORCH_ELASTIC_SHUTDOWN_TIMEOUT "
        "seconds, which run.sh sets to 300)"
    )
