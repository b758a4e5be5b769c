"""Multi Layer Contrastive Supervision: small legs on named model representations.

Legs are used in training only. They are a separate module from ``crab.model.Crab``
so the inference model has exactly the parameters of a model trained without them.
"""

import logging

import torch
from torch import nn

from crab.seeds import stream_seed

logger = logging.getLogger(__name__)

LEG_NAMES = ("speech_unimodal", "text_unimodal", "speech_pooled", "text_pooled", "fusion")


class SupervisionLegs(nn.Module):
    """One FC-ReLU-FC leg per named representation.

    Arguments
    ---------
    tap_dims : dict
        Input size of every representation the model exposes (``Crab.tap_dims``).
    names : list of str
        Which legs to attach (any subset of ``LEG_NAMES``). Legs the model's
        modality lacks (text legs on a speech-only model) are left out and logged,
        so one leg list serves every variant.
    output_dim : int
        Leg output size: 512 for contrastive embeddings (reference), or the number
        of classes for CE heads ("MLS + CE" ablation).
    hidden_dim : int or None
        Hidden size; None takes half the input size (reference: 256 for 512-d
        inputs, 512 for 1024-d inputs).
    fusion_hidden_dim : int or None
        Hidden size of the fusion leg alone; None follows ``hidden_dim``. The
        authors' code uses h (512 -> 512 -> 512), not half its 512-d input.
    seed : int or None
        Each leg's initial weights are drawn from a stream of its own
        (``crab.seeds.stream_seed(seed, "leg <name>")``), not from torch's generator:
        building the legs leaves the run's random stream (dropout, the next modules'
        weights) as it was, so a run with other legs or none (CE only) draws the same
        dropout masks, and a leg's weights do not depend on which other legs are built.
        None: the seed torch's generator was last seeded with (a recipe yaml's ``seed``,
        by its ``seed_everything``).

    Returns
    -------
    ``forward(taps)`` returns ``{leg name: (batch, output_dim) tensor}`` for the legs
    attached (``names``).

    Example
    -------
    >>> import torch
    >>> tap_dims = {"speech_unimodal": 16, "speech_pooled": 16, "fusion": 8}  # a speech-only Crab
    >>> legs = SupervisionLegs(tap_dims, output_dim=4)
    >>> legs.names  # the text legs do not apply
    ['speech_unimodal', 'speech_pooled', 'fusion']
    >>> legs.legs["fusion"]  # hidden size: half the input
    Sequential(
      (0): Linear(in_features=8, out_features=4, bias=True)
      (1): ReLU()
      (2): Linear(in_features=4, out_features=4, bias=True)
    )
    >>> taps = {name: torch.randn(3, dim) for name, dim in tap_dims.items()}
    >>> {name: tuple(out.shape) for name, out in legs(taps).items()}
    {'speech_unimodal': (3, 4), 'speech_pooled': (3, 4), 'fusion': (3, 4)}
    """

    def __init__(
        self, tap_dims, names=LEG_NAMES, output_dim=512, hidden_dim=None, fusion_hidden_dim=None, seed=None
    ):
        super().__init__()
        seed = torch.initial_seed() if seed is None else seed
        unknown = [n for n in names if n not in LEG_NAMES]
        if unknown:
            raise ValueError(f"unknown leg name(s) {unknown}; choose from {LEG_NAMES}")
        missing = [n for n in names if n not in tap_dims]
        if missing:
            logger.info("Legs %s do not apply to this model; left out", missing)
        self.legs = nn.ModuleDict()
        for name in names:
            if name not in tap_dims:
                continue
            in_dim = tap_dims[name]
            hidden = hidden_dim or in_dim // 2
            if name == "fusion" and fusion_hidden_dim:
                hidden = fusion_hidden_dim
            with torch.random.fork_rng(devices=[]):  # torch's CPU generator restored afterwards
                torch.default_generator.manual_seed(stream_seed(seed, f"leg {name}"))  # CUDA's untouched
                self.legs[name] = nn.Sequential(
                    nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, output_dim)
                )

    @property
    def names(self):
        return list(self.legs.keys())

    def forward(self, taps):
        """Map each attached leg's representation to its output."""
        return {name: leg(taps[name]) for name, leg in self.legs.items()}
