"""Shared fixtures: tiny random-init encoders from the mini recipe's configs."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download
# One thread per process keeps the tiny-model timings steady when the cores are shared.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch

from crab.encoders import SpeechEncoder, TextEncoder
from crab.model import Crab
from crab.tokenizer import build_bpe_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MINI_CONF = os.path.join(ROOT, "egs", "mini", "conf")
TEXTS = [
    "I cannot believe you did that again!",
    "What a wonderful surprise, thank you so much.",
    "The train leaves at half past nine.",
    "I miss the old days, everything feels empty now.",
]


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tokenizer")
    build_bpe_tokenizer(TEXTS * 4, str(out), vocab_size=300)
    return str(out)


@pytest.fixture(scope="session")
def make_crab(tokenizer_dir):
    """Factory for a tiny Crab (random weights) with a fixed seed."""

    def build(seed=0, **kwargs):
        torch.manual_seed(seed)
        options = dict(num_classes=4, hidden_dim=16, bottleneck_dim=16, dropout=0.1, attention_dropout=0.1)
        options.update(kwargs)
        return Crab(
            speech_encoder=lambda: SpeechEncoder(os.path.join(MINI_CONF, "wavlm_tiny"), pretrained=False),
            text_encoder=lambda: TextEncoder(
                os.path.join(MINI_CONF, "roberta_tiny"), tokenizer=tokenizer_dir, pretrained=False
            ),
            **options,
        )

    return build
