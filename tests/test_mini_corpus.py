"""The mini recipe's corpus generator (stage 0): espeak-ng only for the wavs it makes."""

import os
import shutil
import subprocess
import sys

from tests.conftest import ROOT

GENERATE = os.path.join(ROOT, "egs", "mini", "local", "generate_corpus.py")


def generate(out_dir, path):
    return subprocess.run(
        [
            sys.executable,
            GENERATE,
            "--out_dir",
            str(out_dir),
            "--speakers",
            "1",
            "--sentences_per_emotion",
            "1",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": path},
        timeout=120,
    )


def test_a_complete_corpus_needs_no_espeak_ng_and_a_missing_wav_does(tmp_path):
    corpus = tmp_path / "corpus"
    made = generate(corpus, os.environ["PATH"])
    assert made.returncode == 0, made.stderr
    assert "4 utterances (4 created, 0 kept)" in made.stdout
    # a PATH with python but without espeak-ng, as on a GPU machine the corpus was copied to
    bare = tmp_path / "bin"
    bare.mkdir()
    os.symlink(sys.executable, bare / "python")
    assert shutil.which("espeak-ng", path=str(bare)) is None
    kept = generate(corpus, str(bare))
    assert kept.returncode == 0, kept.stderr
    assert "4 utterances (0 created, 4 kept)" in kept.stdout
    next(corpus.glob("wav/*.wav")).unlink()
    missing = generate(corpus, str(bare))
    assert missing.returncode == 1
    assert "espeak-ng not found" in missing.stderr


def test_a_killed_generation_leaves_no_temporary_wav_after_the_next_run(tmp_path):
    # SIGKILL or SIGTERM while a wav is written (crab.fileio.write_atomic) leaves its hidden
    # temporary file in wav/: the next run removes it, so a rerun leaves the corpus clean
    corpus = tmp_path / "corpus"
    (corpus / "wav").mkdir(parents=True)
    left = corpus / "wav" / ".spk01_angry_000.wav.12345.0a1b2c3d.tmp"
    left.write_bytes(b"RIFF cut short")
    made = generate(corpus, os.environ["PATH"])
    assert made.returncode == 0, made.stderr
    assert not left.exists()
    assert sorted(p.name for p in (corpus / "wav").iterdir()) == [
        f"spk01_{e}_000.wav" for e in ("angry", "happy", "neutral", "sad")
    ]
