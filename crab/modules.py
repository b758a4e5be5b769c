"""Building blocks of the Crab head: every padded position is masked."""

import math

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from crab.masks import host_lengths, to_device


def masked_mean(x, mask):
    """Mean of ``x`` (batch, time, dim) over the True positions of ``mask``."""
    weights = mask.unsqueeze(-1).to(x.dtype)
    return (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


class UnimodalBlock(nn.Module):
    """Linear + LayerNorm projection, then a bidirectional GRU over real frames.

    Returns the projection (batch, time, hidden) and the GRU output
    (batch, time, 2 * hidden); padded GRU outputs are zeros and never reach the
    real frames because the sequence is packed.
    """

    def __init__(self, input_dim, hidden_dim=512):
        super().__init__()
        self.projection = nn.Sequential(nn.Linear(input_dim, hidden_dim), nn.LayerNorm(hidden_dim))
        self.gru = nn.GRU(hidden_dim, hidden_dim, batch_first=True, bidirectional=True)
        self.output_dim = 2 * hidden_dim

    def forward(self, x, mask):
        projected = self.projection(x)
        lengths = host_lengths(mask)  # kept by the encoders' masks: no wait for the device
        # Sorted by length here, on the host (packing needs it): packing unsorted copies
        # its order to the device and back, and each copy makes the host wait.
        order = torch.argsort(lengths, descending=True, stable=True)
        restore = torch.argsort(order)
        by_length = projected.index_select(0, to_device(order, projected.device))
        # The recurrence in fp32 under autocast: rounding in a low-precision state adds
        # up over hundreds of frames.
        with torch.autocast(projected.device.type, enabled=False):
            packed = pack_padded_sequence(by_length.float(), lengths[order], batch_first=True)
            out, _ = self.gru(packed)
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return projected, out.index_select(0, to_device(restore, out.device))


class CrossModalBlock(nn.Module):
    """Bidirectional cross-modal attention with residual connections.

    Speech queries attend to text keys/values and text queries to speech; each
    attention output is added to its query sequence. No feed-forward follows.
    """

    def __init__(self, dim, num_heads=1, dropout=0.5):
        super().__init__()
        self.speech_to_text = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.text_to_speech = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)

    def forward(self, speech, speech_mask, text, text_mask):
        s_att, _ = self.speech_to_text(speech, text, text, key_padding_mask=~text_mask, need_weights=False)
        t_att, _ = self.text_to_speech(
            text, speech, speech, key_padding_mask=~speech_mask, need_weights=False
        )
        return speech + s_att, text + t_att


class AttentionPooling(nn.Module):
    """Masked attention pooling: w = softmax(r . m / sqrt(D)), pooled = sum w r.

    ``scaled=True`` is the paper's eq. 3-4; ``scaled=False`` drops the sqrt(D),
    as the reference code does (a Linear(D, 1) score: its bias cancels in the
    softmax).
    """

    def __init__(self, dim, scaled=True):
        super().__init__()
        self.query = nn.Parameter(torch.randn(dim) / math.sqrt(dim))
        self.scale = 1.0 / math.sqrt(dim) if scaled else 1.0

    def forward(self, x, mask):
        scores = (x @ self.query) * self.scale
        scores = scores.masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores, dim=1)
        return torch.bmm(weights.unsqueeze(1), x).squeeze(1)


class ClassifierBlock(nn.Module):
    """LayerNorm, fc1 bottleneck, ReLU, dropout, output layer.

    Returns the logits and the fc1 output (before ReLU), which the fusion leg uses.
    """

    def __init__(self, input_dim, num_classes, bottleneck_dim=512, dropout=0.5):
        super().__init__()
        self.norm = nn.LayerNorm(input_dim)
        self.fc1 = nn.Linear(input_dim, bottleneck_dim)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(bottleneck_dim, num_classes)
        self.bottleneck_dim = bottleneck_dim

    def forward(self, x):
        fused = self.fc1(self.norm(x))
        return self.out(self.dropout(torch.relu(fused))), fused
