"""What grows with the corpus: per-utterance work that a large corpus (MSP-Podcast, some
200k utterances) multiplies, checked by counting, never by timing: log lines and
file rewrites per utterance."""

import logging
import re

import numpy as np
import soundfile as sf
import torch

import crab.batch_inference as batch_inference
from crab import asr
from crab.batch_inference import LOGGED_FAILURES, InferenceJob, classify_wav_scp

CLASSES = ["angry", "happy", "neutral", "sad"]


class StubClassifier:
    """A CrabClassifier stand-in for crab-infer: the same probabilities for every utterance."""

    max_samples, min_samples, device = None, 400, "cpu"

    def load_audio(self, path):
        return torch.from_numpy(sf.read(path, dtype="float32")[0])

    def classify_batch(self, wavs, texts=None, wav_lens=None):
        return (torch.full((wavs.shape[0], len(CLASSES)), 1.0 / len(CLASSES)),)


def stub_package(path):
    path.mkdir()
    (path / "hyperparams.yaml").write_text(
        f"classes: [{', '.join(CLASSES)}]\nmodality: speech\nmax_duration: 12.0\n"
    )
    return path


def test_crab_infer_logs_the_first_failures_and_counts_the_rest(tmp_path, monkeypatch, caplog):
    """Every failure is in <out>.errors; the log names the first ones and counts the others,
    those found before classifying (missing audio) and during it (silent audio) together."""
    monkeypatch.setattr(batch_inference, "load_classifier", lambda job, device: StubClassifier())
    tone = (0.3 * np.sin(np.arange(8000) / 5)).astype("float32")
    sf.write(tmp_path / "good.wav", tone, 16000)
    sf.write(tmp_path / "silent.wav", np.zeros(8000, dtype="float32"), 16000)
    missing, silent = LOGGED_FAILURES + 5, 3
    lines = [f"gone{i:03d} {tmp_path}/nowhere{i}.wav" for i in range(missing)]
    lines += [f"silent{i} {tmp_path}/silent.wav" for i in range(silent)]
    lines += [f"good{i} {tmp_path}/good.wav" for i in range(2)]
    (tmp_path / "wav.scp").write_text("\n".join(lines) + "\n")
    out = tmp_path / "results.tsv"
    job = InferenceJob(
        model=str(stub_package(tmp_path / "model")),
        wav_scp=str(tmp_path / "wav.scp"),
        out=str(out),
        text_mode="none",
        device="cpu",
    )
    failures = missing + silent
    for run in ("fresh", "resumed"):  # a resumed run finds the same failures again
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="crab.batch_inference"):
            tally = classify_wav_scp(job)
        assert len(tally.failed) == failures and tally.before + tally.now == 2, run
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        named = [m for m in warnings if re.match(rf"{re.escape(job.wav_scp)}:\d+: ", m)]
        assert len(named) == LOGGED_FAILURES, run
        assert (
            warnings.count(
                f"{job.wav_scp}: ... and {failures - LOGGED_FAILURES} more failed utterances; "
                f"all {failures} listed in {out}.errors"
            )
            == 1
        ), run
        listed = (tmp_path / "results.tsv.errors").read_text().splitlines()
        assert listed[0] == "id\tline\treason" and len(listed) == 1 + failures, run


def test_transcription_logs_the_first_warnings_and_counts_the_rest(tmp_path, caplog):
    """Stage 2: unreadable and too short audio, one warning each for the first ``asr.LOGGED``."""
    sf.write(tmp_path / "good.wav", (0.3 * np.sin(np.arange(8000) / 5)).astype("float32"), 16000)
    sf.write(tmp_path / "short.wav", np.full(100, 0.1, dtype="float32"), 16000)
    (tmp_path / "bad.wav").write_bytes(b"RIFF, but no audio" * 10)
    unreadable, short = asr.LOGGED + 2, 3
    wavs = {f"bad{i:02d}": str(tmp_path / "bad.wav") for i in range(unreadable)}
    wavs |= {f"short{i}": str(tmp_path / "short.wav") for i in range(short)}
    wavs |= {f"good{i}": str(tmp_path / "good.wav") for i in range(2)}
    out = str(tmp_path / "text.asr")
    with caplog.at_level(logging.WARNING, logger="crab.asr"):
        done, failed = asr.transcribe_batches(
            list(wavs), wavs, lambda audios: ["words"] * len(audios), out, 4
        )
    assert len(failed) == unreadable and sorted(done.values()) == [""] * short + ["words"] * 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    more = unreadable + short - asr.LOGGED
    assert len(warnings) == asr.LOGGED + 1
    assert warnings[-1].startswith(f"{out}: ... and {more} more warnings like these")
