"""Shared fixtures: tiny random-init encoders from the mini recipe's configs."""

import contextlib
import os
import shutil
import subprocess
import sys
import threading
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download
# One thread per process keeps the tiny-model timings steady when the cores are shared.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Tests never write the recipes' RESULTS.md (ser.sh --results_md defaults to CRAB_RESULTS_MD).
os.environ["CRAB_RESULTS_MD"] = ""  # whatever the shell running the tests has set

import pytest
import torch
import yaml

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
# System tools the recipes and tests call (shellcheck: tests/test_gates.py); tools/install.sh installs them.
REQUIRED_TOOLS = ("ffmpeg", "espeak-ng", "shellcheck")


def pytest_configure(config):
    """Stop at once, with one line, when a required system tool is missing (in
    pytest_configure, before the terminal reporter starts, pytest prints the line once)."""
    config.addinivalue_line(
        "markers", "slow: an end-to-end run of half a minute or more (-m 'not slow' skips)"
    )
    if config.option.help or config.option.version:
        return
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.exit(
            f"Missing system tool(s) on PATH: {', '.join(missing)}. Run tools/install.sh to install them.",
            returncode=pytest.ExitCode.USAGE_ERROR,
        )


HOLD_LOCK = (
    "import sys, time\nfrom crab.locking import file_lock\n"
    "with file_lock(sys.argv[1], str):\n    print('held', flush=True)\n    time.sleep(120)\n"
)


@contextlib.contextmanager
def waiting_for_lock(lock, call, caplog):
    """Inside the block, ``call()`` runs in a thread while another process holds the lock file
    ``lock`` (``crab.locking.file_lock``), and waits for it, having logged so with that process's
    pid. At the block's end that process is killed (its lock goes with it) and ``call`` finishes:
    the dict yielded then holds what it returned, ``"result"``."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(lock)],
        env=dict(os.environ, PYTHONPATH=ROOT),
        stdout=subprocess.PIPE,
        text=True,
    )
    done = {}

    def run():
        try:
            done["result"] = call()
        except BaseException as err:  # noqa: BLE001 - raised again by the test's thread
            done["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    try:
        assert holder.stdout.readline() == "held\n"
        thread.start()
        while thread.is_alive() and f"Waiting for {lock}" not in caplog.text:
            time.sleep(0.05)
        if "error" in done:
            raise done["error"]
        assert thread.is_alive(), f"it did not wait for the process holding {lock}"
        assert f"held by pid {holder.pid} on " in caplog.text
        yield done
    finally:
        holder.kill()
        holder.wait()
    thread.join(120)
    assert not thread.is_alive()
    if "error" in done:
        raise done["error"]


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


def write_tone_corpus(
    audio_dir, manifest_dir, per_class, classes, lengths=(0.4, 0.9), seed=0, texts=None, noise=0.0
):
    """A tiny corpus of one tone per class: wavs in ``audio_dir``, ``<split>.json``
    manifests (``per_class``: split -> utterances per class) and a BPE tokenizer in
    ``manifest_dir``. ``texts`` maps a class to its transcripts (used in turn)."""
    import json

    import numpy as np
    import soundfile as sf

    texts = texts or {emo: [f"I feel {emo} today"] for emo in classes}
    rng = np.random.default_rng(seed)
    for split, count in per_class.items():
        manifest = {}
        for k, emo in enumerate(classes):
            for n in range(count):
                utt = f"{split}_{emo}_{n}"
                length = int(16000 * rng.uniform(*lengths))
                wav = 0.3 * np.sin(2 * np.pi * (100 + 80 * k) * np.arange(length) / 16000)
                if noise:
                    wav += noise * rng.standard_normal(length)
                sf.write(audio_dir / f"{utt}.wav", wav.astype("float32"), 16000)
                manifest[utt] = {
                    "wav": f"{{data_root}}/{utt}.wav",
                    "duration": length / 16000,
                    "text": texts[emo][n % len(texts[emo])],
                    "emo": emo,
                    "spk": f"{split}{n}",
                }
        (manifest_dir / f"{split}.json").write_text(json.dumps(manifest))
    build_bpe_tokenizer([t for ts in texts.values() for t in ts] * 3, str(manifest_dir / "tokenizer"), 300)


def write_tiny_whisper(path, **overrides):
    """A config-only Whisper directory (d_model 16, two encoder layers; ``overrides``: other
    config values): random-init encoders."""
    from transformers import WhisperConfig

    WhisperConfig(
        d_model=16,
        encoder_layers=2,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        num_mel_bins=80,
        vocab_size=100,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
        **overrides,
    ).save_pretrained(path)
    return path


class _TagsAsNone(yaml.SafeLoader):
    """Reads a saved hyperpyyaml file's plain values; tagged ones (!new:, !ref ...) are None."""


_TagsAsNone.add_multi_constructor("!", lambda loader, suffix, node: None)


def read_settings(path):
    """The plain values of a hyperpyyaml file (a run's or a package's hyperparams.yaml)."""
    with open(path, encoding="utf-8") as f:
        return yaml.load(f, Loader=_TagsAsNone)


def finished_jobs(log_dir):
    """The names of the job logs in ``log_dir`` (ser.sh --nj, --cmd), each checked to end
    with the job's success."""
    logs = sorted(p for p in log_dir.iterdir() if p.suffix == ".log")
    failed = [p.name for p in logs if not p.read_text().endswith("exit status 0\n")]
    assert not failed, f"jobs that did not succeed: {failed}"
    return [p.name for p in logs]
