"""Bad audio and text everywhere: non-finite, overflowing, silent audio and odd sample
rates (data prep, reading, training, validation, evaluation, CrabClassifier, ASR input),
resampling cost and quality, non-UTF-8 and BOM Kaldi tables, huge transcripts."""

import math
import multiprocessing
import os
import resource

import numpy as np
import pytest
import soundfile as sf
import speechbrain as sb
import torch
from torch import nn

from crab import datadir
from crab.bin import make_manifest
from crab.brain import CrabBrain
from crab.data import BadAudioError, read_audio, resample
from crab.dataprep import MAX_PEAK, DataPrepError, read_text
from crab.encoders import CHARS_PER_TOKEN, TextEncoder
from crab.inference import AudioError, CrabClassifier, check_audio, load_audio_file
from crab.model import NonFiniteOutputError
from tests.conftest import MINI_CONF, TEXTS, write_tone_corpus
from tests.test_brain import CLASSES, fit


def sine(seconds, rate, freq=1000.0, amplitude=0.5):
    return (amplitude * np.sin(2 * np.pi * freq * np.arange(int(seconds * rate)) / rate)).astype("float32")


# ------------------------------------------------------------------ check_audio


@pytest.mark.parametrize(
    "value, problem",
    [
        (float("nan"), "NaN or infinite samples"),
        (float("inf"), "NaN or infinite samples"),
        (-float("inf"), "NaN or infinite samples"),
        (1e30, "amplitude out of range (peak 1e+30 > 1000"),
        (MAX_PEAK * 1.01, "amplitude out of range"),
    ],
)
def test_check_audio_rejects_non_finite_and_absurd_amplitudes(value, problem):
    wav = torch.from_numpy(sine(0.5, 16000))
    assert check_audio(wav, 400) is None
    assert check_audio(wav * 2, 400) is None  # a little over full scale is still audio
    wav[100] = value
    assert check_audio(wav, 400).startswith(problem)


@pytest.mark.parametrize(
    "write, problem",
    [
        (
            lambda p: sf.write(p, np.full(8000, np.nan, "float32"), 16000, subtype="FLOAT"),
            "NaN or infinite samples in",
        ),
        (lambda p: sf.write(p, sine(0.5, 16000) * 1e30, 16000, subtype="FLOAT"), "amplitude out of range"),
        (lambda p: sf.write(p, sine(0.5, 2000), 2000), "sample rate 2000 Hz outside 4000-384000 Hz"),
    ],
)
def test_load_audio_file_names_the_file(tmp_path, write, problem):
    path = tmp_path / "bad.wav"
    write(path)
    with pytest.raises(AudioError) as err:
        load_audio_file(str(path))
    assert str(err.value).startswith(problem) and str(path) in str(err.value)
    with pytest.raises(BadAudioError):  # what crab.bin.transcribe's reader sees: a RuntimeError
        read_audio(str(path))


# ------------------------------------------------------------------ resampling


def _snr(rate):
    y = resample(torch.from_numpy(sine(2.0, rate)), rate).numpy().astype("float64")
    ref = sine(2.0, 16000).astype("float64")[: len(y)]
    edge = 1600
    err = y[edge:-edge] - ref[edge:-edge]
    return 10 * math.log10(np.sum(ref[edge:-edge] ** 2) / np.sum(err**2))


@pytest.mark.parametrize("rate", [44100, 8009, 48000])
def test_resampling_is_clean(rate):
    # torchaudio's default: 68 dB at 44.1 kHz, 72 dB at 8009 Hz; soxr (HQ) over 110 dB
    assert _snr(rate) > 100


def _read_under_memory_limit(path, queue):
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) for line in f if line.startswith("VmSize:")) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + (512 << 20), resource.RLIM_INFINITY))
    try:
        queue.put(("ok", tuple(read_audio(path).shape)))
    except BaseException as err:  # noqa: BLE001 - reported to the parent
        queue.put(("failed", f"{type(err).__name__}: {err}"[:300]))


def test_odd_sample_rate_resamples_in_little_memory(tmp_path):
    # torchaudio builds a 16000 x 44135 kernel for 44101 Hz (2.6 GiB, ~11 GB at its peak)
    path = tmp_path / "odd.wav"
    sf.write(path, sine(1.0, 44101), 44101)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_read_under_memory_limit, args=(str(path), queue))
    proc.start()
    result = queue.get(timeout=120)
    proc.join()
    assert result == ("ok", (16000,))


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 44100])
def test_max_duration_cuts_every_file_to_the_same_number_of_samples(tmp_path, rate):
    """``max_duration`` keeps the first ``int(max_duration * 16000)`` samples at 16 kHz whatever
    the file's rate: the resampler's rounding adds none (one more at 8 kHz, unless cut)."""
    path = str(tmp_path / "a.wav")
    wav = sine(1.0, rate, freq=200.0)
    sf.write(path, wav, rate, subtype="FLOAT")
    for seconds in (0.30001, 1 / 3, 0.5):
        assert read_audio(path, seconds).shape == (int(seconds * 16000),), seconds
    if rate == 16000:
        assert torch.equal(read_audio(path, 0.5), torch.from_numpy(wav[:8000]))


def test_resample_rejects_rates_out_of_range():
    with pytest.raises(ValueError, match="sample rate 400001 Hz outside"):
        resample(torch.zeros(100), 400001)


# ------------------------------------------------------------------ CrabClassifier


class FakeModel(nn.Module):
    """A PackagedCrab stand-in: mean amplitude as the score of class 0, NaN where asked."""

    needs_speech, needs_text, min_samples = True, False, 400
    model_dir, crab_options = "fake_package", {"num_classes": len(CLASSES)}

    def __init__(self):
        super().__init__()
        self.nan_rows = []
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, wavs=None, wav_lens=None, texts=None):
        logits = torch.zeros(wavs.shape[0], len(CLASSES)) + self.weight
        logits[:, 0] = wavs.abs().mean(dim=1)
        logits[self.nan_rows] = float("nan")
        return logits, {}


@pytest.fixture
def classifier():
    encoder = sb.dataio.encoder.CategoricalEncoder()
    encoder.update_from_iterable(CLASSES)
    return CrabClassifier(
        modules={"model": FakeModel()},
        hparams={"classes": CLASSES, "label_encoder": encoder, "modality": "speech"},
    )


def test_classify_batch_rejects_bad_audio_per_item(classifier):
    wavs = torch.from_numpy(np.stack([sine(0.5, 16000)] * 3))
    assert classifier.classify_batch(wavs)[3] == ["angry"] * 3
    for value, problem in ((float("nan"), "NaN or infinite samples"), (1e30, "amplitude out of range")):
        bad = wavs.clone()
        bad[1, 10] = value
        with pytest.raises(AudioError, match=f"^utterance 1 of the batch: {problem}"):
            classifier.classify_batch(bad)
    with pytest.raises(AudioError, match="sample rate 1000 Hz outside 4000-384000 Hz"):
        classifier.classify_batch(wavs, sample_rate=1000)
    # an odd rate resamples (soxr), without building a gigabyte kernel
    odd = torch.from_numpy(np.stack([sine(0.5, 8009)] * 2))
    assert classifier.classify_batch(odd, sample_rate=8009)[0].shape == (2, len(CLASSES))


def test_classify_batch_never_predicts_from_a_non_finite_output(classifier):
    classifier.mods.model.nan_rows = [2]
    wavs = torch.from_numpy(np.stack([sine(0.5, 16000)] * 3))
    with pytest.raises(
        NonFiniteOutputError, match=r"^utterance\(s\) \[2\] of the batch: non-finite model output"
    ):
        classifier.classify_batch(wavs)


def test_asr_input_gets_the_same_check(classifier):
    classifier.asr = lambda audios: ["hello"] * len(audios)
    good = sine(0.5, 16000)
    assert classifier.transcribe_batch([good, good]) == ["hello", "hello"]
    for bad, problem in (
        (np.full(8000, np.nan, "float32"), "NaN or infinite samples"),
        (good * 1e30, "amplitude out of range"),
        (np.zeros(8000, "float32"), "silent audio"),
    ):
        with pytest.raises(AudioError, match=f"^utterance 1 of the batch: {problem}"):
            classifier.transcribe_batch([good, bad])


# ------------------------------------------------------------------ training, validation, evaluation


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("audio_checks_data")
    write_tone_corpus(root, root, {"train": 1, "valid": 1, "test": 1}, CLASSES)
    return root


def nan_for(monkeypatch, utt):
    """CrabBrain's model gives NaN scores for ``utt``."""
    forward = CrabBrain.forward_model

    def patched(self, batch):
        logits, taps = forward(self, batch)
        rows = [i for i, u in enumerate(batch.id) if u == utt]
        if rows:
            logits = logits.clone()
            logits[rows] = float("nan")
        return logits, taps

    monkeypatch.setattr(CrabBrain, "forward_model", patched)


@pytest.mark.parametrize("utt, stage", [("train_sad_0", "training"), ("valid_happy_0", "validation")])
def test_non_finite_output_in_training_and_validation_names_the_utterance(
    data, tmp_path, monkeypatch, utt, stage
):
    nan_for(monkeypatch, utt)
    with pytest.raises(
        NonFiniteOutputError, match=f"^{stage}: non-finite model output .* utterance\\(s\\) '{utt}'"
    ):
        fit(data, tmp_path / "exp", "--number_of_epochs=1")


def test_non_finite_output_in_evaluation_is_no_prediction_of_class_0(data, tmp_path, monkeypatch):
    from crab.experiment import dataset

    brain, hparams, encoder = fit(data, tmp_path / "exp", "--number_of_epochs=1")
    nan_for(monkeypatch, "test_angry_0")  # class 0: a NaN row's argmax would score as correct
    cwd = os.getcwd()
    os.chdir(os.path.join(os.path.dirname(MINI_CONF), "..", "TEMPLATE"))
    try:
        with pytest.raises(NonFiniteOutputError, match="^evaluation: .* utterance\\(s\\) 'test_angry_0'"):
            brain.evaluate(
                dataset(hparams, hparams["test_manifest"], encoder, sort=True),
                test_loader_kwargs=hparams["eval_dataloader_opts"],
            )
    finally:
        os.chdir(cwd)
    assert not os.path.exists(tmp_path / "eval" / "predictions.csv")


# ------------------------------------------------------------------ Kaldi tables


def write_data_dir(root, text_bytes):
    data = root / "train"
    data.mkdir(parents=True)
    sf.write(root / "a.wav", sine(0.5, 16000), 16000)
    (data / "wav.scp").write_bytes(b"\xef\xbb\xbfa " + str(root / "a.wav").encode() + b"\n")  # a BOM first
    (data / "text").write_bytes(text_bytes)
    (data / "utt2emo").write_text("a happy\n")
    (data / "utt2spk").write_text("a s1\n")
    return data


def test_a_leading_byte_order_mark_is_dropped(tmp_path):
    data = write_data_dir(tmp_path, "\ufeffa caf\u00e9 au lait\n".encode("utf-8"))
    entries = datadir.read_data_dir(str(data))
    assert list(entries) == ["a"] and entries["a"]["text"] == "caf\u00e9 au lait"


def test_a_non_utf8_table_is_one_line_naming_file_line_and_column(tmp_path):
    data = write_data_dir(tmp_path, b"b fine\na caf\xe9\n")
    (data / "utt2emo").write_text("a happy\nb sad\n")
    with pytest.raises(SystemExit) as err:
        make_manifest.main(
            [
                "--data_dir",
                str(data),
                "--data_root",
                str(tmp_path),
                "--classes",
                ",".join(CLASSES),
                "--out",
                str(tmp_path / "train.json"),
            ]
        )
    message = str(err.value)
    assert message.startswith(f"ERROR: {data}/text:2:6: byte 0xe9 is not UTF-8") and "\n" not in message
    with pytest.raises(DataPrepError, match="text:2:6: byte 0xe9"):
        datadir.read_table(str(data / "text"))


def test_read_text_falls_back_with_a_warning_naming_the_line(tmp_path, capsys):
    path = tmp_path / "meta.csv"
    path.write_bytes(b"\xef\xbb\xbfid,text\n1,caf\xe9\n")
    assert read_text(str(path)) == "id,text\n1,caf\u00e9\n"
    warning = capsys.readouterr().err
    assert f"{path}:2:6: byte 0xe9 is not UTF-8; 1 line(s) of the file read as cp1252" in warning


def test_read_text_falls_back_only_on_the_lines_that_are_not_utf8(tmp_path, capsys):
    """A file mixing UTF-8 lines with Windows-1252 ones keeps its UTF-8 lines."""
    path = tmp_path / "meta.csv"
    utf8 = "\u201cWhat?!\u201d \u00c1lvaro"  # bytes 0x9d and 0x81 in UTF-8: undefined in cp1252
    path.write_bytes(utf8.encode() + b"\nIt\x92s\n" + utf8.encode() + b"\nok\xe9\n")
    assert read_text(str(path)) == f"{utf8}\nIt\u2019s\n{utf8}\nok\u00e9\n"
    warning = capsys.readouterr().err
    assert f"{path}:2:3: byte 0x92 is not UTF-8; 2 line(s) of the file read as cp1252" in warning


# ------------------------------------------------------------------ transcripts


def test_a_huge_transcript_is_cut_to_characters_before_tokenising(tokenizer_dir):
    encoder = TextEncoder(
        os.path.join(MINI_CONF, "roberta_tiny"), tokenizer=tokenizer_dir, pretrained=False, max_length=16
    ).eval()
    seen = []
    tokenize = encoder.tokenizer.__class__.__call__

    def spy(self, texts, *args, **kwargs):
        seen.extend(len(t) for t in texts)
        return tokenize(self, texts, *args, **kwargs)

    huge = TEXTS[0] + " " + "word " * 2_000_000  # 10 MB
    encoder.tokenizer.__class__.__call__ = spy
    try:
        with torch.no_grad():
            states, mask = encoder([huge, TEXTS[1]])
            reference, _ = encoder([TEXTS[0] + " " + "word " * 100, TEXTS[1]])
    finally:
        encoder.tokenizer.__class__.__call__ = tokenize
    assert max(seen[:2]) == 16 * CHARS_PER_TOKEN
    assert mask.sum(dim=1).tolist() == [16, mask[1].sum().item()]
    assert torch.allclose(states, reference)
