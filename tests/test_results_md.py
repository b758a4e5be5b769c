"""Stage 7 writes the recipe's RESULTS.md: a new entry (environment, setting, command,
results table) at the top, older entries kept; tests never write the repository's."""

import csv
import hashlib
import json
import os
import subprocess

import pytest

from crab.report import RESULTS_MARKER, insert_entry, record_training
from tests.conftest import ROOT

RECIPE = os.path.join(ROOT, "egs", "mini")
CLASSES = ["angry", "happy", "neutral", "sad"]
OLDER = """# mini results

Some words on the file.

RESULTS_MARKER

## 2026-01-02 10:00 UTC: older on test

| run | N | WAR | UAR |
|---|---|---|---|
| exp/older/main/seed1 | 8 | 0.5000 | 0.5000 |

## Reference (paper)

Kept at the bottom.
""".replace("RESULTS_MARKER", RESULTS_MARKER)


def test_insert_entry_puts_the_newest_first():
    new = insert_entry(None, "## B\n\nsecond\n", title="mini results")
    assert new.startswith("# mini results\n\n") and new.endswith(f"{RESULTS_MARKER}\n\n## B\n\nsecond\n")
    newer = insert_entry(new, "## C\n\nthird\n")
    assert newer.index("## C") < newer.index("## B") and newer.count(RESULTS_MARKER) == 1
    # without the marker: before the first entry, else at the end
    assert insert_entry("# R\n\nintro\n\n## A\n", "## B\n") == "# R\n\nintro\n\n## B\n\n## A\n"
    assert insert_entry("# R\n\nintro\n", "## B\n") == "# R\n\nintro\n\n## B\n"


def write_runs(exp, tag, seeds, tuning):
    """Two scored-ready runs: predictions and train_info.json (as stages 5-6 leave them)."""
    for k, seed in enumerate(seeds):
        run = exp / tag / "main" / f"seed{seed}"
        (run / "eval_test").mkdir(parents=True)
        with open(run / "eval_test" / "predictions.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["id", "true", "predicted"] + [f"prob_{c}" for c in CLASSES])
            for i, true in enumerate(CLASSES * 2):
                predicted = true if (i + k) % 3 else CLASSES[(i + 1) % 4]
                probs = [0.7 if c == predicted else 0.1 for c in CLASSES]
                writer.writerow([f"utt{i}", true, predicted, *probs])
        record_training(
            str(run), 12.0, f"./run.sh --seeds {seed}", config="conf/crab_tiny.yaml", tuning=tuning
        )


def fingerprint():
    """The mini recipe's RESULTS.md (hash, or absent) and the tracked files' state under egs/mini."""
    path = os.path.join(RECIPE, "RESULTS.md")
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest() if os.path.exists(path) else None
    status = subprocess.run(
        ["git", "status", "--porcelain", "--", "egs/mini"], cwd=ROOT, capture_output=True, text=True
    ).stdout
    return digest, status


def stage_7(tmp_path, *options, env=None):
    return subprocess.run(
        [
            "bash", os.path.join(RECIPE, "run.sh"), "--stage", "7", "--stop_stage", "7",
            "--data_root", str(tmp_path), "--exp_dir", str(tmp_path / "exp"), "--seeds", "1 2", *options,
        ],
        capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=300,
    )  # fmt: skip


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """Stage 7 of two runs of a tuned experiment into an existing RESULTS.md."""
    tmp = tmp_path_factory.mktemp("results_md")
    tuning = tmp / "narrow.yaml"
    tuning.write_text("# A narrower head.\nconfig: conf/crab_tiny.yaml\noverrides:\n  hidden_dim: 8\n")
    write_runs(tmp / "exp", "narrow", (1, 2), str(tuning))
    results = tmp / "RESULTS.md"
    results.write_text(OLDER)
    before = fingerprint()
    result = stage_7(tmp, "--tuning", str(tuning), "--results_md", str(results))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return tmp, tuning, results.read_text(), before


def test_stage_7_adds_the_entry_at_the_top_and_keeps_older_ones(scored):
    _, _, text, _ = scored
    assert text.startswith(OLDER.split("## 2026-01-02")[0])  # title, words and marker as they were
    entries = [line for line in text.splitlines() if line.startswith("## ")]
    assert len(entries) == 3 and entries[0].endswith(" UTC: narrow on test")
    assert entries[1:] == ["## 2026-01-02 10:00 UTC: older on test", "## Reference (paper)"]
    assert text.endswith(OLDER.split(RESULTS_MARKER)[1].lstrip("\n"))  # older entries whole


def test_the_entry_has_environment_setting_command_and_table(scored):
    tmp, tuning, text, _ = scored
    entry = text.split("## ")[1]
    for line in ("- date: 20", "- git commit: ", "- device: ", "; ran on cpu"):
        assert line in entry, line
    versions = next(line for line in entry.splitlines() if line.startswith("- versions: "))
    assert all(name in versions for name in ("torch ", "speechbrain ", "transformers "))
    assert f"- tuning: `{tuning}`: A narrower head." in entry
    assert "- base config: `conf/crab_tiny.yaml`" in entry
    assert f"- command: `{RECIPE}/run.sh --stage 7 --stop_stage 7 " in entry and f"--tuning {tuning}" in entry
    summary = json.loads((tmp / "exp" / "narrow" / "results_test.json").read_text())
    mean, std = summary["mean"]["UAR"], summary["std"]["UAR"]
    assert "| run | N | WAR | UAR | macro_F1 | weighted_F1 | train wall time | commit |" in entry
    assert "| mean ± std (2 runs) | |" in entry and f"{mean:.4f} ± {std:.4f}" in entry
    assert f"`./run.sh --seeds 1`; tuning `{tuning}`" in entry  # each run's training command


def test_recipe_tests_leave_the_repository_alone(scored, tmp_path):
    *_, before = scored
    assert fingerprint() == before
    # The environment variable replaces the default; an empty --results_md writes nothing.
    write_runs(tmp_path / "exp", "crab_tiny", (1, 2), None)
    result = stage_7(tmp_path, env={"CRAB_RESULTS_MD": str(tmp_path / "from_env.md")})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    text = (tmp_path / "from_env.md").read_text()
    assert text.startswith("# mini results\n") and "- config: `conf/crab_tiny.yaml`" in text
    result = stage_7(tmp_path, "--results_md", "", env={"CRAB_RESULTS_MD": str(tmp_path / "unused.md")})
    assert result.returncode == 0 and not (tmp_path / "unused.md").exists()
    assert fingerprint() == before
