"""Quiet stages: no torchvision message; WavLM's attention through SDPA, one float mask
(no mismatched-mask deprecation), the same as transformers' own."""

import os
import subprocess
import sys
import warnings

import pytest
import torch
from transformers import AutoModel

from crab.encoders import SpeechEncoder, lengths_to_mask, relative_to_absolute
from tests.conftest import MINI_CONF, ROOT


def run_fresh(code):
    """``code`` in a new interpreter (messages logged once per process show there), with
    this checkout's crab."""
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )


def test_no_torchvision_message_and_the_figures_are_still_drawn(tmp_path):
    code = (
        "import logging, sys; logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)\n"
        "from crab.report import TrainLogger\n"
        f"TrainLogger({str(tmp_path / 'log.txt')!r}).log_stats({{'epoch': 1}}, train_stats={{'loss': 1.0}})\n"
        "from crab.plots import plot_confusion\n"
        f"plot_confusion([[2, 0], [1, 1]], ['a', 'b'], {str(tmp_path / 'c.png')!r})\n"
    )
    result = run_fresh(code)
    assert result.returncode == 0, result.stderr
    assert "torchvision" not in result.stdout + result.stderr
    assert "epoch: 1" in (tmp_path / "log.txt").read_text()
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_checkpointed_text_encoder_trains_without_the_cache_message(tokenizer_dir):
    """RoBERTa's config caches by default; with gradient checkpointing transformers logged
    that caching is incompatible with it, once per run (a fresh process: it logs once)."""
    code = (
        "import torch\n"
        "from crab.encoders import TextEncoder\n"
        f"encoder = TextEncoder({os.path.join(MINI_CONF, 'roberta_tiny')!r}, tokenizer={tokenizer_dir!r},"
        " pretrained=False, gradient_checkpointing=True).train()\n"
        "states, mask = encoder(['what a day', 'no'])\n"
        "states[mask].sum().backward()\n"
        "print('trained', encoder.model.config.use_cache)\n"
    )
    result = run_fresh(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "trained False"
    assert "use_cache" not in result.stderr and "Caching" not in result.stderr


def test_wavlm_attention_through_sdpa_gives_transformers_states_without_warnings():
    torch.manual_seed(0)
    encoder = SpeechEncoder(os.path.join(MINI_CONF, "wavlm_tiny"), pretrained=False).eval()
    wavs, lens = 0.1 * torch.randn(3, 16000), torch.tensor([1.0, 0.6, 0.3])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Support for mismatched key_padding_mask and attn_mask" would raise
        hidden, mask = encoder(wavs, lens)
    # transformers' own WavLM, with the boolean padding mask, gives the same states
    reference = AutoModel.from_config(encoder.model.config).eval()
    reference.load_state_dict(encoder.model.state_dict())
    samples = lengths_to_mask(relative_to_absolute(lens, 16000), 16000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = reference(wavs.masked_fill(~samples, 0.0), attention_mask=samples.long()).last_hidden_state
    torch.testing.assert_close(hidden, expected, rtol=0, atol=1e-6)
    assert mask.sum(1).tolist()[0] > mask.sum(1).tolist()[2]


def test_wavlm_attention_through_sdpa_trains_as_transformers_own():
    """Same states and gradients as transformers' WavLM in training mode (dropout, layer
    drop and time masking off, as they draw random numbers differently), in float64:
    in fp32 the gradients' summation order alone makes them differ by about 1e-4."""
    torch.manual_seed(0)
    encoder = SpeechEncoder(os.path.join(MINI_CONF, "wavlm_tiny"), pretrained=False)
    config = encoder.model.config
    config.apply_spec_augment, config.layerdrop = False, 0.0
    for module in encoder.model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if hasattr(module, "gru_rel_pos_const"):  # WavLMAttention: its dropout is a probability
            module.dropout = 0.0
    reference = AutoModel.from_config(config)
    reference.load_state_dict(encoder.model.state_dict())
    for module in reference.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if hasattr(module, "gru_rel_pos_const"):
            module.dropout = 0.0
    encoder.double().train(), reference.double().train()
    wavs, lens = 0.1 * torch.randn(3, 16000, dtype=torch.float64), torch.tensor([1.0, 0.6, 0.3])
    samples = lengths_to_mask(relative_to_absolute(lens, 16000), 16000)
    hidden, mask = encoder(wavs, lens)
    (hidden * mask.unsqueeze(-1)).square().sum().backward()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = reference(wavs.masked_fill(~samples, 0.0), attention_mask=samples.long()).last_hidden_state
    (expected * mask.unsqueeze(-1)).square().sum().backward()
    torch.testing.assert_close(hidden, expected, rtol=0, atol=1e-12)
    ours = dict(encoder.model.named_parameters())
    names = [n for n, p in reference.named_parameters() if p.grad is not None and "attention" in n]
    theirs = torch.cat([reference.get_parameter(n).grad.flatten() for n in names])
    difference = torch.cat([ours[n].grad.flatten() for n in names]) - theirs
    assert difference.norm() <= 1e-10 * theirs.norm()


MASKING = dict(mask_time_prob=0.4, mask_time_length=2, mask_feature_prob=0.3, mask_feature_length=3)
NO_DROPOUT = dict(layerdrop=0.0, hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)


def masking_config(kind, folder):
    """A tiny WavLM, or wav2vec 2.0 with an adapter (its output shorter than what is
    masked), with time and feature masking on and no dropout."""
    import json

    from transformers import Wav2Vec2Config

    from tests.test_encoders import SMALL

    if kind == "wavlm":
        config = json.loads(open(os.path.join(MINI_CONF, "wavlm_tiny", "config.json")).read())
        config.update(mask_feature_min_masks=0)  # WavLMConfig lacks it, which transformers' masking reads
        config.update(MASKING, **NO_DROPOUT, feat_proj_dropout=0.0)
        os.makedirs(folder)
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(config, f)
    else:
        adapter = dict(add_adapter=True, num_adapter_layers=1, adapter_stride=2, output_hidden_size=32)
        config = Wav2Vec2Config(**SMALL, **MASKING, **NO_DROPOUT, feat_proj_dropout=0.0, **adapter)
        config.save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("kind", ["wavlm", "wav2vec2_adapter"])
def test_time_and_feature_masking_drawn_on_the_host_are_transformers_own(kind, tmp_path):
    """SpecAugment in training (``crab.encoders._host_spec_augment``): with NumPy's
    generator in the same state, the same masks as transformers' own, on padded audio."""
    import numpy as np

    torch.manual_seed(0)
    encoder = SpeechEncoder(masking_config(kind, tmp_path / kind), pretrained=False).train()
    assert encoder.model._mask_hidden_states.__qualname__.startswith("_host_spec_augment")
    reference = AutoModel.from_config(encoder.model.config).train()
    reference.load_state_dict(encoder.model.state_dict())
    wavs, lens = 0.1 * torch.randn(3, 16000), torch.tensor([1.0, 0.6, 0.3])
    samples = lengths_to_mask(relative_to_absolute(lens, 16000), 16000)
    np.random.seed(0)
    hidden, mask = encoder(wavs, lens)
    assert encoder.model.crab_frame_lens is None  # the lengths were this call's only
    np.random.seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = reference(wavs.masked_fill(~samples, 0.0), attention_mask=samples.long()).last_hidden_state
    torch.testing.assert_close(hidden, expected, rtol=0, atol=1e-5)
    unmasked, _ = encoder.eval()(wavs, lens)
    assert not torch.allclose(hidden, unmasked, atol=1e-3)  # the masks did something
