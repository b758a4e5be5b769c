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
