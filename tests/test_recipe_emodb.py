"""The EmoDB recipe: file-name parsing, folds, count checks, bad input, and a smoke run
on a fixture in EmoDB's layout (wav/03a01Fa.wav ..., erklaerung.txt, erkennung.txt)."""

import csv
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from crab.data import read_audio
from crab.dataprep import DataPrepError
from tests.conftest import ROOT

RECIPE = os.path.join(ROOT, "egs", "emodb")
LOCAL = os.path.join(RECIPE, "local")
# Import the recipe's scripts without writing __pycache__ into the repository.
NO_BYTECODE = {"PYTHONDONTWRITEBYTECODE": "1"}
_write_bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True
sys.path.insert(0, LOCAL)
_spec = importlib.util.spec_from_file_location("emodb_prepare_data", os.path.join(LOCAL, "prepare_data.py"))
prep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(prep)
facts = sys.modules["emodb_facts"]
_spec = importlib.util.spec_from_file_location("emodb_text_control", os.path.join(LOCAL, "text_control.py"))
text_control = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(text_control)
sys.dont_write_bytecode = _write_bytecode

SPEAKERS = sorted(facts.SPEAKER_GENDER)
CODES = sorted(facts.SENTENCES)
LETTERS = list(facts.EMOTIONS)
# Speakers recorded at other rates in the fixture: read_audio must resample them.
RATES = {"15": 44100, "16": 22050}
SMOKE_FOLD = "fold03_13"  # test 03 13, valid 10 16 (22.05 kHz), train has 15 (44.1 kHz)


def write_wav(path, seconds=0.5, rate=16000, freq=220.0, seed=0):
    t = np.arange(int(seconds * rate)) / rate
    noise = 0.01 * np.random.default_rng(seed).standard_normal(t.size)
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t) + noise).astype("float32"), rate, subtype="PCM_16")


def write_docs(root):
    """The corpus's two text files, Latin-1 encoded as distributed (the prep ignores them)."""
    notes = "Die Auswahl der Sätze erfolgt bei mind. 80% richtig erkannter Emotion (>=16 von 20 Hörern)."
    (root / "erklaerung.txt").write_bytes(notes.encode("latin-1"))
    ratings = "Nr.\tSatz\terkannt\tnatuerlich\n1  \t03a01Fa.wav\t90,00     \t75,00     \n"
    (root / "erkennung.txt").write_bytes(ratings.encode("latin-1"))


def fixture_utt(spk, letter):
    """The fixture's one utterance of ``spk`` in emotion ``letter`` (text codes rotate)."""
    i, k = SPEAKERS.index(spk), LETTERS.index(letter)
    return f"{spk}{CODES[(i + k) % len(CODES)]}{letter}a"


def make_fixture(root):
    """Every speaker in every emotion once (70 files of 0.5 s), plus an AppleDouble file."""
    (root / "wav").mkdir(parents=True)
    write_docs(root)
    for i, spk in enumerate(SPEAKERS):
        for k, letter in enumerate(LETTERS):
            path = root / "wav" / f"{fixture_utt(spk, letter)}.wav"
            write_wav(path, rate=RATES.get(spk, 16000), freq=150 + 40 * k, seed=7 * i + k)
    (root / "wav" / "._03a01Wa.wav").write_bytes(b"\x00\x05\x16\x07 Mac OS X metadata")
    return root


def make_full_count_fixture(root):
    """535 short files with the published per-class counts."""
    (root / "wav").mkdir(parents=True)
    write_wav(root / "template.wav", seconds=0.03)
    for letter, label in facts.EMOTIONS.items():
        for j in range(facts.EXPECTED_COUNTS[label]):
            name = f"{SPEAKERS[j % 10]}{CODES[j // 10 % 10]}{letter}{'abcdefgh'[j // 100]}.wav"
            shutil.copy(root / "template.wav", root / "wav" / name)
    return root


def run_prep(corpus, out, *options, **env):
    """local/data.sh as ser.sh runs it: in the recipe dir, with the venv's python first on PATH."""
    command = [
        "bash",
        os.path.join(LOCAL, "data.sh"),
        "--data_root",
        str(corpus),
        "--data_dir",
        str(out),
        *options,
    ]
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]
    return subprocess.run(
        command,
        cwd=RECIPE,
        capture_output=True,
        text=True,
        env={**os.environ, **NO_BYTECODE, "PATH": path, **env},
    )


def read_table(path):
    with open(path, encoding="utf-8") as f:
        return dict(line.rstrip("\n").split(" ", 1) for line in f)


@pytest.fixture(scope="module")
def fixture_corpus(tmp_path_factory):
    return make_fixture(tmp_path_factory.mktemp("emodb") / "emodb")


def test_corpus_facts():
    assert facts.CLASSES == ["anger", "boredom", "disgust", "fear", "happiness", "sadness", "neutral"]
    assert sum(facts.EXPECTED_COUNTS.values()) == 535 and list(facts.EXPECTED_COUNTS) == facts.CLASSES
    assert CODES == ["a01", "a02", "a04", "a05", "a07", "b01", "b02", "b03", "b09", "b10"]
    assert facts.SENTENCES["a01"] == "Der Lappen liegt auf dem Eisschrank."
    assert facts.SENTENCES["b01"] == "Was sind denn das für Tüten, die da unter dem Tisch stehen?"
    assert all(s[-1] in ".?" for s in facts.SENTENCES.values())
    males = sorted(s for s, g in facts.SPEAKER_GENDER.items() if g == "male")
    assert SPEAKERS == ["03", "08", "09", "10", "11", "12", "13", "14", "15", "16"]
    assert males == ["03", "10", "11", "12", "15"]


def test_parse_name():
    assert prep.parse_name("03a01Fa.wav") == {"spk": "03", "code": "a01", "emo": "happiness", "version": "a"}
    assert prep.parse_name("16b10Wb.wav")["emo"] == "anger"
    assert prep.parse_name("14a05Lc.wav")["emo"] == "boredom"
    for name, reason in (
        ("03a01Xa.wav", "unknown emotion letter 'X'"),
        ("17a01Fa.wav", "unknown speaker '17'"),
        ("03a03Fa.wav", "unknown text code 'a03'"),
        ("03a01Fa.WAV", "not an EmoDB file name"),
        ("03a01Fa.wav.bak", "not an EmoDB file name"),
    ):
        with pytest.raises(ValueError, match=reason):
            prep.parse_name(name)


@pytest.mark.parametrize("num_folds", [5, 10])
def test_folds_are_speaker_independent(num_folds):
    folds = prep.make_folds(num_folds)
    assert len(folds) == num_folds
    assert sorted(s for _, test, _, _ in folds for s in test) == SPEAKERS  # each speaker tested once
    for i, (name, test, valid, train) in enumerate(folds):
        assert name == "fold" + "_".join(test)
        assert not set(test) & set(valid) and not set(train) & (set(test) | set(valid))
        assert sorted(test + valid + train) == SPEAKERS
        assert valid == folds[(i + 1) % num_folds][1]  # validation: the next fold's test speakers
        if num_folds == 5:
            assert sorted(facts.SPEAKER_GENDER[s] for s in test) == ["female", "male"]
            assert len(train) == 6 and len(valid) == 2


def test_run_sh_runs_every_fold():
    with open(os.path.join(RECIPE, "run.sh")) as f:
        folds = re.findall(r'^  --folds "([^"]+)"', f.read(), re.MULTILINE)[0].split()
    assert folds == [name for name, *_ in prep.make_folds(5)]


def test_sorted_pairing_is_issue_7s_folds():
    folds = prep.make_folds(5, "sorted")
    assert [(name, test, valid) for name, test, valid, _ in folds] == [
        ("fold03_08", ["03", "08"], ["09", "10"]),
        ("fold09_10", ["09", "10"], ["11", "12"]),
        ("fold11_12", ["11", "12"], ["13", "14"]),
        ("fold13_14", ["13", "14"], ["15", "16"]),
        ("fold15_16", ["15", "16"], ["03", "08"]),  # validation wraps around
    ]
    assert folds[2][3] == ["03", "08", "09", "10", "15", "16"]
    assert prep.make_folds(5) == prep.make_folds(5, "balanced")  # the default is unchanged
    # ten sorted folds would reuse the names fold03 ... with other validation speakers
    with pytest.raises(DataPrepError, match="--pairing sorted is for the 5 folds"):
        prep.make_folds(10, "sorted")


def test_prep_writes_sorted_pairing_folds(fixture_corpus, tmp_path):
    result = run_prep(fixture_corpus, tmp_path / "data", "--check_counts", "false", "--pairing", "sorted")
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(os.listdir(tmp_path / "data")) == [
        "fold03_08",
        "fold09_10",
        "fold11_12",
        "fold13_14",
        "fold15_16",
    ]
    assert "fold15_16: test 15 16 | valid 03 08 | train 09 10 11 12 13 14" in result.stdout
    for split, speakers in (
        ("test", {"15", "16"}),
        ("valid", {"03", "08"}),
        ("train", {"09", "10", "11", "12", "13", "14"}),
    ):
        assert set(read_table(tmp_path / "data" / "fold15_16" / split / "utt2spk").values()) == speakers
    result = run_prep(fixture_corpus, tmp_path / "other", "--check_counts", "false", "--pairing", "by_gender")
    assert result.returncode != 0 and "--pairing: invalid choice: 'by_gender'" in result.stderr
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize("num_folds", [1, 2, 3, 4])
def test_num_folds_must_leave_training_speakers(num_folds):
    with pytest.raises(DataPrepError, match="5 or 10"):
        prep.make_folds(num_folds)


def test_prep_writes_folds(fixture_corpus, tmp_path):
    # LC_ALL=C: the UTF-8 output must not depend on the locale.
    result = run_prep(fixture_corpus, tmp_path / "data", "--check_counts", "false", LC_ALL="C", LANG="C")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ignored 1 hidden file(s)" in result.stdout
    assert "sample rates (Hz: files): 16000: 56, 22050: 7, 44100: 7" in result.stdout
    assert sorted(os.listdir(tmp_path / "data")) == sorted(name for name, *_ in prep.make_folds(5))
    for name, test, valid, train in prep.make_folds(5):
        speakers = {}
        for split, expected in (("train", train), ("valid", valid), ("test", test)):
            d = tmp_path / "data" / name / split
            spk = read_table(d / "utt2spk")
            assert sorted(set(spk.values())) == expected and len(spk) == 7 * len(expected)
            speakers[split] = set(spk.values())
            for table in ("wav.scp", "text", "utt2emo", "utt2gender", "utt2sample_rate"):
                assert read_table(d / table).keys() == spk.keys()
        assert not speakers["train"] & speakers["test"]
    d = tmp_path / "data" / SMOKE_FOLD / "train"
    wavs, texts, emos = read_table(d / "wav.scp"), read_table(d / "text"), read_table(d / "utt2emo")
    happy, angry = fixture_utt("08", "F"), fixture_utt("15", "W")
    assert wavs[happy] == str(fixture_corpus / "wav" / f"{happy}.wav")
    assert emos[happy] == "happiness" and emos[angry] == "anger"
    assert all(text == facts.SENTENCES[utt[2:5]] for utt, text in texts.items())
    assert "Was sind denn das für Tüten, die da unter dem Tisch stehen?" in texts.values()  # UTF-8
    assert read_table(d / "utt2gender")[angry] == "male"
    assert read_table(d / "utt2sample_rate")[angry] == "44100"
    again = run_prep(fixture_corpus, tmp_path / "data", "--check_counts", "false")
    assert again.returncode == 0 and read_table(d / "text") == texts  # idempotent


def test_other_sample_rates_are_read_at_16k(fixture_corpus):
    for spk, rate in RATES.items():
        path = fixture_corpus / "wav" / f"{fixture_utt(spk, 'W')}.wav"
        assert sf.info(path).samplerate == rate
        assert read_audio(str(path)).shape == (8000,)  # 0.5 s at 16 kHz


def test_count_check_is_on_by_default(fixture_corpus, tmp_path):
    result = run_prep(fixture_corpus, tmp_path / "data")
    assert result.returncode != 0
    assert "70 utterances, expected 535" in result.stderr and "anger: expected 127, found 10" in result.stderr
    assert "--check_counts false" in result.stderr


def test_published_counts_pass_and_a_missing_file_fails(tmp_path):
    corpus = make_full_count_fixture(tmp_path / "full")
    rows = prep.scan_corpus(str(corpus))
    prep.check_counts(rows, "full")
    os.remove(corpus / "wav" / "03a01Aa.wav")
    with pytest.raises(DataPrepError, match=r"534 utterances, expected 535") as err:
        prep.check_counts(prep.scan_corpus(str(corpus)), "full")
    assert "fear: expected 69, found 68" in str(err.value) and "anger" not in str(err.value)


def test_every_sentence_is_the_documented_one():
    # the corpus documentation's sentences (text codes of the file names); a wrong one is a wrong transcript
    assert facts.SENTENCES == {
        "a01": "Der Lappen liegt auf dem Eisschrank.",
        "a02": "Das will sie am Mittwoch abgeben.",
        "a04": "Heute abend könnte ich es ihm sagen.",
        "a05": "Das schwarze Stück Papier befindet sich da oben neben dem Holzstück.",
        "a07": "In sieben Stunden wird es soweit sein.",
        "b01": "Was sind denn das für Tüten, die da unter dem Tisch stehen?",
        "b02": "Sie haben es gerade hochgetragen und jetzt gehen sie wieder runter.",
        "b03": "An den Wochenenden bin ich jetzt immer nach Hause gefahren und habe Agnes besucht.",
        "b09": "Ich will das eben wegbringen und dann mit Karl was trinken gehen.",
        "b10": "Die wird auf dem Platz sein, wo wir sie immer hinlegen.",
    }


def test_hidden_files_of_a_copy_are_ignored(tmp_path):
    corpus = make_fixture(tmp_path / "emodb")  # with an AppleDouble ._03a01Wa.wav
    (corpus / "wav" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")  # left by macOS Finder
    assert len(prep.scan_corpus(str(corpus))) == 70


def test_count_check_compares_each_class_not_only_the_total(tmp_path):
    corpus = make_full_count_fixture(tmp_path / "full")
    # 535 in all, a fear file named as anger
    os.rename(corpus / "wav" / "03a01Aa.wav", corpus / "wav" / "03a01Wz.wav")
    with pytest.raises(DataPrepError, match=r"535 utterances, expected 535") as err:
        prep.check_counts(prep.scan_corpus(str(corpus)), "full")
    assert "anger: expected 127, found 128" in str(err.value)
    assert "fear: expected 69, found 68" in str(err.value)


def test_bad_input_is_named(tmp_path):
    assert "no directory" in run_prep(tmp_path / "nowhere", tmp_path / "data").stderr
    corpus = make_fixture(tmp_path / "emodb")
    (corpus / "wav" / "03a01Xa.wav").write_bytes(b"")
    (corpus / "wav" / "08a02Fa.wav").write_bytes(b"not a wav")
    result = run_prep(corpus, tmp_path / "data", "--check_counts", "false")
    assert result.returncode != 0
    assert "2 bad file(s)" in result.stderr
    assert f"{corpus}/wav/03a01Xa.wav: unknown emotion letter 'X'" in result.stderr
    assert f"{corpus}/wav/08a02Fa.wav: unreadable audio" in result.stderr
    for name in os.listdir(corpus / "wav"):
        if name.startswith("16"):
            os.remove(corpus / "wav" / name)
    os.remove(corpus / "wav" / "03a01Xa.wav")
    os.remove(corpus / "wav" / "08a02Fa.wav")
    assert (
        "no files of speaker(s) 16" in run_prep(corpus, tmp_path / "data", "--check_counts", "false").stderr
    )


def _toy_fold(data_dir, fold, train, test):
    """data/<fold>/{train,test}.json from (sentence, label) pairs."""
    os.makedirs(data_dir / fold)
    for split, pairs in (("train", train), ("test", test)):
        entries = {f"{fold}_{split}{i}": {"text": text, "emo": emo} for i, (text, emo) in enumerate(pairs)}
        (data_dir / fold / f"{split}.json").write_text(json.dumps(entries))


def test_text_control_predictors(tmp_path, capsys):
    # Fold A trains on s1: a a b, s2: b c (prior a 2, b 2, c 1; majority a, first of the tie).
    # ratio n(s, c) / n(c): s1 a 1, b 1/2 -> a; s2 b 1/2, c 1 -> c. mode: s1 a; s2 b (tie b c).
    # Test s1 b, s2 c, s3 (unseen: majority) a: ratio a c a (WAR 2/3, recalls 1 0 1: UAR 2/3),
    # mode a b a (1/3; 1 0 0: 1/3), majority a a a (1/3; 1/3).
    _toy_fold(tmp_path, "foldA", [("s1", "a"), ("s1", "a"), ("s1", "b"), ("s2", "b"), ("s2", "c")],
              [("s1", "b"), ("s2", "c"), ("s3", "a")])  # fmt: skip
    # Fold B trains on s1: c c a, s2: a b (prior a 2, b 1, c 2; majority a, first of the tie).
    # ratio: s1 a 1/2, c 1 -> c; s2 a 1/2, b 1 -> b. mode: s1 c; s2 a (tie a b).
    # Test s1 c, s2 b, s2 a, s1 a: ratio c b b c (WAR 1/2, recalls 0 1 1: UAR 2/3),
    # mode c a a c (1/2; 1/2 0 1: 1/2), majority a a a a (1/2; 1 0 0: 1/3).
    _toy_fold(tmp_path, "foldB", [("s1", "c"), ("s1", "c"), ("s1", "a"), ("s2", "a"), ("s2", "b")],
              [("s1", "c"), ("s2", "b"), ("s2", "a"), ("s1", "a")])  # fmt: skip
    train = json.loads((tmp_path / "foldA" / "train.json").read_text())
    test = json.loads((tmp_path / "foldA" / "test.json").read_text())
    scores = text_control.score_fold(train, test, ["a", "b", "c"])
    expected = {"ratio": [2 / 3, 2 / 3], "mode": [1 / 3, 1 / 3], "majority": [1 / 3, 1 / 3]}  # WAR, UAR
    assert [scores[p][m] for p in expected for m in ("WAR", "UAR")] == pytest.approx(
        sum(expected.values(), [])
    )
    text_control.main(["--data_dir", str(tmp_path), "--folds", "foldA foldB", "--classes", "a,b,c"])
    rows = capsys.readouterr().out.splitlines()
    assert rows[3] == "| foldB | 0.500 | 0.667 | 0.500 | 0.500 | 0.500 | 0.333 |"
    # means of the two folds; std ddof 1 of two values: their difference / sqrt(2) (1/6: 0.118)
    assert rows[4] == (
        "| mean ± std (ddof 1), 2 folds | 0.583 ± 0.118 | 0.667 ± 0.000 | 0.417 ± 0.118 | 0.417 ± 0.118 "
        "| 0.417 ± 0.118 | 0.333 ± 0.000 |"
    )


def test_run_sh_needs_the_corpus_root():
    result = subprocess.run(
        ["bash", os.path.join(RECIPE, "run.sh")],
        capture_output=True,
        text=True,
        env={**os.environ, "EMODB": ""},
    )
    assert result.returncode != 0 and "set EMODB in db.sh" in result.stderr


@pytest.mark.slow
def test_smoke_run(fixture_corpus, tmp_path):
    command = [
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
        "--folds",
        SMOKE_FOLD,
        "--data_opts",
        "--check_counts false",
        "--train_opts",
        "--number_of_epochs=1 --batch_size=4",
    ]
    # One thread: two OpenMP threads on 2 busy cores can make training 10 times slower.
    env = {**os.environ, **NO_BYTECODE, "EMODB": str(fixture_corpus), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    manifest = json.loads((tmp_path / "data" / SMOKE_FOLD / "valid.json").read_text(encoding="utf-8"))
    assert {e["spk"] for e in manifest.values()} == {"10", "16"}
    assert {e["sample_rate"] for e in manifest.values()} == {"16000", "22050"}
    run_dir = tmp_path / "exp" / "crab_tiny" / SMOKE_FOLD / "seed42"
    with open(run_dir / "eval_test" / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 14 and {r["id"][:2] for r in rows} == {"03", "13"}
    assert list(rows[0])[3:] == [f"prob_{c}" for c in facts.CLASSES]
    scores = json.loads((run_dir / "eval_test" / "scores.json").read_text())
    assert scores["num_utterances"] == 14 and 0.0 <= scores["UAR"] <= 1.0
    assert "| run | N | WAR | UAR |" in (tmp_path / "exp" / "crab_tiny" / "results_test.md").read_text()


@pytest.mark.skipif(
    not os.path.isdir(os.path.join(os.environ.get("EMODB", ""), "wav")),
    reason="set EMODB to a real copy of EmoDB to check it",
)
def test_real_corpus_counts():
    result = subprocess.run(
        ["bash", os.path.join(LOCAL, "check_real_corpus.sh"), os.environ["EMODB"]],
        capture_output=True,
        text=True,
        env={**os.environ, **NO_BYTECODE},
    )
    assert result.returncode == 0, result.stderr
    assert "127         81         46         69         71         62         79        535" in result.stdout
    sorted_pairs = subprocess.run(
        ["bash", os.path.join(LOCAL, "check_real_corpus.sh"), os.environ["EMODB"], "--pairing", "sorted"],
        capture_output=True,
        text=True,
        env={**os.environ, **NO_BYTECODE},
    )
    assert sorted_pairs.returncode == 0, sorted_pairs.stderr
    totals = re.findall(
        r"^(fold\S+):.*\n.*\ntrain .* (\d+)\nvalid .* (\d+)\ntest .* (\d+)$",
        sorted_pairs.stdout,
        re.MULTILINE,
    )
    assert totals == [
        ("fold03_08", "347", "81", "107"),
        ("fold09_10", "364", "90", "81"),
        ("fold11_12", "315", "130", "90"),
        ("fold13_14", "278", "127", "130"),
        ("fold15_16", "301", "107", "127"),
    ]  # README, Protocol
