"""crab-infer, crab.bin.transcribe and crab.bin.package keep what they have written:
results of other wav.scp files, resumes only into results of the same model and
transcripts, never an input as --out, torn lines, transient failures, renames."""

import errno
import json
import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest
import soundfile as sf
import torch

from crab import asr, batch_inference, packaging
from crab.batch_inference import InferenceJob, classify_wav_scp
from tests.conftest import ROOT, waiting_for_lock
from tests.test_inference import cli, data, package, trained, write_inputs  # noqa: F401 - fixtures
from tests.test_transcribe import FakeModel, Killed, make_data_dir, read_lines
from tests.test_transcribe import run as run_transcribe


def gold(model_dir, tmp_path, out, *extra, wav_scp="wav.scp", text="text"):
    return cli(
        "--model",
        model_dir,
        "--wav_scp",
        tmp_path / wav_scp,
        "--text",
        tmp_path / text,
        "--text_mode",
        "gold",
        "--out",
        out,
        "--skip_errors",
        *extra,
    )


def split_wav_scp(tmp_path):
    lines = (tmp_path / "wav.scp").read_text().splitlines()
    (tmp_path / "part1.scp").write_text("\n".join(lines[:2]) + "\n")  # good_a, good_s
    (tmp_path / "part2.scp").write_text(lines[4] + "\n")  # stereo


# ---------------------------------------------------------------- A: results of other wav.scp files


def test_results_of_another_wav_scp_are_kept(trained, data, tmp_path, capsys):  # noqa: F811
    model_dir = trained[2]
    write_inputs(tmp_path, data)
    split_wav_scp(tmp_path)
    out = tmp_path / "r.jsonl"
    assert gold(model_dir, tmp_path, out, wav_scp="part1.scp") == 0
    part1 = out.read_text()
    assert gold(model_dir, tmp_path, out, wav_scp="part2.scp") == 0
    text = out.read_text()
    assert text.startswith(part1)  # the old lines in place, the new ones after them
    assert [json.loads(line)["id"] for line in text.splitlines()] == ["good_a", "good_s", "stereo"]
    capsys.readouterr()
    assert gold(model_dir, tmp_path, out, wav_scp="part1.scp") == 0  # nothing to do again
    assert "0 now, 2 before" in capsys.readouterr().out
    assert out.read_text() == text


# ---------------------------------------------------------------- B: the resume identity


def test_resume_identity_covers_model_and_text_content(trained, data, tmp_path, caplog):  # noqa: F811
    model_dir = tmp_path / "model"
    shutil.copytree(trained[2], model_dir)
    write_inputs(tmp_path, data)
    out = tmp_path / "r.tsv"
    assert gold(model_dir, tmp_path, out) == 0
    results = out.read_text()
    marker = json.loads((tmp_path / "r.tsv.model").read_text())
    assert len(marker["model_sha256"]) == 64 and len(marker["text_sha256"]) == 64
    assert not [name for name in os.listdir(tmp_path) if ".tmp" in name]  # written by temp + rename

    # the same content under another name: resumed, the new name logged
    shutil.copy(tmp_path / "text", tmp_path / "text2")
    caplog.set_level("INFO")
    assert gold(model_dir, tmp_path, out, text="text2") == 0
    assert out.read_text() == results
    assert f'the --text file changed ("{tmp_path}/text" then, "{tmp_path}/text2" now)' in caplog.text
    assert json.loads((tmp_path / "r.tsv.model").read_text())["text"] == str(tmp_path / "text2")
    assert gold(model_dir, tmp_path, out) == 0

    # the model re-packaged in place (here: a changed weight and a changed yaml)
    state = torch.load(model_dir / "model.ckpt", weights_only=True)
    key = next(iter(state))
    state[key] = state[key] + 1
    torch.save(state, model_dir / "model.ckpt")
    assert "the model's content" in gold(model_dir, tmp_path, out)
    shutil.copy(trained[2] / "model.ckpt", model_dir / "model.ckpt")
    with open(model_dir / "hyperparams.yaml", "a") as f:
        f.write("# repackaged\n")
    assert "the model's content" in gold(model_dir, tmp_path, out)
    shutil.copy(trained[2] / "hyperparams.yaml", model_dir / "hyperparams.yaml")

    assert gold(model_dir, tmp_path, out) == 0  # the same again: resumes
    assert out.read_text() == results
    # a damaged marker: a clear error, not a crash
    (tmp_path / "r.tsv.model").write_text('{"model": ')
    assert "missing or damaged" in gold(model_dir, tmp_path, out)


def test_a_run_killed_mid_way_resumes_to_an_uninterrupted_runs_file(trained, data, tmp_path, monkeypatch):  # noqa: F811
    """The results are appended batch by batch, by length; the run resumed after a kill puts
    them in wav.scp order, as an uninterrupted run does (they used to stay first, by length)."""
    write_inputs(tmp_path, data)
    whole, out = tmp_path / "whole.tsv", tmp_path / "r.tsv"
    assert gold(trained[2], tmp_path, whole, "--batch_size", "1") == 0
    real_append, appended = batch_inference.append_lines, []

    def killed_after_two_results(file, lines, sync=True):
        real_append(file, lines, sync)
        if file.name == str(out):
            appended.append(lines)
            if len(appended) == 2:
                raise Killed

    monkeypatch.setattr(batch_inference, "append_lines", killed_after_two_results)
    with pytest.raises(Killed):
        gold(trained[2], tmp_path, out, "--batch_size", "1")
    monkeypatch.setattr(batch_inference, "append_lines", real_append)
    assert gold(trained[2], tmp_path, out, "--batch_size", "1") == 0
    assert out.read_text() == whole.read_text()
    assert (tmp_path / "r.tsv.sources").read_text() == (tmp_path / "whole.tsv.sources").read_text()


@pytest.mark.parametrize("fmt", ["tsv", "jsonl"])
def test_a_run_killed_before_recording_its_settings_resumes(trained, data, tmp_path, fmt):  # noqa: F811
    """A run killed after making its results file (a tsv's header) and before writing
    <out>.model left no result to keep apart from others: the same command goes on."""
    model_dir = trained[2]
    write_inputs(tmp_path, data)
    out = tmp_path / f"r.{fmt}"
    assert gold(model_dir, tmp_path, out) == 0
    whole = out.read_text()
    out.write_text(whole.splitlines(keepends=True)[0] if fmt == "tsv" else "")
    (tmp_path / f"r.{fmt}.model").unlink()
    assert gold(model_dir, tmp_path, out) == 0
    assert out.read_text() == whole


@pytest.mark.parametrize("fmt", ["tsv", "jsonl"])
def test_a_result_whose_transcript_changed_is_redone(trained, data, tmp_path, fmt):  # noqa: F811
    """A transcript of --text corrected after a run: resuming redoes that utterance alone, and
    says so (the resume used to stop, --overwrite its only way on: everything classified again)."""
    write_inputs(tmp_path, data)
    text, out = tmp_path / "text", tmp_path / f"r.{fmt}"
    options = {
        "model": trained[2],
        "wav_scp": tmp_path / "wav.scp",
        "out": out,
        "text_mode": "gold",
        "text": text,
    }
    job = InferenceJob(**{key: str(value) for key, value in options.items()}, device="cpu")
    assert classify_wav_scp(job).now == 3  # good_a, good_s, stereo
    before = out.read_text().splitlines()

    text.write_text(text.read_text().replace("I feel angry today", "I feel furious today"))
    argv = [f"--{key}={value}" for key, value in options.items()]
    result = subprocess.run(
        [sys.executable, "-m", "crab.bin.infer", *argv, "--device=cpu", "--skip_errors"],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )
    assert result.returncode == 0, result.stderr
    assert "(1 now, 2 before); 1 redone: their transcript in --text changed" in result.stdout
    assert "the --text file's content changed: the results whose transcript changed are classified again" in (
        result.stderr
    )
    after = out.read_text().splitlines()
    redone = [n for n, line in enumerate(after) if "good_a" in line and "I feel furious today" in line]
    assert redone == [n for n, line in enumerate(before) if "good_a" in line]  # in its wav.scp place
    assert [line for n, line in enumerate(after) if n not in redone] == [  # the others kept
        line for line in before if "angry today" not in line
    ]

    # a change that cleaning undoes (an ESC, a double space) is the same transcript; a line gone
    # from --text leaves its result, as a result whose audio is gone
    text.write_text(text.read_text().replace("I feel sad today", "I feel  sad\x1b today"))
    tally = classify_wav_scp(job)
    assert (tally.before, tally.now, tally.text_changed) == (3, 0, 0)
    text.write_text(
        "".join(line for line in text.read_text().splitlines(True) if not line.startswith("good_a "))
    )
    tally = classify_wav_scp(job)
    assert (tally.before, tally.now, tally.text_changed) == (3, 0, 0)
    assert out.read_text().splitlines() == after


# ---------------------------------------------------------------- D: --out is never an input


def test_out_may_not_be_an_input_or_a_directory(trained, data, tmp_path):  # noqa: F811
    model_dir = trained[2]
    write_inputs(tmp_path, data)
    before = {name: (tmp_path / name).read_bytes() for name in ("wav.scp", "text")}
    model_before = (model_dir / "hyperparams.yaml").read_bytes()
    os.symlink(tmp_path / "text", tmp_path / "link.tsv")
    for out in (
        tmp_path / "wav.scp",
        tmp_path / "text",
        tmp_path / "link.tsv",
        model_dir / "hyperparams.yaml",
        model_dir / "new.tsv",
    ):
        message = gold(model_dir, tmp_path, out, "--overwrite")
        assert isinstance(message, str) and ("input" in message or "inside --model" in message), message
    assert "is a directory" in gold(model_dir, tmp_path, tmp_path, "--overwrite")
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    assert (model_dir / "hyperparams.yaml").read_bytes() == model_before
    assert not (model_dir / "new.tsv").exists()

    # --overwrite replaces the results by a rename: never a delete first
    out = tmp_path / "r.tsv"
    assert gold(model_dir, tmp_path, out) == 0
    results = out.read_text()
    removed = []
    real_remove = os.remove
    try:
        os.remove = os.unlink = lambda path, *a, **k: (removed.append(str(path)), real_remove(path, *a, **k))
        assert gold(model_dir, tmp_path, out, "--overwrite") == 0
    finally:
        os.remove = os.unlink = real_remove
    assert out.read_text() == results and not [p for p in removed if p.startswith(str(out))]


# ---------------------------------------------------------------- E: torn lines


def test_a_line_cut_inside_a_utf8_character_is_redone(trained, data, tmp_path, capsys):  # noqa: F811
    model_dir = trained[2]
    write_inputs(tmp_path, data)
    text = (tmp_path / "text").read_text().replace("today", "aujourd’hui é")
    (tmp_path / "text").write_text(text, encoding="utf-8")
    out = tmp_path / "r.jsonl"
    assert gold(model_dir, tmp_path, out) == 0
    complete = out.read_bytes()
    lines = complete.splitlines(keepends=True)
    cut = lines[2].index("é".encode()) + 1  # inside the two bytes of é
    out.write_bytes(lines[0] + lines[1] + lines[2][:cut])
    capsys.readouterr()
    assert gold(model_dir, tmp_path, out) == 0
    assert "1 now, 2 before" in capsys.readouterr().out
    assert out.read_bytes() == complete
    # cut inside a character and then a newline (the last line): dropped too
    out.write_bytes(lines[0] + lines[1] + lines[2][:cut] + b"\n")
    assert gold(model_dir, tmp_path, out) == 0
    assert out.read_bytes() == complete
    # a damaged line before the last: an error naming the file and line, nothing thrown away
    damaged = lines[0] + lines[1][: lines[1].index("é".encode()) + 1] + b"\n" + lines[2]
    out.write_bytes(damaged)
    message = gold(model_dir, tmp_path, out)
    assert f"{out}:2: not UTF-8" in message and "\n" not in message
    assert out.read_bytes() == damaged


def test_transcripts_cut_inside_a_utf8_character(tmp_path, monkeypatch):
    data_dir, utts = make_data_dir(tmp_path, n=3)
    monkeypatch.setattr(asr, "load_transcriber", FakeModel(texts={0: "é", 1: "é", 2: "é"}).load)
    run_transcribe(data_dir, "fake")
    complete = (data_dir / "text.asr").read_bytes()
    lines = complete.splitlines(keepends=True)
    (data_dir / "text.asr").write_bytes(lines[0] + lines[1][:-2])  # cut inside the é of the second
    fake = FakeModel(texts={0: "é", 1: "é"})
    monkeypatch.setattr(asr, "load_transcriber", fake.load)
    run_transcribe(data_dir, "fake")
    assert fake.batches == [2] and (data_dir / "text.asr").read_bytes() == complete
    (data_dir / "text.asr").write_bytes(lines[0][:-2] + b"\n" + lines[1] + lines[2])
    with pytest.raises(SystemExit, match=r"text.asr:1: not UTF-8"):
        run_transcribe(data_dir, "fake")


def test_a_full_disk_stops_the_run_naming_the_results_file(trained, data, tmp_path, monkeypatch):  # noqa: F811
    """A results file that cannot be written is no utterance's failure (with --skip_errors, one the
    run would have gone on past, classifying the rest for nothing): the run stops naming it, and
    the same command, once there is room, classifies the rest."""
    model_dir = trained[2]
    write_inputs(tmp_path, data)
    out = tmp_path / "r.tsv"
    assert gold(model_dir, tmp_path, tmp_path / "whole.tsv") == 0
    real_fsync = os.fsync

    def full_disk(fd):  # a network file system reports a full disk when the data is flushed
        if os.readlink(f"/proc/self/fd/{fd}") == str(out):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_disk)
    message = gold(model_dir, tmp_path, out)
    assert isinstance(message, str) and f"cannot write {out} (No space left on device)" in message
    assert "\n" not in message
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert gold(model_dir, tmp_path, out) == 0
    assert sorted(out.read_text().splitlines()) == sorted((tmp_path / "whole.tsv").read_text().splitlines())


# ---------------------------------------------------------------- F: smaller ones


def test_transient_transcription_failures_are_not_recorded(tmp_path, monkeypatch, capsys):
    data_dir, utts = make_data_dir(tmp_path, n=4)
    wavs = dict(line.split() for line in (data_dir / "wav.scp").read_text().splitlines())
    good = open(wavs[utts[1]], "rb").read()
    open(wavs[utts[1]], "wb").write(b"not audio at all")  # unreadable (e.g. still being copied)

    def flaky(args):  # fails on any batch holding utts[2]'s audio (of 0.25 s), else transcribes
        def transcriber(audios):
            if any(len(a) == 4000 for a in audios):
                raise RuntimeError("CUDA out of memory")
            return ["words"] * len(audios)

        return transcriber

    sf.write(wavs[utts[2]], (0.1 * np.random.default_rng(1).standard_normal(4000)).astype("float32"), 16000)
    monkeypatch.setattr(asr, "load_transcriber", flaky)
    with pytest.raises(SystemExit, match="the model failed on 1 utterance"):
        run_transcribe(data_dir, "fake", "--batch_size", "4")
    assert [line[0] for line in read_lines(data_dir / "text.asr")] == [
        utts[0],
        utts[3],
    ]  # the others one by one
    failed = (data_dir / "text.asr.failed").read_text()
    assert (
        f"{utts[1]}\tunreadable audio" in failed and f"{utts[2]}\tRuntimeError: CUDA out of memory" in failed
    )
    assert "2 failed" in capsys.readouterr().out
    # the next run tries exactly the failed ones again
    open(wavs[utts[1]], "wb").write(good)
    fake = FakeModel(texts={0: "second", 1: "third"})
    monkeypatch.setattr(asr, "load_transcriber", fake.load)
    run_transcribe(data_dir, "fake", "--batch_size", "4")
    assert fake.batches == [2]
    assert read_lines(data_dir / "text.asr") == [
        [utts[0], "words"],
        [utts[1], "second"],
        [utts[2], "third"],
        [utts[3], "words"],
    ]
    assert not (data_dir / "text.asr.failed").exists()


def test_tsv_text_is_cleaned_and_empty_wav_scp_is_an_error(trained, data, tmp_path):  # noqa: F811
    model_dir = trained[2]
    write_inputs(tmp_path, data)
    (tmp_path / "text").write_text("good_a I feel\x1b[31m angry\x00 today\n", encoding="utf-8")
    (tmp_path / "one.scp").write_text((tmp_path / "wav.scp").read_text().splitlines()[0] + "\n")
    out = tmp_path / "r.tsv"
    assert gold(model_dir, tmp_path, out, wav_scp="one.scp") == 0
    row = out.read_text().splitlines()[1].split("\t")
    assert (
        row[-1] == "I feel[31m angry today"
        and "\x1b" not in out.read_text()
        and "\x00" not in out.read_text()
    )

    (tmp_path / "empty.scp").write_text("")
    message = gold(model_dir, tmp_path, tmp_path / "e.tsv", wav_scp="empty.scp")
    assert isinstance(message, str) and "empty.scp" in message and "no utterances" in message
    assert not (tmp_path / "e.tsv").exists()


def test_package_is_renamed_over_the_old_one(trained, data, tmp_path, monkeypatch):  # noqa: F811
    _, _, _, run_dir = trained
    model_dir = tmp_path / "model"
    package(data, run_dir, model_dir)
    before = (model_dir / "model.ckpt").read_bytes()
    real_replace = os.replace

    def failing(src, dst):  # the new package cannot be put in place (disk full, ...)
        if str(src).endswith("model.tmp"):
            raise OSError("No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError, match="No space left"):
        package(data, run_dir, model_dir)
    monkeypatch.setattr(os, "replace", real_replace)
    assert (model_dir / "model.ckpt").read_bytes() == before  # the old package is still there
    assert (model_dir / "metadata.json").is_file() and not os.path.exists(f"{model_dir}.old")
    package(data, run_dir, model_dir)  # and packaging again works
    assert (model_dir / "model.ckpt").read_bytes() == before and not os.path.exists(f"{model_dir}.old")


def test_a_package_that_fails_its_check_leaves_the_old_one_in_place(trained, data, tmp_path, monkeypatch):  # noqa: F811
    """A new package that does not reproduce the trained model never takes the old one's place."""
    _, _, _, run_dir = trained
    model_dir = tmp_path / "model"
    package(data, run_dir, model_dir)
    before = os.stat(model_dir / "model.ckpt").st_ino

    def does_not_reproduce(checked, *args):
        raise packaging.PackageError(f"the packaged model in {checked} does not reproduce the trained one")

    monkeypatch.setattr(packaging, "check_package", does_not_reproduce)
    with pytest.raises(SystemExit, match="does not reproduce"):
        package(data, run_dir, model_dir)
    assert os.stat(model_dir / "model.ckpt").st_ino == before and not os.path.exists(f"{model_dir}.old")


def test_a_package_killed_while_removing_the_old_one_is_packaged_again(trained, data, tmp_path, monkeypatch):  # noqa: F811
    """A kill while the old package is removed (model.old, after the new one took its place)
    leaves part of it, metadata.json gone or not: packaging again goes on (it used to stop,
    taking model.old for a folder that is not a package)."""
    _, _, _, run_dir = trained
    model_dir = tmp_path / "model"
    package(data, run_dir, model_dir)
    before = (model_dir / "model.ckpt").read_bytes()
    real_rmtree = shutil.rmtree

    def killed_while_removing(path, *args, **kwargs):
        if str(path).endswith("model.old"):
            os.remove(os.path.join(path, "metadata.json"))
            raise Killed
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", killed_while_removing)
    with pytest.raises(Killed):
        package(data, run_dir, model_dir)
    monkeypatch.setattr(shutil, "rmtree", real_rmtree)
    package(data, run_dir, model_dir)
    assert (model_dir / "model.ckpt").read_bytes() == before and not os.path.exists(f"{model_dir}.old")


def test_a_folder_named_like_the_old_package_that_is_not_one_is_kept(trained, data, tmp_path):  # noqa: F811
    """model.old is where packaging puts the old package aside: a folder of the user's of that name
    (no package, nor a part of one) is refused, never removed."""
    _, _, _, run_dir = trained
    model_dir = tmp_path / "model"
    package(data, run_dir, model_dir)
    (tmp_path / "model.old").mkdir()
    (tmp_path / "model.old" / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="model.old exists and is not a Crab package"):
        package(data, run_dir, model_dir)
    assert (tmp_path / "model.old" / "notes.txt").read_text() == "mine"
    assert (model_dir / "metadata.json").is_file()


def test_two_packagings_of_one_model_take_turns(trained, data, tmp_path, caplog):  # noqa: F811
    """Stage 8 run twice at once: the second waits for the first (they share model.tmp, which
    it would otherwise remove under the first), then writes the package again."""
    _, _, _, run_dir = trained
    model_dir = tmp_path / "model"
    with waiting_for_lock(f"{model_dir}.lock", lambda: package(data, run_dir, model_dir), caplog):
        assert sorted(os.listdir(tmp_path)) == ["model.lock"]  # nothing begun
    assert (model_dir / "metadata.json").is_file()
    assert sorted(os.listdir(tmp_path)) == ["model", "model.lock"]


def test_a_package_written_on_a_full_disk_is_an_error_naming_it(trained, data, tmp_path, monkeypatch):  # noqa: F811
    _, _, _, run_dir = trained
    model_dir = tmp_path / "model"
    package(data, run_dir, model_dir)
    before = (model_dir / "model.ckpt").read_bytes()
    real_save = torch.save

    def full_disk(obj, path, *args, **kwargs):
        if str(path).endswith("model.ckpt"):
            with open(path, "wb") as f:
                f.write(before[:100])
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 449856 vs 449808")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(SystemExit, match=f"cannot write the package {model_dir} .*a full disk or quota"):
        package(data, run_dir, model_dir)
    assert (model_dir / "model.ckpt").read_bytes() == before
    # no partial package left taking the space (the lock stays, unlocked)
    assert sorted(os.listdir(tmp_path)) == ["model", "model.lock"]
    # an error that is not a refused write is its own, with its traceback
    monkeypatch.setattr(
        torch, "save", lambda *args, **kwargs: (_ for _ in ()).throw(RuntimeError("CUDA error"))
    )
    with pytest.raises(RuntimeError, match="^CUDA error"):
        package(data, run_dir, model_dir)
    assert sorted(os.listdir(tmp_path)) == ["model", "model.lock"]


# ---------------------------------------------------------------- G: one run per --out, redone audio


def test_a_second_run_on_the_same_out_stops_naming_the_first(trained, data, tmp_path):  # noqa: F811
    model_dir = trained[2]
    write_inputs(tmp_path, data)
    out = tmp_path / "r.tsv"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_OUTPUT_LOCK, str(out)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline() == "held\n"
        message = gold(model_dir, tmp_path, out)
        assert f"--out {out} is being written by another crab-infer (pid {holder.pid} " in message
        assert "\n" not in message and not out.exists() and not (tmp_path / "r.tsv.model").exists()
    finally:
        holder.kill()
        holder.wait()
    assert gold(model_dir, tmp_path, out) == 0  # the lock went with its process


HOLD_OUTPUT_LOCK = (
    "import sys, time\nfrom crab.batch_inference import output_lock\n"
    "with output_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(120)\n"
)


def test_a_result_whose_audio_changed_is_redone(trained, data, tmp_path, capsys, caplog):  # noqa: F811
    model_dir = trained[2]
    write_inputs(tmp_path, data)
    out = tmp_path / "r.jsonl"
    assert gold(model_dir, tmp_path, out) == 0
    first = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    sources = (tmp_path / "r.jsonl.sources").read_text().splitlines()
    assert sources[0] == "id\tsize\tmtime_ns\taudio" and sources[1].endswith(f"\t{data}/test_angry_0.wav")

    # the wav.scp line of good_a fixed: same id, another file
    scp = (tmp_path / "wav.scp").read_text()
    (tmp_path / "wav.scp").write_text(scp.replace("test_angry_0.wav", "test_happy_0.wav"))
    capsys.readouterr()
    assert gold(model_dir, tmp_path, out) == 0
    assert "(1 now, 2 before); 1 redone: their audio changed" in capsys.readouterr().out
    again = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert list(again) == ["good_a", "good_s", "stereo"]  # the redone result in its wav.scp place
    assert again["good_a"]["probs"] != first["good_a"]["probs"]
    assert again["stereo"] == first["stereo"]

    # the audio file rewritten in place (here of the same size: its modification time tells)
    stereo = tmp_path / "stereo.wav"
    sf.write(stereo, np.zeros((26460, 2), dtype="float32") + 0.2 * np.sin(np.arange(26460))[:, None], 44100)
    assert gold(model_dir, tmp_path, out) == 0
    assert "(1 now, 2 before); 1 redone" in capsys.readouterr().out
    # now broken: redone, fails, and its old result is gone with it
    stereo.write_bytes(b"not audio")
    assert gold(model_dir, tmp_path, out) == 0
    assert "(0 now, 2 before); 1 redone" in capsys.readouterr().out
    assert [r["id"] for r in map(json.loads, out.read_text().splitlines())] == ["good_a", "good_s"]

    # results written without <out>.sources (an older crab-infer): kept, not checked, with a warning
    (tmp_path / "r.jsonl.sources").unlink()
    assert gold(model_dir, tmp_path, out) == 0
    assert "(0 now, 2 before)" in capsys.readouterr().out
    assert "2 results have no record of the audio they were classified from" in caplog.text


def test_a_damaged_model_writes_nothing_and_the_fixed_one_runs(trained, data, tmp_path):  # noqa: F811
    model_dir = tmp_path / "model"
    shutil.copytree(trained[2], model_dir)
    write_inputs(tmp_path, data)
    out = tmp_path / "r.tsv"
    good = (model_dir / "model.ckpt").read_bytes()
    (model_dir / "model.ckpt").write_bytes(good[: len(good) // 2])
    message = gold(model_dir, tmp_path, out)
    assert isinstance(message, str) and str(model_dir) in message and "\n" not in message, message
    (model_dir / "model.ckpt").unlink()
    message = gold(model_dir, tmp_path, out)
    assert isinstance(message, str) and str(model_dir) in message and "\n" not in message, message
    assert not [p for p in ("r.tsv", "r.tsv.model", "r.tsv.sources") if (tmp_path / p).exists()]
    (model_dir / "model.ckpt").write_bytes(good)  # fixed: the run goes through
    assert gold(model_dir, tmp_path, out) == 0


def test_package_links_to_special_files_are_refused(trained, data, tmp_path):  # noqa: F811
    model_dir = tmp_path / "model"
    shutil.copytree(trained[2], model_dir)
    write_inputs(tmp_path, data)
    out = tmp_path / "r.tsv"
    config = model_dir / "speech_encoder" / "config.json"
    # a link inside the package to a file of it is read as that file
    os.rename(config, model_dir / "speech_config.json")
    os.symlink("../speech_config.json", config)
    assert gold(model_dir, tmp_path, out) == 0

    def refused(make, expected):
        make()
        result = {}
        thread = threading.Thread(target=lambda: result.update(message=gold(model_dir, tmp_path, out)))
        thread.daemon = True  # without the check, reading /dev/zero or a FIFO never ends
        thread.start()
        thread.join(120)
        assert not thread.is_alive() and expected in str(result["message"]), result
        assert "\n" not in result["message"]

    # links are followed (as loading follows them), never to a device or FIFO
    extra = model_dir / "text_encoder" / "extra.json"
    refused(
        lambda: os.symlink("/dev/zero", extra), f"{extra} is a link to /dev/zero, which is not a regular file"
    )
    extra.unlink()
    refused(lambda: os.mkfifo(extra), f"{extra} is not a regular file")
    extra.unlink()
    os.mkfifo(tmp_path / "fifo")
    refused(
        lambda: os.symlink(tmp_path / "fifo", extra),
        f"{extra} is a link to {tmp_path / 'fifo'}, which is not",
    )
    extra.unlink()
    refused(lambda: os.symlink("/dev/zero", model_dir / "speech_encoder" / "sub"), "/dev/zero, which is not")


# ---------------------------------------------------------------- H: what crab-infer does not read


def test_segments_piped_lines_and_relative_paths(trained, data, tmp_path, monkeypatch, caplog):  # noqa: F811
    model_dir = trained[2]
    write_inputs(tmp_path, data)
    out = tmp_path / "out" / "r.tsv"
    (tmp_path / "segments").write_text("good_a-seg1 good_a 0.0 0.5\n")
    message = gold(model_dir, tmp_path, out)
    assert f"{tmp_path}/segments cuts its recordings into utterances" in message and not out.exists()
    assert f"python -m crab.bin.cut_segments --data_dir {tmp_path} --out_dir DIR" in message
    (tmp_path / "segments").unlink()

    # a piped line fails on its own and is never run; its transcript is one of wav.scp's
    marker = tmp_path / "ran"
    with open(tmp_path / "wav.scp", "a") as f:
        f.write(f"piped touch {marker} |\nrelative audio/nowhere.wav\n")
    with open(tmp_path / "text", "a") as f:
        f.write("piped hello\nrelative hello\nelsewhere hello\n")
    monkeypatch.chdir(tmp_path)
    caplog.set_level("INFO")
    assert gold(model_dir, tmp_path, out) == 0
    errors = {
        line.split("\t")[0]: line for line in (tmp_path / "out" / "r.tsv.errors").read_text().splitlines()
    }
    assert "piped commands" in errors["piped"] and not marker.exists()
    assert (
        f"missing audio file audio/nowhere.wav (a relative path: looked for in {tmp_path})"
        in errors["relative"]
    )
    assert "1 transcripts of utterances not in" in caplog.text  # elsewhere only


def test_precision_is_a_setting_of_the_results(trained, data, tmp_path):  # noqa: F811
    """bf16 autocast gives probabilities near fp32's, in a results file of its own."""
    write_inputs(tmp_path, data)
    fp32, bf16 = tmp_path / "fp32.tsv", tmp_path / "bf16.tsv"
    assert gold(trained[2], tmp_path, fp32, "--device", "cpu") == 0
    assert gold(trained[2], tmp_path, bf16, "--device", "cpu", "--precision", "bf16") == 0

    def probabilities(path):
        rows = [line.split("\t") for line in path.read_text().splitlines()]
        columns = [i for i, name in enumerate(rows[0]) if name.startswith("prob_")]
        return np.array([[float(row[i]) for i in columns] for row in rows[1:]])

    near, exact = probabilities(bf16), probabilities(fp32)
    assert near.shape == exact.shape and np.abs(near - exact).max() < 0.05 and not np.array_equal(near, exact)
    message = gold(trained[2], tmp_path, fp32, "--device", "cpu", "--precision", "bf16")
    assert '--precision ("fp32" then, "bf16" now)' in message
    # a results file from before the setting existed holds fp32 results
    marker = json.loads((tmp_path / "fp32.tsv.model").read_text())
    del marker["precision"]
    (tmp_path / "fp32.tsv.model").write_text(json.dumps(marker))
    assert gold(trained[2], tmp_path, fp32, "--device", "cpu") == 0
    assert "--precision fp16 needs a CUDA device" in gold(trained[2], tmp_path, fp32, "--precision", "fp16")


def test_the_asr_dtype_is_recorded_as_it_is_on_the_device(tmp_path):
    """``--asr_dtype auto`` is float16 on CUDA and float32 elsewhere: a run begun on a GPU and
    resumed on a CPU (or the other way) would add transcripts of the other precision to the
    same file, so ``<out>.model`` records the dtype the ASR model ran in. A record from
    before, which says ``auto``, is taken as this run's."""
    from crab.batch_inference import InferenceJob, UsageError, check_settings, run_settings

    out, marker = tmp_path / "r.tsv", tmp_path / "r.tsv.model"
    job = InferenceJob(model=str(tmp_path / "m"), wav_scp="wav.scp", out=str(out), text_mode="asr")
    on_gpu, on_cpu = (run_settings(job, {"classes": ["a", "b"]}, "tsv", d) for d in ("cuda:0", "cpu"))
    assert (on_gpu["asr"]["dtype"], on_cpu["asr"]["dtype"]) == ("float16", "float32")
    out.write_text("id\tpredicted\n")
    marker.write_text(json.dumps(on_gpu))
    with pytest.raises(
        UsageError, match=r'the ASR model or its settings: dtype \("float16" then, "float32" now\):'
    ):
        check_settings(str(marker), on_cpu, str(out), overwrite=False)
    marker.write_text(json.dumps({**on_gpu, "asr": {**on_gpu["asr"], "dtype": "auto"}}))
    check_settings(str(marker), on_cpu, str(out), overwrite=False)


def test_a_results_source_is_its_path_size_and_modification_time(tmp_path):
    """audio_changed, by hand: another path, size or mtime is a changed audio; a file gone
    since cannot be compared, and its result stands."""
    from crab.batch_inference import audio_changed, audio_source

    wav = tmp_path / "a.wav"
    wav.write_bytes(b"\0" * 100)
    then = audio_source(str(wav))
    assert not audio_changed(then, str(wav))
    assert audio_changed(then, str(tmp_path / "b.wav"))
    os.utime(wav, ns=(then.mtime_ns, then.mtime_ns + 10**9))
    assert audio_changed(then, str(wav))  # the same size, rewritten
    os.utime(wav, ns=(then.mtime_ns, then.mtime_ns))
    wav.write_bytes(b"\0" * 101)
    os.utime(wav, ns=(then.mtime_ns, then.mtime_ns))
    assert audio_changed(then, str(wav))  # another size, its mtime set back
    wav.unlink()
    assert not audio_changed(then, str(wav))
