"""crab.datadir: the one Kaldi-table reader, data-dir writer and fold validator."""

import json
import os
import subprocess
import sys

import pytest

from crab.bin import make_manifest
from crab.data import load_manifest
from crab.datadir import (
    WRITING,
    check_fold,
    parse_wav_scp,
    read_data_dir,
    read_table,
    read_texts,
    read_transcripts,
    write_data_dir,
)
from crab.dataprep import DataPrepError
from tests.conftest import ROOT, waiting_for_lock

OLD = {"wav.scp": {"a": "/db/a.wav", "b": "/db/b.wav"}, "utt2spk": {"a": "s1", "b": "s2"}}
OLD_TABLES = {**OLD, "utt2emo": {"a": "sad", "b": "happy"}, "text": {"a": "one", "b": "two"}}
NEW_TABLES = {
    "wav.scp": {"a": "/db/a.wav", "c": "/db/c.wav"},
    "utt2spk": {"a": "s1", "c": "s3"},
    "utt2emo": {"a": "angry", "c": "sad"},
    "text": {"a": "uno", "c": "tres"},
}


def contents(folder):
    return {name: (folder / name).read_bytes() for name in os.listdir(folder)}


def test_writer_sorts_by_utterance_and_removes_an_absent_table(tmp_path):
    (tmp_path / "wav.scp").write_text("old\n")
    write_data_dir(
        tmp_path, {"text": {"b": "two words", "a": ""}, "utt2spk": {"b": "s2", "a": "s1"}, "wav.scp": None}
    )
    assert (tmp_path / "text").read_text(encoding="utf-8") == "a\nb two words\n"
    assert (tmp_path / "utt2spk").read_text(encoding="utf-8") == "a s1\nb s2\n"
    assert not (tmp_path / "wav.scp").exists()
    assert read_table(str(tmp_path / "text")) == {"a": "", "b": "two words"}
    # no temporary file, no marker; the writers' lock (crab.locking) stays, unlocked
    assert sorted(os.listdir(tmp_path)) == [".lock", "text", "utt2spk"]


@pytest.mark.parametrize(
    "table, rows, message",
    [
        ("wav.scp", {"spk1 sad 0": "/db/a.wav"}, r"/wav.scp: utterance id 'spk1 sad 0' is empty or holds"),
        ("utt2spk", {"": "s1"}, r"/utt2spk: utterance id '' is empty or holds whitespace"),
        ("text", {"a": "line one,\nline two"}, r"/text: the value of utterance 'a' holds a line break"),
    ],
)
def test_writer_refuses_what_would_not_read_back_and_writes_nothing(tmp_path, table, rows, message):
    # a corpus CSV's id with spaces, or a quoted transcript over two lines, written as they
    # are, read back at stage 3 as other utterances ('spk1' with audio 'sad 0 /db/a.wav';
    # 'line' in text and not in wav.scp), far from their cause
    write_data_dir(tmp_path, OLD_TABLES)
    before = contents(tmp_path)
    with pytest.raises(DataPrepError, match=message):
        write_data_dir(tmp_path, {**OLD_TABLES, table: rows})
    assert contents(tmp_path) == before


class Interrupted(dict):
    """A table whose writing is interrupted (Ctrl-C)."""

    def __iter__(self):
        raise KeyboardInterrupt


def test_a_writer_stopped_before_its_renames_leaves_the_old_tables(tmp_path):
    write_data_dir(tmp_path, OLD_TABLES)
    before = contents(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        write_data_dir(tmp_path, {**NEW_TABLES, "utt2spk": Interrupted(NEW_TABLES["utt2spk"])})
    assert contents(tmp_path) == before  # every old table, and nothing else
    assert list(read_data_dir(str(tmp_path))) == ["a", "b"]


def test_a_writer_killed_among_its_renames_leaves_a_directory_stage_3_refuses(tmp_path, monkeypatch):
    write_data_dir(tmp_path, OLD_TABLES)
    real_replace = os.replace

    def replace(src, dst):
        if os.path.basename(dst) == "utt2emo":
            raise SystemExit("killed")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(SystemExit):
        write_data_dir(tmp_path, {**OLD_TABLES, "utt2emo": {"a": "angry", "b": "sad"}})
    monkeypatch.undo()
    # the same utterances in every table: only the marker tells the new labels from the old
    with pytest.raises(DataPrepError, match=r"data prep stopped while writing its tables \(\.writing"):
        read_data_dir(str(tmp_path))
    write_data_dir(tmp_path, NEW_TABLES)  # run again
    assert read_data_dir(str(tmp_path))["c"]["emo"] == "sad"


def test_two_writers_of_a_data_directory_take_turns(tmp_path, caplog):
    """Stage 1 of two experiments at once: the second waits for the first (which would
    otherwise remove the other's marker under it), then writes."""
    write_data_dir(tmp_path, OLD_TABLES)
    with waiting_for_lock(tmp_path / ".lock", lambda: write_data_dir(tmp_path, NEW_TABLES), caplog):
        assert list(read_data_dir(str(tmp_path))) == ["a", "b"]  # not yet written
    assert list(read_data_dir(str(tmp_path))) == ["a", "c"]


def test_stage_3_waits_for_a_writer_of_its_data_directory_still_running(tmp_path, caplog):
    """A marker of a writer that runs (it holds the lock) is waited for, not taken for a killed one's."""
    write_data_dir(tmp_path, OLD_TABLES)
    marker = tmp_path / WRITING
    marker.write_text("")
    with waiting_for_lock(tmp_path / ".lock", lambda: read_data_dir(str(tmp_path)), caplog) as read:
        marker.unlink()  # the writer is done
    assert list(read["result"]) == ["a", "b"]


@pytest.mark.parametrize(
    "table, rows, message",
    [
        ("utt2emo", {"a": "sad"}, r"/utt2emo: no entry for utterance 'b'"),
        ("utt2emo", {**OLD_TABLES["utt2emo"], "c": "sad"}, r"/utt2emo: utterances not in wav.scp, e.g. 'c'"),
        ("text", {**OLD_TABLES["text"], "c": "tres"}, r"/text: utterances not in wav.scp, e.g. 'c'"),
    ],
)
def test_stage_3_refuses_tables_of_other_utterances_whatever_the_policy(tmp_path, table, rows, message):
    write_data_dir(tmp_path / "train", {**OLD_TABLES, table: rows})
    argv = ["--data_dir", str(tmp_path / "train"), "--data_root", "/db", "--classes", "sad,happy"]
    with pytest.raises(SystemExit, match=message):
        make_manifest.main([*argv, "--out", str(tmp_path / "train.json"), "--policy", "skip"])


@pytest.mark.parametrize(
    "absent, text_source, message",
    [
        ("utt2spk", "gold", r"/train: missing utt2spk"),
        ("utt2emo", "gold", r"/train: missing utt2emo"),
        ("text.asr", "asr", r"missing .*/train/text\.asr: run the transcription stage \(--asr_model\) first"),
    ],
)
def test_stage_3_names_a_table_the_data_directory_lacks(tmp_path, absent, text_source, message):
    """Not a manifest without speakers, or with empty transcripts where stage 2 was not run."""
    tables = {**OLD_TABLES, "text.asr": OLD_TABLES["text"], absent: None}
    write_data_dir(tmp_path / "train", tables)
    argv = ["--data_dir", str(tmp_path / "train"), "--data_root", "/db", "--classes", "sad,happy"]
    with pytest.raises(SystemExit, match=message):
        make_manifest.main([*argv, "--out", str(tmp_path / "train.json"), "--text_source", text_source])
    assert not (tmp_path / "train.json").exists()


def test_stage_3_sends_a_segmented_data_directory_to_be_cut(tmp_path):
    write_data_dir(tmp_path / "dev", {**OLD_TABLES, "segments": {"a": "rec 0 1", "b": "rec 1 2"}})
    argv = ["--data_dir", str(tmp_path / "dev"), "--data_root", "/db", "--classes", "sad,happy"]
    message = (
        rf"{tmp_path}/dev/segments: its utterances are spans.*crab.bin.cut_segments --data_dir {tmp_path}/dev"
    )
    with pytest.raises(SystemExit, match=message):
        make_manifest.main([*argv, "--out", str(tmp_path / "dev.json")])


def test_one_reader_many_policies(tmp_path):
    table = tmp_path / "t"
    table.write_bytes(b"\xef\xbb\xbfu1 a.wav\n\nu2  b c \nu1 again\nu3 cmd |\nu4\n")
    with pytest.raises(DataPrepError, match=r"t:4: duplicate utterance id 'u1'"):
        read_table(str(table))
    utterances, failures = parse_wav_scp(str(table))
    assert [(u.utt, u.path, u.line) for u in utterances] == [("u1", "a.wav", 1), ("u2", "b c", 3)]
    assert [(f.utt, f.line) for f in failures] == [("u1", 4), ("u3", 5), ("u4", 6)]
    assert read_texts(str(table))["u1"] is None and read_texts(str(table))["u2"] == "b c"
    table.write_bytes(b"u1 caf\xc3\xa9\nu2 caf\xe9\n")
    with pytest.raises(DataPrepError, match=r"t:2:7: byte 0xe9 is not UTF-8"):
        read_table(str(table))
    assert read_transcripts(str(table)) == {"u1": "café"}  # the damaged last line: an interrupted write
    table.write_bytes(b"u1 caf\xe9\nu2 ok\n")
    with pytest.raises(DataPrepError, match=r"t:1: not UTF-8 text"):
        read_transcripts(str(table))
    table.write_bytes(b"u1 ok\nu2 cut")
    assert read_transcripts(str(table)) == {"u1": "ok"}


def test_fold_validator():
    fold = {"train": {"a": "s1", "b": "s2"}, "valid": {"c": "s3"}, "test": {"d": "s4"}}
    assert check_fold(fold, "abcd") == {}
    with pytest.raises(DataPrepError, match=r"f: speaker\(s\) \['s1'\] in both train and test"):
        check_fold({**fold, "test": {"d": "s1"}}, name="f")
    assert check_fold({**fold, "test": {"d": "s1"}}, speaker_independent=False) == {("train", "test"): {"s1"}}
    with pytest.raises(DataPrepError, match=r"1 utterance\(s\) in both train and valid, e.g. 'a'"):
        check_fold({**fold, "valid": {"a": "s3"}})
    with pytest.raises(DataPrepError, match=r"1 utterance\(s\) in no split, e.g. 'e'"):
        check_fold(fold, "abcde")
    with pytest.raises(DataPrepError, match=r"1 utterance\(s\) in a split but not in the corpus, e.g. 'd'"):
        check_fold(fold, "abc")


def test_an_utterance_without_a_speaker_is_an_error_naming_the_file_and_line(tmp_path):
    """A utt2spk line with the utterance id alone (or a trailing space) was the speaker '': one
    speaker of every utterance without one, in every split, which the fold check counted as a
    speaker shared by the splits, and the manifests kept."""
    for split in ("train", "test"):
        write_data_dir(
            tmp_path / split,
            {**OLD_TABLES, "wav.scp": {"a": f"/db/{split}_a.wav", "b": f"/db/{split}_b.wav"}},
        )
    message = f"{tmp_path}/test/utt2spk:2: utterance 'b' has no speaker: give it one"
    for line in ("b", "b "):
        (tmp_path / "test" / "utt2spk").write_text(f"a s1\n{line}\n")
        with pytest.raises(DataPrepError, match=f"^{message}"):
            read_data_dir(str(tmp_path / "test"))

    def run(module, *args):
        env = dict(os.environ, PYTHONPATH=ROOT)
        return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env)

    argv = ["--data_dir", str(tmp_path / "test"), "--data_root", "/db", "--classes", "sad,happy"]
    for result in (
        run("crab.bin.make_manifest", *argv, "--out", str(tmp_path / "test.json"), "--policy", "skip"),
        run("crab.bin.check_fold", "--fold", "f1", str(tmp_path / "train"), str(tmp_path / "test")),
    ):
        assert result.returncode == 1 and result.stderr.startswith(f"ERROR: {message}"), result.stderr
        assert "Traceback" not in result.stderr and "share" not in result.stdout
    assert not (tmp_path / "test.json").exists()
    # a recipe's data prep checks its folds with the speakers of its corpus
    with pytest.raises(DataPrepError, match="^f: utterance 'd' of test has no speaker: give it one"):
        check_fold({"train": {"a": "s1"}, "test": {"c": "s2", "d": " "}}, name="f", speaker_independent=False)


def test_a_hand_made_manifest_may_leave_the_speaker_empty(tmp_path):
    """Training reads no speaker: a manifest's "spk" need only be there."""
    manifest = tmp_path / "train.json"
    entry = {"wav": "{data_root}/a.wav", "duration": 1.0, "text": "one", "emo": "sad", "spk": ""}
    manifest.write_text(json.dumps({"a": entry}))
    assert load_manifest(str(manifest), "/db")["a"]["spk"] == ""


def test_stage_3_fold_check_refuses_an_utterance_or_a_recording_in_two_splits(tmp_path, capsys):
    from crab.bin import check_fold as check_fold_cli

    def split(name, rows):  # rows: (utt, speaker, audio)
        write_data_dir(
            tmp_path / name,
            {
                "wav.scp": {u: a for u, _, a in rows},
                "utt2spk": {u: s for u, s, _ in rows},
                "utt2emo": {u: "sad" for u, _, _ in rows},
            },
        )
        return str(tmp_path / name)

    def run(*dirs):
        check_fold_cli.main(["--fold", "f1", *dirs])

    train = split("train", [("a", "s1", "/db/a.wav"), ("b", "s2", "/db/b.wav")])
    run(train, split("test", [("c", "s2", "/db/c.wav")]))  # a shared speaker is allowed, and said
    assert "f1: train and test share 1 speaker(s) (not speaker-independent)" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="f1: 1 utterance\\(s\\) in both train and test, e.g. 'b'"):
        run(train, split("test", [("b", "s2", "/db/b.wav")]))
    with pytest.raises(SystemExit, match="f1: /db/a.wav is the audio of 'a' in train and of 'x' in test"):
        run(train, split("test", [("x", "s9", "/db/./a.wav")]))
