"""An output folder that cannot be made (a file where one of its folders goes, no permission, a
full disk) is one line naming it and why, from every command that makes one: no traceback."""

import errno
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from crab.cli import UserError
from crab.fileio import make_dirs
from tests.conftest import ROOT, write_tone_corpus
from tests.test_run_config import (
    CLASSES,
    CONFIG,
    TRAIN_OPTS,
    assert_one_line_error,
    command,
    run_options,
    train_run,
)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("output_folders_data")
    # two batches of 4: TRAIN_OPTS accumulate 2 (an epoch of fewer batches is refused)
    write_tone_corpus(root, root, {"train": 2, "valid": 1, "test": 1}, CLASSES)
    return root


@pytest.fixture
def blocker(tmp_path):
    """A regular file where a folder would go: no folder can be made under it, even by root."""
    path = tmp_path / "a_file"
    path.write_text("not a folder\n")
    return path


def test_a_folder_that_cannot_be_made_names_it_and_why(blocker, tmp_path, monkeypatch):
    for folder in (blocker, blocker / "sub", blocker / "sub" / "deeper"):
        with pytest.raises(
            UserError, match=f"^cannot create output folder {folder}: a file named {blocker} is in the way$"
        ):
            make_dirs(str(folder))

    def full(path, exist_ok=False):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    monkeypatch.setattr(os, "makedirs", full)
    with pytest.raises(
        UserError, match=f"^cannot create output folder {tmp_path}/new: No space left on device$"
    ) as err:
        make_dirs(str(tmp_path / "new"))
    assert isinstance(err.value, OSError) and err.value.errno == errno.ENOSPC


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_a_read_only_parent_is_named_as_such(tmp_path):
    parent = tmp_path / "read_only"
    parent.mkdir(mode=0o555)
    with pytest.raises(UserError, match=f"^cannot create output folder {parent}/run: Permission denied$"):
        make_dirs(str(parent / "run"))


def data_dir(tmp_path):
    """A Kaldi data directory of two utterances, with a segments file of one recording."""
    folder = tmp_path / "data"
    folder.mkdir()
    sf.write(tmp_path / "rec.wav", (0.3 * np.sin(np.arange(16000) / 5)).astype("float32"), 16000)
    (folder / "wav.scp").write_text(f"u1 {tmp_path}/rec.wav\nu2 {tmp_path}/rec.wav\n")
    (folder / "text").write_text("u1 hello there\nu2 good day\n")
    (folder / "utt2emo").write_text("u1 happy\nu2 sad\n")
    (folder / "utt2spk").write_text("u1 spk1\nu2 spk2\n")
    return folder


def test_data_prep_and_cut_segments(blocker, tmp_path):
    folder = data_dir(tmp_path)
    out = blocker / "main" / "train.json"
    result = command(
        "crab.bin.make_manifest",
        *("--data_dir", folder, "--data_root", tmp_path, "--classes", "happy,sad", "--out", out),
    )
    assert_one_line_error(
        result, f"cannot create output folder {out.parent}: a file named {blocker} is in the way"
    )

    (folder / "wav.scp").write_text(f"rec {tmp_path}/rec.wav\n")
    (folder / "segments").write_text("u1 rec 0 0.5\nu2 rec 0.5 1.0\n")
    result = command("crab.bin.cut_segments", "--data_dir", folder, "--out_dir", blocker / "cut")
    assert_one_line_error(
        result, f"cannot create output folder {blocker}/cut/audio: a file named {blocker} is in the way"
    )


def test_a_recipe_data_prep(blocker, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    rows = [f"u{i},spk0{i},f,happy,hello,u{i}.wav" for i in (1, 5, 6)]
    (corpus / "metadata.csv").write_text("utt_id,speaker,gender,emotion,text,wav\n" + "\n".join(rows) + "\n")
    prepare = os.path.join(ROOT, "egs", "mini", "local", "prepare_data.py")
    result = subprocess.run(
        [sys.executable, prepare, "--corpus_dir", corpus, "--out_dir", blocker / "main"],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )
    assert_one_line_error(
        result, f"cannot create output folder {blocker}/main/train: a file named {blocker} is in the way"
    )


@pytest.mark.slow
def test_evaluate_and_package(data, blocker, tmp_path):
    run = tmp_path / "exp" / "seed42"
    train_run(data, run, *TRAIN_OPTS)
    (run / "eval_taken").write_text("a file where the evaluation folder goes\n")
    result = command(
        "crab.bin.evaluate",
        CONFIG,
        *run_options(data, run),
        f"--test_manifest={data}/test.json",
        "--eval_name=taken",
    )
    assert_one_line_error(
        result, f"cannot create output folder {run}/eval_taken: a file named {run}/eval_taken is in the way"
    )

    out = blocker / "model"
    result = command(
        "crab.bin.package", CONFIG, *run_options(data, run), "--text_source", "gold", "--out", out
    )
    # the package's lock, beside it, is the first thing made there
    assert_one_line_error(
        result, f"cannot create output folder {blocker}: a file named {blocker} is in the way"
    )
