"""Every row of docs/bad_input.md's table, at data prep and in training."""

import ast
import json
import os
import re
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from crab.bin import make_manifest
from crab.data import (
    AudioReadError,
    DataError,
    label_encoder,
    load_manifest,
    make_dataset,
    read_utterance_audio,
)
from crab.dataprep import clean_transcript
from crab.tokenizer import build_bpe_tokenizer
from tests.test_brain import CLASSES, fit
from tests.test_segments import flac_claiming_billions_of_frames

RAW_TEXT = "hello\x00 wor\x1bld\tand\rmore"  # NUL, ESC, tab and a stray CR
CLEAN_TEXT = "hello world and more"


def sine(frames, rate, freq=200.0):
    return (0.3 * np.sin(2 * np.pi * freq * np.arange(frames) / rate)).astype("float32")


@pytest.fixture
def data_dir(tmp_path):
    """A Kaldi-style data dir with one utterance per row of the table, and a good one."""
    audio = tmp_path / "db"
    audio.mkdir()
    files = {
        "good": lambda p: sf.write(p, sine(8000, 16000), 16000),
        "corrupt": lambda p: p.write_bytes(b"\x13\x37 not a RIFF header" * 40),
        "zero_bytes": lambda p: p.write_bytes(b""),
        "no_samples": lambda p: sf.write(p, np.zeros(0, "float32"), 16000),
        "too_short": lambda p: sf.write(p, sine(399, 16000), 16000),
        "stereo": lambda p: sf.write(
            p, np.stack([sine(8000, 16000), np.full(8000, 0.1, "float32")], 1), 16000
        ),
        "rate8k": lambda p: sf.write(p, sine(4000, 8000), 8000),
        "rate44k": lambda p: sf.write(p, sine(22050, 44100), 44100),
        "nan_samples": lambda p: sf.write(p, np.full(8000, np.nan, "float32"), 16000, subtype="FLOAT"),
        "huge_samples": lambda p: sf.write(p, sine(8000, 16000) * 1e30, 16000, subtype="FLOAT"),
        "silent": lambda p: sf.write(p, np.zeros(8000, "float32"), 16000),
        "rate2k": lambda p: sf.write(p, sine(2000, 2000), 2000),
        "rate4001": lambda p: sf.write(p, sine(4001, 4001), 4001),  # 1 s at an odd rate: 1 GB for torchaudio
        "control_chars": lambda p: sf.write(p, sine(8000, 16000), 16000),
        "only_control_chars": lambda p: sf.write(p, sine(8000, 16000), 16000),
    }
    for utt, write in files.items():
        write(audio / f"{utt}.wav")
    wavs = {utt: audio / f"{utt}.wav" for utt in files} | {"missing": audio / "missing.wav"}
    texts = {utt: "a fine sentence" for utt in wavs} | {
        "control_chars": RAW_TEXT,
        "only_control_chars": "\x00\x1b",
    }
    data = tmp_path / "data" / "train"
    data.mkdir(parents=True)
    (data / "wav.scp").write_text("".join(f"{u} {p}\n" for u, p in wavs.items()))
    with open(data / "text", "w", encoding="utf-8", newline="") as f:
        f.write("".join(f"{u} {texts[u]}\n" for u in wavs))
    (data / "utt2emo").write_text("".join(f"{u} happy\n" for u in wavs))
    (data / "utt2spk").write_text("".join(f"{u} spk1\n" for u in wavs))
    return tmp_path


def prepare(root, policy):
    make_manifest.main(
        [
            "--data_dir",
            str(root / "data" / "train"),
            "--data_root",
            str(root / "db"),
            "--classes",
            ",".join(CLASSES),
            "--out",
            str(root / "train.json"),
            "--policy",
            policy,
        ]
    )
    return load_manifest(root / "train.json", str(root / "db"))


def test_prep_skip_policy_skips_and_counts_converts_and_counts(data_dir, capsys):
    entries = prepare(data_dir, "skip")
    out = capsys.readouterr().out.splitlines()
    assert sorted(entries) == ["control_chars", "good", "rate4001", "rate44k", "rate8k", "stereo"]
    counts = {
        line[: line.index(": {")]: ast.literal_eval(line[line.index("{") :]) for line in out if ": {" in line
    }
    assert counts["train: skipped 10 of 16 utterances"] == {
        "unreadable audio": 1,
        "empty audio file": 1,
        "audio too short": 2,
        "missing audio": 1,
        "empty transcript": 1,
        "non-finite samples": 1,
        "amplitude out of range": 1,
        "silent audio": 1,
        "bad sample rate": 1,
    }
    assert counts["train: converted, of 6 kept utterances"] == {
        "2 channels (averaged to mono)": 1,
        "8000 Hz (resampled to 16 kHz)": 1,
        "4001 Hz (resampled to 16 kHz)": 1,
        "44100 Hz (resampled to 16 kHz)": 1,
        "control characters in transcript (cleaned)": 1,
    }
    # the manifest holds the cleaned transcript; durations at each file's own rate
    assert entries["control_chars"]["text"] == CLEAN_TEXT
    assert entries["rate8k"]["duration"] == entries["rate44k"]["duration"] == 0.5
    assert entries["rate4001"]["duration"] == 1.0


def test_prep_error_policy_names_each_utterance_file_and_problem(data_dir):
    with pytest.raises(SystemExit) as err:
        prepare(data_dir, "error")
    message = str(err.value)
    db = data_dir / "db"
    for utt, problem in [
        ("corrupt", "unreadable audio file"),
        ("zero_bytes", "empty audio file (0 bytes)"),
        ("no_samples", "audio too short for the speech encoder (0 samples"),
        ("too_short", "audio too short for the speech encoder (399 samples"),
        ("missing", "missing audio file"),
        ("only_control_chars", "empty transcript"),
        ("nan_samples", "NaN or infinite samples"),
        ("huge_samples", "amplitude out of range (peak 3e+29 > 1000"),
        ("silent", "silent audio (peak amplitude 0"),
        ("rate2k", "sample rate 2000 Hz outside 4000-384000 Hz"),
    ]:
        line = next(line for line in message.splitlines() if line.strip().startswith(f"{utt}:"))
        assert problem in line and str(db / f"{utt}.wav") in line, line
    assert "10 bad utterance(s)" in message and not os.path.exists(data_dir / "train.json")


def test_training_reads_converted_audio_and_the_cleaned_text(data_dir):
    prepare(data_dir, "skip")
    manifest = json.loads((data_dir / "train.json").read_text())
    manifest["hand_written"] = dict(manifest["good"], text=RAW_TEXT)  # not through data prep
    (data_dir / "train.json").write_text(json.dumps(manifest))
    dataset = make_dataset(data_dir / "train.json", label_encoder(CLASSES), str(data_dir / "db"))
    index = {utt: i for i, utt in enumerate(dataset.data_ids)}
    items = {utt: dataset[i] for utt, i in index.items()}
    # the model sees the same text whether data prep or the manifest reader cleaned it
    assert items["control_chars"]["text"] == items["hand_written"]["text"] == CLEAN_TEXT
    # stereo: the mean of the two channels
    expected = torch.from_numpy((sine(8000, 16000) + 0.1) / 2)
    assert torch.allclose(items["stereo"]["sig"], expected, atol=1e-4)
    # other rates: resampled to 16 kHz, the same sine as one recorded at 16 kHz
    for utt, frames in (("rate8k", 8000), ("rate44k", 8000), ("rate4001", 16000)):
        sig = items[utt]["sig"]
        assert sig.shape == (frames,)
        assert torch.allclose(sig[500:-500], torch.from_numpy(sine(frames, 16000))[500:-500], atol=2e-3), utt


@pytest.mark.parametrize(
    "damage, problem",
    [
        (lambda p: p.write_bytes(b"garbage" * 50), "unreadable audio file"),
        (lambda p: p.write_bytes(b""), "empty audio file (0 bytes)"),
        (lambda p: sf.write(p, np.zeros(0, "float32"), 16000), "no audio samples in"),
        (  # a hand-written manifest, or a file rewritten after prep: not the encoder's traceback
            lambda p: sf.write(p, sine(399, 16000), 16000),
            "audio too short for the speech encoder (399 samples at 16 kHz, need 400)",
        ),
        (  # 1100 frames at 44.1 kHz: 399 at 16 kHz
            lambda p: sf.write(p, sine(1100, 44100), 44100),
            "audio too short for the speech encoder (399 samples at 16 kHz, need 400)",
        ),
        (lambda p: os.remove(p), "missing audio file"),
        (
            lambda p: sf.write(p, np.full(8000, np.inf, "float32"), 16000, subtype="FLOAT"),
            "NaN or infinite samples in",
        ),
        (
            lambda p: sf.write(p, np.full(8000, np.nan, "float32"), 44100, subtype="FLOAT"),
            "NaN or infinite samples in",
        ),
        (
            lambda p: sf.write(p, sine(8000, 16000) * 1e30, 16000, subtype="FLOAT"),
            "amplitude out of range (peak 3e+29",
        ),
        (lambda p: sf.write(p, np.zeros(8000, "float32"), 16000), "silent audio (peak amplitude 0"),
        (lambda p: sf.write(p, sine(8000, 1000), 1000), "sample rate 1000 Hz outside 4000-384000 Hz"),
        (  # not a MemoryError: read by what it holds, never allocated by its header (256 GB)
            lambda p: flac_claiming_billions_of_frames(p, sine(8000, 16000), 16000),
            "unreadable audio file",
        ),
    ],
)
def test_audio_damaged_after_prep_is_an_error_naming_utterance_and_file(tmp_path, damage, problem):
    path = tmp_path / "u.wav"
    sf.write(path, sine(8000, 16000), 16000)
    assert read_utterance_audio("utt7", str(path)).shape == (8000,)
    damage(path)
    with pytest.raises(AudioReadError) as err:
        read_utterance_audio("utt7", str(path))
    assert str(err.value).startswith(f"utterance 'utt7': {problem}") and str(path) in str(err.value)


def test_training_run_over_a_file_corrupted_after_prep_stops_naming_it(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    for split in ("train", "valid"):
        manifest = {}
        for k, emo in enumerate(CLASSES):
            utt = f"{split}_{emo}"
            sf.write(root / f"{utt}.wav", sine(6000, 16000, 100 + 80 * k), 16000)
            manifest[utt] = {
                "wav": f"{{data_root}}/{utt}.wav",
                "duration": 0.375,
                "text": f"I feel {emo}",
                "emo": emo,
                "spk": "s",
            }
        (root / f"{split}.json").write_text(json.dumps(manifest))
    build_bpe_tokenizer([f"I feel {e}" for e in CLASSES], str(root / "tokenizer"), 300)
    shutil.copyfile(__file__, root / "train_sad.wav")  # a text file under the wav's name
    expected = f"utterance 'train_sad': unreadable audio file {root}/train_sad.wav"
    with pytest.raises(AudioReadError, match=re.escape(expected)):
        fit(root, tmp_path / "exp", "--number_of_epochs=1")


@pytest.mark.parametrize(
    "raw, clean, count",
    [
        (RAW_TEXT, CLEAN_TEXT, 4),
        ("a\tb\r\nc", "a b c", 3),
        ("  two  spaces ", "  two  spaces ", 0),  # no control character: untouched
        ("zero\u200bwidth", "zero\u200bwidth", 0),  # a format character (Cf), not a control one
        ("\x7fdel\x0bvt ", "del vt", 2),  # DEL dropped, VT (whitespace) a space
        # Windows-1252 decoded as Latin-1: its punctuation comes back; 0x81 is undefined there
        ("It\x92s Joey\x85 now\x97go\x81.", "It\u2019s Joey\u2026 now\u2014go.", 4),
        ("\x00\x1b", "", 2),
    ],
)
def test_clean_transcript(raw, clean, count):
    assert clean_transcript(raw) == (clean, count)


def test_a_piped_wav_scp_line_is_named_as_such_and_never_run(tmp_path):
    marker = tmp_path / "ran"
    data = tmp_path / "data"
    data.mkdir()
    (data / "wav.scp").write_text(f"piped touch {marker} |\n")
    for name, value in (("text", "a fine sentence"), ("utt2emo", "happy"), ("utt2spk", "spk1")):
        (data / name).write_text(f"piped {value}\n")
    argv = ["--data_dir", str(data), "--data_root", str(tmp_path), "--classes", ",".join(CLASSES)]
    with pytest.raises(SystemExit) as err:
        make_manifest.main([*argv, "--out", str(tmp_path / "train.json")])
    assert f"piped: a piped command, not an audio file (it is not run): touch {marker} |" in str(err.value)
    assert not marker.exists()


GOOD_ENTRY = {"wav": "{data_root}/u.wav", "duration": 0.5, "text": "hi", "emo": "happy", "spk": "s1"}


@pytest.mark.parametrize(
    "content, problem",
    [
        (b'{"u1": {"wav": "u.wav",}', "not a JSON manifest (Expecting property name"),  # a trailing comma
        (b"", "not a JSON manifest (Expecting value: line 1 column 1"),
        (json.dumps(GOOD_ENTRY).replace("hi", "caf\xe9").encode("latin-1"), "not a JSON manifest ('utf-8'"),
        (json.dumps([GOOD_ENTRY]).encode(), "a manifest is a JSON object keyed by utterance id, not a list"),
        (json.dumps({"u1": "u.wav"}).encode(), "utterance 'u1' is a str, not an object of fields"),
        (json.dumps({"u1": dict(GOOD_ENTRY, wav=3)}).encode(), "utterance 'u1': \"wav\" is 3, not an audio"),
        (
            json.dumps({"u1": dict(GOOD_ENTRY, duration=None)}).encode(),
            'utterance \'u1\': "wav" is "{data_root}/u.wav" ' + 'and "duration" null: both are',
        ),
        (
            json.dumps({"u1": dict(GOOD_ENTRY, duration="0.5")}).encode(),
            "utterance 'u1': " + '"duration" is "0.5", not seconds',
        ),
        (
            json.dumps({"u1": dict(GOOD_ENTRY, duration=-1)}).encode(),
            "utterance 'u1': " + '"duration" is -1, not seconds',
        ),
        (
            json.dumps({"u1": dict(GOOD_ENTRY, emo=["happy"])}).encode(),
            "utterance 'u1': " + '"emo" is ["happy"], not a string',
        ),
        (
            json.dumps({"u1": dict(GOOD_ENTRY, text=None)}).encode(),
            "utterance 'u1': " + '"text" is null, not a string',
        ),
    ],
)
def test_a_hand_written_manifest_that_does_not_parse_is_an_error_naming_it(tmp_path, content, problem):
    """Not a raw JSONDecodeError, AttributeError or TypeError from sorting or the tokenizer."""
    sf.write(tmp_path / "u.wav", sine(8000, 16000), 16000)
    manifest = tmp_path / "train.json"
    manifest.write_bytes(content)
    with pytest.raises(DataError) as err:
        make_dataset(manifest, label_encoder(CLASSES), str(tmp_path), sort=True)
    assert str(err.value).startswith(f"{manifest}: {problem}") and "\n" not in str(err.value)
    text_only = dict(GOOD_ENTRY, wav=None, duration=None)  # still read
    manifest.write_text(json.dumps({"u1": text_only, "u2": text_only}))
    assert len(make_dataset(manifest, label_encoder(CLASSES), str(tmp_path), sort=True, audio=False)) == 2


@pytest.mark.parametrize(
    "classes, problem",
    [
        ("angry,happy,sad,happy", "label 'happy' is given twice"),
        ("angry,happy,neutral,sad,", "label '' is empty or has spaces around it"),
        ("angry, happy", "label ' happy' is empty or has spaces around it"),
    ],
)
def test_classes_given_twice_or_empty_are_refused_at_data_prep_and_training(
    data_dir, capsys, classes, problem
):
    """Not silently: a label given twice left the label encoder one class short of the model's
    outputs, and every class after it reported under its neighbour's name."""
    with pytest.raises(SystemExit) as exit_:
        make_manifest.main(
            ["--data_dir", str(data_dir / "data" / "train"), "--data_root", str(data_dir / "db")]
            + ["--classes", classes]
            + ["--out", str(data_dir / "train.json")]
        )
    assert exit_.value.code == 2 and not (data_dir / "train.json").exists()
    assert f"--classes {classes!r}: {problem}" in capsys.readouterr().err
    with pytest.raises(DataError, match=f"^classes .*: {re.escape(problem)}"):
        label_encoder(classes.split(","))


@pytest.mark.parametrize("override", ["[0,1,2,3]", "[angry,true,1.5,null]"])
def test_classes_that_yaml_reads_as_numbers_or_null_are_refused_at_training(override):
    """Not 'labels ['0', ...] are not in classes [0, ...]' from the training manifest's counts."""
    classes = yaml.safe_load(override)  # as the override reaches the hparams
    with pytest.raises(
        DataError, match=r"^classes .*: label \S+ was read as \w+, not text .*quote each label"
    ):
        label_encoder(classes)


@pytest.mark.parametrize("out", [".", "text", "wav.scp", "utt2emo.json"])
def test_a_manifest_out_that_is_a_directory_or_a_table_of_its_data_is_refused(data_dir, capsys, out):
    """Not an IsADirectoryError traceback, nor transcripts replaced by the manifest (a lost table),
    nor a manifest beside the tables that the next data prep would read as one (utt2*)."""
    train = data_dir / "data" / "train"
    before = {p.name: p.read_bytes() for p in train.iterdir()}
    with pytest.raises(SystemExit) as exit_:
        make_manifest.main(
            ["--data_dir", str(train), "--data_root", str(data_dir / "db"), "--classes", ",".join(CLASSES)]
            + ["--out", str(train / out)]
        )
    assert exit_.value.code == 2 and f"--out {train / out}" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in train.iterdir()} == before
