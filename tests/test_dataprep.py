"""Data preparation: utterance checks, manifests, make_manifest, labels."""

import json
import os
import re

import numpy as np
import pytest
import soundfile as sf

from crab import dataprep
from crab.bin import make_manifest
from crab.data import class_counts, label_encoder, load_manifest
from crab.dataprep import (
    MIN_SAMPLES,
    DataPrepError,
    PeakCache,
    check_utterance,
    count_table,
    validate,
    write_manifest,
    write_skipped,
)
from tests.conftest import waiting_for_lock

CLASSES = ["angry", "happy", "neutral", "sad"]


def write_wav(path, frames, samplerate=16000, seed=0):
    """A tiny PCM_16 wav of ``frames`` samples of low-level noise."""
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    rng = np.random.default_rng(seed)
    data = (0.1 * rng.standard_normal(frames)).astype("float32")
    sf.write(str(path), data, samplerate, subtype="PCM_16")
    return str(path)


def entry(wav, text="hello there", emo="happy", spk="spk01"):
    return {"wav": str(wav), "text": text, "emo": emo, "spk": spk}


# ---------------------------------------------------------------- the peak cache


def test_the_peak_cache_reads_each_file_once_until_it_changes(tmp_path, monkeypatch):
    read = []
    real = dataprep.scan_samples
    monkeypatch.setattr(
        dataprep, "scan_samples", lambda path: read.append(os.path.basename(path)) or real(path)
    )
    good = write_wav(tmp_path / "good.wav", 1600)
    loud = tmp_path / "loud.wav"
    sf.write(str(loud), np.full(1600, 2e3, dtype="float32"), 16000, subtype="FLOAT")
    nan = tmp_path / "nan.wav"
    sf.write(str(nan), np.array([0.1, np.nan] * 800, dtype="float32"), 16000, subtype="FLOAT")
    entries = {"g": entry(good), "l": entry(loud), "n": entry(nan)}
    cache = tmp_path / "data" / "audio_peaks.json"

    def checked():
        peaks = PeakCache(cache)
        kept = validate({k: dict(v) for k, v in entries.items()}, CLASSES, "skip", peaks=peaks)
        peaks.save()
        return sorted(kept)

    assert checked() == ["g"] and sorted(read) == ["good.wav", "loud.wav", "nan.wav"]
    read.clear()
    assert checked() == ["g"] and read == []  # the same verdicts, from the cache: NaN, loud, good
    assert json.loads(cache.read_text())["files"][str(nan)][2] is None  # JSON has no NaN
    silent = np.zeros(1600, dtype="float32")
    sf.write(good, silent, 16000, subtype="PCM_16")  # the same size: a new modification time
    os.utime(good, ns=(0, os.stat(loud).st_mtime_ns + 1))
    assert checked() == [] and read == ["good.wav"]
    cache.write_text("{not json")
    read.clear()
    assert checked() == [] and sorted(read) == ["good.wav", "loud.wav", "nan.wav"]


def test_two_stage_3s_at_once_keep_each_others_peaks(tmp_path, caplog):
    """Two folds' (or experiments') stage 3 read the cache, then each saves what it read: the
    second save adds to the first's instead of replacing it, and waits for a save under way."""
    cache = tmp_path / "audio_peaks.json"
    one, other = PeakCache(cache), PeakCache(cache)  # both read it empty
    one.peak(write_wav(tmp_path / "one.wav", 1600))
    other.peak(write_wav(tmp_path / "other.wav", 1600, seed=1))
    one.save()
    with waiting_for_lock(f"{cache}.lock", other.save, caplog):
        assert len(json.loads(cache.read_text())["files"]) == 1  # not yet written
    assert sorted(os.path.basename(f) for f in json.loads(cache.read_text())["files"]) == [
        "one.wav",
        "other.wav",
    ]
    assert PeakCache(cache).entries == other.entries


# ---------------------------------------------------------------- check_utterance


def test_good_utterance_passes_and_gets_duration(tmp_path):
    wav = write_wav(tmp_path / "good.wav", 8000)  # 0.5 s
    e = entry(wav)
    assert check_utterance("u1", e, CLASSES) is None
    assert e["duration"] == pytest.approx(0.5, abs=1e-3)


def test_duration_uses_file_sample_rate(tmp_path):
    wav = write_wav(tmp_path / "good8k.wav", 12000, samplerate=8000)  # 1.5 s
    e = entry(wav)
    assert check_utterance("u1", e, CLASSES) is None
    assert e["duration"] == pytest.approx(1.5, abs=1e-3)


def test_missing_audio(tmp_path):
    wav = str(tmp_path / "nope.wav")
    e = entry(wav)
    kind, message = check_utterance("u1", e, CLASSES)
    assert kind == "missing audio"
    assert wav in message
    assert "duration" not in e


def test_unreadable_audio(tmp_path):
    wav = tmp_path / "garbage.wav"
    wav.write_bytes(b"this is not a RIFF header at all" * 10)
    e = entry(wav)
    kind, message = check_utterance("u1", e, CLASSES)
    assert kind == "unreadable audio"
    assert str(wav) in message
    assert "duration" not in e


@pytest.mark.parametrize(
    "frames, samplerate, too_short",
    [
        (MIN_SAMPLES - 1, 16000, True),
        (MIN_SAMPLES, 16000, False),
        # 8 kHz: 200 samples are 400 at 16 kHz, the minimum.
        (199, 8000, True),
        (200, 8000, False),
        # 48 kHz: 1200 samples are 400 at 16 kHz.
        (1199, 48000, True),
        (1200, 48000, False),
        # 44.1 kHz: need frames * 16000 >= 400 * 44100, i.e. frames >= 1102.5.
        (1102, 44100, True),
        (1103, 44100, False),
    ],
)
def test_too_short_accounts_for_sample_rate(tmp_path, frames, samplerate, too_short):
    wav = write_wav(tmp_path / f"s{frames}_{samplerate}.wav", frames, samplerate)
    e = entry(wav)
    reason = check_utterance("u1", e, CLASSES)
    if too_short:
        assert reason is not None
        kind, message = reason
        assert kind == "audio too short"
        assert wav in message
        assert str(frames) in message and str(samplerate) in message
        assert "duration" not in e
    else:
        assert reason is None
        assert e["duration"] == pytest.approx(round(frames / samplerate, 3))


def test_min_samples_argument(tmp_path):
    wav = write_wav(tmp_path / "a.wav", 1000)
    assert check_utterance("u1", entry(wav), CLASSES, min_samples=1000) is None
    kind, _ = check_utterance("u1", entry(wav), CLASSES, min_samples=1001)
    assert kind == "audio too short"


@pytest.mark.parametrize("text", ["", "   ", "\t\n"])
def test_empty_transcript(tmp_path, text):
    wav = write_wav(tmp_path / "a.wav", 4000)
    e = entry(wav, text=text)
    kind, _ = check_utterance("u1", e, CLASSES)
    assert kind == "empty transcript"
    assert "duration" not in e


def test_missing_transcript_field_is_empty(tmp_path):
    wav = write_wav(tmp_path / "a.wav", 4000)
    e = {"wav": wav, "emo": "sad", "spk": "s"}
    kind, _ = check_utterance("u1", e, CLASSES)
    assert kind == "empty transcript"


def test_unknown_label(tmp_path):
    wav = write_wav(tmp_path / "a.wav", 4000)
    e = entry(wav, emo="surprised")
    kind, message = check_utterance("u1", e, CLASSES)
    assert kind == "unknown label"
    assert "surprised" in message
    assert "duration" not in e
    e = entry(wav, emo="Sad")  # a label differing in case only is another label (as the encoder reads it)
    assert check_utterance("u1", e, CLASSES)[0] == "unknown label"


@pytest.mark.parametrize("bad", ["text", "label"])
def test_text_and_label_messages_name_the_file(tmp_path, bad):
    wav = write_wav(tmp_path / "a.wav", 4000)
    e = entry(wav, text="" if bad == "text" else "hi", emo="happy" if bad == "text" else "x")
    _, message = check_utterance("u1", e, CLASSES)
    assert wav in message


# ---------------------------------------------------------------- validate


def _mixed_entries(tmp_path):
    good1 = write_wav(tmp_path / "good1.wav", 4000)
    good2 = write_wav(
        tmp_path / "good2.wav", 200, samplerate=4000
    )  # 0.05 s at the lowest usable rate, enough
    short = write_wav(tmp_path / "short.wav", 100)
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(os.urandom(200))
    entries = {
        "good1": entry(good1, emo="angry"),
        "good2": entry(good2, emo="sad"),
        "missing": entry(tmp_path / "missing.wav"),
        "missing2": entry(tmp_path / "missing2.wav"),
        "garbage": entry(garbage),
        "short": entry(short),
        "notext": entry(good1, text=" "),
        "badlabel": entry(good1, emo="bored"),
    }
    return entries


def test_validate_error_lists_every_bad_utterance(tmp_path):
    entries = _mixed_entries(tmp_path)
    with pytest.raises(DataPrepError) as err:
        validate(entries, CLASSES, policy="error", name="train")
    message = str(err.value)
    assert message.startswith("train: 6 bad utterance(s)")
    for utt in ("missing", "missing2", "garbage", "short", "notext", "badlabel"):
        assert re.search(rf"^\s+{utt}: ", message, re.MULTILINE), utt
    for utt in ("good1", "good2"):
        assert not re.search(rf"^\s+{utt}: ", message, re.MULTILINE), utt
    assert str(tmp_path / "missing2.wav") in message
    assert str(tmp_path / "short.wav") in message


def test_validate_error_truncates_long_listing(tmp_path):
    entries = {f"u{i:03d}": entry(tmp_path / f"m{i}.wav") for i in range(25)}
    with pytest.raises(DataPrepError) as err:
        validate(entries, CLASSES, policy="error")
    message = str(err.value)
    assert "25 bad utterance(s)" in message
    assert "... and 5 more" in message
    assert "u019:" in message and "u020:" not in message
    # every audio file missing: the corpus moved, and skipping them would leave nothing
    assert "if the corpus moved, run data preparation (stage 1) again" in message
    assert "skip policy" not in message


def test_validate_error_offers_the_skip_policy_when_some_audio_is_there(tmp_path):
    entries = _mixed_entries(tmp_path)
    with pytest.raises(DataPrepError, match="re-run with the skip policy") as err:
        validate({k: entries[k] for k in ("good1", "missing")}, CLASSES, policy="error")
    assert "corpus moved" not in str(err.value)


def test_validate_skip_keeps_good_and_counts_kinds(tmp_path, capsys):
    entries = _mixed_entries(tmp_path)
    kept = validate(entries, CLASSES, policy="skip", name="valid")
    assert list(kept) == ["good1", "good2"]
    assert kept["good1"]["duration"] == pytest.approx(0.25)
    assert kept["good2"]["duration"] == pytest.approx(0.05)
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("valid: skipped"))
    assert "skipped 6 of 8 utterances" in line
    counts = {
        "missing audio": 2,
        "unreadable audio": 1,
        "audio too short": 1,
        "empty transcript": 1,
        "unknown label": 1,
    }
    for kind, n in counts.items():
        assert f"'{kind}': {n}" in line, (kind, line)


def test_validate_all_good_is_silent(tmp_path, capsys):
    wav = write_wav(tmp_path / "a.wav", 4000)
    entries = {"a": entry(wav), "b": entry(wav, emo="neutral")}
    for policy in ("error", "skip"):
        assert list(validate(entries, CLASSES, policy=policy)) == ["a", "b"]
    assert "skipped" not in capsys.readouterr().out


def test_validate_rejects_unknown_policy(tmp_path):
    with pytest.raises(ValueError, match="policy"):
        validate({}, CLASSES, policy="ignore")


# ---------------------------------------------------------------- manifests


def test_write_manifest_portable_and_load_restores(tmp_path, caplog):
    root = tmp_path / "corpus"
    wav_in = write_wav(root / "wav" / "spk1" / "a.wav", 4000)
    outside = write_wav(tmp_path / "elsewhere" / "b.wav", 4000)
    entries = {
        "a": dict(entry(wav_in), duration=0.25),
        "b": dict(entry(outside, emo="sad"), duration=0.25),
    }
    out = tmp_path / "data" / "sub" / "train.json"
    write_manifest(entries, str(out), str(root) + "/")  # trailing slash tolerated
    assert os.listdir(out.parent) == ["train.json"]  # no temporary file left
    # The input entries are not modified.
    assert entries["a"]["wav"] == wav_in

    raw = json.loads(out.read_text())
    assert raw["a"]["wav"] == "{data_root}/wav/spk1/a.wav"
    assert raw["b"]["wav"] == outside  # outside data_root: left absolute, and said
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warned == [
        f"{out}: 1 of 2 utterances have audio outside --data_root {root} (e.g. b: {outside}); "
        "their absolute paths are kept, so the manifest does not follow the corpus if it moves"
    ]
    assert "corpus" not in raw["a"]["wav"]

    moved = tmp_path / "moved_corpus"
    restored = load_manifest(str(out), str(moved))
    assert restored["a"]["wav"] == str(moved) + "/wav/spk1/a.wav"
    assert restored["b"]["wav"] == outside
    assert load_manifest(str(out), str(root))["a"]["wav"] == wav_in
    assert restored["a"]["emo"] == "happy" and restored["a"]["duration"] == 0.25


def test_write_manifest_relative_data_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    wav = write_wav(tmp_path / "db" / "x.wav", 4000)
    write_manifest({"x": dict(entry("db/x.wav"), duration=0.25)}, "m.json", "db")
    assert json.loads((tmp_path / "m.json").read_text())["x"]["wav"] == "{data_root}/x.wav"
    assert load_manifest("m.json", "db")["x"]["wav"] == "db/x.wav"
    assert os.path.samefile(load_manifest("m.json", str(tmp_path / "db"))["x"]["wav"], wav)


def test_load_manifest_requires_fields(tmp_path):
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"u1": {"wav": "a.wav", "text": "t", "emo": "sad", "spk": "s"}}))
    with pytest.raises(ValueError, match=r"u1.*duration"):
        load_manifest(str(path))


def test_count_table():
    splits = {
        "train": {"a": {"emo": "sad"}, "b": {"emo": "sad"}, "c": {"emo": "angry"}},
        "test": {"d": {"emo": "happy"}},
    }
    lines = count_table(splits, CLASSES).splitlines()
    assert lines[0].split() == ["split"] + CLASSES + ["total"]
    assert lines[1].split() == ["train", "1", "0", "0", "2", "3"]
    assert lines[2].split() == ["test", "0", "1", "0", "0", "1"]


# ---------------------------------------------------------------- make_manifest


def make_data_dir(tmp_path, utts=None):
    """A Kaldi-style data dir ``tmp_path/data/train`` over wavs in ``tmp_path/db``."""
    root = tmp_path / "db"
    utts = utts or {
        "u1": ("angry", "spk1", "f", "I am so angry"),
        "u2": ("happy", "spk1", "f", "what a lovely day"),
        "u3": ("happy", "spk2", "m", "great news"),
        "u4": ("sad", "spk2", "m", "I miss you"),
    }
    data = tmp_path / "data" / "train"
    data.mkdir(parents=True)
    wav_scp, text, emo, spk, gender = [], [], [], [], []
    for i, (utt, (label, speaker, sex, words)) in enumerate(utts.items()):
        wav = write_wav(root / speaker / f"{utt}.wav", 3200 + 800 * i, seed=i)
        wav_scp.append(f"{utt} {wav}")
        text.append(f"{utt} {words}")
        emo.append(f"{utt} {label}")
        spk.append(f"{utt} {speaker}")
        gender.append(f"{utt} {sex}")
    for name, lines in [
        ("wav.scp", wav_scp),
        ("text", text),
        ("utt2emo", emo),
        ("utt2spk", spk),
        ("utt2gender", gender),
    ]:
        (data / name).write_text("\n".join(lines) + "\n")
    return data, root


def run_make_manifest(data, root, out, *extra):
    return make_manifest.main(
        [
            "--data_dir",
            str(data),
            "--data_root",
            str(root),
            "--classes",
            ",".join(CLASSES),
            "--out",
            str(out),
            *extra,
        ]
    )


def count_row(stdout, name):
    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:1] == ["split"])
    assert lines[header].split() == ["split"] + CLASSES + ["total"]
    row = next(line for line in lines[header + 1 :] if line.split()[:1] == [name])
    return [int(x) for x in row.split()[1:]]


def test_make_manifest_writes_manifest_and_counts(tmp_path, capsys):
    data, root = make_data_dir(tmp_path)
    out = tmp_path / "manifests" / "train.json"
    run_make_manifest(data, root, out)
    raw = json.loads(out.read_text())
    assert list(raw) == ["u1", "u2", "u3", "u4"]
    assert raw["u1"] == {
        "wav": "{data_root}/spk1/u1.wav",
        "text": "I am so angry",
        "emo": "angry",
        "gender": "f",
        "spk": "spk1",
        "duration": 0.2,
    }
    assert raw["u4"]["gender"] == "m" and raw["u4"]["duration"] == pytest.approx(0.35)
    assert count_row(capsys.readouterr().out, "train") == [1, 2, 0, 1, 4]

    entries = load_manifest(str(out), str(root))
    assert os.path.isfile(entries["u3"]["wav"])
    assert class_counts(str(out), CLASSES) == [1, 2, 0, 1]


def test_make_manifest_missing_utt2spk_entry(tmp_path):
    data, root = make_data_dir(tmp_path)
    lines = (data / "utt2spk").read_text().splitlines()
    (data / "utt2spk").write_text("\n".join(line for line in lines if not line.startswith("u3 ")) + "\n")
    out = tmp_path / "train.json"
    with pytest.raises(SystemExit) as exc:
        run_make_manifest(data, root, out)
    message = str(exc.value.code)
    assert message.startswith("ERROR:")
    assert "utt2spk" in message and "'u3'" in message
    assert not out.exists()


def test_make_manifest_missing_utt2spk_file(tmp_path):
    data, root = make_data_dir(tmp_path)
    (data / "utt2spk").unlink()
    with pytest.raises(SystemExit) as exc:
        run_make_manifest(data, root, tmp_path / "train.json")
    assert "utt2spk" in str(exc.value.code)


def test_make_manifest_duplicate_id_in_wav_scp(tmp_path):
    data, root = make_data_dir(tmp_path)
    with open(data / "wav.scp", "a") as f:
        f.write(f"u2 {root}/spk1/u1.wav\n")  # line 5
    out = tmp_path / "train.json"
    with pytest.raises(SystemExit) as exc:
        run_make_manifest(data, root, out)
    message = str(exc.value.code)
    assert f"{data / 'wav.scp'}:5" in message
    assert "'u2'" in message and "duplicate" in message
    assert not out.exists()


def test_make_manifest_utterance_not_in_wav_scp(tmp_path):
    data, root = make_data_dir(tmp_path)
    with open(data / "utt2emo", "a") as f:
        f.write("ghost sad\n")
    with pytest.raises(SystemExit) as exc:
        run_make_manifest(data, root, tmp_path / "train.json")
    assert "'ghost'" in str(exc.value.code)


def test_make_manifest_missing_wav_error_policy(tmp_path):
    data, root = make_data_dir(tmp_path)
    missing = root / "spk2" / "u3.wav"
    missing.unlink()
    out = tmp_path / "train.json"
    with pytest.raises(SystemExit) as exc:
        run_make_manifest(data, root, out)  # policy defaults to error
    message = str(exc.value.code)
    assert "u3" in message and str(missing) in message
    assert "1 bad utterance" in message
    assert not out.exists()
    with pytest.raises(SystemExit):
        run_make_manifest(data, root, out, "--policy", "error")


def test_make_manifest_missing_wav_skip_policy(tmp_path, capsys):
    data, root = make_data_dir(tmp_path)
    (root / "spk2" / "u3.wav").unlink()
    out = tmp_path / "train.json"
    run_make_manifest(data, root, out, "--policy", "skip")
    assert list(json.loads(out.read_text())) == ["u1", "u2", "u4"]
    stdout = capsys.readouterr().out
    assert "train: skipped 1 of 4 utterances: {'missing audio': 1}" in stdout
    assert count_row(stdout, "train") == [1, 1, 0, 1, 3]


def test_make_manifest_skip_everything_is_an_error(tmp_path):
    data, root = make_data_dir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        run_make_manifest(
            data, root, tmp_path / "train.json", "--policy", "skip", "--classes", "calm,excited"
        )
    assert "no usable utterances" in str(exc.value.code)


def test_make_manifest_rejects_unknown_policy(tmp_path, capsys):
    data, root = make_data_dir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        run_make_manifest(data, root, tmp_path / "train.json", "--policy", "ignore")
    assert exc.value.code == 2


def add_missing_audio(data, root, utts, label="happy"):
    """Append utterances whose audio is not there to the data dir ``data``."""
    for name, value in [("wav.scp", None), ("text", "no audio here"), ("utt2emo", label)]:
        with open(data / name, "a", encoding="utf-8") as f:
            f.writelines(f"{u} {value or root / 'gone' / f'{u}.wav'}\n" for u in utts)
    for name, value in [("utt2spk", "spk9"), ("utt2gender", "f")]:
        with open(data / name, "a", encoding="utf-8") as f:
            f.writelines(f"{u} {value}\n" for u in utts)


def read_skipped(path):
    """The rows of a skipped list, each split at its tabs: every line must be one whole row."""
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    return [line.split("\t") for line in text[:-1].split("\n")]


def test_make_manifest_skip_lists_every_skipped_utterance_beside_the_manifest(tmp_path, capsys):
    data, root = make_data_dir(tmp_path)
    (root / "spk2" / "u3.wav").unlink()
    lines = (data / "utt2emo").read_text().replace("u4 sad", "u4 bored")
    (data / "utt2emo").write_text(lines)
    out = tmp_path / "train.json"
    run_make_manifest(data, root, out, "--policy", "skip")
    assert list(json.loads(out.read_text())) == ["u1", "u2"]
    rows = read_skipped(tmp_path / "train.json.skipped")
    assert rows[0] == ["utt", "kind", "message"]
    assert [row[:2] for row in rows[1:]] == [["u3", "missing audio"], ["u4", "unknown label"]]
    assert rows[1][2] == f"missing audio file {root / 'spk2' / 'u3.wav'}"
    assert "'bored'" in rows[2][2]
    assert "train: skipped 2 of 4 utterances" in capsys.readouterr().out


def test_make_manifest_skip_logs_the_first_ten_and_where_all_are(tmp_path, caplog, capsys):
    data, root = make_data_dir(tmp_path)
    bad = [f"x{i:02d}" for i in range(25)]
    add_missing_audio(data, root, bad)
    out = tmp_path / "train.json"
    run_make_manifest(data, root, out, "--policy", "skip")
    skipped = tmp_path / "train.json.skipped"
    assert [row[0] for row in read_skipped(skipped)[1:]] == bad
    warnings = [r.getMessage() for r in caplog.records if r.name == "crab.dataprep"]
    named = [m for m in warnings if ": skipping " in m]
    assert [m.split(": skipping ")[1].split(":")[0] for m in named] == bad[:10]
    assert f"missing audio file {root / 'gone' / 'x09.wav'}" in named[-1]
    assert not any("x10" in m for m in warnings)
    assert f"train: ... and 15 more; all 25 in {skipped}" in warnings
    assert "train: skipped 25 of 29 utterances: {'missing audio': 25}" in capsys.readouterr().out


def test_make_manifest_skip_few_logs_each_and_names_the_list(tmp_path, caplog):
    data, root = make_data_dir(tmp_path)
    add_missing_audio(data, root, ["x1", "x2"])
    out = tmp_path / "train.json"
    run_make_manifest(data, root, out, "--policy", "skip")
    warnings = [r.getMessage() for r in caplog.records if r.name == "crab.dataprep"]
    assert sum(": skipping " in m for m in warnings) == 2
    assert f"train: all 2 listed in {out}.skipped" in warnings
    assert not any("more;" in m for m in warnings)


def test_make_manifest_rerun_replaces_or_removes_the_skipped_list(tmp_path):
    data, root = make_data_dir(tmp_path)
    pristine = {name: (data / name).read_text() for name in os.listdir(data)}
    add_missing_audio(data, root, ["x1", "x2", "x3"])
    out = tmp_path / "train.json"
    skipped = tmp_path / "train.json.skipped"
    run_make_manifest(data, root, out, "--policy", "skip")
    assert [row[0] for row in read_skipped(skipped)[1:]] == ["x1", "x2", "x3"]
    # fewer bad ones: the list is replaced, not appended to
    for name, text in pristine.items():
        (data / name).write_text(text)
    add_missing_audio(data, root, ["x2"])
    run_make_manifest(data, root, out, "--policy", "skip")
    assert [row[0] for row in read_skipped(skipped)[1:]] == ["x2"]
    # a failing error policy writes no manifest, and leaves the list of the one there
    with pytest.raises(SystemExit):
        run_make_manifest(data, root, out, "--policy", "error")
    assert [row[0] for row in read_skipped(skipped)[1:]] == ["x2"]
    # none bad: no stale list beside the new manifest, whichever the policy
    for name, text in pristine.items():
        (data / name).write_text(text)
    run_make_manifest(data, root, out, "--policy", "skip")
    assert list(json.loads(out.read_text())) == ["u1", "u2", "u3", "u4"]
    assert not skipped.exists()
    add_missing_audio(data, root, ["x1"])
    run_make_manifest(data, root, out, "--policy", "skip")
    assert skipped.exists()
    for name, text in pristine.items():
        (data / name).write_text(text)
    run_make_manifest(data, root, out, "--policy", "error")
    assert not skipped.exists()
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]


def test_make_manifest_skipped_list_escapes_tabs_in_a_message(tmp_path):
    data, root = make_data_dir(tmp_path)
    (data / "wav.scp").write_text((data / "wav.scp").read_text().replace("u3.wav", "u3\tx.wav"))
    (data / "utt2emo").write_text((data / "utt2emo").read_text().replace("u4 sad", "u4 so\tsad"))
    out = tmp_path / "train.json"
    run_make_manifest(data, root, out, "--policy", "skip")
    rows = read_skipped(tmp_path / "train.json.skipped")
    assert [len(row) for row in rows] == [3, 3, 3]
    assert [row[:2] for row in rows[1:]] == [["u3", "missing audio"], ["u4", "unknown label"]]
    assert rows[1][2] == f"missing audio file {root / 'spk2' / 'u3'}\\tx.wav"
    assert "'so\\tsad'" in rows[2][2]


def test_write_skipped_keeps_one_row_per_utterance(tmp_path):
    path = tmp_path / "m.json.skipped"
    message = "line one\nline two\r\n\tend \\t C:\\db \x1b \u2028."
    write_skipped(path, [("a\\b", ("unreadable audio", message)), ("c", ("missing audio", "plain"))])
    rows = read_skipped(path)
    assert rows == [
        ["utt", "kind", "message"],
        ["a\\\\b", "unreadable audio", "line one\\nline two\\r\\n\\tend \\\\t C:\\\\db \\x1b \\u2028."],
        ["c", "missing audio", "plain"],
    ]
    write_skipped(path, [])
    assert not path.exists()
    write_skipped(path, [])  # none there: nothing to do


# ---------------------------------------------------------------- labels


def write_plain_manifest(path, labels):
    entries = {
        f"u{i}": {"wav": f"{{data_root}}/u{i}.wav", "duration": 1.0, "text": "t", "emo": e, "spk": "s"}
        for i, e in enumerate(labels)
    }
    path.write_text(json.dumps(entries))
    return str(path)


def test_class_counts_in_class_order(tmp_path):
    path = write_plain_manifest(tmp_path / "m.json", ["sad", "sad", "angry", "sad", "neutral"])
    assert class_counts(path, CLASSES) == [1, 0, 1, 3]
    assert class_counts(path, ["sad", "neutral", "happy", "angry"]) == [3, 1, 0, 1]


def test_class_counts_unknown_label(tmp_path):
    path = write_plain_manifest(tmp_path / "m.json", ["sad", "bored"])
    with pytest.raises(ValueError, match="bored"):
        class_counts(path, CLASSES)


def test_label_encoder_keeps_class_order(tmp_path):
    classes = ["sad", "angry", "neutral", "happy"]  # deliberately not sorted
    path = str(tmp_path / "label_encoder.txt")
    encoder = label_encoder(classes, path)
    assert encoder.lab2ind == {c: i for i, c in enumerate(classes)}
    assert os.path.isfile(path)
    again = label_encoder(classes, path)
    assert again.lab2ind == encoder.lab2ind
    assert label_encoder(CLASSES).lab2ind == {c: i for i, c in enumerate(CLASSES)}


def test_label_encoder_saved_with_other_order_is_an_error(tmp_path):
    path = str(tmp_path / "label_encoder.txt")
    label_encoder(CLASSES, path)
    with pytest.raises(ValueError, match="label_encoder.txt"):
        label_encoder(["happy", "angry", "neutral", "sad"], path)
    with pytest.raises(ValueError):
        label_encoder(CLASSES + ["calm"], path)


def test_make_manifest_tab_separated_tables(tmp_path):
    data, root = make_data_dir(tmp_path)
    for name in ("wav.scp", "utt2emo"):
        lines = (data / name).read_text().splitlines()
        (data / name).write_text("\n".join(line.replace(" ", "\t", 1) for line in lines) + "\n")
    out = tmp_path / "train.json"
    run_make_manifest(data, root, out)
    assert list(json.loads(out.read_text())) == ["u1", "u2", "u3", "u4"]
