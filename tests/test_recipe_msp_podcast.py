"""The MSP-Podcast recipe on a fixture in the release layout: labels, partitions, checks, stages 1-8."""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from crab.bin import make_manifest
from tests.conftest import ROOT, finished_jobs
from tests.test_transcribe import build_tiny_whisper

RECIPE = os.path.join(ROOT, "egs", "msp_podcast")
PREPARE = os.path.join(RECIPE, "local", "prepare_data.py")
CLASSES = ("anger", "contempt", "disgust", "fear", "happiness", "neutral", "sadness", "surprise")
CODES = "ACDFHNSU"
HEADER = "FileName,EmoClass,EmoAct,EmoVal,EmoDom,SpkrID,Gender,Split_Set\n"
# Split_Set -> (speakers, utterances per class): every class in every split.
PLAN = {
    "Train": (("11", "12", "Unknown"), 2),
    "Development": (("21",), 1),
    "Test1": (("31",), 1),
    "Test2": (("41", "Unknown"), 1),
}
SPLIT_OF = {"Train": "train", "Development": "valid", "Test1": "test1", "Test2": "test2"}
GENDER = {"11": "Male", "12": "Female", "21": "Female", "31": "Male", "41": "Female", "Unknown": "Unknown"}


def write_audio(path, k, rng):
    tone = np.sin(2 * np.pi * (110 + 25 * k) * np.arange(8000) / 16000)
    sf.write(path, (0.3 * tone + 0.01 * rng.standard_normal(8000)).astype("float32"), 16000)


def corpus_rows():
    """(FileName, EmoClass, SpkrID, Split_Set) of the fixture, plus O, X and Test3 rows."""
    rows, podcast = [], 1
    for split, (speakers, per_class) in PLAN.items():
        for n in range(per_class * len(CODES)):
            rows.append(
                (f"MSP-PODCAST_{podcast:04d}_{n:04d}.wav", CODES[n % 8], speakers[n % len(speakers)], split)
            )
        podcast += 1
    rows += [(f"MSP-PODCAST_0009_{n:04d}.wav", code, "11", "Train") for n, code in enumerate("OX")]
    rows.append(("MSP-PODCAST_0010_0000.wav", "N", "51", "Test3"))
    return rows


@pytest.fixture
def corpus(tmp_path):
    """An MSP-Podcast release: Audios/, Labels/labels_consensus.csv, Transcripts/ for the training files."""
    root = tmp_path / "MSP-PODCAST-Publish-2.0"
    for folder in ("Audios", "Labels", "Transcripts"):
        (root / folder).mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = [HEADER]
    for k, (name, code, spk, split) in enumerate(corpus_rows()):
        write_audio(root / "Audios" / name, k % 8, rng)
        lines.append(f"{name},{code},4.2,3.8,4.0,{spk},{GENDER.get(spk, 'Male')},{split}\n")
        if split == "Train":
            (root / "Transcripts" / name.replace(".wav", ".txt")).write_text(f"Training sentence {k}.\n")
    (root / "Labels" / "labels_consensus.csv").write_text("".join(lines))
    # Odd encodings: UTF-8 with BOM, curly quotes and a line break; Windows-1252.
    (root / "Transcripts" / "MSP-PODCAST_0001_0000.txt").write_bytes(
        "\ufeff“Don’t” go,\r\nplease.\r\n".encode()
    )
    (root / "Transcripts" / "MSP-PODCAST_0001_0001.txt").write_bytes("caf\xe9 au lait".encode("cp1252"))
    return root


def prepare(corpus_dir, out_dir, *options):
    return subprocess.run(
        [sys.executable, PREPARE, "--corpus_dir", str(corpus_dir), "--out_dir", str(out_dir), *options],
        capture_output=True,
        text=True,
    )


def table(path):
    with open(path, encoding="utf-8") as f:
        return dict((line.rstrip("\n").split(" ", 1) + [""])[:2] for line in f)


def test_labels_speakers_and_transcripts(corpus, tmp_path):
    result = prepare(corpus, tmp_path / "data")
    assert result.returncode == 0, result.stderr
    data = tmp_path / "data"
    assert sorted(os.listdir(data)) == ["test1", "test2", "train", "valid"]
    expected = {split: {} for split in SPLIT_OF.values()}
    genders = {}
    for name, code, spk, split in corpus_rows():
        if code in CODES and split in SPLIT_OF:
            utt = name[:-4]
            # an unknown speaker is the utterance's own (Kaldi's way), not one speaker "Unknown"
            expected[SPLIT_OF[split]][utt] = (
                CLASSES[CODES.index(code)],
                utt if spk == "Unknown" else spk,
                split,
            )
            genders[utt] = GENDER[spk]
    for split, utts in expected.items():
        emo, spk = table(data / split / "utt2emo"), table(data / split / "utt2spk")
        gender, partition = table(data / split / "utt2gender"), table(data / split / "utt2partition")
        assert {u: (emo[u], spk[u], partition[u]) for u in emo} == utts
        assert all(gender[u] == genders[u] for u in utts)
        wavs = table(data / split / "wav.scp")
        assert all(wavs[u] == str(corpus / "Audios" / f"{u}.wav") for u in utts)
    text = table(data / "train" / "text")
    assert text["MSP-PODCAST_0001_0000"] == "“Don’t” go, please."
    assert text["MSP-PODCAST_0001_0001"] == "café au lait"
    assert text["MSP-PODCAST_0001_0002"] == "Training sentence 2."
    assert set(table(data / "test1" / "text").values()) == {""}  # no gold transcript: empty
    assert "not UTF-8" in result.stderr
    out = result.stdout
    assert "left out: Test3 (labels not public) 1, no agreement (X) 1, other (O) 1" in out
    assert re.search(r"\ntrain" + r"\s+2" * 8 + r"\s+16\n", out)  # the count table
    assert (
        "train: 2 known speakers, 5 utterances of unknown speaker (kept), 16 of 16 with a gold transcript"
        in out
    )


def test_windows_1252_punctuation_stored_as_c1_controls_is_restored(corpus, tmp_path):
    transcript = corpus / "Transcripts" / "MSP-PODCAST_0001_0002.txt"
    transcript.write_text("Well\u0085 it\u0092s fine.\n", encoding="utf-8")
    assert prepare(corpus, tmp_path / "data").returncode == 0
    assert (
        table(tmp_path / "data" / "train" / "text")["MSP-PODCAST_0001_0002"] == "Well\u2026 it\u2019s fine."
    )


def test_official_partitions_share_no_speaker_and_stage_3_says_none(corpus, tmp_path):
    """train and test2 both have segments of unknown speaker: they are no speaker in common."""
    data = tmp_path / "data"
    assert prepare(corpus, data).returncode == 0
    splits = ("train", "valid", "test1", "test2")
    speakers = {s: set(table(data / s / "utt2spk").values()) for s in splits}
    for test in ("valid", "test1", "test2"):
        assert not speakers["train"] & speakers[test]
    check = subprocess.run(
        [sys.executable, "-m", "crab.bin.check_fold", "--fold", "official", *(str(data / s) for s in splits)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert check.returncode == 0, check.stderr
    assert "share" not in check.stdout


def test_partitions_txt_of_releases_without_split_set(corpus, tmp_path):
    assert prepare(corpus, tmp_path / "column").returncode == 0
    labels = corpus / "Labels" / "labels_consensus.csv"
    rows = [line.rsplit(",", 1) for line in labels.read_text().splitlines()]
    old_names = {"Development": "Validation"}  # the name in older releases
    labels.write_text(without_last_column(labels.read_text()))
    (corpus / "Partitions.txt").write_text(
        "".join(f"{old_names.get(split, split)}; {fields.split(',')[0]}\n" for fields, split in rows[1:])
    )
    result = prepare(corpus, tmp_path / "file")
    assert result.returncode == 0, result.stderr
    assert f"partitions: {corpus / 'Partitions.txt'}" in result.stdout
    for split in ("train", "valid", "test1", "test2"):
        for name in ("wav.scp", "utt2emo", "utt2spk", "text"):
            assert (tmp_path / "file" / split / name).read_text() == (
                tmp_path / "column" / split / name
            ).read_text()
    assert set(table(tmp_path / "file" / "valid" / "utt2partition").values()) == {"Validation"}
    # --partitions takes another file; labels in no partition are left out and counted.
    moved = tmp_path / "Partitions_moved.txt"
    moved.write_text("\n".join((corpus / "Partitions.txt").read_text().splitlines()[1:]))
    result = prepare(corpus, tmp_path / "moved", "--partitions", str(moved))
    assert result.returncode == 0, result.stderr
    assert "in no partition 1" in result.stdout


def test_partitions_file_overrides_the_column_and_is_checked(corpus, tmp_path):
    names = [
        line.split(",")[0]
        for line in (corpus / "Labels" / "labels_consensus.csv").read_text().splitlines()[1:]
    ]
    everything_train = tmp_path / "Partitions.txt"
    everything_train.write_text("".join(f"Train; {name}\n" for name in names))
    result = prepare(corpus, tmp_path / "data", "--partitions", str(everything_train))
    assert result.returncode != 0 and "no usable utterances in valid" in result.stderr
    everything_train.write_text(f"Train; {names[0]}\n\nTrain {names[1]}\n")
    result = prepare(corpus, tmp_path / "data", "--partitions", str(everything_train))
    assert f"Partitions.txt:3: expected '<Partition>; <FileName>', got 'Train {names[1]}'" in result.stderr


def test_early_release_spellings_and_a_file_given_two_partitions(corpus, tmp_path):
    labels = corpus / "Labels" / "labels_consensus.csv"
    labels.rename(corpus / "Labels" / "labels_concensus.csv")  # as early releases spell it
    result = prepare(corpus, tmp_path / "data")
    assert result.returncode == 0, result.stderr
    assert "labels_concensus.csv" in result.stdout
    names = [
        line.split(",")[0] for line in (corpus / "Labels" / "labels_concensus.csv").read_text().splitlines()
    ]
    partitions = tmp_path / "Partitions.txt"
    partitions.write_text(f"Train; {names[1]}\nTest1; {names[1]}\n")  # which one holds?
    result = prepare(corpus, tmp_path / "data", "--partitions", str(partitions))
    assert result.returncode != 0 and f"Partitions.txt:2: {names[1]} is in the file twice" in result.stderr


def test_a_class_without_training_utterances_stops(corpus, tmp_path):
    labels = corpus / "Labels" / "labels_consensus.csv"
    labels.write_text(re.sub(r"(_0001_\d+\.wav),C,", r"\1,N,", labels.read_text()))  # no Train contempt
    result = prepare(corpus, tmp_path / "data")
    assert result.returncode != 0 and "no training utterances of class(es) ['contempt']" in result.stderr


def edit_labels(edit):
    """A damage that rewrites labels_consensus.csv through ``edit`` (text -> text)."""

    def damage(root):
        path = root / "Labels" / "labels_consensus.csv"
        path.write_text(edit(path.read_text()))

    return damage


def without_last_column(text):
    return "".join(line.rsplit(",", 1)[0] + "\n" for line in text.splitlines())


@pytest.mark.parametrize(
    "damage, message",
    [
        (
            edit_labels(lambda t: t.replace(",SpkrID,", ",Speaker,")),
            r"missing column\(s\) \['SpkrID'\].*Label files differ between releases",
        ),
        (
            edit_labels(without_last_column),
            "has no Split_Set column and there is no .*Partitions.txt.*--partitions",
        ),
        (
            edit_labels(
                lambda t: t.replace("MSP-PODCAST_0002_0003.wav,F,", "MSP-PODCAST_0002_0003.wav,Fear,")
            ),
            r"labels_consensus.csv:21: unknown EmoClass 'Fear'",
        ),
        (  # the line in the file, blank lines counted
            edit_labels(
                lambda t: t.replace("\n", "\n\n\n", 1).replace(
                    "MSP-PODCAST_0002_0003.wav,F,", "MSP-PODCAST_0002_0003.wav,Fear,"
                )
            ),
            r"labels_consensus.csv:23: unknown EmoClass 'Fear'",
        ),
        (  # a row cut short (would read as Unknown speaker, no partition)
            edit_labels(lambda t: re.sub(r"(MSP-PODCAST_0002_0003.wav,F,4.2).*", r"\1", t)),
            r"labels_consensus.csv:21: 3 field\(s\), the header has 8",
        ),
        (edit_labels(lambda t: t.replace("Test2\n", "Test4\n", 1)), "unknown partition 'Test4'"),
        (  # a quote left open takes the rest of the file into the row: named from its first line
            edit_labels(lambda t: t.replace("MSP-PODCAST_0002_0003.wav,F,", '"MSP-PODCAST_0002_0003.wav,F,')),
            r"labels_consensus.csv:21-\d+: 1 field\(s\), the header has 8",
        ),
        (  # the utterance id would be cut at the space in every Kaldi table
            edit_labels(lambda t: t.replace("MSP-PODCAST_0002_0003.wav", "MSP-PODCAST_0002 0003.wav")),
            r"labels_consensus.csv:21: FileName 'MSP-PODCAST_0002 0003.wav' holds whitespace",
        ),
        (  # the same file with and without .wav: one utterance id, a row silently lost
            edit_labels(lambda t: t + "MSP-PODCAST_0002_0003,N,4.2,3.8,4.0,21,Female,Development\n"),
            r"labels_consensus.csv:\d+: MSP-PODCAST_0002_0003 already on line 21",
        ),
        (
            lambda root: os.remove(root / "Labels" / "labels_consensus.csv"),
            "no .*Labels/labels_consensus.csv: is .* the MSP-Podcast directory",
        ),
    ],
)
def test_bad_input_stops_with_a_clear_message(corpus, tmp_path, damage, message):
    damage(corpus)
    result = prepare(corpus, tmp_path / "data")
    assert result.returncode != 0
    assert re.search(message, result.stderr), result.stderr


def test_empty_speaker_gender_or_partition_and_transcripts_outside_train(corpus, tmp_path):
    labels = corpus / "Labels" / "labels_consensus.csv"
    text = labels.read_text()
    for row, edited in (  # an unknown speaker and gender; a row in no partition (left out, counted)
        ("_0002_0003.wav,F,4.2,3.8,4.0,21,Female,Development", "_0002_0003.wav,F,4.2,3.8,4.0,,,Development"),
        ("_0003_0001.wav,C,4.2,3.8,4.0,31,Male,Test1", "_0003_0001.wav,C,4.2,3.8,4.0,31,Male,"),
    ):
        assert text.count(row) == 1
        text = text.replace(row, edited)
    labels.write_text(text)
    (corpus / "Transcripts" / "MSP-PODCAST_0002_0000.txt").write_text("A development sentence.\n")
    result = prepare(corpus, tmp_path / "data")
    assert result.returncode == 0, result.stderr
    valid = tmp_path / "data" / "valid"
    assert table(valid / "utt2spk")["MSP-PODCAST_0002_0003"] == "MSP-PODCAST_0002_0003"
    assert table(valid / "utt2gender")["MSP-PODCAST_0002_0003"] == "Unknown"
    assert table(valid / "text")["MSP-PODCAST_0002_0000"] == "A development sentence."
    assert "MSP-PODCAST_0003_0001" not in table(tmp_path / "data" / "test1" / "utt2emo")
    assert "in no partition 1" in result.stdout


def test_missing_audio_is_left_to_stage_3_or_stops_stage_1(corpus, tmp_path):
    os.remove(corpus / "Audios" / "MSP-PODCAST_0003_0002.wav")
    result = prepare(corpus, tmp_path / "data")
    assert result.returncode == 0, result.stderr
    assert re.search(
        r"WARNING: 1 audio file\(s\) missing, e.g.\n  .*MSP-PODCAST_0003_0002.wav\n", result.stdout
    )
    assert "MSP-PODCAST_0003_0002" in table(tmp_path / "data" / "test1" / "wav.scp")
    manifest = [
        sys.executable,
        "-m",
        "crab.bin.make_manifest",
        "--data_dir",
        str(tmp_path / "data" / "test1"),
    ]
    manifest += ["--data_root", str(corpus), "--classes", ",".join(CLASSES), "--modality", "speech"]
    result = subprocess.run(
        [*manifest, "--out", str(tmp_path / "test1.json")], capture_output=True, text=True
    )
    assert result.returncode != 0 and "MSP-PODCAST_0003_0002: missing audio file" in result.stderr
    result = subprocess.run(
        [*manifest, "--out", str(tmp_path / "test1.json"), "--policy", "skip"], capture_output=True, text=True
    )
    assert "test1: skipped 1 of 8 utterances: {'missing audio': 1}" in result.stdout, result.stderr
    result = prepare(corpus, tmp_path / "data", "--missing_audio", "error")
    assert result.returncode != 0
    assert re.search(
        r"1 audio file\(s\) missing, e.g.\n  .*MSP-PODCAST_0003_0002.wav\n.*--missing_audio skip "
        r"\(run.sh --data_opts \"--missing_audio skip\"\)",
        result.stderr,
    )


def test_no_audio_at_all_stops_stage_1(corpus, tmp_path):
    shutil.rmtree(corpus / "Audios")
    result = prepare(corpus, tmp_path / "data")
    assert result.returncode != 0
    assert re.search(r"none of the 40 labelled audio files is in .*Audios, e.g.\n", result.stderr), (
        result.stderr
    )


def test_missing_audio_can_be_skipped(corpus, tmp_path):
    os.remove(corpus / "Audios" / "MSP-PODCAST_0003_0002.wav")
    result = prepare(corpus, tmp_path / "data", "--missing_audio", "skip")
    assert result.returncode == 0, result.stderr
    assert "missing audio 1" in result.stdout
    assert "MSP-PODCAST_0003_0002" not in table(tmp_path / "data" / "test1" / "utt2emo")


def test_expected_counts_file(corpus, tmp_path):
    counts = tmp_path / "counts.txt"
    counts.write_text("# MSP-Podcast fixture\ntrain total 16\ntrain anger 2\ntest2 surprise 1  # one\n")
    assert prepare(corpus, tmp_path / "data", "--expected_counts", str(counts)).returncode == 0
    counts.write_text("train total 17\nvalid fear 2\ntest1 anger 1\n")
    result = prepare(corpus, tmp_path / "data", "--expected_counts", str(counts))
    assert result.returncode != 0
    assert "counts differ from" in result.stderr
    assert (
        "train total: found 16, expected 17" in result.stderr
        and "valid fear: found 1, expected 2" in result.stderr
    )
    assert "test1 anger" not in result.stderr
    counts.write_text("train joy 3\n")
    result = prepare(corpus, tmp_path / "data", "--expected_counts", str(counts))
    assert "counts.txt:1: expected '<split> <class|total> <count>'" in result.stderr


def test_data_opts_are_shell_words_a_path_with_spaces_quoted(corpus, tmp_path):
    # the README's --data_opts "--expected_counts $PWD/my_counts.txt", $PWD holding a space
    counts = tmp_path / "My Projects" / "my counts.txt"
    counts.parent.mkdir()
    counts.write_text("train total 17\n")
    result = subprocess.run(
        ["bash", os.path.join(RECIPE, "run.sh"), "--stage", "1", "--stop_stage", "1"]
        + ["--data_dir", str(tmp_path / "data"), "--data_opts", f"--expected_counts '{counts}'"],
        capture_output=True,
        text=True,
        env={**os.environ, "MSP_PODCAST": str(corpus)},
    )
    assert result.returncode != 0 and "train total: found 16, expected 17" in result.stderr, result.stderr


def test_rerun_rewrites_the_same_dirs_and_keeps_asr_transcripts(corpus, tmp_path):
    assert prepare(corpus, tmp_path / "data").returncode == 0
    first = {p: p.read_bytes() for p in (tmp_path / "data").rglob("*") if p.is_file()}
    (tmp_path / "data" / "train" / "text.asr").write_text("kept\n")
    assert prepare(corpus, tmp_path / "data").returncode == 0
    assert all(p.read_bytes() == content for p, content in first.items())
    assert (tmp_path / "data" / "train" / "text.asr").read_text() == "kept\n"


def test_gold_text_leaves_untranscribed_utterances_to_the_manifest_checks(corpus, tmp_path):
    assert prepare(corpus, tmp_path / "data").returncode == 0
    split = tmp_path / "data" / "test1"
    options = [
        "--data_dir",
        str(split),
        "--data_root",
        str(corpus),
        "--classes",
        ",".join(CLASSES),
        "--out",
        str(tmp_path / "test1.json"),
    ]
    with pytest.raises(SystemExit, match="(?s)8 bad utterance.*empty transcript"):
        make_manifest.main(options)
    with pytest.raises(SystemExit, match="no usable utterances"):
        make_manifest.main(options + ["--policy", "skip"])


def test_run_sh_needs_the_corpus_root(tmp_path):
    result = subprocess.run(
        ["bash", os.path.join(RECIPE, "run.sh")],
        capture_output=True,
        text=True,
        env={**os.environ, "MSP_PODCAST": str(tmp_path / "nowhere")},
    )
    assert result.returncode == 1
    assert "set MSP_PODCAST in db.sh" in result.stderr


@pytest.mark.slow
def test_stages_1_to_8_with_asr_transcripts(corpus, tmp_path):
    asr_model = build_tiny_whisper(tmp_path / "tiny_whisper")
    result = subprocess.run(
        [
            "bash",
            os.path.join(RECIPE, "run.sh"),
            "--config",
            "conf/crab_tiny.yaml",
            "--bpe_vocab_size",
            "300",
            "--data_dir",
            str(tmp_path / "data"),
            "--exp_dir",
            str(tmp_path / "exp"),
            "--asr_model",
            asr_model,
            "--asr_opts",
            "--language english --max_new_tokens 8 --batch_size 8",
            "--train_opts",
            "--number_of_epochs=1 --batch_size=4",
            "--nj",
            "2",  # stages 2, 5 and 6 as jobs
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "MSP_PODCAST": str(corpus)},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert finished_jobs(tmp_path / "exp" / "crab_tiny" / "log") == [
        "stage2.log",
        "stage5.official.seed42.log",
        "stage6.official.seed42.log",
    ]
    data = tmp_path / "data" / "official"
    for split, n in (("train", 16), ("valid", 8), ("test1", 8), ("test2", 8)):
        asr = table(data / split / "text.asr")
        assert list(asr) == list(table(data / split / "wav.scp")) and all(asr.values())
        manifest = json.loads((data / f"{split}.json").read_text())
        assert len(manifest) == n and all(e["text"] == asr[u] for u, e in manifest.items())
        assert all(e["wav"].startswith("{data_root}/Audios/") for e in manifest.values())
    for test in ("test1", "test2"):
        run_dir = tmp_path / "exp" / "crab_tiny" / "official" / "seed42"
        assert (run_dir / f"eval_{test}" / "predictions.csv").is_file()
        assert set(json.loads((run_dir / f"eval_{test}" / "scores.json").read_text())) >= {"WAR", "UAR"}
        assert (
            "| run | N | WAR | UAR |" in (tmp_path / "exp" / "crab_tiny" / f"results_{test}.md").read_text()
        )

    # The package records the ASR model that made the transcripts, also when stage 8 runs
    # later without --asr_model (run.sh's default names another model).
    model_meta = tmp_path / "exp" / "crab_tiny" / "official" / "seed42" / "model" / "metadata.json"
    repackaged = subprocess.run(
        [
            "bash",
            os.path.join(RECIPE, "run.sh"),
            "--config",
            "conf/crab_tiny.yaml",
            "--stage",
            "8",
            "--data_dir",
            str(tmp_path / "data"),
            "--exp_dir",
            str(tmp_path / "exp"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "MSP_PODCAST": str(corpus)},
    )
    assert repackaged.returncode == 0, repackaged.stdout[-3000:] + repackaged.stderr[-3000:]
    assert "openai/whisper-large-v3" not in model_meta.read_text()
    assert json.loads(model_meta.read_text())["training"]["asr_model"] == ".../tiny_whisper"

    # Test3: the packaged model's predictions as a submission file, every Test3 file once.
    model = tmp_path / "exp" / "crab_tiny" / "official" / "seed42" / "model"
    out = tmp_path / "test3.csv"
    result = subprocess.run(
        [
            "bash",
            os.path.join(RECIPE, "local", "test3.sh"),
            "--model",
            str(model),
            "--out",
            str(out),
            "--data_dir",
            str(tmp_path / "data" / "test3"),
            "--asr_model",
            asr_model,
            "--infer_opts",
            "--language english --max_new_tokens 8",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "MSP_PODCAST": str(corpus)},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = out.read_text().splitlines()
    assert rows[0] == "FileName,EmoClass" and len(rows) == 2
    name, letter = rows[1].split(",")
    assert name == "MSP-PODCAST_0010_0000.wav" and letter in CODES


def test_test3_reads_the_paths_it_is_given_from_where_it_was_run(corpus, tmp_path):
    """Run from another folder, test3.sh (which works in its recipe directory) reads --model,
    --labels and MSP_PODCAST from the user's folder, not from the recipe's."""
    labels = tmp_path / "labels.csv"
    shutil.copy(corpus / "Labels" / "labels_consensus.csv", labels)
    result = subprocess.run(
        [
            "bash",
            os.path.join(RECIPE, "local", "test3.sh"),
            *("--model", "models/crab", "--out", "test3.csv", "--labels", "labels.csv"),
            *("--data_dir", str(tmp_path / "t3")),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "MSP_PODCAST": os.path.relpath(corpus, tmp_path)},
    )
    assert result.returncode != 0  # there is no model, after the Test3 list was made
    assert table(tmp_path / "t3" / "wav.scp") == {
        "MSP-PODCAST_0010_0000": str(corpus / "Audios" / "MSP-PODCAST_0010_0000.wav")
    }
    assert str(tmp_path / "models" / "crab") in result.stderr, result.stderr


TEST3 = os.path.join(RECIPE, "local", "test3.py")


def run_test3(*args):
    return subprocess.run([sys.executable, TEST3, *map(str, args)], capture_output=True, text=True)


def test_test3_files_from_split_set_or_partitions(corpus, tmp_path):
    result = run_test3("prepare", "--corpus_dir", corpus, "--out_dir", tmp_path / "t3")
    assert result.returncode == 0, result.stderr
    assert table(tmp_path / "t3" / "wav.scp") == {
        "MSP-PODCAST_0010_0000": str(corpus / "Audios" / "MSP-PODCAST_0010_0000.wav")
    }
    # a Partitions.txt lists Test3 files whose labels are withheld
    sf.write(corpus / "Audios" / "MSP-PODCAST_0011_0000.wav", np.full(8000, 0.1, "float32"), 16000)
    (tmp_path / "Partitions.txt").write_text(
        "Test3; MSP-PODCAST_0010_0000.wav\nTest3; MSP-PODCAST_0011_0000\nTrain; MSP-PODCAST_0001_0000.wav\n"
    )
    result = run_test3(
        "prepare",
        "--corpus_dir",
        corpus,
        "--out_dir",
        tmp_path / "t3",
        "--partitions",
        tmp_path / "Partitions.txt",
    )
    assert result.returncode == 0, result.stderr
    assert list(table(tmp_path / "t3" / "wav.scp")) == ["MSP-PODCAST_0010_0000", "MSP-PODCAST_0011_0000"]
    os.remove(corpus / "Audios" / "MSP-PODCAST_0011_0000.wav")
    result = run_test3(
        "prepare",
        "--corpus_dir",
        corpus,
        "--out_dir",
        tmp_path / "t3",
        "--partitions",
        tmp_path / "Partitions.txt",
    )
    assert result.returncode != 0 and "1 of 2 Test3 files missing" in result.stderr


def test_test3_submission_is_complete_or_refused(tmp_path):
    (tmp_path / "wav.scp").write_text("a /x/a.wav\nb /x/b.wav\n")
    header = "id\tpredicted\tscore\n"

    def submit(results, out):
        (tmp_path / "r.tsv").write_text(results)
        return run_test3(
            "submission", "--wav_scp", tmp_path / "wav.scp", "--results", tmp_path / "r.tsv", "--out", out
        )

    result = submit(header + "b\tcontempt\t0.9\na\tanger\t0.8\n", tmp_path / "s.csv")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "s.csv").read_text().splitlines() == ["FileName,EmoClass", "a.wav,A", "b.wav,C"]
    # crab-infer's text column, unquoted: an ASR transcript may open a quote it never closes
    text = "id\tpredicted\tscore\ttext_source\ttext\n"
    result = submit(
        text + 'a\tanger\t0.8\tasr\t"I told him, no\nb\tcontempt\t0.9\tasr\t"fine"\n', tmp_path / "s.csv"
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "s.csv").read_text().splitlines() == ["FileName,EmoClass", "a.wav,A", "b.wav,C"]
    for content, message in (
        (header + "a\tanger\t0.8\n", "1 Test3 file(s) without a prediction"),
        (header + "a\tanger\t1\nb\tanger\t1\nc\tanger\t1\n", "1 prediction(s) of files not in"),
        (header + "a\tangry\t1\nb\tsad\t1\n", "not MSP-Podcast's eight"),
    ):
        result = submit(content, tmp_path / "bad.csv")
        assert result.returncode != 0 and message in result.stderr and not (tmp_path / "bad.csv").exists()
