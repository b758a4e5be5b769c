"""The IEMOCAP recipe on a fixture in the corpus's layout: labels, folds, checks, stages 1-8."""

import importlib.util
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import ROOT

RUN = os.path.join(ROOT, "egs", "iemocap", "run.sh")
CLASSES = ("angry", "happy", "neutral", "sad")
# Per session: dialog -> (turn suffix, raw label). Both speakers talk in every dialog;
# fru and xxx are not among the four classes, exc is merged into happy.
TURNS = {
    "impro01": [
        ("F000", "neu"),
        ("M000", "ang"),
        ("F001", "hap"),
        ("M001", "exc"),
        ("F002", "sad"),
        ("M002", "fru"),
        ("F003", "xxx"),
    ],
    "script01_1": [("F000", "ang"), ("M000", "sad"), ("F001", "exc"), ("M001", "neu")],
}
ANNOTATOR_LINES = "C-E2:\tNeutral;\t()\nC-F1:\tNeutral;\t(curious)\nA-E3:\tval 3; act 2; dom  2;\t()\n"


def dialog_name(session, dialog):
    return f"Ses0{session}{'F' if dialog.startswith('impro') else 'M'}_{dialog}"


def write_tone(path, k, rng):
    tone = np.sin(2 * np.pi * (120 + 40 * k) * np.arange(8000) / 16000)
    sf.write(path, (0.3 * tone + 0.01 * rng.standard_normal(8000)).astype("float32"), 16000)


@pytest.fixture
def corpus(tmp_path):
    """IEMOCAP_full_release with 2 dialogs per session, 9 four-class utterances each session."""
    root = tmp_path / "IEMOCAP_full_release"
    rng = np.random.default_rng(0)
    for session in range(1, 6):
        base = root / f"Session{session}"
        evaluation = base / "dialog" / "EmoEvaluation"
        (evaluation / "Categorical").mkdir(parents=True)  # per-annotator files, not read
        (base / "dialog" / "transcriptions").mkdir(parents=True)
        for dialog, turns in TURNS.items():
            name = dialog_name(session, dialog)
            (base / "sentences" / "wav" / name).mkdir(parents=True)
            labels = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n"]
            lines = ["M_1 [000.0000-001.0000]: Not an utterance.", f"{name}_MXX0 [001.0-002.0]: [LAUGHTER]"]
            for k, (turn, label) in enumerate(turns):
                utt, start = f"{name}_{turn}", 2.0 * k + 3
                labels.append(
                    f"[{start:.4f} - {start + 1:.4f}]\t{utt}\t{label}\t[2.5000, 2.5000, 2.5000]\n"
                    + ANNOTATOR_LINES
                )
                lines.append(f"{utt} [{start:08.4f}-{start + 1:08.4f}]: A {label} sentence\tnumber {k}.")
                write_tone(base / "sentences" / "wav" / name / f"{utt}.wav", k, rng)
            (evaluation / f"{name}.txt").write_text("\n".join(labels))
            (base / "dialog" / "transcriptions" / f"{name}.txt").write_text("\n".join(lines) + "\n")
        (evaluation / f"._Ses0{session}F_impro01.txt").write_bytes(b"\x00\x05\x16\x07")  # macOS junk
    # Odd encodings: UTF-8 with BOM, CRLF and curly quotes; Windows-1252.
    transcript = root / "Session1" / "dialog" / "transcriptions" / "Ses01F_impro01.txt"
    text = transcript.read_text().replace("A neu sentence\tnumber 0.", "\u201cI\u2019m fine,\u201d she said.")
    transcript.write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode("utf-8"))
    transcript = root / "Session2" / "dialog" / "transcriptions" / "Ses02M_script01_1.txt"
    transcript.write_bytes(transcript.read_bytes().replace(b"A sad sentence", b"It\x92s sad"))
    return root


def run_recipe(corpus_dir, tmp_path, *options, check=True):
    result = subprocess.run(
        ["bash", RUN, "--data_dir", str(tmp_path / "data"), "--exp_dir", str(tmp_path / "exp"), *options],
        capture_output=True,
        text=True,
        env={**os.environ, "IEMOCAP": str(corpus_dir)},
    )
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def prepare(corpus_dir, tmp_path, data_opts="--check_counts false", check=True):
    return run_recipe(
        corpus_dir, tmp_path, "--stage", "1", "--stop_stage", "1", "--data_opts", data_opts, check=check
    )


def table(path):
    with open(path, encoding="utf-8") as f:
        return dict(line.rstrip("\n").split(" ", 1) for line in f)


def test_labels_speakers_and_transcripts(corpus, tmp_path):
    prepare(corpus, tmp_path)
    test = tmp_path / "data" / "session1" / "test"
    emo = table(test / "utt2emo")
    assert emo == {
        "Ses01F_impro01_F000": "neutral",
        "Ses01F_impro01_M000": "angry",
        "Ses01F_impro01_F001": "happy",
        "Ses01F_impro01_M001": "happy",
        "Ses01F_impro01_F002": "sad",
        "Ses01M_script01_1_F000": "angry",
        "Ses01M_script01_1_M000": "sad",
        "Ses01M_script01_1_F001": "happy",
        "Ses01M_script01_1_M001": "neutral",
    }
    # The speaker is the session and the letter of the turn, not of the dialog.
    assert table(test / "utt2spk")["Ses01M_script01_1_F000"] == "Ses01F"
    assert table(test / "utt2gender")["Ses01F_impro01_M000"] == "m"
    assert set(table(test / "utt2session").values()) == {"Session1"}
    types = table(test / "utt2type")
    assert types["Ses01F_impro01_F000"] == "improvised" and types["Ses01M_script01_1_M000"] == "scripted"
    wav = table(test / "wav.scp")["Ses01F_impro01_F000"]
    assert wav == str(
        corpus / "Session1" / "sentences" / "wav" / "Ses01F_impro01" / "Ses01F_impro01_F000.wav"
    )
    text = table(test / "text")
    assert text["Ses01F_impro01_F000"] == "\u201cI\u2019m fine,\u201d she said."  # BOM and CRLF gone
    assert text["Ses01F_impro01_M000"] == "A ang sentence number 1."  # tab collapsed
    windows_1252 = table(tmp_path / "data" / "session2" / "test" / "text")
    assert windows_1252["Ses02M_script01_1_M000"] == "It\u2019s sad number 1."


def test_windows_1252_punctuation_stored_as_c1_controls_is_restored(corpus, tmp_path):
    # U+0085 (a Windows-1252 ellipsis once decoded as Latin-1) is a line break to str.splitlines
    # and whitespace to str.split: the transcript was cut there
    transcript = corpus / "Session3" / "dialog" / "transcriptions" / "Ses03F_impro01.txt"
    lines = transcript.read_text().split("\n")
    at = next(i for i, line in enumerate(lines) if line.startswith("Ses03F_impro01_M000 "))
    assert lines[at].endswith(": A ang sentence\tnumber 1.")
    lines[at] = lines[at].replace("A ang sentence", "\u0085Well\u0085 wait, it\u0092s") + "\u0085"
    text = "\n".join(lines)
    transcript.write_text(text, encoding="utf-8")
    prepare(corpus, tmp_path)
    assert table(tmp_path / "data" / "session3" / "test" / "text")["Ses03F_impro01_M000"] == (
        "\u2026Well\u2026 wait, it\u2019s number 1.\u2026"
    )


def test_folds_of_both_protocols_are_speaker_independent(corpus, tmp_path):
    prepare(corpus, tmp_path)
    data = tmp_path / "data"
    sessions = [f"session{s}" for s in range(1, 6)]
    speakers = [f"Ses0{s}{g}" for s in range(1, 6) for g in "FM"]
    assert sorted(os.listdir(data)) == sorted(sessions + speakers)
    for fold in sessions + speakers:
        spk = {
            split: set(table(data / fold / split / "utt2spk").values())
            for split in ("train", "valid", "test")
        }
        assert not (spk["train"] & spk["test"] or spk["train"] & spk["valid"] or spk["valid"] & spk["test"])
        assert len(spk["train"] | spk["valid"] | spk["test"]) == 10
    assert table(data / "session1" / "valid" / "utt2spk").popitem()[1] == "Ses02F"
    assert set(table(data / "session2" / "test" / "utt2spk").values()) == {"Ses02F", "Ses02M"}
    assert set(table(data / "Ses03M" / "test" / "utt2spk").values()) == {"Ses03M"}
    assert set(table(data / "Ses03M" / "valid" / "utt2spk").values()) == {"Ses03F"}
    assert len(table(data / "Ses03M" / "train" / "utt2spk")) == 36


def test_count_check_names_expected_and_found(corpus, tmp_path):
    result = prepare(corpus, tmp_path, data_opts="", check=False)
    assert result.returncode != 0
    assert "angry    expected  1103, found    10" in result.stderr
    assert "happy    expected  1636, found    15" in result.stderr
    assert "total    expected  5531, found    45" in result.stderr
    assert "--check_counts false" in result.stderr
    # The check is made on the whole corpus, before --improvised_only filters it.
    result = prepare(corpus, tmp_path, data_opts="--improvised_only true", check=False)
    assert result.returncode != 0 and "total    expected  5531, found    45" in result.stderr


def test_improvised_only_rewrites_the_data_dirs(corpus, tmp_path):
    prepare(corpus, tmp_path)
    output = prepare(corpus, tmp_path, data_opts="--check_counts false --improvised_only true").stdout
    data = tmp_path / "data"
    assert set(table(data / "session3" / "test" / "utt2type").values()) == {"improvised"}
    assert len(table(data / "session3" / "test" / "utt2emo")) == 5
    assert "improvised" in output and "scripted" in output  # counts of both, before the filter


@pytest.mark.parametrize(
    "damage, message",
    [
        (
            lambda c: os.remove(c / "Session5" / "dialog" / "transcriptions" / "Ses05M_script01_1.txt"),
            "missing file",
        ),
        (
            lambda c: (c / "Session3" / "dialog" / "transcriptions" / "Ses03F_impro01.txt").write_text(
                "Ses03F_impro01_F000 [003.0000-004.0000]: Only one.\n"
            ),
            "no transcript line for 4 labelled utterance(s): Ses03F_impro01_M000",
        ),
        (
            lambda c: (c / "Session2" / "dialog" / "EmoEvaluation" / "Ses02F_impro01.txt").write_text(
                "[1.0 - 2.0]\tSes02F_impro01_F000\tneutral\t[2.5, 2.5, 2.5]\n"
            ),
            "Ses02F_impro01.txt:1: malformed evaluation line",
        ),
        (
            lambda c: (c / "Session1" / "dialog" / "transcriptions" / "Ses01M_script01_1.txt").write_text(
                "Ses01M_script01_1_F000 no times here\n"
            ),
            "Ses01M_script01_1.txt:1: malformed transcript line",
        ),
    ],
)
def test_bad_input_stops_with_a_clear_message(corpus, tmp_path, damage, message):
    damage(corpus)
    result = prepare(corpus, tmp_path, check=False)
    assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]


def test_bad_audio_is_left_to_stage_3_and_its_policy(corpus, tmp_path):
    wav_dir = corpus / "Session1" / "sentences" / "wav"
    (wav_dir / "Ses01F_impro01" / "Ses01F_impro01_M000.wav").unlink()
    (wav_dir / "Ses01M_script01_1" / "Ses01M_script01_1_F000.wav").write_bytes(b"")
    training = corpus / "Session3" / "sentences" / "wav" / "Ses03M_script01_1" / "Ses03M_script01_1_F000.wav"
    training.write_bytes(b"")  # of fold session1's train split
    output = prepare(corpus, tmp_path).stdout
    assert "WARNING: 1 of 45 labelled utterance(s) have no audio:" in output
    assert "Ses01F_impro01_M000.wav" in output
    manifests = ("--stage", "3", "--stop_stage", "3", "--config", "conf/crab_tiny.yaml")
    manifests += ("--folds", "session1")
    result = run_recipe(corpus, tmp_path, *manifests, check=False)
    assert result.returncode != 0
    assert "session1/test: 2 bad utterance(s)" in result.stderr
    assert "Ses01F_impro01_M000: missing audio file" in result.stderr
    assert "Ses01M_script01_1_F000: empty audio file" in result.stderr
    assert "session1/train: 1 bad utterance(s)" in result.stderr  # every split listed at once
    assert "stage 3: no manifest for session1/train session1/test (see above)" in result.stderr
    output = run_recipe(corpus, tmp_path, *manifests, "--policy", "skip").stdout
    assert "test: skipped 2 of 9 utterances: {'missing audio': 1, 'empty audio file': 1}" in output
    assert len(json.loads((tmp_path / "data" / "session1" / "test.json").read_text())) == 7
    for session in range(1, 6):
        shutil.rmtree(corpus / f"Session{session}" / "sentences")
    result = prepare(corpus, tmp_path, check=False)
    assert result.returncode != 0 and "none of the 45 labelled utterances has its wav" in result.stderr


def load_prep():
    """The recipe's local/prepare_data.py, for the tests of its parts."""
    spec = importlib.util.spec_from_file_location(
        "iemocap_prepare_data", os.path.join(ROOT, "egs", "iemocap", "local", "prepare_data.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


prep = load_prep()


def utterance(utt, emo="neutral"):
    return prep.Utterance(utt, utt.rsplit("_", 1)[0], "Session1", "Ses01F", "f", "improvised", emo)


def test_dialogs_with_a_letter_suffix_are_read(tmp_path):
    # IEMOCAP names some dialogs so: Ses03M_impro05a, Ses03M_impro08b, Ses05M_script01_1b
    folder = tmp_path / "Session3" / "dialog" / "EmoEvaluation"
    (folder / "Categorical").mkdir(parents=True)
    for dialog in ("Ses03M_impro05a", "Ses03M_impro05b", "Ses03F_script01_1"):
        (folder / f"{dialog}.txt").write_text(f"[1.0 - 2.0]\t{dialog}_F000\tneu\t[2.5, 2.5, 2.5]\n")
    found = prep.dialogs(str(tmp_path), 3)
    assert [dialog for dialog, _ in found] == ["Ses03F_script01_1", "Ses03M_impro05a", "Ses03M_impro05b"]
    (u,) = prep.read_evaluation(found[1][1], "Ses03M_impro05a", 3)
    assert (u.utt, u.speaker, u.type, u.emo) == ("Ses03M_impro05a_F000", "Ses03F", "improvised", "neutral")


def test_evaluation_lines_with_spaces_for_tabs_are_read(tmp_path):
    # a copy saved by an editor that turns tabs into spaces: the turns are still there
    path = tmp_path / "Ses01F_impro01.txt"
    path.write_text(
        "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"
        "[6.2901 - 8.2357]    Ses01F_impro01_F000    exc    [2.5000, 2.5000, 2.5000]\n"
        "C-E2:    Excited;    ()\n"
    )
    (u,) = prep.read_evaluation(str(path), "Ses01F_impro01", 1)
    assert (u.utt, u.emo) == ("Ses01F_impro01_F000", "happy")


def test_a_labelled_turn_numbered_xx_is_kept(tmp_path):
    # turns that the corpus numbers XX (Ses03F_impro06_FXX0) are turns of their speaker like any other
    path = tmp_path / "Ses03F_impro06.txt"
    path.write_text("[1.0 - 2.0]\tSes03F_impro06_FXX0\tsad\t[2.5, 2.5, 2.5]\n")
    (u,) = prep.read_evaluation(str(path), "Ses03F_impro06", 3)
    assert (u.utt, u.speaker, u.emo) == ("Ses03F_impro06_FXX0", "Ses03F", "sad")


@pytest.mark.parametrize(
    "lines, message",
    [
        (  # which label holds? Neither is taken
            ["Ses01F_impro01_F000\tneu", "Ses01F_impro01_F000\tang"],
            r"Ses01F_impro01.txt:4: utterance Ses01F_impro01_F000 labelled twice",
        ),
        (  # a turn of another dialog: its wav and transcript are not in this one's folders
            ["Ses01F_impro01_F000\tneu", "Ses01F_impro02_F001\tang"],
            r"Ses01F_impro01.txt:4: malformed evaluation line",
        ),
    ],
)
def test_an_evaluation_line_that_would_mislabel_stops(tmp_path, lines, message):
    path = tmp_path / "Ses01F_impro01.txt"
    turns = [f"[{k}.0 - {k}.5]\t{line}\t[2.5, 2.5, 2.5]" for k, line in enumerate(lines)]
    path.write_text("% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n" + "\n".join(turns) + "\n")
    with pytest.raises(SystemExit, match=message):
        prep.read_evaluation(str(path), "Ses01F_impro01", 1)


def test_a_second_transcript_of_an_utterance_stops(tmp_path):
    folder = tmp_path / "Session1" / "dialog" / "transcriptions"
    folder.mkdir(parents=True)
    (folder / "Ses01F_impro01.txt").write_text(
        "Ses01F_impro01_F000 [001.0-002.0]: First.\nSes01F_impro01_F000 [001.0-002.0]: Which one?\n"
    )
    with pytest.raises(SystemExit, match=r"Ses01F_impro01.txt:2: second transcript for Ses01F_impro01_F000"):
        prep.add_transcripts([utterance("Ses01F_impro01_F000")], str(tmp_path))


def test_count_check_compares_each_class_not_only_the_total():
    def utts(counts):
        return [utterance(f"Ses01F_impro01_F{c}{i}", c) for c, n in counts.items() for i in range(n)]

    prep.check_counts(utts(prep.EXPECTED_COUNTS), "IEMOCAP_full_release")
    swapped = {**prep.EXPECTED_COUNTS, "angry": 1084, "sad": 1103}  # the same 5531 in all
    with pytest.raises(SystemExit, match=r"angry    expected  1103, found  1084"):
        prep.check_counts(utts(swapped), "IEMOCAP_full_release")


def test_session_folds_validate_on_a_female_then_a_male_speaker():
    folds = prep.folds()
    valid = {f"session{s}": folds[f"session{s}"][1] for s in range(1, 6)}
    assert valid == {
        "session1": {"Ses02F"},
        "session2": {"Ses03M"},
        "session3": {"Ses04F"},
        "session4": {"Ses05M"},
        "session5": {"Ses01F"},
    }


def test_run_sh_checks_root_and_protocol(corpus, tmp_path):
    unset = run_recipe("", tmp_path, check=False)
    assert unset.returncode != 0 and "set IEMOCAP in db.sh" in unset.stderr
    bad = run_recipe(corpus, tmp_path, "--protocol", "loso3", check=False)
    assert bad.returncode != 0 and "--protocol must be loso5 or loso10" in bad.stderr
    # Stage 7 (scoring) alone stops naming the predictions of every fold it was asked to score.
    for options, folds in (
        (["--protocol=loso5"], [f"session{s}" for s in range(1, 6)]),
        (["--protocol=loso10"], [f"Ses0{s}{g}" for s in range(1, 6) for g in "FM"]),
        (["--protocol", "loso10", "--folds", "session2 Ses01M"], ["Ses01M", "session2"]),  # a --folds wins
    ):
        result = run_recipe(corpus, tmp_path, "--stage", "7", *options, check=False)
        missing = sorted(set(re.findall(r"crab/(\w+)/seed42/eval_test/predictions.csv", result.stderr)))
        assert result.returncode != 0 and missing == sorted(folds), result.stderr[-2000:]


@pytest.mark.slow
def test_stages_1_to_8_on_one_fold(corpus, tmp_path):
    run_recipe(
        corpus,
        tmp_path,
        "--config",
        "conf/crab_tiny.yaml",
        "--bpe_vocab_size",
        "300",
        "--folds",
        "session1",
        "--data_opts",
        "--check_counts false",
        "--train_opts",
        "--number_of_epochs=1 --batch_size=4",
    )
    manifest = json.loads((tmp_path / "data" / "session1" / "test.json").read_text())
    assert len(manifest) == 9 and {e["spk"] for e in manifest.values()} == {"Ses01F", "Ses01M"}
    entry = manifest["Ses01F_impro01_M000"]
    assert entry["wav"] == "{data_root}/Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_M000.wav"
    assert (entry["emo"], entry["gender"], entry["session"], entry["type"]) == (
        "angry",
        "m",
        "Session1",
        "improvised",
    )
    eval_dir = tmp_path / "exp" / "crab_tiny" / "session1" / "seed42" / "eval_test"
    assert (eval_dir / "predictions.csv").is_file()
    scores = json.loads((eval_dir / "scores.json").read_text())
    assert scores["num_utterances"] == 9 and 0.0 <= scores["UAR"] <= 1.0
    assert "| run | N | WAR | UAR |" in (tmp_path / "exp" / "crab_tiny" / "results_test.md").read_text()


def test_help_begins_with_the_usage_and_describes_protocol():
    result = subprocess.run([RUN, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Usage: ")
    assert "  --protocol        [loso5] loso5 | loso10: the folds to run (a --folds given wins)" in lines
