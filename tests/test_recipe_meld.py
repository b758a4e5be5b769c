"""The MELD recipe on a fixture in the release's layout: audio extraction, exclusions,
text and labels from the CSVs, checks, and stages 0-8."""

import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest
import soundfile as sf

from crab.experiment import parse_and_load
from crab.locking import folder_lock
from tests.conftest import ROOT

RECIPE = os.path.join(ROOT, "egs", "meld")
RUN = os.path.join(RECIPE, "run.sh")
CLASSES = ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise")
HEADER = [
    "Sr No.",
    "Utterance",
    "Speaker",
    "Emotion",
    "Sentiment",
    "Dialogue_ID",
    "Utterance_ID",
    "Season",
    "Episode",
    "StartTime",
    "EndTime",
]
SENTIMENT = {
    "anger": "negative",
    "disgust": "negative",
    "fear": "negative",
    "joy": "positive",
    "neutral": "neutral",
    "sadness": "negative",
    "surprise": "positive",
}
# Two lines per class: curly quotes, ellipses, dashes, commas (quoted fields), one
# line broken inside its quotes, and one mojibake line (UTF-8 read as Windows-1252).
TEXTS = {
    "anger": ["You had no right\u2014none!\u2014to read my journal.", "Get out, Joey. Now."],
    "disgust": [
        "Ew\u2026 that\u2019s the milk from last week?",
        "That is so gross, I can\u2019t look at it.",
    ],
    "fear": ["\u201cDid you hear that?\u201d Something\u2019s in the closet\u2026", "Oh God, what do we do?"],
    "joy": ["We\u2019re having a baby!", "Youâ€™re gonna love it, I promise."],
    "neutral": [
        "So let\u2019s talk a little bit about your duties.",
        "It\u2019s on the counter,\nby the keys.",
    ],
    "sadness": ["I just\u2026 I miss her, you know?", "He\u2019s gone. He\u2019s really gone."],
    "surprise": ["What?! You\u2019re kidding me!", "Wait \u2013 you two are married?"],
}
SPEAKERS = ("Ross", "The Interviewer", "Rachel", "Monica")
# Clips local/exclude.txt lists, as the release has them: a corrupt mp4, a missing one.
BROKEN = {"train": ("dia125_utt3", "neutral"), "dev": ("dia110_utt7", "neutral")}
CLIP_FOLDERS = {"train": "train_splits", "dev": "dev_splits_complete", "test": "output_repeated_splits_test"}


def load_meld_module():
    spec = importlib.util.spec_from_file_location("meld_local", os.path.join(RECIPE, "local", "meld.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def split_rows(split):
    """(dialogue, utterance, speaker, emotion, text): train 2 per class, dev and test 1."""
    per_class = 2 if split == "train" else 1
    rows = [
        (k, u, SPEAKERS[(k + u) % len(SPEAKERS)], emotion, TEXTS[emotion][u])
        for k, emotion in enumerate(CLASSES)
        for u in range(per_class)
    ]
    if split in BROKEN:
        clip, emotion = BROKEN[split]
        dialogue, utterance = (int(x) for x in clip[3:].split("_utt"))
        rows.append((dialogue, utterance, "Ross", emotion, "Oh, no-no-no, see, that-that clock\u2019s fast."))
    return rows


def write_csv(path, rows):
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)  # quotes fields with commas, CRLF line ends: as released
        writer.writerow(HEADER)
        for n, (dialogue, utterance, speaker, emotion, text) in enumerate(rows, 1):
            writer.writerow(
                [
                    n,
                    text,
                    speaker,
                    emotion,
                    SENTIMENT[emotion],
                    dialogue,
                    utterance,
                    4,
                    7,
                    f"00:20:{n:02d},256",
                    f"00:20:{n + 1:02d},049",
                ]
            )


@pytest.fixture(scope="module")
def tones(tmp_path_factory):
    """One tiny real-style mp4 per class (16x16 H.264 video, 48 kHz stereo AAC sine)."""
    out = tmp_path_factory.mktemp("tones")
    for k, emotion in enumerate(CLASSES):
        subprocess.run(
            [
                "ffmpeg",
                "-nostdin",
                "-v",
                "error",
                "-y",
                "-f",
                "lavfi",
                "-i",
                f"sine=frequency={150 + 60 * k}:sample_rate=48000:duration=0.6",
                "-f",
                "lavfi",
                "-i",
                "color=c=black:s=16x16:r=5:d=0.6",
                "-shortest",
                "-c:v",
                "libx264",
                "-c:a",
                "aac",
                "-ac",
                "2",
                "-b:a",
                "32k",
                str(out / f"{emotion}.mp4"),
            ],
            check=True,
        )
    return out


@pytest.fixture
def corpus(tmp_path, tones):
    """MELD.Raw: the three CSVs and mp4 folders; train dia125_utt3.mp4 is truncated
    (no moov atom), dev dia110_utt7.mp4 is absent."""
    root = tmp_path / "MELD.Raw"
    for split, folder in CLIP_FOLDERS.items():
        (root / folder).mkdir(parents=True)
        rows = split_rows(split)
        write_csv(root / f"{split}_sent_emo.csv", rows)
        for dialogue, utterance, _, emotion, _ in rows:
            clip = f"dia{dialogue}_utt{utterance}"
            if BROKEN.get(split, ("",))[0] != clip:
                shutil.copy(tones / f"{emotion}.mp4", root / folder / f"{clip}.mp4")
    (root / "train_splits" / "dia125_utt3.mp4").write_bytes((tones / "joy.mp4").read_bytes()[:1500])
    return root


def run_recipe(corpus_dir, tmp_path, *options, check=True, env=None):
    result = subprocess.run(
        [
            "bash",
            RUN,
            "--data_dir",
            str(tmp_path / "data"),
            "--exp_dir",
            str(tmp_path / "exp"),
            "--data_root",
            str(tmp_path / "wav"),
            "--results_md",
            str(tmp_path / "RESULTS.md"),  # never the recipe's own
            *options,
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "MELD": str(corpus_dir), **(env or {})},
    )
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def extract(corpus_dir, tmp_path, **kwargs):
    return run_recipe(
        corpus_dir, tmp_path, "--stage", "0", "--stop_stage", "0", "--corpus_opts", "--nj 2", **kwargs
    )


def prepare(corpus_dir, tmp_path, data_opts="--check_counts false", check=True):
    (tmp_path / "wav").mkdir(exist_ok=True)  # stage 1 reads no audio, ser.sh wants data_root
    return run_recipe(
        corpus_dir, tmp_path, "--stage", "1", "--stop_stage", "1", "--data_opts", data_opts, check=check
    )


def table(path):
    with open(path, encoding="utf-8") as f:
        return dict(line.rstrip("\n").split(" ", 1) for line in f)


def test_extraction_is_16k_mono_logs_failures_and_resumes(corpus, tmp_path):
    output = extract(corpus, tmp_path).stdout
    assert "train: 15 clips: 0 already had a wav, 14 extracted, 1 failed (1 on the exclusion list)" in output
    assert "dev: 8 clips: 0 already had a wav, 7 extracted, 1 failed (1 on the exclusion list)" in output
    assert "test: 7 clips: 0 already had a wav, 7 extracted, 0 failed" in output
    assert "WARNING" not in output
    info = sf.info(str(tmp_path / "wav" / "train" / "dia0_utt0.wav"))
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    assert info.duration == pytest.approx(0.6, abs=0.05)
    log = tmp_path / "wav" / "log"
    assert (log / "failed_train.txt").read_text().startswith("dia125_utt3\tffmpeg failed on ")
    assert "expected: on the exclusion list" in (log / "failed_train.txt").read_text()
    assert (log / "failed_dev.txt").read_text().startswith("dia110_utt7\tno mp4")
    assert not list((tmp_path / "wav").rglob("*.tmp"))

    # Resume: a second run extracts nothing.
    output = extract(corpus, tmp_path).stdout
    assert "train: 15 clips: 14 already had a wav, 0 extracted, 1 failed" in output
    assert "dev: 8 clips: 7 already had a wav, 0 extracted, 1 failed" in output
    assert "test: 7 clips: 7 already had a wav, 0 extracted, 0 failed" in output
    # An empty wav is extracted again; an excluded clip that turns out sound is pointed out.
    (tmp_path / "wav" / "test" / "dia3_utt0.wav").write_bytes(b"")
    shutil.copy(corpus / "train_splits" / "dia4_utt0.mp4", corpus / "train_splits" / "dia125_utt3.mp4")
    output = extract(corpus, tmp_path).stdout
    assert "test: 7 clips: 6 already had a wav, 1 extracted, 0 failed" in output
    assert sf.info(str(tmp_path / "wav" / "test" / "dia3_utt0.wav")).frames > 9000
    assert "NOTE: train dia125_utt3 is on the exclusion list but has a wav on this copy" in output


def test_failure_off_the_exclusion_list_is_counted_then_stops_stage_3(corpus, tmp_path):
    (corpus / "output_repeated_splits_test" / "dia2_utt0.mp4").unlink()
    output = extract(corpus, tmp_path).stdout
    assert "test: 7 clips: 0 already had a wav, 6 extracted, 1 failed (0 on the exclusion list)" in output
    assert "WARNING: test: 1 clip(s) not on the exclusion list failed: dia2_utt0." in output
    assert "dia2_utt0\tno mp4" in (tmp_path / "wav" / "log" / "failed_test.txt").read_text()
    assert "test: 1 of 7 clip(s) have no wav" in prepare(corpus, tmp_path).stdout
    manifests = ("--stage", "3", "--stop_stage", "3", "--config", "conf/crab_tiny.yaml")
    result = run_recipe(corpus, tmp_path, *manifests, check=False)
    assert result.returncode != 0
    assert "test_dia2_utt0: missing audio file" in result.stderr and "dia2_utt0.wav" in result.stderr
    result = run_recipe(corpus, tmp_path, *manifests, "--policy", "skip")
    assert "test: skipped 1 of 7 utterances: {'missing audio': 1}" in result.stdout


def test_mp4_that_decodes_in_part_is_a_failure(corpus, tmp_path):
    # moov atom first, then cut: ffmpeg decodes the first part and, without -xerror, exits 0
    clip = corpus / "output_repeated_splits_test" / "dia2_utt0.mp4"
    whole = tmp_path / "faststart.mp4"
    remux = ["-c", "copy", "-movflags", "+faststart", str(whole)]
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(clip), *remux], check=True)
    data = whole.read_bytes()
    clip.write_bytes(data[: len(data) * 7 // 10])
    output = extract(corpus, tmp_path).stdout
    assert "test: 7 clips: 0 already had a wav, 6 extracted, 1 failed (0 on the exclusion list)" in output
    assert "WARNING: test: 1 clip(s) not on the exclusion list failed: dia2_utt0." in output
    assert "dia2_utt0\tffmpeg failed on " in (tmp_path / "wav" / "log" / "failed_test.txt").read_text()
    assert not (tmp_path / "wav" / "test" / "dia2_utt0.wav").exists()
    assert not list((tmp_path / "wav").rglob("*.tmp"))


def test_a_killed_runs_temporary_files_go_and_two_runs_are_refused(corpus, tmp_path):
    (tmp_path / "wav" / "test").mkdir(parents=True)
    stale = tmp_path / "wav" / "test" / ".dia2_utt0.wav.4242.0badc0de.tmp"  # write_atomic's, of a killed run
    stale.write_bytes(b"RIFF cut")
    with folder_lock(str(tmp_path / "wav"), "test"):
        result = extract(corpus, tmp_path, check=False)
    assert result.returncode != 0 and "MELD wav folder" in result.stderr and "in use" in result.stderr
    assert stale.exists() and not (tmp_path / "wav" / "test" / "dia2_utt0.wav").exists()
    assert "test: 7 clips: 0 already had a wav, 7 extracted" in extract(corpus, tmp_path).stdout
    assert not list((tmp_path / "wav").rglob("*.tmp"))


def test_missing_ffmpeg_is_named(corpus, tmp_path):
    bin_dir = tmp_path / "bin"  # every command on PATH but ffmpeg
    bin_dir.mkdir()
    for folder in reversed(os.environ["PATH"].split(os.pathsep)):  # earlier folders win
        for tool in os.listdir(folder) if os.path.isdir(folder) else ():
            if tool != "ffmpeg" and os.access(os.path.join(folder, tool), os.X_OK):
                (bin_dir / tool).unlink(missing_ok=True)
                (bin_dir / tool).symlink_to(os.path.join(folder, tool))
    result = extract(corpus, tmp_path, check=False, env={"PATH": str(bin_dir)})
    assert result.returncode != 0
    assert "ERROR: ffmpeg not found on PATH. Stage 0 needs it" in result.stderr
    assert "start at --stage 1" in result.stderr


def test_text_labels_and_fields(corpus, tmp_path):
    output = prepare(corpus, tmp_path).stdout
    data = tmp_path / "data" / "official"
    assert sorted(os.listdir(data)) == ["test", "train", "valid"]
    train = data / "train"
    assert table(train / "utt2emo")["train_dia2_utt0"] == "fear"
    text = table(train / "text")
    assert text["train_dia2_utt0"] == "\u201cDid you hear that?\u201d Something\u2019s in the closet\u2026"
    assert text["train_dia0_utt0"] == "You had no right\u2014none!\u2014to read my journal."
    assert text["train_dia3_utt1"] == "You\u2019re gonna love it, I promise."  # mojibake repaired
    assert text["train_dia4_utt1"] == "It\u2019s on the counter, by the keys."  # line break collapsed
    assert "Repaired mojibake in 1 row(s)" in output
    assert table(train / "utt2spk")["train_dia0_utt1"] == "The_Interviewer"
    assert table(train / "utt2sentiment")["train_dia3_utt0"] == "positive"
    assert table(train / "utt2dialogue")["train_dia3_utt1"] == "train_dia3"
    assert table(train / "utt2episode")["train_dia3_utt1"] == "S04E07"
    assert table(data / "valid" / "wav.scp")["dev_dia6_utt0"] == str(
        tmp_path / "wav" / "dev" / "dia6_utt0.wav"
    )
    assert set(table(data / "test" / "utt2emo").values()) == set(CLASSES)
    # Speakers recur across the official splits (TV characters): said, not hidden.
    assert "speak in both train and test (TV characters recur" in output

    prepare(corpus, tmp_path, data_opts="--check_counts false --fix_mojibake false")
    assert table(train / "text")["train_dia3_utt1"] == "Youâ€™re gonna love it, I promise."


def test_exclusion_list_is_applied_and_counted(corpus, tmp_path):
    output = prepare(corpus, tmp_path).stdout
    assert "Exclusion list local/exclude.txt: 2 clip(s) left out" in output
    assert "train dia125_utt3 (neutral): train_splits/dia125_utt3.mp4 is corrupt" in output
    data = tmp_path / "data" / "official"
    assert "train_dia125_utt3" not in table(data / "train" / "utt2emo")
    assert "dev_dia110_utt7" not in table(data / "valid" / "utt2emo")
    assert len(table(data / "train" / "wav.scp")) == 14 and len(table(data / "valid" / "wav.scp")) == 7

    output = prepare(corpus, tmp_path, data_opts="--check_counts false --exclude none").stdout
    assert "Exclusion list none: 0 clip(s) left out" in output
    assert "train_dia125_utt3" in table(data / "train" / "utt2emo")

    bad_list = tmp_path / "exclude.txt"
    bad_list.write_text("# comment\ntrain dia1_utt0  # fine\nvalid dia3_utt1\n")
    result = prepare(corpus, tmp_path, data_opts=f"--check_counts false --exclude {bad_list}", check=False)
    assert result.returncode != 0
    assert f"{bad_list}:3: expected '<train|dev|test> dia<D>_utt<U>  # reason'" in result.stderr

    edited = tmp_path / "edited.txt"  # as Notepad saves it: a byte-order mark, CRLF, Windows-1252
    edited.write_bytes(b"\xef\xbb\xbftrain dia1_utt0  # caf\xe9 noise\r\n\r\ndev dia2_utt0\r\n")
    output = prepare(corpus, tmp_path, data_opts=f"--check_counts false --exclude {edited}").stdout
    assert "Exclusion list " + str(edited) + ": 2 clip(s) left out" in output
    assert "train dia1_utt0 (disgust): caf\u00e9 noise" in output


def test_count_check_names_expected_and_found(corpus, tmp_path):
    result = prepare(corpus, tmp_path, data_opts="", check=False)
    assert result.returncode != 0
    assert f"{corpus / 'train_sent_emo.csv'}:" in result.stderr
    assert "anger     expected  1109, found     2" in result.stderr
    assert "neutral   expected  4710, found     3" in result.stderr
    assert "total     expected  9989, found    15" in result.stderr
    assert "total     expected  1109, found     8" in result.stderr  # dev
    assert "total     expected  2610, found     7" in result.stderr  # test
    assert "--check_counts false" in result.stderr


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda root: (root / "dev_sent_emo.csv").unlink(), "dev_sent_emo.csv not found"),
        (
            lambda root: (root / "test_sent_emo.csv").write_text("Utterance,Speaker\n"),
            "test_sent_emo.csv:1: header is",
        ),
        (
            lambda root: (root / "train_sent_emo.csv").write_bytes(
                (root / "train_sent_emo.csv").read_bytes().replace(b",sadness,", b",sad,", 1)
            ),
            "train_sent_emo.csv:13: Emotion 'sad' is not one of anger",
        ),  # line 13: row 11 + one quoted line break
        (
            lambda root: (root / "test_sent_emo.csv").write_bytes(
                (root / "test_sent_emo.csv").read_bytes() + b"9,Hi,Ross,joy,positive,x,0,1,1,a,b\r\n"
            ),
            "test_sent_emo.csv:9: Dialogue_ID 'x' is not a non-negative integer",
        ),
        (
            lambda root: (root / "dev_sent_emo.csv").write_bytes(
                (root / "dev_sent_emo.csv").read_bytes() + b"9,Hi,Ross,joy,positive,0,0,1,1,a,b\r\n"
            ),
            "dev_sent_emo.csv:10: dia0_utt0 is already on line 2",
        ),
        (  # a quote left open takes the next line into the record: named from its first line
            lambda root: (root / "dev_sent_emo.csv").write_bytes(
                (root / "dev_sent_emo.csv").read_bytes()
                + b'9,"Hi,Ross,joy,positive,0,8,1,1,a,b\r\n10,Hey,Ross,joy,positive,0,9,1,1,a,b\r\n'
            ),
            "dev_sent_emo.csv:10-11: 2 fields, expected 11 (a quote left open?)",
        ),
        (  # more than the csv module takes in one field
            lambda root: (root / "dev_sent_emo.csv").write_bytes(
                (root / "dev_sent_emo.csv").read_bytes() + b'9,"' + b"x" * 140000 + b",Ross,joy\r\n"
            ),
            "dev_sent_emo.csv:10: the row that starts here does not parse (field larger than field limit",
        ),
    ],
)
def test_malformed_input_is_named(corpus, tmp_path, damage, message):
    damage(corpus)
    result = prepare(corpus, tmp_path, check=False)
    assert result.returncode != 0 and message in result.stderr, result.stderr


def test_nested_release_layout_is_found(corpus, tmp_path):
    (corpus / "train").mkdir()
    shutil.move(corpus / "train_sent_emo.csv", corpus / "train" / "train_sent_emo.csv")
    prepare(corpus, tmp_path)
    assert len(table(tmp_path / "data" / "official" / "train" / "text")) == 14


def test_a_csv_with_its_columns_in_another_order_or_a_layout_found_twice_is_refused(tmp_path):
    meld = load_meld_module()
    reordered = [*HEADER[:3], "Sentiment", "Emotion", *HEADER[5:]]  # as a re-export may write them
    (tmp_path / "train_sent_emo.csv").write_text(
        ",".join(reordered) + "\n1,Hi.,Ross,positive,joy,0,0,1,1,a,b\n"
    )
    with pytest.raises(meld.MeldError, match=r"train_sent_emo.csv:1: header is .*, expected"):
        meld.read_split(str(tmp_path), "train")
    for copy in ("a", "b"):  # two nested copies: which one is the corpus?
        (tmp_path / copy).mkdir()
        write_csv(tmp_path / copy / "dev_sent_emo.csv", [])
    with pytest.raises(meld.MeldError, match=r"dev_sent_emo.csv not found in several places"):
        meld.read_split(str(tmp_path), "dev")


def test_an_exclusion_line_with_a_reason_outside_its_comment_is_refused(tmp_path):
    meld = load_meld_module()
    path = tmp_path / "exclude.txt"
    path.write_text("train dia125_utt3 corrupt mp4\n")
    with pytest.raises(meld.MeldError, match=r"exclude.txt:1: expected '<train\|dev\|test> dia<D>_utt<U>"):
        meld.read_exclusions(str(path))


def test_mojibake_repair_keeps_correct_text():
    fix = load_meld_module().fix_mojibake
    assert (
        fix("itâ€™s â€œfineâ€\x9d, Ã©tÃ©, waitâ€¦") == "it\u2019s \u201cfine\u201d, \u00e9t\u00e9, wait\u2026"
    )
    for text in ("it\u2019s", "caf\u00e9", "\u20ac100", "plain", "mixed it\u2019s and don\u2019t \u2014 ok"):
        assert fix(text) == text
    assert fix("it\u2019s and donâ€™t") == "it\u2019s and don\u2019t"


def test_windows_1252_punctuation_stored_as_c1_controls_is_restored():
    meld = load_meld_module()
    record = {"Utterance": "It\x92s Joey\x85 now\x97go, youâ\x80\x99re", "Speaker": "Joey"}
    ids = {"Dialogue_ID": "0", "Utterance_ID": "0", "Season": "1", "Episode": "1"}
    row = meld.parse_row({**record, **ids, "Emotion": "anger", "Sentiment": "negative"}, "train", "x", True)
    assert row.repaired and row.text == "It\u2019s Joey\u2026 now\u2014go, you\u2019re"


def load_local(name):
    """A script of the recipe's local/ as a module (its ``from meld import`` read there)."""
    local = os.path.join(RECIPE, "local")
    if local not in sys.path:
        sys.path.insert(0, local)
    spec = importlib.util.spec_from_file_location(f"meld_{name}", os.path.join(local, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def meld_rows(split, clips, emotions=None):
    """A Row per clip of ``clips`` (labelled ``emotions``, else joy)."""
    row = load_meld_module().Row
    emotions = emotions or ["joy"] * len(clips)
    labelled = zip(clips, emotions, strict=True)
    return [row(split, clip, "Hi.", "Ross", emotion, "neutral", 1, 1, False) for clip, emotion in labelled]


def test_an_excluded_clip_keeps_the_clips_of_that_name_in_the_other_splits(capsys):
    # the official test split has a dia125_utt3 and a dia110_utt7 of its own
    prepare_data = load_local("prepare_data")
    rows = {split: meld_rows(split, ["dia125_utt3", "dia110_utt7"]) for split in CLIP_FOLDERS}
    excluded = {("train", "dia125_utt3"): "corrupt", ("dev", "dia110_utt7"): "no mp4"}
    kept = prepare_data.apply_exclusions(rows, excluded, "exclude.txt")
    assert {split: [r.clip for r in split_rows] for split, split_rows in kept.items()} == {
        "train": ["dia110_utt7"],
        "dev": ["dia125_utt3"],
        "test": ["dia125_utt3", "dia110_utt7"],
    }
    assert "2 clip(s) left out" in capsys.readouterr().out


def test_a_failed_clip_is_expected_only_in_the_split_the_exclusion_list_names(tmp_path, capsys):
    extract_audio = load_local("extract_audio")
    rows = meld_rows("test", ["dia125_utt3", "dia0_utt0"])
    excluded = {("train", "dia125_utt3"): "corrupt"}
    extract_audio.report("test", rows, 1, {"dia125_utt3": "no mp4"}, excluded, tmp_path / "failed_test.txt")
    out = capsys.readouterr().out
    assert "1 extracted, 1 failed (0 on the exclusion list)" in out
    assert "WARNING: test: 1 clip(s) not on the exclusion list failed: dia125_utt3." in out


def test_count_check_compares_each_class_not_only_the_total(tmp_path):
    prepare_data = load_local("prepare_data")
    for split in CLIP_FOLDERS:
        (tmp_path / f"{split}_sent_emo.csv").write_text(",".join(HEADER) + "\n")

    def rows(split, counts):
        labels = [emotion for emotion, n in counts.items() for _ in range(n)]
        return meld_rows(split, [f"dia{i}_utt0" for i in range(len(labels))], labels)

    official = {split: rows(split, counts) for split, counts in prepare_data.EXPECTED_COUNTS.items()}
    prepare_data.check_counts(official, str(tmp_path))
    swapped = {**prepare_data.EXPECTED_COUNTS["test"], "disgust": 50, "fear": 68}  # 2610 in all
    with pytest.raises(SystemExit, match=r"disgust   expected    68, found    50"):
        prepare_data.check_counts({**official, "test": rows("test", swapped)}, str(tmp_path))


def test_mojibake_in_a_speaker_name_is_repaired():
    # the official train CSV has a speaker "Richard’s Date"; a copy read as Windows-1252 spells it so
    record = {"Utterance": "Hi.", "Speaker": "Richardâ€™s Date", "Emotion": "joy", "Sentiment": "positive"}
    ids = {"Dialogue_ID": "0", "Utterance_ID": "0", "Season": "1", "Episode": "1"}
    row = load_meld_module().parse_row({**record, **ids}, "train", "x", True)
    assert row.repaired and row.speaker == "Richard\u2019s_Date"


@pytest.mark.skipif(
    not os.path.isfile(os.path.join(os.environ.get("MELD", ""), "train_sent_emo.csv")),
    reason="set MELD to a copy of MELD.Raw (its CSVs are enough) to check them",
)
def test_real_csvs_have_the_official_counts():
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]
    check = os.path.join(RECIPE, "local", "check_real_csvs.py")
    result = subprocess.run(
        [sys.executable, check, os.environ["MELD"], "--text_only"],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": path},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "OK: every split and class has the expected count" in result.stdout


ABLATIONS = {  # the Table III / IV rows of RESULTS.md: yaml overrides of conf/crab*.yaml
    "ce": ["--leg_names=[]"],
    "ce_mpcl_fusion": ["--leg_names=[fusion]"],
    "mls_ce": ["--leg_output_dim=7", "--leg_loss=!ref <wce>"],
    "supcon": ["--contrastive_loss=supcon"],
    "no_hier_lr": ["--encoder_lr=1.0e-5"],
    "speech_only": ["--modality=speech"],
    "text_only": ["--modality=text"],
}


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_readme_ablation_overrides_load(name, tmp_path, tokenizer_dir):
    _, _, _, hparams = parse_and_load(
        [
            os.path.join(RECIPE, "conf", "crab_tiny.yaml"),
            f"--data_root={tmp_path}",
            f"--data_folder={tmp_path}",
            f"--classes=[{','.join(CLASSES)}]",
            f"--tokenizer_source={tokenizer_dir}",
            f"--speech_encoder_source={RECIPE}/conf/wavlm_tiny",
            f"--text_encoder_source={RECIPE}/conf/roberta_tiny",
            *ABLATIONS[name],
        ]
    )
    legs = hparams["legs"].names
    expected = {
        "ce": [],
        "ce_mpcl_fusion": ["fusion"],
        "speech_only": ["speech_unimodal", "speech_pooled", "fusion"],
        "text_only": ["text_unimodal", "text_pooled", "fusion"],
    }
    assert legs == expected.get(
        name, ["speech_unimodal", "text_unimodal", "speech_pooled", "text_pooled", "fusion"]
    )
    if name == "mls_ce":
        assert hparams["leg_loss"] is hparams["wce"]
        assert hparams["legs"].legs["fusion"][-1].out_features == 7


@pytest.mark.slow
def test_smoke_stages_0_to_8(corpus, tmp_path):
    result = run_recipe(
        corpus,
        tmp_path,
        "--config",
        "conf/crab_tiny.yaml",
        "--bpe_vocab_size",
        "300",
        "--corpus_opts",
        "--nj 2",
        "--data_opts",
        "--check_counts false",
        "--train_opts",
        "--number_of_epochs=1 --batch_size=4",
    )
    run_dir = tmp_path / "exp" / "crab_tiny" / "official" / "seed42"
    with open(run_dir / "eval_test" / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 7 and {r["true"] for r in rows} == set(CLASSES)
    scores = json.loads((run_dir / "eval_test" / "scores.json").read_text())
    assert 0 <= scores["UAR"] <= 1
    assert "| run | N | WAR | UAR |" in (tmp_path / "exp" / "crab_tiny" / "results_test.md").read_text()
    assert " UTC: crab_tiny on test\n" in (tmp_path / "RESULTS.md").read_text()
    manifest = json.loads((tmp_path / "data" / "official" / "train.json").read_text())
    assert len(manifest) == 14 and manifest["train_dia0_utt0"]["wav"] == "{data_root}/train/dia0_utt0.wav"
    assert "Stage 0" in result.stdout


# ---------------------------------------------------------------- text only (no audio)


def test_text_only_data_prep_writes_no_wav_scp_and_null_audio(corpus, tmp_path):
    prepare(corpus, tmp_path)  # an earlier run with audio leaves a wav.scp behind
    data = tmp_path / "data" / "official"
    assert (data / "train" / "wav.scp").exists()
    result = run_recipe(
        corpus,
        tmp_path,
        "--text_only",
        "true",
        "--stage",
        "1",
        "--stop_stage",
        "3",
        "--config",
        "conf/crab_tiny.yaml",
        "--data_opts",
        "--check_counts false",
    )
    assert "Text only: no audio, no wav.scp; the exclusion list local/exclude.txt" in result.stdout
    assert "Exclusion list" not in result.stdout
    for split, count in (
        ("train", 15),
        ("valid", 8),
        ("test", 7),
    ):  # every CSV row: exclusions are audio faults
        assert not (data / split / "wav.scp").exists()
        manifest = json.loads((data / f"{split}.json").read_text(encoding="utf-8"))
        assert len(manifest) == count
        assert all(e["wav"] is None and e["duration"] is None for e in manifest.values())
    train = json.loads((data / "train.json").read_text(encoding="utf-8"))
    assert train["train_dia125_utt3"]["text"] == "Oh, no-no-no, see, that-that clock\u2019s fast."
    assert train["train_dia3_utt1"]["emo"] == "joy" and train["train_dia3_utt1"]["episode"] == "S04E07"
    assert "train 2 2 2 2 3 2 2 15".split() in [
        line.split() for line in result.stdout.splitlines()
    ]  # stage 3

    # stage 3's checks still apply: an empty transcript stops it, naming the utterance
    text = (data / "test" / "text").read_text(encoding="utf-8").splitlines()
    (data / "test" / "text").write_text("\n".join(text[1:]) + "\n", encoding="utf-8")
    result = run_recipe(
        corpus,
        tmp_path,
        "--text_only",
        "true",
        "--stage",
        "3",
        "--stop_stage",
        "3",
        "--config",
        "conf/crab_tiny.yaml",
        check=False,
    )
    assert result.returncode != 0
    assert f"{text[0].split()[0]}: empty transcript for {text[0].split()[0]}" in result.stderr


@pytest.mark.slow
def test_text_only_stages_0_to_7_without_audio(corpus, tmp_path):
    """No wav dir at all (run_recipe's --data_root does not exist): a text model
    trains and is scored; a bimodal one stops, saying the manifest has no audio."""
    common = ("--text_only", "true", "--config", "conf/crab_tiny.yaml", "--bpe_vocab_size", "300")
    result = run_recipe(
        corpus,
        tmp_path,
        *common,
        "--stop_stage",
        "7",
        "--data_opts",
        "--check_counts false",
        "--train_opts",
        "--modality=text --number_of_epochs=1 --batch_size=4",
    )
    assert "Stage 0: skipped (--text_only true: no audio)" in result.stdout
    assert not (tmp_path / "wav").exists()
    run_dir = tmp_path / "exp" / "crab_tiny" / "official" / "seed42"
    with open(run_dir / "eval_test" / "predictions.csv", newline="") as f:
        assert {r["true"] for r in csv.DictReader(f)} == set(CLASSES)
    scores = json.loads((run_dir / "eval_test" / "scores.json").read_text())
    assert scores["num_utterances"] == 7 and 0 <= scores["UAR"] <= 1
    assert "modality: text" in (run_dir / "hyperparams.yaml").read_text()

    result = run_recipe(
        corpus,
        tmp_path,
        *common,
        "--stage",
        "5",
        "--stop_stage",
        "5",
        "--tag",
        "bimodal",
        "--train_opts",
        "--number_of_epochs=1",
        check=False,
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "train.json: the manifest has no audio (utterance 'train_dia0_utt0' has \"wav\": null" in output
    assert "train with --modality=text" in output


def test_text_only_option_is_checked(corpus, tmp_path):
    result = run_recipe(corpus, tmp_path, "--text_only", "yes", "--stage", "1", check=False)
    assert result.returncode != 0 and "--text_only must be true or false, got 'yes'" in result.stderr
    result = run_recipe(
        corpus, tmp_path, "--text_only", "true", "--asr_model", "openai/whisper-tiny", check=False
    )
    assert result.returncode != 0 and "--asr_model transcribes audio" in result.stderr


def test_confusion_table_sums_runs(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "confusion_table", os.path.join(ROOT, "egs", "meld", "local", "confusion_table.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    header = "id,true,predicted,prob_joy,prob_sadness\n"
    (tmp_path / "a.csv").write_text(header + "u1,joy,joy,0.9,0.1\nu2,sadness,joy,0.6,0.4\n")
    (tmp_path / "b.csv").write_text(header + "u1,joy,joy,0.8,0.2\nu2,sadness,sadness,0.3,0.7\n")
    module.main([str(tmp_path / "a.csv"), str(tmp_path / "b.csv")])
    lines = capsys.readouterr().out.splitlines()
    assert lines[2] == "| joy | 2 | 0 | 1.000 |" and lines[3] == "| sadness | 1 | 1 | 0.500 |"
