"""Losses: multi-positive contrastive (MPCL), supervised contrastive (SupCon),
class-weighted cross-entropy, and the Crab total loss."""

import torch
import torch.nn.functional as F
from torch import nn

from crab.cli import UserError
from crab.distributed import gather_batch


def _similarities(embeddings, labels, temperature):
    """Log-softmax of the cosine similarities / tau with the self pair removed,
    ``(batch, batch)``, or ``(legs, batch, batch)`` for ``(batch, legs, dim)`` embeddings,
    and the positive mask, ``(batch, batch)``.

    Computed in fp32, also under autocast (``--precision bf16|fp16``): the cosines are
    divided by tau (0.1) before the softmax, and in bf16 (8 significant bits) a cosine
    near 1 is off by up to 0.002, a logit by up to 0.02."""
    with torch.autocast(embeddings.device.type, enabled=False):
        z = F.normalize(embeddings.float(), dim=-1)
        if z.dim() == 3:
            z = z.transpose(0, 1)
        logits = z @ z.mT / temperature
        eye = torch.eye(len(labels), dtype=torch.bool, device=z.device)
        logits = logits.masked_fill(eye, float("-inf"))
        positives = (labels.unsqueeze(0) == labels.unsqueeze(1)) & ~eye
        log_q = torch.log_softmax(logits, dim=-1).masked_fill(eye, 0.0)
    return log_q, positives.to(log_q.dtype)


def mpcl(embeddings, labels, temperature=0.1):
    """Multi-positive contrastive loss (StableRep form), as in the Crab paper.

    q_i = softmax_{j != i}(z_i . z_j / tau) over unit-length z, target
    p_ij = 1[y_j = y_i] / #{j != i : y_j = y_i}, L = -(1/B) sum_i sum_j p_ij log q_ij.
    An anchor with no positive in the batch contributes 0 and still counts in B.

    Arguments
    ---------
    embeddings : torch.Tensor
        (batch, dim) leg outputs, or (batch, legs, dim): several legs' at once;
        normalized to unit length here.
    labels : torch.Tensor
        (batch,) integer classes: same class, positive pair.
    temperature : float
        tau.

    Returns
    -------
    torch.Tensor
        The scalar loss, or one per leg, (legs,) (0 for a batch of fewer than 2).

    Example
    -------
    Two classes of two identical embeddings, orthogonal to the other class, tau = 1: each
    anchor's one positive has similarity 1 and its two negatives 0, so every term is
    -log(e / (e + 2)) = log(1 + 2 / e) = 0.5514.

    >>> import torch
    >>> z = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
    >>> labels = torch.tensor([0, 0, 1, 1])
    >>> round(mpcl(z, labels, temperature=1.0).item(), 4)
    0.5514
    >>> round(mpcl(z, torch.tensor([0, 0, 1, 2]), temperature=1.0).item(), 4)  # anchors 2, 3: no positive
    0.2757
    """
    if len(embeddings) < 2:
        return embeddings.sum(dim=(0, -1)) * 0.0
    log_q, positives = _similarities(embeddings, labels, temperature)
    target = positives / positives.sum(dim=1, keepdim=True).clamp(min=1.0)
    return -(target * log_q).sum(dim=-1).mean(dim=-1)


SUPCON_ANCHORS = ("with_positive", "all")
SUPCON_SCALES = ("tau_ratio", "none")


def supcon(
    embeddings, labels, temperature=0.07, base_temperature=0.07, anchors="with_positive", scale="tau_ratio"
):
    """Supervised contrastive loss of Khosla et al. (2020), the L_out form, one view.

    L_i = -c / |P(i)| sum_{p in P(i)} log softmax_{a != i}(s_ia)[p], with
    c = tau / tau_base (``scale="tau_ratio"``, the factor of Khosla et al.'s code:
    x1.43 at tau 0.1 and tau_base 0.07) or 1 (``scale="none"``, the paper's formula).
    ``anchors="with_positive"`` averages over the anchors that have a positive in
    the batch (L_i is undefined for the others); ``anchors="all"`` averages over
    every anchor, one without a positive contributing 0 (Khosla et al.'s code,
    and MPCL's convention).

    Arguments
    ---------
    embeddings : torch.Tensor
        (batch, dim) leg outputs, or (batch, legs, dim): several legs' at once;
        normalized to unit length here.
    labels : torch.Tensor
        (batch,) integer classes.
    temperature, base_temperature : float
        tau and tau_base.
    anchors : str
        ``with_positive`` or ``all`` (see above).
    scale : str
        ``tau_ratio`` or ``none`` (see above).

    Returns
    -------
    torch.Tensor
        The scalar loss, or one per leg, (legs,) (0 when no anchor has a positive).

    Example
    -------
    With one positive per anchor SupCon equals MPCL (0.5514 for the batch of ``mpcl``'s
    example); the default scale multiplies it by tau / tau_base.

    >>> import torch
    >>> z = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
    >>> labels = torch.tensor([0, 0, 1, 1])
    >>> round(supcon(z, labels, temperature=1.0, scale="none").item(), 4)
    0.5514
    >>> round(supcon(z, labels, temperature=1.0, base_temperature=0.5).item(), 4)  # x 2
    1.1029
    >>> labels = torch.tensor([0, 0, 1, 2])  # anchors 2 and 3 have no positive
    >>> round(supcon(z, labels, temperature=1.0, scale="none").item(), 4)  # mean over anchors 0, 1
    0.5514
    >>> round(supcon(z, labels, temperature=1.0, scale="none", anchors="all").item(), 4)
    0.2757
    """
    if anchors not in SUPCON_ANCHORS:
        raise ValueError(f"supcon anchors must be one of {SUPCON_ANCHORS}, got '{anchors}'")
    if scale not in SUPCON_SCALES:
        raise ValueError(f"supcon scale must be one of {SUPCON_SCALES}, got '{scale}'")
    log_q, positives = _similarities(embeddings, labels, temperature)
    counts = positives.sum(dim=1)
    # an anchor without a positive has per_anchor 0; counted on the device, without
    # asking the host (a host wait per leg on a GPU)
    per_anchor = (positives * log_q).sum(dim=-1) / counts.clamp(min=1.0)
    averaged = (counts > 0).sum().clamp(min=1) if anchors == "with_positive" else len(counts)
    mean = per_anchor.sum(dim=-1) / averaged
    factor = temperature / base_temperature if scale == "tau_ratio" else 1.0
    return -factor * mean


class ContrastiveLoss(nn.Module):
    """A contrastive criterion as a module (for hyperpyyaml): ``mpcl`` or ``supcon``.

    With ``gather=True``, in a DDP run the loss is over the global batch: every
    process's embeddings and labels (``crab.distributed.gather_batch``).
    """

    KINDS = {"mpcl": mpcl, "supcon": supcon}

    def __init__(
        self,
        kind="mpcl",
        temperature=0.1,
        gather=False,
        supcon_anchors="with_positive",
        supcon_scale="tau_ratio",
        **kwargs,
    ):
        super().__init__()
        if kind not in self.KINDS:
            raise ValueError(f"contrastive loss must be one of {list(self.KINDS)}, got '{kind}'")
        if supcon_anchors not in SUPCON_ANCHORS:
            raise ValueError(f"supcon_anchors must be one of {SUPCON_ANCHORS}, got '{supcon_anchors}'")
        if supcon_scale not in SUPCON_SCALES:
            raise ValueError(f"supcon_scale must be one of {SUPCON_SCALES}, got '{supcon_scale}'")
        if kind == "supcon":  # MPCL has neither choice
            kwargs = {"anchors": supcon_anchors, "scale": supcon_scale, **kwargs}
        self.kind, self.temperature, self.gather, self.kwargs = kind, temperature, gather, kwargs

    def forward(self, embeddings, labels):
        """The loss of ``(batch, dim)`` embeddings, or each leg's of ``(batch, legs, dim)``."""
        if self.gather:
            embeddings, labels = gather_batch(embeddings, labels)
        return self.KINDS[self.kind](embeddings, labels, self.temperature, **self.kwargs)


def leg_losses(criterion, outputs, labels):
    """``{leg name: loss}`` of the legs' ``outputs`` (``{name: (batch, dim)}``). A
    ``ContrastiveLoss`` takes the legs of one output size in one batch: one similarity
    matrix product and softmax for all (about 600 operator calls fewer in a 5-leg
    training step; with ``gather``, one exchange between processes, not one per leg).
    Any other criterion is called on each leg."""
    if not outputs:
        return {}
    shapes = {out.shape for out in outputs.values()}
    if not isinstance(criterion, ContrastiveLoss) or len(shapes) > 1:
        return {name: criterion(out, labels) for name, out in outputs.items()}
    losses = criterion(torch.stack(list(outputs.values()), dim=1), labels)
    return dict(zip(outputs, losses.unbind(), strict=True))


class ClassCountError(UserError, ValueError):
    """A class without training examples: its weight N / N_c would be infinite."""


def class_weights(counts, classes=None):
    """w_c = N / N_c from per-class training counts (a list ordered like the labels,
    or a ``{class: count}`` mapping). A count of 0 is a ``ClassCountError`` naming the
    class (by ``classes``, the mapping's keys, or else by index).

    Example
    -------
    >>> [round(w, 4) for w in class_weights([3, 1]).tolist()]  # N = 4: 4/3, 4/1
    [1.3333, 4.0]
    """
    if isinstance(counts, dict):
        classes, counts = list(counts), list(counts.values())
    counts = torch.as_tensor(counts, dtype=torch.float)
    empty = (counts <= 0).nonzero().flatten().tolist()
    if empty:
        names = [f"'{classes[i]}'" if classes is not None else f"class {i}" for i in empty]
        of = f" of {list(classes)}" if classes is not None else ""
        raise ClassCountError(
            f"no training examples of {', '.join(names)} (counts {[int(n) for n in counts.tolist()]}{of}): "
            "every class needs some in the training manifest; add them, or leave the class out of the classes"
        )
    return counts.sum() / counts


class WeightedCrossEntropy(nn.Module):
    """Cross-entropy with per-class weights held as a buffer, so they are saved
    in the checkpoint with the model. Reduction is the weighted mean, under
    which w_c = N / N_c and the reference's N / (C N_c) give the same loss.
    With ``class_weighting=False`` every weight stays 1 (plain cross-entropy).

    Arguments
    ---------
    num_classes : int
    class_weighting : bool
        Whether ``set_counts`` sets the weights N / N_c (``class_weights``).

    Example
    -------
    Utterance 1 (class 0, p = 3/4) loses -log(3/4) = 0.2877, utterance 2 (class 1, p = 1/2)
    log 2 = 0.6931. With training counts 3 and 1 the weights are 4/3 and 4, and the loss is
    (4/3 * 0.2877 + 4 * 0.6931) / (4/3 + 4) = 0.5918 (plain cross-entropy: their mean, 0.4904).

    >>> import math, torch
    >>> logits = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])
    >>> targets = torch.tensor([0, 1])
    >>> wce = WeightedCrossEntropy(num_classes=2)
    >>> wce.set_counts([3, 1])
    >>> round(wce(logits, targets).item(), 4)
    0.5918
    >>> plain = WeightedCrossEntropy(num_classes=2, class_weighting=False)
    >>> plain.set_counts([3, 1])
    >>> round(plain(logits, targets).item(), 4)
    0.4904
    """

    def __init__(self, num_classes, class_weighting=True):
        super().__init__()
        self.class_weighting = class_weighting
        self.register_buffer("weight", torch.ones(num_classes))

    def set_counts(self, counts):
        weights = class_weights(counts)
        if weights.shape != self.weight.shape:
            raise ValueError(f"{len(weights)} class counts for a {len(self.weight)}-class loss")
        if self.class_weighting:
            self.weight.copy_(weights)

    def forward(self, logits, targets):
        return F.cross_entropy(logits, targets, weight=self.weight)


def total_loss(ce, leg_losses, alpha):
    """Paper eq. 8: L = WCE + alpha * mean of the leg losses (WCE alone without legs).

    Example
    -------
    >>> import torch
    >>> total_loss(torch.tensor(0.5), [torch.tensor(1.0), torch.tensor(2.0)], alpha=2.0)  # 0.5 + 2 * 1.5
    tensor(3.5000)
    """
    if not leg_losses:
        return ce
    return ce + alpha * torch.stack(list(leg_losses)).mean()
