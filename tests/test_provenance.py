"""ASR provenance from stage 2 to the package and results, and manifests for speech-only models."""

import json
import os
import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf

from crab.bin import make_manifest
from crab.bin import package as package_cli
from crab.data import load_manifest
from crab.provenance import ProvenanceError
from crab.report import git_commit, record_training, results_table, score_run
from crab.tokenizer import build_bpe_tokenizer
from tests.conftest import ROOT
from tests.test_run_config import (
    CLASSES,
    CONFIG,
    assert_one_line_error,
    command,
    evaluate_run,
    in_recipe,
    run_options,
    train_run,
)

ASR_MODEL = "tiny-asr-A"
SPLITS = {"train": 2, "valid": 1, "test": 1}


def write_data_dirs(root, text=True, asr=True):
    """Kaldi-style data dirs root/<split>/ of tones (wav.scp, utt2emo, utt2spk; text and
    text.asr with text.asr.model as stage 2 writes them)."""
    for split, count in SPLITS.items():
        d = root / split
        d.mkdir(parents=True)
        lines = {name: [] for name in ("wav.scp", "text", "text.asr", "utt2emo", "utt2spk")}
        for k, emo in enumerate(CLASSES):
            for n in range(count):
                utt = f"{split}_{emo}_{n}"
                wav = 0.3 * np.sin(2 * np.pi * (100 + 80 * k) * np.arange(9000 + 500 * n) / 16000)
                sf.write(root / f"{utt}.wav", wav.astype("float32"), 16000)
                lines["wav.scp"].append(f"{utt} {root}/{utt}.wav")
                lines["text"].append(f"{utt} I feel {emo} today")
                lines["text.asr"].append(f"{utt} i feel {emo} to day")
                lines["utt2emo"].append(f"{utt} {emo}")
                lines["utt2spk"].append(f"{utt} {split}{n}")
        for name, content in lines.items():
            if (name == "text" and not text) or (name == "text.asr" and not asr):
                continue
            (d / name).write_text("\n".join(content) + "\n")
        if asr:
            (d / "text.asr.model").write_text(ASR_MODEL + "\n")


def manifests(root, out, *options):
    for split in SPLITS:
        make_manifest.main(
            [
                "--data_dir",
                str(root / split),
                "--data_root",
                str(root),
                "--classes",
                ",".join(CLASSES),
                "--out",
                str(out / f"{split}.json"),
                *options,
            ]
        )


@pytest.fixture(scope="module")
def asr_run(tmp_path_factory):
    """A run trained on the ASR transcripts of ASR_MODEL (stages 3 and 4), evaluated."""
    root = tmp_path_factory.mktemp("provenance")
    write_data_dirs(root / "corpus")
    folder = root / "data"
    manifests(root / "corpus", folder, "--text_source", "asr")
    build_bpe_tokenizer([f"i feel {e} to day" for e in CLASSES] * 3, str(folder / "tokenizer"), 300)
    run = root / "exp" / "asr" / "main" / "seed42"
    train_run(root / "corpus", run, "--number_of_epochs=1", "--batch_size=4", f"--data_folder={folder}")
    evaluate_run(root / "corpus", run, "test", f"--data_folder={folder}", manifest=folder / "test.json")
    return root, run


def test_manifest_records_the_asr_model_of_its_transcripts(asr_run):
    root, _ = asr_run
    record = json.loads((root / "data" / "train.json.provenance").read_text())
    assert record["text_source"] == "asr" and record["asr_model"] == ASR_MODEL
    assert (
        json.loads((root / "data" / "train.json").read_text())["train_angry_0"]["text"]
        == "i feel angry to day"
    )


class Killed(BaseException):
    """Stands in for a kill -9: nothing after the call that raises it runs."""


def test_a_manifest_killed_half_written_is_never_beside_another_ones_provenance(tmp_path, monkeypatch):
    """Stage 3 run again on ASR transcripts, killed between the manifest and its provenance:
    no manifest is left that its provenance says is of the gold transcripts (the next stage asks
    for stage 3 again)."""
    write_data_dirs(tmp_path / "corpus")
    manifests(tmp_path / "corpus", tmp_path / "data")
    manifest, real_replace = tmp_path / "data" / "train.json", os.replace

    def killed_after_the_first(src, dst):
        real_replace(src, dst)
        if str(dst).startswith(str(manifest)):
            raise Killed

    monkeypatch.setattr(os, "replace", killed_after_the_first)
    with pytest.raises(Killed):
        manifests(tmp_path / "corpus", tmp_path / "data", "--text_source", "asr")
    if manifest.exists():
        assert json.loads((tmp_path / "data" / "train.json.provenance").read_text())["text_source"] == "asr"


def test_training_info_and_results_record_the_asr_model(asr_run):
    _, run = asr_run
    assert json.loads((run / "text_source.json").read_text())["asr_model"] == ASR_MODEL
    info = record_training(str(run), 1.0, "run.sh --text_source asr")
    assert info["text_source"] == "asr" and info["asr_model"] == ASR_MODEL
    table, summary = results_table([str(run / "eval_test" / "predictions.csv")])
    assert summary["runs"][0]["asr_model"] == ASR_MODEL
    assert f"trained on ASR transcripts of '{ASR_MODEL}'" in table


def test_package_records_the_asr_model_that_made_the_transcripts(asr_run, tmp_path):
    root, run = asr_run
    options = [CONFIG, *run_options(root / "corpus", run), f"--data_folder={root / 'data'}"]
    # as ser.sh stage 7 passes them: --asr_model empty (its default) or the recorded one
    in_recipe(
        package_cli.main, [*options, "--text_source", "asr", "--asr_model", "", "--out", str(tmp_path / "m")]
    )
    meta = json.loads((tmp_path / "m" / "metadata.json").read_text())
    assert meta["training"]["text_source"] == "asr" and meta["training"]["asr_model"] == ASR_MODEL
    assert "train_text_source: asr" in (tmp_path / "m" / "hyperparams.yaml").read_text()
    result = command(
        "crab.bin.package",
        *options,
        "--text_source",
        "asr",
        "--asr_model",
        "openai/whisper-large-v3",
        "--out",
        tmp_path / "m2",
    )
    assert_one_line_error(
        result, f"--asr_model openai/whisper-large-v3 contradicts the run's asr_model: {ASR_MODEL}"
    )
    with pytest.raises(SystemExit, match="--text_source gold contradicts the run's text_source: asr"):
        in_recipe(package_cli.main, [*options, "--text_source", "gold", "--out", str(tmp_path / "m3")])


def test_speech_only_manifest_without_transcripts_trains(tmp_path):
    write_data_dirs(tmp_path / "corpus", text=False, asr=False)
    with pytest.raises(SystemExit, match="empty transcript"):  # a bimodal model needs them
        manifests(tmp_path / "corpus", tmp_path / "bimodal")
    (tmp_path / "corpus" / "train" / "text").write_text("train_angry_0 only one\n")  # partial: the rest empty
    manifests(tmp_path / "corpus", tmp_path / "data", "--modality", "speech")
    entries = json.loads((tmp_path / "data" / "train.json").read_text())
    assert len(entries) == 8 and entries["train_angry_0"]["text"] == "only one"
    assert entries["train_sad_1"]["text"] == "" and entries["train_sad_1"]["duration"] > 0
    run = tmp_path / "exp"
    train_run(
        tmp_path / "corpus",
        run,
        "--modality=speech",
        "--number_of_epochs=1",
        "--batch_size=4",
        f"--data_folder={tmp_path / 'data'}",
    )  # no tokenizer: a speech-only model builds no text encoder
    assert "valid UAR" in (run / "train_log.txt").read_text()
    evaluate_run(
        tmp_path / "corpus",
        run,
        "test",
        f"--data_folder={tmp_path / 'data'}",
        manifest=tmp_path / "data" / "test.json",
    )
    assert (run / "eval_test" / "predictions.csv").read_text().count("\n") == 5
    # its results say no transcript was read (the manifest's gold ones were not)
    row = score_run(str(run / "eval_test" / "predictions.csv"))
    assert (row["text_source"], row["asr_model"]) == ("none", None)
    # and so do its training record and its package
    info = record_training(str(run), 1.0, "run.sh --modality speech")
    assert (info["text_source"], info["asr_model"]) == ("none", None)
    options = [
        CONFIG,
        *run_options(tmp_path / "corpus", run),
        "--modality=speech",
        f"--data_folder={tmp_path / 'data'}",
    ]
    in_recipe(package_cli.main, [*options, "--out", str(tmp_path / "model")])
    meta = json.loads((tmp_path / "model" / "metadata.json").read_text())
    assert (meta["training"]["text_source"], meta["training"]["asr_model"]) == ("none", None)
    assert "train_text_source: none" in (tmp_path / "model" / "hyperparams.yaml").read_text()
    with pytest.raises(
        SystemExit,
        match="--text_source gold contradicts the run's text_source: none .*; it has no text branch: leave",
    ):
        in_recipe(package_cli.main, [*options, "--text_source", "gold", "--out", str(tmp_path / "model2")])


def test_a_manifest_older_than_its_data_dir_is_refused(tmp_path):
    write_data_dirs(tmp_path / "corpus")
    train, data = tmp_path / "data" / "train.json", tmp_path / "corpus" / "train"
    manifests(tmp_path / "corpus", tmp_path / "data")  # gold transcripts
    assert len(load_manifest(str(train))) == 8
    (data / "text.asr").write_text("train_angry_0 other words\n")  # not read by a gold manifest
    load_manifest(str(train))
    utt2emo = (data / "utt2emo").read_text()
    # stage 1 rerun, stage 3 not
    (data / "utt2emo").write_text(utt2emo.replace("train_angry_0 angry", "train_angry_0 sad"))
    with pytest.raises(ProvenanceError, match=rf"{train} is older than its data: {data}/utt2emo changed"):
        load_manifest(str(train))
    manifests(tmp_path / "corpus", tmp_path / "data")  # stage 3 again
    assert load_manifest(str(train))["train_angry_0"]["emo"] == "sad"
    (data / "utt2gender").write_text(utt2emo)  # a table added: the manifest lacks its field
    with pytest.raises(ProvenanceError, match=rf"{data}/utt2gender changed"):
        load_manifest(str(train))
    (data / "utt2gender").unlink()
    (data / "utt2spk").unlink()  # removed
    with pytest.raises(ProvenanceError, match=rf"{data}/utt2spk changed"):
        load_manifest(str(train))
    os.rename(tmp_path / "corpus", tmp_path / "moved")  # data dir gone: nothing to compare
    assert len(load_manifest(str(train))) == 8


def test_a_copied_manifest_is_checked_against_the_copied_data_dir(tmp_path):
    """data/ rsynced elsewhere (the original left in place) and stage 1 rerun there without
    stage 3: the copy's manifest is stale, whatever the original's tables say."""
    write_data_dirs(tmp_path / "recipe" / "corpus")
    manifests(tmp_path / "recipe" / "corpus", tmp_path / "recipe" / "data")
    shutil.copytree(tmp_path / "recipe", tmp_path / "copy")
    train, data = tmp_path / "copy" / "data" / "train.json", tmp_path / "copy" / "corpus" / "train"
    utt2emo = (data / "utt2emo").read_text()
    (data / "utt2emo").write_text(utt2emo.replace("train_angry_0 angry", "train_angry_0 sad"))
    with pytest.raises(ProvenanceError, match=rf"{train} is older than its data: {data}/utt2emo changed"):
        load_manifest(str(train))
    assert len(load_manifest(str(tmp_path / "recipe" / "data" / "train.json"))) == 8  # the original's
    os.rename(tmp_path / "copy" / "corpus", tmp_path / "copy" / "moved")  # not beside it: where it was
    assert len(load_manifest(str(train))) == 8
    original = tmp_path / "recipe" / "corpus" / "train"
    (original / "utt2emo").write_text(utt2emo.replace("train_angry_0 angry", "train_angry_0 sad"))
    with pytest.raises(ProvenanceError, match=rf"{train} is older than its data: {original}/utt2emo changed"):
        load_manifest(str(train))


def test_the_recorded_commit_is_dirty_with_files_neither_committed_nor_ignored(tmp_path):
    """A new recipe's scripts or configs, not yet added, make the commit +dirty; what the recipes
    and crab-infer write (data, exp* folders, locks, results files) and the environment do not."""

    def git(*args):
        return subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True
        )

    git("init", "-q")
    assert git_commit(str(tmp_path)) is None  # no commit yet
    shutil.copy(os.path.join(ROOT, ".gitignore"), tmp_path / ".gitignore")
    (tmp_path / "egs" / "new").mkdir(parents=True)
    (tmp_path / "egs" / "new" / "RESULTS.md").write_text("# new results\n")
    git("add", ".")
    git("commit", "-qm", "a recipe")
    full = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True
    ).stdout.strip()
    written = [
        "egs/new/data/main/wav.scp",
        "egs/new/exp/t/log/train.log",
        "egs/new/exp_gpu/t/save/x",
        "egs/new/.lock",
        "egs/new/results.tsv",  # crab-infer's output beside the recipe, and its companions
        "egs/new/results.tsv.lock",
        "egs/new/results.tsv.model",
    ]
    for path in [*written, "tools/venv/bin/python", "crab/__pycache__/report.pyc", ".pytest_cache/v"]:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("")
    assert (git_commit(str(tmp_path)), git_commit(str(tmp_path), short=False)) == (full[:7], full)
    git("checkout", "-q", "-b", "bump-conf.yaml")  # a branch named like a config: no file of the checkout
    assert git_commit(str(tmp_path)) == full[:7]
    (tmp_path / "egs" / "new" / "conf.yaml").write_text("")  # an untracked config
    assert git_commit(str(tmp_path)) == full[:7] + "+dirty"
    (tmp_path / "egs" / "new" / "conf.yaml").unlink()
    (tmp_path / "egs" / "new" / "local").mkdir()
    (tmp_path / "egs" / "new" / "local" / "data.py").write_text("")
    assert git_commit(str(tmp_path / "egs" / "new")) == full[:7] + "+dirty"
    assert git_commit(str(tmp_path), short=False) == full + "+dirty"
    git("add", "egs/new/local/data.py")
    git("commit", "-qm", "its data prep")
    # stage 7 adds its entries to the tracked RESULTS.md: the next setting of a sweep is of the commit
    (tmp_path / "egs" / "new" / "RESULTS.md").write_text("# changed\n")
    assert not git_commit(str(tmp_path)).endswith("+dirty")
    (tmp_path / "egs" / "new" / "local" / "data.py").write_text("# changed\n")  # a tracked file changed
    assert git_commit(str(tmp_path)).endswith("+dirty")
    outside = tmp_path.parent / f"{tmp_path.name}_not_a_checkout"
    outside.mkdir()
    assert git_commit(str(outside)) is None


def hand_made_manifests(root, asr_model):
    """train.json and valid.json with the sidecar stage 3 writes for ASR transcripts of ``asr_model``."""
    root.mkdir(exist_ok=True)
    for split in ("train", "valid"):
        (root / f"{split}.json").write_text(json.dumps({f"{split}_0": {"text": "hi", "emo": "sad"}}))
        (root / f"{split}.json.provenance").write_text(
            json.dumps({"text_source": "asr", "asr_model": asr_model})
        )
    return root / "train.json", root / "valid.json"


def test_a_resumed_run_refuses_another_asr_model_and_changed_manifests(tmp_path):
    from crab.provenance import record_run_provenance

    run = tmp_path / "run"
    train, valid = hand_made_manifests(tmp_path / "data", ASR_MODEL)
    record_run_provenance(str(run), str(train), valid_manifest=str(valid))
    record_run_provenance(str(run), str(train), valid_manifest=str(valid), resumed=True)  # the same
    hand_made_manifests(tmp_path / "data", "tiny-asr-B")
    with pytest.raises(
        ProvenanceError, match=f"of '{ASR_MODEL}', but .*train.json now holds ASR transcripts of 'tiny-asr-B'"
    ):
        record_run_provenance(str(run), str(train), valid_manifest=str(valid), resumed=True)
    train, valid = hand_made_manifests(tmp_path / "data", ASR_MODEL)
    valid.write_text(json.dumps({"valid_0": {"text": "hi", "emo": "happy"}}))  # the validation set only
    with pytest.raises(ProvenanceError, match=rf"{valid} \(valid\) changed since the run started"):
        record_run_provenance(str(run), str(train), valid_manifest=str(valid), resumed=True)
    record_run_provenance(
        str(run), str(train), valid_manifest=str(valid), write=False
    )  # a new start: not checked


def test_a_package_takes_the_runs_transcript_source_and_refuses_another(tmp_path):
    from crab.provenance import package_text_source, trained_text_source

    run = tmp_path / "run"
    run.mkdir()
    assert package_text_source(str(run), "gold") == ("gold", None)  # no record: as given
    assert package_text_source(str(run), "gold", ASR_MODEL) == ("gold", None)  # --asr_model ignored
    (run / "text_source.json").write_text(json.dumps({"text_source": "asr", "asr_model": ASR_MODEL}))
    assert package_text_source(str(run)) == ("asr", ASR_MODEL)
    assert package_text_source(str(run), "asr", ASR_MODEL) == ("asr", ASR_MODEL)
    with pytest.raises(ProvenanceError, match="--text_source gold contradicts the run's text_source: asr"):
        package_text_source(str(run), "gold")
    with pytest.raises(
        ProvenanceError, match=f"--asr_model tiny-asr-B contradicts the run's asr_model: {ASR_MODEL}"
    ):
        package_text_source(str(run), "asr", "tiny-asr-B")
    (run / "text_source.json").write_text(json.dumps({"text_source": "gold", "asr_model": None}))
    assert package_text_source(str(run), None, ASR_MODEL) == ("gold", None)  # --asr_model ignored
    # recorded before the tokenizer was: its transcript source; recorded without a text branch: none
    assert trained_text_source({"text_source": "gold", "asr_model": None}) == ("gold", None)
    assert trained_text_source({"text_source": "gold", "tokenizer_sha256": None}) == ("none", None)
