"""Device placement and host waits of the training, evaluation and inference steps, checked
without a GPU: the tiny model and its inputs on PyTorch's "meta" device, which has shapes and
no data. A tensor made on the CPU inside a step meets the meta ones there and fails as it would
on CUDA ("Expected all tensors to be on the same device"). Reading a device tensor's values on
the host (``.item()``, ``.tolist()``, ``.cpu()``, ``nonzero``) makes the host wait for
everything queued on the GPU; on meta ``HostWaits`` records each such read, with the function
that made it, and returns a stand-in value so that the step goes on. Each test pins the waits
of its step."""

import os
import sys

import pytest
import speechbrain as sb
import torch
import torch.distributed as dist
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.dataio.encoder import CategoricalEncoder
from torch.utils._python_dispatch import TorchDispatchMode

from crab import distributed
from crab.brain import CrabBrain
from crab.encoders import SpeechEncoder
from crab.features import _encode_batch
from crab.inference import CrabClassifier, PackagedCrab
from crab.model import Crab
from crab.runconfig import load_hparams
from tests.conftest import MINI_CONF, ROOT, TEXTS, write_tiny_whisper

CONF = os.path.join(ROOT, "egs", "TEMPLATE", "conf")
CLASSES = ["angry", "happy", "neutral", "sad"]
BATCH = 4
aten = torch.ops.aten


class HostWaits(TorchDispatchMode):
    """Records every read of a meta tensor's values by the host as ``(module, function)`` of its
    innermost caller in crab or SpeechBrain, and stands in ``fill`` for the values (no row for
    ``nonzero``)."""

    def __init__(self, fill=1):
        super().__init__()
        self.fill, self.waits = fill, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not any(isinstance(a, torch.Tensor) and a.is_meta for a in args):
            return func(*args, **kwargs)
        if func is aten._local_scalar_dense.default:
            return self._wait(args[0].dtype is torch.bool or self.fill)
        if func is aten._to_copy.default and torch.device(kwargs.get("device") or "meta").type == "cpu":
            return self._wait(
                torch.full(args[0].shape, self.fill, dtype=kwargs.get("dtype") or args[0].dtype)
            )
        if func is aten.copy_.default and not args[0].is_meta:
            return self._wait(args[0].fill_(self.fill))
        if func is aten.nonzero.default:
            return self._wait(args[0].new_empty((0, args[0].dim()), dtype=torch.long))
        return func(*args, **kwargs)

    def _wait(self, value):
        frame = sys._getframe(1)
        while frame is not None and not frame.f_globals.get("__name__", "").startswith(
            ("crab.", "speechbrain.")
        ):
            frame = frame.f_back
        self.waits.append((frame.f_globals["__name__"], frame.f_code.co_name) if frame else ("?", "?"))
        return value


class _MetaAutocast(torch.autocast):
    """torch keeps no autocast state for the meta device (``torch.autocast("meta")`` fails):
    the CPU's stands in, which leaves meta tensors alone."""

    def __init__(self, device_type, *args, **kwargs):
        super().__init__("cpu" if device_type == "meta" else device_type, *args, **kwargs)


@pytest.fixture(autouse=True)
def meta_autocast(monkeypatch):
    monkeypatch.setattr(torch, "autocast", _MetaAutocast)


def tiny_hparams(tokenizer_dir, tmp_path, config="crab_tiny.yaml", **overrides):
    """A template config with the mini recipe's tiny encoders and no data."""
    return load_hparams(
        os.path.join(CONF, config),
        {
            "data_root": str(tmp_path),
            "data_folder": str(tmp_path),
            "output_folder": str(tmp_path / "exp"),
            "classes": CLASSES,
            "speech_encoder_source": os.path.join(MINI_CONF, "wavlm_tiny"),
            "text_encoder_source": os.path.join(MINI_CONF, "roberta_tiny"),
            "tokenizer_source": tokenizer_dir,
            **overrides,
        },
    )


def meta_brain(hparams):
    brain = CrabBrain(modules=hparams["modules"], hparams=hparams, run_opts={"device": "meta"})
    speech = brain.modules.model.speech_encoder
    if speech is not None and speech.waveform_norm is not None:  # as fitted before training
        speech.waveform_norm.fitted = True
    brain.init_optimizers()
    return brain


def batch_of(model, cached=()):
    """A batch of ``BATCH`` utterances of two classes, each of its own length; the ``cached``
    branches as encoder states (a feature cache's items)."""
    items = []
    for i in range(BATCH):
        item = {"id": f"utt{i}", "sig": 0.1 * torch.randn(8000 - 1000 * i), "text": TEXTS[i]}
        item["emo_encoded"] = torch.tensor([i % 2])
        for branch in cached:
            dim = model.encoders[branch].output_dim
            item[f"{branch}_states"] = torch.randn(12 - 2 * i, model.encoders[branch].num_states, dim)
        items.append(item)
    return PaddedBatch(items)


def fake_two_processes(monkeypatch):
    """This process as rank 0 of 2 whose all_gather gives every process this one's tensor."""
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(dist, "get_rank", lambda: 0)
    monkeypatch.setattr(dist, "all_gather", lambda outputs, tensor: [out.copy_(tensor) for out in outputs])


ONE_COPY = ("crab.brain", "compute_objectives")  # the loss parts and the finite check, to the host
LOSS = ("speechbrain.core", "fit_batch")  # SpeechBrain's running average of the loss

STEPS = {
    "default": ("crab_tiny.yaml", {}, ()),
    "reference": ("crab_reference_tiny.yaml", {}, ()),
    "speech_only": ("crab_tiny.yaml", {"modality": "speech"}, ()),
    "text_only": ("crab_tiny.yaml", {"modality": "text"}, ()),
    "no_legs": ("crab_tiny.yaml", {"leg_names": []}, ()),
    "supcon": ("crab_tiny.yaml", {"contrastive_loss": "supcon"}, ()),
    "weighted_sum": (
        "crab_tiny.yaml",
        {"layer_weighting": "weighted_sum", "normalize_encoder_states": True},
        (),
    ),
    "cached": (
        "crab_tiny.yaml",
        {"freeze_speech_encoder": True, "freeze_text_encoder": True, "layer_weighting": "weighted_sum"},
        ("speech", "text"),
    ),
}


@pytest.mark.parametrize("name", list(STEPS))
def test_a_training_step_waits_for_the_device_once_before_its_backward_pass(name, tokenizer_dir, tmp_path):
    config, overrides, cached = STEPS[name]
    brain = meta_brain(tiny_hparams(tokenizer_dir, tmp_path, config, **overrides))
    brain.on_stage_start(sb.Stage.TRAIN, 1)
    brain.modules.train()
    with HostWaits() as recorded:
        brain.fit_batch(batch_of(brain.modules.model, cached))
    assert recorded.waits == [ONE_COPY, LOSS]


def test_a_contrastive_loss_over_every_process_exchanges_the_batch_sizes_once_per_leg(
    tokenizer_dir, tmp_path, monkeypatch
):
    fake_two_processes(monkeypatch)
    hparams = tiny_hparams(tokenizer_dir, tmp_path, gather_contrastive=True, leg_names=["fusion"])
    brain = meta_brain(hparams)
    brain.on_stage_start(sb.Stage.TRAIN, 1)
    with HostWaits(fill=BATCH) as recorded:  # each process's size: BATCH rows
        brain.fit_batch(batch_of(brain.modules.model))
    sizes = ("crab.distributed", "gather_sizes")  # once for the leg's embeddings and the labels
    assert recorded.waits == [sizes, ONE_COPY, LOSS]


def test_an_evaluation_step_waits_for_the_finite_check_and_the_predictions(tokenizer_dir, tmp_path):
    brain = meta_brain(tiny_hparams(tokenizer_dir, tmp_path))
    brain.on_stage_start(sb.Stage.VALID, 1)
    with HostWaits() as recorded:
        brain.evaluate_batch(batch_of(brain.modules.model), sb.Stage.VALID)
    assert recorded.waits == [
        ("crab.model", "non_finite_rows"),
        ONE_COPY,  # the targets
        ONE_COPY,  # the probabilities
        ("speechbrain.core", "evaluate_batch"),  # the loss
    ]


def test_a_whisper_step_copies_its_waveforms_to_the_host_once(tmp_path):
    whisper = write_tiny_whisper(str(tmp_path / "whisper"))
    model = Crab(
        4, lambda: SpeechEncoder(whisper, pretrained=False), modality="speech", hidden_dim=8, bottleneck_dim=8
    )
    model.to("meta").train()
    wavs = torch.randn(BATCH, 8000, device="meta")
    with HostWaits() as recorded:
        logits, _ = model(wavs, wav_lens=torch.tensor([1.0, 0.9, 0.8, 0.7]))
        logits.sum().backward()
    assert recorded.waits == [("crab.encoders", "_encode_whisper")]  # the log-mel is computed there


def test_classifying_a_batch_waits_for_the_finite_check_and_the_labels(tokenizer_dir):
    packaged = PackagedCrab(
        speech_encoder={"source": os.path.join(MINI_CONF, "wavlm_tiny")},
        text_encoder={"source": os.path.join(MINI_CONF, "roberta_tiny"), "tokenizer": tokenizer_dir},
        num_classes=4,
        hidden_dim=16,
        bottleneck_dim=16,
    )
    packaged.build(MINI_CONF)
    labels = CategoricalEncoder()
    labels.update_from_iterable(CLASSES)
    hparams = {"classes": CLASSES, "label_encoder": labels, "modality": "bimodal"}
    classifier = CrabClassifier(modules={"model": packaged}, hparams=hparams, run_opts={"device": "meta"})
    wavs = 0.1 * torch.randn(BATCH, 8000) + 0.2  # on the host, as a caller has them
    with HostWaits() as recorded:
        _, _, _, predicted = classifier.classify_batch(
            wavs, TEXTS[:BATCH], wav_lens=torch.tensor([1.0, 0.9, 0.8, 0.7])
        )
    assert len(predicted) == BATCH
    assert recorded.waits == [("crab.model", "non_finite_rows"), ("crab.inference", "classify_batch")]


def test_feature_extraction_copies_each_batch_to_the_host_once(tokenizer_dir, tmp_path, monkeypatch):
    hparams = tiny_hparams(tokenizer_dir, tmp_path, freeze_speech_encoder=True, freeze_text_encoder=True)
    model = hparams["model"].eval()
    wavs = {f"utt{i}": 0.1 * torch.randn(8000 - 1000 * i) for i in range(BATCH)}
    entries = {utt: {"wav": utt, "text": TEXTS[i]} for i, utt in enumerate(wavs)}
    monkeypatch.setattr("crab.features.read_utterance_audio", lambda utt, path, max_duration: wavs[utt])

    def shapes(device):
        states = _encode_batch(model.to(device), ["speech", "text"], list(wavs), entries, None, device)
        return {
            utt: {branch: s.shape for branch, s in by_branch.items()} for utt, by_branch in states.items()
        }

    on_cpu = shapes("cpu")
    with HostWaits() as recorded:
        assert shapes("meta") == on_cpu  # each utterance cut at its own length
    assert recorded.waits == [("crab.features", "_encode_batch")] * 2  # one per branch
