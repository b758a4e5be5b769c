"""A table of bad or unusual inputs, each through data prep (stage 3) and crab-infer:
a clear error naming the utterance (or file and line), or the documented handling,
and never a lost result: crab-infer's earlier results survive every bad run."""

import csv
import json
import os
import sys

import numpy as np
import pytest
import soundfile as sf

from crab.bin import make_manifest
from tests import test_inference
from tests.test_inference import cli

# the fixtures of test_inference, found by pytest under the same names; assigned, not
# imported, so that the test parameters of that name redefine no unused import (ruff F811)
data, trained = test_inference.data, test_inference.trained

CLASSES = ["angry", "happy", "neutral", "sad"]
TEXT = "I feel happy today"


def tone(seconds=0.6, rate=16000, amplitude=0.3, channels=1):
    t = np.arange(int(seconds * rate)) / rate
    wave = (amplitude * np.sin(2 * np.pi * 220 * t)).astype("float32")
    return np.stack([wave] * channels, 1) if channels > 1 else wave


def wav(array, rate=16000, **kwargs):
    return lambda path: sf.write(path, array, rate, **kwargs)


def filled(value, frames=8000):
    return np.full(frames, value, dtype="float32")


def truncated(path):
    sf.write(path, tone(1.0), 16000)
    path.write_bytes(path.read_bytes()[:16044])  # the header says 1 s, half is there


def dangling(path):
    os.symlink(path.parent / "nowhere.wav", path)


# name -> (writes the audio, data prep: "ok" or the problem it names, crab-infer: "ok" or the reason)
AUDIO = {
    "pcm16": (wav(tone(), subtype="PCM_16"), "ok", "ok"),
    "pcm24": (wav(tone(), subtype="PCM_24"), "ok", "ok"),
    "pcm32": (wav(tone(), subtype="PCM_32"), "ok", "ok"),
    "pcm8_unsigned": (wav(tone(), subtype="PCM_U8"), "ok", "ok"),
    "float32": (wav(tone(), subtype="FLOAT"), "ok", "ok"),
    "float64": (wav(tone(), subtype="DOUBLE"), "ok", "ok"),
    "flac_named_wav": (wav(tone(), format="FLAC"), "ok", "ok"),
    "ogg_named_wav": (wav(tone(), format="OGG", subtype="VORBIS"), "ok", "ok"),
    "stereo": (wav(tone(channels=2)), "ok", "ok"),
    "six_channels": (wav(tone(channels=6)), "ok", "ok"),
    "rate8k": (wav(tone(rate=8000), 8000), "ok", "ok"),
    "rate44k": (wav(tone(rate=44100), 44100), "ok", "ok"),
    "rate8009": (wav(tone(rate=8009), 8009), "ok", "ok"),
    "rate4001": (wav(tone(rate=4001), 4001), "ok", "ok"),
    "rate192k": (wav(tone(rate=192000), 192000), "ok", "ok"),
    "long_60s": (wav(tone(60.0)), "ok", "ok"),
    "dc_offset": (wav(filled(0.5)), "ok", "ok"),
    "truncated_data": (truncated, "ok", "ok"),
    "missing": (lambda p: None, "missing audio", "missing audio file"),
    "dangling_link": (dangling, "missing audio", "missing audio file"),
    "directory": (lambda p: p.mkdir(), "it is a directory", "it is a directory"),
    "garbage_bytes": (
        lambda p: p.write_bytes(b"\x13\x37 not a RIFF header" * 40),
        "unreadable audio",
        "unreadable",
    ),
    "text_as_wav": (lambda p: p.write_text("hello, not audio\n" * 50), "unreadable audio", "unreadable"),
    "zero_bytes": (lambda p: p.write_bytes(b""), "empty audio file", "unreadable"),
    "no_samples": (wav(np.zeros(0, "float32")), "audio too short", "empty audio"),
    "too_short": (wav(tone()[:399]), "audio too short", "audio too short"),
    "nan": (wav(filled(np.nan), subtype="FLOAT"), "NaN or infinite samples", "NaN or infinite"),
    "inf": (wav(filled(np.inf), subtype="FLOAT"), "NaN or infinite samples", "NaN or infinite"),
    "minus_inf": (wav(filled(-np.inf), subtype="FLOAT"), "NaN or infinite samples", "NaN or infinite"),
    "one_nan": (
        wav(np.where(np.arange(9600) == 100, np.nan, tone()).astype("float32"), subtype="FLOAT"),
        "NaN or infinite samples",
        "NaN or infinite",
    ),
    "huge_1e30": (wav(filled(1e30), subtype="FLOAT"), "amplitude out of range", "amplitude out of range"),
    "huge_5e3": (
        wav(tone(amplitude=5e3), subtype="FLOAT"),
        "amplitude out of range",
        "amplitude out of range",
    ),
    "silence": (wav(filled(0.0)), "silent audio", "silent"),
    "near_silence": (wav(tone(amplitude=5e-5), subtype="FLOAT"), "silent audio", "silent"),
    "rate2000": (wav(tone(rate=2000), 2000), "2000 Hz outside 4000-384000 Hz", "sample rate 2000 Hz"),
    "rate500k": (
        wav(tone(0.1, rate=500000), 500000),
        "500000 Hz outside 4000-384000 Hz",
        "sample rate 500000 Hz",
    ),
}

# Transcript kinds (their audio is good): data prep, and crab-infer with --text_mode gold.
TEXTS = {
    "control_chars": ("hello\x00 wor\x1bld\tand\rmore", "ok", "ok"),
    "only_control_chars": ("\x00\x1b", "empty transcript", "empty transcript"),
    "empty_transcript": ("", "empty transcript", "empty transcript"),
    "unicode": ("Ça va? 我很高兴 😀", "ok", "ok"),
    "long_10mb": ("happy " * 1_700_000, "ok", "ok"),
    "right_to_left": ("\u202eevil\u202c text", "ok", "ok"),
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A Kaldi data dir with one utterance per kind; a wav.scp and text for crab-infer."""
    root = tmp_path_factory.mktemp("bad_inputs")
    audio = root / "db"
    audio.mkdir()
    paths = {}
    for utt, (write, _, _) in AUDIO.items():
        paths[utt] = audio / f"{utt}.wav"
        write(paths[utt])
    texts = {utt: TEXT for utt in AUDIO}
    for utt, (text, _, _) in TEXTS.items():
        paths[utt] = audio / f"{utt}.wav"
        sf.write(paths[utt], tone(), 16000)
        texts[utt] = text
    data_dir = root / "data" / "test"
    data_dir.mkdir(parents=True)
    (data_dir / "wav.scp").write_text("".join(f"{u} {p}\n" for u, p in paths.items()))
    with open(data_dir / "text", "w", encoding="utf-8", newline="") as f:
        f.write("".join(f"{u} {t}\n" for u, t in texts.items()))
    (data_dir / "utt2emo").write_text("".join(f"{u} happy\n" for u in paths))
    (data_dir / "utt2spk").write_text("".join(f"{u} spk1\n" for u in paths))
    return root, data_dir


def prepare(root, data_dir, policy="error", **tables):
    for name, content in tables.items():
        with open(data_dir / name, "wb") as f:
            f.write(content if isinstance(content, bytes) else content.encode("utf-8"))
    out = root / f"{data_dir.name}.json"
    try:
        make_manifest.main(
            [
                "--data_dir",
                str(data_dir),
                "--data_root",
                str(root / "db"),
                "--classes",
                ",".join(CLASSES),
                "--out",
                str(out),
                "--policy",
                policy,
            ]
        )
    except SystemExit as exit_:
        return str(exit_.code), None
    return "", json.loads(out.read_text())


def test_data_prep_names_each_bad_utterance_and_keeps_the_rest(inputs):
    root, data_dir = inputs
    kinds = {**AUDIO, **TEXTS}
    assert len(kinds) >= 40
    message, _ = prepare(root, data_dir, "error")
    problems = {}
    for line in message.splitlines():
        utt, _, problem = line.strip().partition(": ")
        if utt in kinds:
            problems[utt] = problem
    wrong = {}
    for utt, (_, expected, _) in kinds.items():
        found = problems.get(utt, "ok")
        named = expected == "ok" or str(root / "db" / utt) in found or "transcript" in expected
        if expected not in found or not named:
            wrong[utt] = (expected, found)
    assert not wrong, "\n".join(f"{u}: expected {e!r}, found {f!r}" for u, (e, f) in wrong.items())
    assert not (root / "test.json").exists()  # the error policy writes nothing

    _, manifest = prepare(root, data_dir, "skip")
    assert sorted(manifest) == sorted(utt for utt, kind in kinds.items() if kind[1] == "ok")
    assert manifest["control_chars"]["text"] == "hello world and more"
    assert manifest["unicode"]["text"] == TEXTS["unicode"][0]


@pytest.mark.parametrize(
    "table, content, message",
    [
        ("text", b"pcm16 caf\xe9 au lait\npcm24 fine\n", "text:1:10: byte 0xe9 is not UTF-8"),
        ("utt2emo", "pcm16 bored\npcm24 happy\n", "bored"),
        ("utt2spk", "", "utt2spk"),
        (
            "wav.scp",
            "pcm16 {db}/pcm16.wav\npcm16 {db}/pcm24.wav\npcm24 {db}/pcm24.wav\n",
            "duplicate utterance id 'pcm16'",
        ),
        ("wav.scp", "pcm16\npcm24 {db}/pcm24.wav\n", "pcm16"),
    ],
)
def test_data_prep_table_problems_name_the_file(inputs, tmp_path, table, content, message):
    root, data_dir = inputs
    small = tmp_path / "test"
    small.mkdir()
    for name in ("wav.scp", "text", "utt2emo", "utt2spk"):
        keep = [
            line
            for line in (data_dir / name).read_text(encoding="utf-8").splitlines()
            if line.split()[0] in ("pcm16", "pcm24")
        ]
        (small / name).write_text("\n".join(keep) + "\n", encoding="utf-8")
    if isinstance(content, str):
        content = content.format(db=root / "db")
    error, _ = prepare(root, small, "error", **{table: content})
    assert message in error and "Traceback" not in error, error


def test_data_prep_reads_a_bom_and_crlf_tables(inputs, tmp_path):
    root, data_dir = inputs
    small = tmp_path / "test"
    small.mkdir()
    for name in ("wav.scp", "text", "utt2emo", "utt2spk"):
        keep = [
            line
            for line in (data_dir / name).read_text(encoding="utf-8").splitlines()
            if line.startswith("pcm")
        ]
        (small / name).write_bytes(b"\xef\xbb\xbf" + "\r\n".join(keep).encode("utf-8") + b"\r\n")
    error, manifest = prepare(root, small)
    assert error == "", error
    assert sorted(manifest) == ["pcm16", "pcm24", "pcm32", "pcm8_unsigned"]
    assert manifest["pcm16"]["text"] == TEXT and manifest["pcm16"]["emo"] == "happy"


def read_results(out):
    csv.field_size_limit(sys.maxsize)  # the text column holds the transcript given: 10 MB here
    with open(out, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_crab_infer_fails_each_bad_utterance_alone_and_keeps_earlier_results(
    trained, inputs, tmp_path, capsys
):
    model_dir = trained[2]
    root, data_dir = inputs
    kinds = {**AUDIO, **TEXTS}
    lines = (data_dir / "wav.scp").read_text().splitlines()
    good = [line for line in lines if kinds[line.split()[0]][2] == "ok"]
    (tmp_path / "good.scp").write_text("\n".join(good[:3]) + "\n")
    out = tmp_path / "results.tsv"
    common = ["--model", model_dir, "--text", data_dir / "text", "--text_mode", "gold", "--out", out]
    assert cli(*common, "--wav_scp", tmp_path / "good.scp") == 0
    earlier = out.read_text(encoding="utf-8")

    extra = ["no_path_on_this_line", "notext " + str(root / "db" / "pcm16.wav")]
    (tmp_path / "all.scp").write_text("\n".join(lines + extra) + "\n")
    assert cli(*common, "--wav_scp", tmp_path / "all.scp") == 1  # some failed: exit 1 without --skip_errors
    assert out.read_text(encoding="utf-8").startswith(earlier)  # nothing written before is lost
    rows = {row["id"]: row for row in read_results(out)}
    with open(f"{out}.errors", newline="", encoding="utf-8") as f:
        errors = {row["id"]: row for row in csv.DictReader(f, delimiter="\t")}
    wrong = {}
    for utt, (_, _, expected) in kinds.items():
        found = errors[utt]["reason"] if utt in errors else "ok" if utt in rows else "absent"
        if expected not in found or (expected == "ok") != (utt in rows):
            wrong[utt] = (expected, found)
    assert not wrong, "\n".join(f"{u}: expected {e!r}, found {f!r}" for u, (e, f) in wrong.items())
    for utt in rows:  # finite probabilities that sum to one
        probs = [float(rows[utt][f"prob_{c}"]) for c in CLASSES]
        assert all(p == p for p in probs) and abs(sum(probs) - 1) < 1e-4, utt
    assert "does not parse" in errors["no_path_on_this_line"]["reason"]
    assert "no transcript in" in errors["notext"]["reason"]
    assert rows["control_chars"]["text"] == "hello world and more"
    assert len(rows) == sum(kind[2] == "ok" for kind in kinds.values())

    again = cli(
        *common, "--wav_scp", tmp_path / "all.scp", "--skip_errors"
    )  # resumes: nothing lost, nothing doubled
    assert again == 0 and [r["id"] for r in read_results(out)] == list(rows)


def test_a_fifo_or_a_device_where_audio_is_expected_is_named_as_such_and_never_opened(trained, tmp_path):
    """Not "missing" with no more said, when the file is there: opening a FIFO would block until
    something writes to it, /dev/zero never ends; neither is opened."""
    db = tmp_path / "db"
    db.mkdir()
    sf.write(db / "good.wav", tone(), 16000)
    os.mkfifo(db / "fifo.wav")
    os.symlink("/dev/zero", db / "device_link.wav")
    data_dir = tmp_path / "test"
    data_dir.mkdir()
    utts = ("good", "fifo", "device_link")
    (data_dir / "wav.scp").write_text("".join(f"{u} {db}/{u}.wav\n" for u in utts))
    (data_dir / "text").write_text("".join(f"{u} {TEXT}\n" for u in utts))
    (data_dir / "utt2emo").write_text("".join(f"{u} happy\n" for u in utts))
    (data_dir / "utt2spk").write_text("".join(f"{u} spk1\n" for u in utts))
    message, _ = prepare(tmp_path, data_dir, "error")
    for utt in ("fifo", "device_link"):
        assert f"  {utt}: missing audio file {db}/{utt}.wav: it is a FIFO, device or socket" in message
    out = tmp_path / "r.tsv"
    common = ["--model", trained[2], "--text", data_dir / "text", "--text_mode", "gold", "--out", out]
    assert cli(*common, "--wav_scp", data_dir / "wav.scp") == 1
    with open(f"{out}.errors", newline="", encoding="utf-8") as f:
        errors = {row["id"]: row["reason"] for row in csv.DictReader(f, delimiter="\t")}
    assert sorted(errors) == ["device_link", "fifo"] and [r["id"] for r in read_results(out)] == ["good"]
    for utt in ("fifo", "device_link"):
        assert errors[utt].startswith(f"missing audio file {db}/{utt}.wav: it is a FIFO, device or socket")
