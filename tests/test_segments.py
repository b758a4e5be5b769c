"""Cutting a segmented Kaldi data directory into one wav per utterance (crab.segments,
crab.bin.cut_segments): samples unchanged, bad segments listed, crab-infer pointed to it."""

import os
import signal

import numpy as np
import pytest
import soundfile as sf

from crab.bin import cut_segments
from crab.dataprep import DataPrepError
from crab.segments import cut_segments as cut

RATE = 8000


def flac_claiming_billions_of_frames(path, samples, rate):
    """A FLAC of ``samples`` whose header (STREAMINFO's total samples) claims 2**36 - 1 frames,
    as a damaged one can: ``sf.info`` reports them, reading stops where the samples do."""
    sf.write(path, samples, rate, format="FLAC")
    data = bytearray(path.read_bytes())
    at = 18  # 'fLaC', the block header, 10 bytes of block sizes; then rate, channels, bits, total
    fields = int.from_bytes(data[at : at + 8], "big") | ((1 << 36) - 1)
    data[at : at + 8] = fields.to_bytes(8, "big")
    path.write_bytes(data)
    assert sf.info(path).frames == (1 << 36) - 1


@pytest.fixture
def segmented(tmp_path):
    """A data dir: a 2 s stereo 16-bit recording 'rec' (samples = their own index), a
    missing one, and segments of every kind."""
    data = tmp_path / "data"
    data.mkdir()
    samples = np.stack([np.arange(2 * RATE), -np.arange(2 * RATE)], axis=1).astype(np.int16)
    sf.write(tmp_path / "rec.wav", samples, RATE, subtype="PCM_16")
    (data / "wav.scp").write_text(f"rec {tmp_path}/rec.wav\ngone {tmp_path}/gone.wav\n")
    (data / "segments").write_text(
        "u1 rec 0.0 0.5\n"
        "u2 rec 0.5 1.25\n"
        "u3 rec 1.5 -1\n"  # to the end
        "u4 rec 1.75 2.3\n"  # 0.3 s past the end: cut there
        "u5 rec 1.0 3.0\n"  # 1 s past the end
        "u6 other 0 1\n"
        "u7 gone 0 1\n"
        "u8 rec 1.0 0.5\n"
        "u9 rec zero 1\n"
        "u1 rec 0 1\n"
        "../u11 rec 0 1\n"
    )
    (data / "text").write_text("u1 first\nu2 second\nu5 fifth\n")
    (data / "utt2emo").write_text("u1 angry\nu2 sad\nu3 sad\nu4 happy\n")
    return data, samples


def test_each_segment_becomes_a_wav_of_its_samples(segmented, tmp_path):
    data, samples = segmented
    out = tmp_path / "cut"
    written, failures = cut(str(data), str(out))
    assert written == 4
    for utt, (start, end) in {
        "u1": (0, 4000),
        "u2": (4000, 10000),
        "u3": (12000, 16000),
        "u4": (14000, 16000),
    }.items():
        got, rate = sf.read(out / "audio" / f"{utt}.wav", dtype="int16", always_2d=True)
        assert rate == RATE and sf.info(out / "audio" / f"{utt}.wav").subtype == "PCM_16"
        assert np.array_equal(got, samples[start:end]), utt
    assert (out / "wav.scp").read_text() == "".join(
        f"{u} {out}/audio/{u}.wav\n" for u in ("u1", "u2", "u3", "u4")
    )
    assert (out / "text").read_text() == "u1 first\nu2 second\n"  # the utterances written
    assert (out / "utt2emo").read_text() == "u1 angry\nu2 sad\nu3 sad\nu4 happy\n"
    reasons = {f.utt + str(f.line): f.reason for f in failures}
    assert "more than 0.5 s after the recording's end (2 s)" in reasons["u55"]
    assert reasons["u66"] == "recording 'other' is not in wav.scp"
    assert reasons["u77"].startswith(f"recording {tmp_path}/gone.wav cannot be read")
    assert reasons["u88"].startswith("expected '<utt-id> <recording-id> <start> <end>'") and "u99" in reasons
    assert reasons["u110"] == "duplicate utterance id (first on line 1)"
    assert reasons["../u1111"].startswith("the utterance id cannot name a file")
    errors = (out / "segments.errors").read_text().splitlines()
    assert len(errors) == 7 and errors[0].startswith("u8\t8\texpected")


def test_times_round_to_the_nearest_sample_and_a_segment_without_samples_fails(tmp_path):
    """A time between two samples is cut at the nearer one (not always the earlier); a segment
    that ends where it starts, or starts at the recording's end, holds no sample: a failure, not
    an empty wav."""
    data = tmp_path / "data"
    data.mkdir()
    sf.write(tmp_path / "rec.wav", np.arange(RATE, dtype=np.int16), RATE, subtype="PCM_16")
    (data / "wav.scp").write_text(f"rec {tmp_path}/rec.wav\n")
    # 0.10009 s is sample 800.72, 0.2 s sample 1600
    (data / "segments").write_text("a rec 0.10009 0.2\nempty rec 0.5 0.5\nlast rec 1.0 -1\n")
    written, failures = cut(str(data), str(tmp_path / "cut"))
    got, _ = sf.read(tmp_path / "cut" / "audio" / "a.wav", dtype="int16")
    assert written == 1 and np.array_equal(got, np.arange(801, 1600))
    assert [(f.utt, f.line) for f in failures] == [("empty", 2), ("last", 3)]


def test_the_command_lists_failures_and_fails(segmented, tmp_path, capsys):
    data, _ = segmented
    with pytest.raises(SystemExit, match=r"ERROR: 7 segment\(s\) could not be cut \(e.g. u8, line 8"):
        cut_segments.main(["--data_dir", str(data), "--out_dir", str(tmp_path / "cut")])
    assert "4 utterances cut, 7 failed" in capsys.readouterr().out
    (data / "segments").write_text("u1 rec 0.0 0.5\n")
    cut_segments.main(["--data_dir", str(data), "--out_dir", str(tmp_path / "cut")])
    assert not (tmp_path / "cut" / "segments.errors").exists()  # the old list goes
    assert (tmp_path / "cut" / "wav.scp").read_text().count("\n") == 1
    with pytest.raises(SystemExit, match="elsewhere than"):
        cut_segments.main(["--data_dir", str(data), "--out_dir", str(data)])
    with pytest.raises(SystemExit, match="segments: no such file"):
        cut_segments.main(["--data_dir", str(tmp_path / "cut"), "--out_dir", str(tmp_path / "x")])


@pytest.mark.parametrize("subtype, dtype", [("PCM_32", "int32"), ("PCM_24", "int32"), ("FLOAT", "float32")])
def test_every_sample_format_is_kept_exactly(tmp_path, subtype, dtype):
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    if dtype == "int32":
        samples = rng.integers(-(2**31), 2**31 - 1, size=RATE, dtype=np.int64).astype(np.int32)
        if subtype == "PCM_24":
            samples &= ~0xFF  # 24 bits, left-aligned as soundfile reads them
    else:
        samples = rng.standard_normal(RATE).astype(np.float32)
    sf.write(tmp_path / "rec.wav", samples, RATE, subtype=subtype)
    (data / "wav.scp").write_text(f"rec {tmp_path}/rec.wav\n")
    (data / "segments").write_text("u rec 0.25 0.5\n")
    assert cut(str(data), str(tmp_path / "cut"))[0] == 1
    got, _ = sf.read(tmp_path / "cut" / "audio" / "u.wav", dtype=dtype)
    assert sf.info(tmp_path / "cut" / "audio" / "u.wav").subtype == subtype
    assert np.array_equal(got, samples[2000:4000])


def test_a_full_disk_stops_the_cut_and_keeps_the_earlier_one(segmented, tmp_path, monkeypatch):
    """A wav that cannot be written is no segment's failure: cutting again on a full disk must
    not list every segment as failed and rewrite the tables of the earlier cut without them."""
    data, _ = segmented
    out = tmp_path / "cut"
    cut(str(data), str(out))
    before = {name: (out / name).read_text() for name in ("wav.scp", "text", "utt2emo", "segments.errors")}

    def full_disk(*args, **kwargs):
        raise sf.LibsndfileError(2, "")  # libsndfile's SF_ERR_SYSTEM: "System error."

    monkeypatch.setattr(sf, "write", full_disk)
    with pytest.raises(
        SystemExit, match=f"ERROR: cannot write {out}/audio/u1.wav \\(System error.*cut again once"
    ):
        cut_segments.main(["--data_dir", str(data), "--out_dir", str(out)])
    assert {name: (out / name).read_text() for name in before} == before


def test_a_recording_that_is_a_fifo_device_or_folder_fails_its_segments_unread(tmp_path):
    """A FIFO would block reading its header for ever: it, a device and a folder are never opened."""
    data = tmp_path / "data"
    data.mkdir()
    sf.write(tmp_path / "rec.wav", np.zeros((RATE, 1), dtype=np.int16) + 100, RATE, subtype="PCM_16")
    os.mkfifo(tmp_path / "fifo.wav")
    recordings = {
        "fifo": tmp_path / "fifo.wav",
        "dev": "/dev/zero",
        "dir": tmp_path,
        "rec": tmp_path / "rec.wav",
    }
    (data / "wav.scp").write_text("".join(f"{r} {p}\n" for r, p in recordings.items()))
    (data / "segments").write_text("".join(f"u_{r} {r} 0 0.5\n" for r in recordings))

    def blocked(signum, frame):
        raise AssertionError("cut_segments blocked on opening the FIFO")

    previous = signal.signal(signal.SIGALRM, blocked)
    signal.alarm(20)
    try:
        written, failures = cut(str(data), str(tmp_path / "cut"))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert written == 1
    reasons = {f.utt: f.reason for f in failures}
    for rec in ("fifo", "dev", "dir"):
        assert reasons[f"u_{rec}"] == (
            f"recording {recordings[rec]} cannot be read (not a regular file: a directory, FIFO or "
            "device, not opened)"
        )


def test_a_recording_whose_header_claims_billions_of_frames_is_read_by_what_it_holds(tmp_path):
    """Not ``sf.read``'s 512 GB allocation of the claimed frames first (a MemoryError traceback)."""
    data = tmp_path / "data"
    data.mkdir()
    samples = (np.arange(RATE) % 200 + 100).astype(np.int16)
    flac_claiming_billions_of_frames(tmp_path / "rec.flac", samples, RATE)
    (data / "wav.scp").write_text(f"rec {tmp_path}/rec.flac\n")
    (data / "segments").write_text("whole rec 0 -1\nhalf rec 0 0.5\n")
    written, failures = cut(str(data), str(tmp_path / "cut"))
    assert written == 1
    got, _ = sf.read(tmp_path / "cut" / "audio" / "half.wav", dtype="int16")
    assert np.array_equal(got, samples[: RATE // 2])
    assert [f.utt for f in failures] == ["whole"] and failures[0].reason.startswith(
        f"cannot cut {tmp_path}/rec.flac: "
    )


def test_an_audio_dir_of_its_own_cuts_and_never_replaces_a_recording(tmp_path):
    """--audio_dir elsewhere: out_dir is made too (its wav.scp was a 'cannot write' error). A
    segment named as its recording (Kaldi's one-segment recordings), cut into the recordings'
    folder, replaced the recording, and the next segment of it was cut from what was left
    (0 samples here); now the cut stops first, naming both, and nothing is written."""
    data, recordings = tmp_path / "data", tmp_path / "recordings"
    data.mkdir()
    recordings.mkdir()
    samples = (np.arange(RATE) % 200 + 100).astype(np.int16)
    sf.write(recordings / "rec1.wav", samples, RATE, subtype="PCM_16")
    (data / "wav.scp").write_text(f"rec1 {recordings}/rec1.wav\n")
    (data / "segments").write_text("c1 rec1 0 0.5\nc2 rec1 0.5 1.0\n")
    assert cut(str(data), str(tmp_path / "cut"), str(tmp_path / "wavs")) == (2, [])
    assert (tmp_path / "cut" / "wav.scp").read_text() == "".join(
        f"c{i} {tmp_path}/wavs/c{i}.wav\n" for i in (1, 2)
    )

    (data / "segments").write_text("rec1 rec1 0 0.5\nc2 rec1 0.5 1.0\n")
    before = (recordings / "rec1.wav").read_bytes()
    with pytest.raises(DataPrepError, match=r"rec1\.wav, segment 'rec1' \(segments line 1\), would replace"):
        cut(str(data), str(tmp_path / "cut2"), str(recordings))
    assert (recordings / "rec1.wav").read_bytes() == before and sorted(os.listdir(recordings)) == ["rec1.wav"]
    assert not (tmp_path / "cut2").exists()
