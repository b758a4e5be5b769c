"""A new corpus from egs/TEMPLATE, as its README says: setup.sh, fill in a toy prep, run."""

import json
import os
import subprocess

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import ROOT, finished_jobs

pytestmark = pytest.mark.slow  # end-to-end recipe runs

TOY_PREP = r"""#!/usr/bin/env bash
# Toy corpus: <root>/<spk>_<emo>_<n>.wav with <root>/labels.tsv "file<TAB>emotion<TAB>text".
set -euo pipefail
data_dir=data
data_root=
. utils/parse_options.sh
for split in train valid test; do mkdir -p "${data_dir}/main/${split}"; done
case_split() { case "$1" in s1|s2) echo train ;; s3) echo valid ;; *) echo test ;; esac; }
for split in train valid test; do
  : > "${data_dir}/main/${split}/wav.scp"; : > "${data_dir}/main/${split}/text"
  : > "${data_dir}/main/${split}/utt2emo"; : > "${data_dir}/main/${split}/utt2spk"
done
while IFS=$'\t' read -r file emo text; do
  utt=${file%.wav}; spk=${utt%%_*}; split=$(case_split "${spk}"); d=${data_dir}/main/${split}
  echo "${utt} $(cd "${data_root}" && pwd)/${file}" >> "${d}/wav.scp"
  echo "${utt} ${text}" >> "${d}/text"; echo "${utt} ${emo}" >> "${d}/utt2emo"
  echo "${utt} ${spk}" >> "${d}/utt2spk"
done < "${data_root}/labels.tsv"
"""


def make_toy_corpus(root):
    root.mkdir()
    rng = np.random.default_rng(0)
    lines = []
    for spk in ("s1", "s2", "s3", "s4"):
        for k, emo in enumerate(("angry", "happy", "neutral", "sad")):
            for n in range(2):
                name = f"{spk}_{emo}_{n}.wav"
                tone = np.sin(2 * np.pi * (120 + 60 * k) * np.arange(8000) / 16000)
                sf.write(
                    root / name, (0.3 * tone + 0.01 * rng.standard_normal(8000)).astype("float32"), 16000
                )
                lines.append(f"{name}\t{emo}\ta {emo} sentence number {n}")
    (root / "labels.tsv").write_text("\n".join(lines) + "\n")


def test_template_copy_runs_end_to_end(tmp_path):
    # The repository skeleton the copy needs (utils/path.sh finds tools/venv itself).
    os.symlink(os.path.join(ROOT, "utils"), tmp_path / "utils")
    (tmp_path / "egs").mkdir()
    os.symlink(os.path.join(ROOT, "egs", "TEMPLATE"), tmp_path / "egs" / "TEMPLATE")
    recipe = tmp_path / "egs" / "toy"
    subprocess.run(["bash", str(tmp_path / "egs" / "TEMPLATE" / "setup.sh"), str(recipe)], check=True)
    (recipe / "local" / "data.sh").write_text(TOY_PREP)
    make_toy_corpus(tmp_path / "toy_corpus")

    unset = subprocess.run(
        ["bash", str(recipe / "run.sh")],
        capture_output=True,
        text=True,
        env={**os.environ, "CORPUS_ROOT": ""},
    )
    assert unset.returncode != 0 and "set CORPUS_ROOT in db.sh" in unset.stderr

    # The corpus path relative to where the command runs (not to the recipe).
    result = subprocess.run(
        [
            "bash",
            "egs/toy/run.sh",
            "--config",
            "conf/crab_tiny.yaml",
            "--bpe_vocab_size",
            "300",
            "--train_opts",
            "--number_of_epochs=1 --batch_size=4",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        # without CRAB_RESULTS_MD (tests/conftest.py sets it empty): the default, the copy's RESULTS.md
        env={**{k: v for k, v in os.environ.items() if k != "CRAB_RESULTS_MD"}, "CORPUS_ROOT": "toy_corpus"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    manifest = json.loads((recipe / "data" / "main" / "train.json").read_text())
    assert len(manifest) == 16 and {e["spk"] for e in manifest.values()} == {"s1", "s2"}
    scores = json.loads(
        (recipe / "exp" / "crab_tiny" / "main" / "seed42" / "eval_test" / "scores.json").read_text()
    )
    assert scores["num_utterances"] == 8 and 0.0 <= scores["UAR"] <= 1.0
    assert "| run | N | WAR | UAR |" in (recipe / "exp" / "crab_tiny" / "results_test.md").read_text()
    # stage 7's entry in the copy's own RESULTS.md (a copy in tmp_path: the repository's stay as they are)
    assert (recipe / "RESULTS.md").read_text().startswith("# toy results\n")

    # Frozen encoders: stage 4 extracts their states once, stages 5-7 read them; stages 4-6
    # as jobs (--nj 2: stage 4 one job, 5 and 6 one per run) in exp/cached/log/.
    cache = tmp_path / "cache"
    frozen = "--number_of_epochs=1 --batch_size=4 --freeze_speech_encoder=true --freeze_text_encoder=true"
    result = subprocess.run(
        [
            "bash",
            str(recipe / "run.sh"),
            "--config",
            "conf/crab_tiny.yaml",
            "--stage",
            "3",
            "--stop_stage",
            "7",
            "--bpe_vocab_size",
            "300",
            "--tag",
            "cached",
            "--feature_cache",
            str(cache),
            "--train_opts",
            frozen,
            "--nj",
            "2",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "CORPUS_ROOT": str(tmp_path / "toy_corpus")},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    index = json.loads((cache / "index.json").read_text())
    assert sum(len(utts) for utts in index["shards"].values()) == 32
    assert "cached" in (recipe / "exp" / "cached" / "results_test.md").read_text()
    assert finished_jobs(recipe / "exp" / "cached" / "log") == [
        "stage4.log",
        "stage5.main.seed42.log",
        "stage6.main.seed42.log",
    ]
