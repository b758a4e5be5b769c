"""The Crab model: encoders, unimodal blocks, cross-modal block, pooling, classifier.

The model is exactly what runs at inference. The contrastive supervision legs
(``crab.legs``) live outside it and read the named representations ("taps") that
``forward`` returns, so dropping them leaves this model untouched.
"""

import torch
from torch import nn

from crab.masks import device_mask
from crab.modules import (
    AttentionPooling,
    ClassifierBlock,
    CrossModalBlock,
    UnimodalBlock,
    masked_mean,
)

MODALITIES = ("bimodal", "speech", "text")
UNIMODAL_LEG_INPUTS = ("gru", "projection")


class NonFiniteOutputError(FloatingPointError):
    """The model gave NaN or infinite scores for an utterance: an error naming it, never a
    prediction (``argmax`` of a NaN row is class 0)."""


def non_finite_rows(logits):
    """Indices of the rows of ``logits`` (batch x classes) holding a NaN or an infinity, from
    one copy of a flag per row to the host (``nonzero`` on a GPU waits for it, then the copy)."""
    finite = torch.isfinite(logits.detach()).all(dim=-1).tolist()
    return [row for row, ok in enumerate(finite) if not ok]


class Crab(nn.Module):
    """Bimodal cross-modal transformer for emotion recognition.

    Arguments
    ---------
    num_classes : int
    speech_encoder, text_encoder : callable
        Factories (hyperpyyaml ``!name:``) building the encoders; only the ones the
        modality needs are called, so a speech-only model never loads RoBERTa.
    modality : str
        ``bimodal`` (paper), ``speech`` or ``text`` (Table III: the cross-modal
        block is removed, the legs that apply stay).
    hidden_dim : int
        Unimodal projection size h (GRU output is 2h).
    num_heads, attention_dropout : cross-modal attention settings.
    scaled_pooling : bool
        Paper's sqrt(D)-scaled pooling score (True) or the reference's unscaled one.
    bottleneck_dim, dropout : classifier settings.
    unimodal_leg_input : str
        What the unimodal legs average over time: ``gru`` (paper) or
        ``projection`` (reference code).
    padding_masks : bool
        True: every padded frame and token is masked after the encoders (GRU
        packing, cross-modal attention, pooling, the legs' means), so a prediction
        does not depend on its batch. False: the authors' code, where the encoders'
        outputs on padded positions enter the GRU, the attention, the pooling and
        the means like real ones.

    Returns
    -------
    ``forward`` returns ``(logits, taps)``: the (batch, num_classes) scores and the
    named (batch, dim) representations the supervision legs read (``tap_dims``).

    Example
    -------
    A speech-only Crab on the mini recipe's tiny random-init WavLM:

    >>> import os, torch, crab
    >>> from crab.encoders import SpeechEncoder
    >>> wavlm = os.path.join(os.path.dirname(crab.__file__), "..", "egs", "mini", "conf", "wavlm_tiny")
    >>> _ = torch.manual_seed(0)
    >>> model = Crab(
    ...     num_classes=4,
    ...     speech_encoder=lambda: SpeechEncoder(wavlm, pretrained=False),
    ...     modality="speech",
    ...     hidden_dim=8,
    ...     bottleneck_dim=8,
    ... ).eval()
    >>> wavs = torch.randn(2, 8000)  # two 0.5 s utterances at 16 kHz
    >>> logits, taps = model(wavs, wav_lens=torch.tensor([1.0, 0.5]))
    >>> logits.shape
    torch.Size([2, 4])
    >>> {name: tuple(tap.shape) for name, tap in taps.items()}
    {'speech_unimodal': (2, 16), 'speech_pooled': (2, 16), 'fusion': (2, 8)}
    >>> model.tap_dims
    {'speech_unimodal': 16, 'speech_pooled': 16, 'fusion': 8}
    """

    def __init__(
        self,
        num_classes,
        speech_encoder=None,
        text_encoder=None,
        modality="bimodal",
        hidden_dim=512,
        num_heads=1,
        attention_dropout=0.5,
        scaled_pooling=True,
        bottleneck_dim=512,
        dropout=0.5,
        unimodal_leg_input="gru",
        padding_masks=True,
    ):
        super().__init__()
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got '{modality}'")
        if unimodal_leg_input not in UNIMODAL_LEG_INPUTS:
            raise ValueError(
                f"unimodal_leg_input must be one of {UNIMODAL_LEG_INPUTS}, got '{unimodal_leg_input}'"
            )
        self.modality = modality
        self.unimodal_leg_input = unimodal_leg_input
        self.padding_masks = bool(padding_masks)
        self.branches = [m for m in ("speech", "text") if modality in ("bimodal", m)]
        factories = {"speech": speech_encoder, "text": text_encoder}
        self.encoders = nn.ModuleDict()
        self.unimodal = nn.ModuleDict()
        self.pooling = nn.ModuleDict()
        for branch in self.branches:
            if factories[branch] is None:
                raise ValueError(f"modality '{modality}' needs a {branch}_encoder")
            encoder = factories[branch]()
            self.encoders[branch] = encoder
            self.unimodal[branch] = UnimodalBlock(encoder.output_dim, hidden_dim)
            self.pooling[branch] = AttentionPooling(2 * hidden_dim, scaled_pooling)
        self.cross_modal = (
            CrossModalBlock(2 * hidden_dim, num_heads, attention_dropout) if modality == "bimodal" else None
        )
        self.classifier = ClassifierBlock(
            2 * hidden_dim * len(self.branches), num_classes, bottleneck_dim, dropout
        )
        unimodal_dim = 2 * hidden_dim if unimodal_leg_input == "gru" else hidden_dim
        self.tap_dims = {f"{b}_unimodal": unimodal_dim for b in self.branches}
        self.tap_dims.update({f"{b}_pooled": 2 * hidden_dim for b in self.branches})
        self.tap_dims["fusion"] = bottleneck_dim

    @property
    def speech_encoder(self):
        return self.encoders["speech"] if "speech" in self.encoders else None

    @property
    def text_encoder(self):
        return self.encoders["text"] if "text" in self.encoders else None

    def forward(self, wavs=None, wav_lens=None, texts=None, states=None):
        """Return ``(logits, taps)``; ``taps`` maps leg names to (batch, dim) tensors.

        ``states`` optionally maps a branch to its encoder's precomputed
        ``(states, mask)`` (the frozen-feature cache); that encoder is not run.
        """
        if states and not self.padding_masks:
            raise ValueError(
                "padding_masks: false reads the encoders' outputs on padded positions, which a "
                "feature cache does not hold: train it without --feature_cache"
            )
        states = self.encoder_states(wavs, wav_lens, texts, states)
        seqs, masks, taps = {}, {}, {}
        for branch in self.branches:
            mask = states[branch][1]
            hidden = self.encoders[branch].select(states[branch][0], mask)
            if not self.padding_masks:  # the authors' code: no mask after the encoders
                batch, frames = mask.shape
                mask = device_mask(torch.full((batch,), frames), frames, mask.device)
            projected, seq = self.unimodal[branch](hidden, mask)
            leg_input = seq if self.unimodal_leg_input == "gru" else projected
            taps[f"{branch}_unimodal"] = masked_mean(leg_input, mask)
            seqs[branch], masks[branch] = seq, mask
        if self.cross_modal is not None:
            seqs["speech"], seqs["text"] = self.cross_modal(
                seqs["speech"], masks["speech"], seqs["text"], masks["text"]
            )
        pooled = []
        for branch in self.branches:
            taps[f"{branch}_pooled"] = self.pooling[branch](seqs[branch], masks[branch])
            pooled.append(taps[f"{branch}_pooled"])
        logits, taps["fusion"] = self.classifier(torch.cat(pooled, dim=-1))
        return logits, taps

    def encoder_states(self, wavs=None, wav_lens=None, texts=None, states=None):
        """``{branch: (states, mask)}``: ``states`` where given, else the encoder's."""
        inputs = {"speech": (wavs, wav_lens), "text": (texts,)}
        states = dict(states or {})
        for branch in self.branches:
            if branch not in states:
                states[branch] = self.encoders[branch].states(*inputs[branch])
        return states

    def encoder_parameters(self, branch):
        """Trainable parameters of one pretrained encoder (empty when absent or frozen)."""
        if branch not in self.encoders:
            return []
        return self.encoders[branch].encoder_parameters()

    def head_parameters(self):
        """Trainable parameters outside the pretrained encoders (layer weights included)."""
        encoder_ids = {id(p) for b in self.branches for p in self.encoder_parameters(b)}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in encoder_ids]
