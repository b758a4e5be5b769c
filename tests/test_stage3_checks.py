"""Stage 3's checks of what training needs: every class in a fold's train split, a BPE
tokenizer the text encoder can embed, counts that show every label."""

import errno
import functools
import json
import os

import pytest

from crab import tokenizer as crab_tokenizer
from crab.bin import make_manifest
from crab.cli import UserError
from crab.dataprep import count_table
from crab.encoders import TextEncoder
from crab.losses import class_weights
from tests.conftest import waiting_for_lock

CLASSES = ["angry", "happy", "neutral", "sad"]


def write_split(root, fold, split, labels, texts=None):
    """A text-only data directory ``root/data/<fold>/<split>`` (no audio needed)."""
    data = root / "data" / fold / split
    data.mkdir(parents=True)
    utts = [f"{split}{i}" for i in range(len(labels))]
    texts = texts or ["some words"] * len(labels)
    for name, values in (("utt2emo", labels), ("utt2spk", utts), ("text", texts)):
        (data / name).write_text("".join(f"{u} {v}\n" for u, v in zip(utts, values, strict=True)))
    return data


def stage_3(data, *extra):
    """make_manifest as ser.sh's stage 3 calls it; returns the manifest path."""
    out = data.parent / f"{data.name}.json"
    argv = ["--data_dir", str(data), "--fold", data.parent.name, "--data_root", str(data.parent)]
    make_manifest.main(
        [*argv, "--classes", ",".join(CLASSES), "--text_only", "true", "--out", str(out), *extra]
    )
    return out


def test_a_train_split_without_a_class_stops_stage_3_naming_it(tmp_path):
    data = write_split(tmp_path, "main", "train", ["angry", "happy", "sad", "sad"])
    with pytest.raises(SystemExit) as stop:
        stage_3(data)
    message = str(stop.value.code)
    assert message.startswith(f"ERROR: fold main: {data} has no utterance of 'neutral', but {data}.json")
    assert "\n" not in message and "--classes" in message
    assert not (tmp_path / "data" / "main" / "train.json").exists()


def test_a_skip_that_removes_the_last_of_a_class_stops_stage_3(tmp_path):
    data = write_split(tmp_path, "main", "train", CLASSES, ["w", "w", "", "w"])  # neutral's transcript empty
    with pytest.raises(SystemExit, match=r"no utterance of 'neutral' \(all 1 skipped as bad input\)"):
        stage_3(data, "--policy", "skip")


def test_a_text_model_gets_no_empty_transcript(tmp_path):
    """Only a speech-only model goes without transcripts: a text model's manifest needs them."""
    data = write_split(tmp_path, "main", "test", CLASSES, ["w", "w", "", "w"])
    with pytest.raises(SystemExit, match=r"test2.*empty transcript"):
        stage_3(data, "--modality", "text")
    assert not (tmp_path / "data" / "main" / "test.json").exists()


def test_a_stage_3_stopped_before_its_new_manifest_leaves_no_old_one(tmp_path, monkeypatch):
    """The old manifest is not left beside the provenance record of the new one."""
    data = write_split(tmp_path, "main", "test", CLASSES)
    out = stage_3(data)

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(make_manifest, "write_manifest", killed)
    with pytest.raises(SystemExit, match="^130$"):
        stage_3(data)
    assert not out.exists() and os.path.exists(f"{out}.provenance")


def test_a_manifest_named_utt2_outside_its_data_directory_is_written(tmp_path):
    data = write_split(tmp_path, "main", "test", CLASSES)
    argv = ["--data_dir", str(data), "--data_root", str(data.parent), "--classes", ",".join(CLASSES)]
    make_manifest.main([*argv, "--text_only", "true", "--out", str(tmp_path / "utt2emo.json")])
    assert len(json.loads((tmp_path / "utt2emo.json").read_text())) == len(CLASSES)


def test_a_split_whose_every_utterance_is_skipped_stops_stage_3(tmp_path):
    data = write_split(tmp_path, "main", "test", CLASSES, [""] * len(CLASSES))
    with pytest.raises(SystemExit, match=r"^ERROR: main/test: no usable utterances$"):
        stage_3(data, "--policy", "skip")
    assert not (tmp_path / "data" / "main" / "test.json").exists()


def test_a_valid_or_test_split_without_a_class_is_a_warning(tmp_path, caplog):
    data = write_split(tmp_path, "main", "valid", ["angry", "sad"])
    out = stage_3(data)
    assert sorted(json.loads(out.read_text())) == ["valid0", "valid1"]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [
        f"fold main: {data} has no utterance of 'happy', 'neutral': scores on it leave the class out"
    ]


def test_class_weights_of_a_class_without_examples_is_a_user_error_naming_it():
    with pytest.raises(UserError, match=r"^no training examples of class 0 \(counts \[0, 16, 8, 8\]\)"):
        class_weights([0, 16, 8, 8])
    with pytest.raises(
        UserError, match=r"^no training examples of 'angry', 'sad' \(counts \[0, 16, 8, 0\] of"
    ):
        class_weights([0, 16, 8, 0], CLASSES)
    with pytest.raises(ValueError, match="no training examples of 'happy'"):  # still a ValueError
        class_weights(dict(zip(CLASSES, [3, 0, 1, 1], strict=True)))
    assert class_weights(dict(zip(CLASSES, [1, 1, 2, 4], strict=True))).tolist() == [8.0, 8.0, 4.0, 2.0]


def test_training_on_a_manifest_without_a_class_names_the_manifest_and_class(tmp_path):
    """A hand-made manifest never seen by stage 3: training's class weights say what is wrong."""
    from crab.experiment import prepare_labels_and_weights
    from crab.losses import WeightedCrossEntropy

    manifest = tmp_path / "train.json"
    labels = ["angry", "happy", "happy", "sad"]
    entry = {"wav": "{data_root}/a.wav", "duration": 1.0, "spk": "s", "text": "words"}
    manifest.write_text(json.dumps({f"u{i}": {**entry, "emo": e} for i, e in enumerate(labels)}))
    hparams = {
        "classes": CLASSES,
        "train_manifest": str(manifest),
        "save_folder": str(tmp_path),
        "wce": WeightedCrossEntropy(len(CLASSES)),
    }
    with pytest.raises(
        UserError, match=rf"^{manifest}: no training examples of 'neutral' \(counts \[1, 2, 0, 1\]"
    ):
        prepare_labels_and_weights(hparams)


def test_a_tokenizer_larger_than_the_text_encoder_is_a_user_error_naming_the_option(tmp_path, tokenizer_dir):
    from transformers import RobertaConfig

    RobertaConfig(
        vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    ).save_pretrained(tmp_path)
    with pytest.raises(UserError) as err:
        TextEncoder(str(tmp_path), tokenizer=tokenizer_dir, pretrained=False)
    message = str(err.value)
    assert message.startswith(f"tokenizer: the tokenizer {tokenizer_dir} has ")
    assert f"the text encoder {tmp_path} has a vocabulary of 100: " in message
    assert "--bpe_vocab_size 100 or less" in message and "\n" not in message


def test_a_vocab_size_below_the_byte_level_minimum_says_so(tmp_path, capsys):
    data = write_split(tmp_path, "main", "train", CLASSES)
    manifest = stage_3(data)
    capsys.readouterr()
    crab_tokenizer.main(
        ["--manifest", str(manifest), "--out_dir", str(tmp_path / "tok"), "--vocab_size", "100"]
    )
    out = capsys.readouterr().out
    assert "vocab_size 100 (ser.sh --bpe_vocab_size) is below the byte-level BPE minimum of 261" in out
    crab_tokenizer.main(
        ["--manifest", str(manifest), "--out_dir", str(tmp_path / "tok2"), "--vocab_size", "300"]
    )
    assert "minimum" not in capsys.readouterr().out


def test_a_tokenizer_learns_the_transcripts_of_every_manifest(tmp_path, capsys):
    from transformers import AutoTokenizer

    train = stage_3(write_split(tmp_path, "main", "train", CLASSES, ["zebras"] * len(CLASSES)))
    valid = stage_3(write_split(tmp_path, "main", "valid", CLASSES, ["walrus"] * len(CLASSES)))
    capsys.readouterr()
    crab_tokenizer.main(
        ["--manifest", str(train), "--manifest", str(valid), "--out_dir", str(tmp_path / "tok")]
    )
    assert "from 8 transcripts" in capsys.readouterr().out
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    assert [len(tokenizer.tokenize(word)) for word in ("zebras", "walrus")] == [1, 1]


def test_a_tokenizer_rebuilt_on_a_full_disk_is_left_as_it_was(tmp_path, monkeypatch):
    """Stage 3 run again rebuilds the fold's tokenizer: a disk that fills up midway must not leave
    the new vocabulary and merges beside the old tokenizer files (another tokenizer, loaded as good)."""
    out = tmp_path / "tokenizer"
    crab_tokenizer.build_bpe_tokenizer(["I feel angry today", "so sad right now"] * 3, str(out), 300)
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}

    def full_disk(self, path, *args, **kwargs):
        with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
            f.write('{"add_prefix_sp')
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(crab_tokenizer.RobertaTokenizerFast, "save_pretrained", full_disk)
    with pytest.raises(UserError, match=f"cannot build the tokenizer {out} .*No space left on device"):
        crab_tokenizer.build_bpe_tokenizer(["other words", "of another fold"] * 3, str(out), 300)
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before
    assert sorted(os.listdir(tmp_path)) == ["tokenizer", "tokenizer.lock"]  # the lock: unlocked


def test_two_builds_of_one_tokenizer_take_turns(tmp_path, caplog):
    """Stage 3 of two experiments at once: the second build waits for the first (whose renames
    it would otherwise cross: one of them failing, the old tokenizer left in a hidden folder)."""
    out = tmp_path / "tokenizer"
    texts = ["I feel angry today", "so sad right now"] * 3
    crab_tokenizer.build_bpe_tokenizer(texts, str(out), 300)
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}
    build = functools.partial(crab_tokenizer.build_bpe_tokenizer, texts, str(out), 300)
    with waiting_for_lock(f"{out}.lock", build, caplog):
        assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before
        assert sorted(os.listdir(tmp_path)) == ["tokenizer", "tokenizer.lock"]  # nothing begun
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before  # the same texts
    assert sorted(os.listdir(tmp_path)) == ["tokenizer", "tokenizer.lock"]


def test_building_a_tokenizer_prints_nothing(tmp_path, capfd):
    """The BPE trainer's progress bar, written by its Rust code straight to stdout, was three
    blank lines in every stage 3 log."""
    crab_tokenizer.build_bpe_tokenizer(
        ["I feel angry today", "so sad right now"] * 3, str(tmp_path / "t"), 300
    )
    assert capfd.readouterr() == ("", "")


def test_a_tokenizer_is_not_built_into_a_folder_of_other_files(tmp_path):
    """A rebuild replaces its folder whole: a fold's folder, with its manifests, is refused."""
    (tmp_path / "train.json").write_text("{}")
    with pytest.raises(
        UserError, match=f"--out_dir {tmp_path} holds files that are not a tokenizer's \\(train.json\\)"
    ):
        crab_tokenizer.build_bpe_tokenizer(["I feel angry today"] * 3, str(tmp_path), 300)
    assert os.listdir(tmp_path) == ["train.json"]


def test_count_table_counts_every_utterance_and_shows_unknown_labels():
    labels = ["angry", "Angry", "frustrated", "sad", "frustrated"]
    splits = {
        "all": {f"u{i}": {"emo": label} for i, label in enumerate(labels)},
        "test": {"t": {"emo": "sad"}},
    }
    lines = count_table(splits, CLASSES).splitlines()
    assert lines[0].split() == ["split", *CLASSES, "other", "total"]
    assert lines[1].split() == ["all", "1", "0", "0", "1", "3", "5"]
    assert lines[2].split() == ["test", "0", "0", "0", "1", "0", "1"]
    assert lines[3] == f"all: other labels (not in {CLASSES}): 'Angry' 1, 'frustrated' 2"
    assert len(lines) == 4
    assert count_table(splits, [*CLASSES, "other"]).splitlines()[0].split()[-2:] == ["(other)", "total"]
