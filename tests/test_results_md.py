"""Stage 7 writes the recipe's RESULTS.md: a new entry (environment, setting, command,
results table) at the top, older entries kept; tests never write the repository's. A
subset of the folds and seeds scored keeps apart from the results of all (and a test set's
from another whose name begins the same), and the tables and embedding plots of a sweep are
of the runs they name."""

import csv
import hashlib
import json
import os
import shlex
import subprocess

import numpy as np
import pytest

from crab.embeddings import embedding_scores
from crab.metrics import METRICS
from crab.report import (
    RESULTS_MARKER,
    TRAIN_INFO,
    add_results_entry,
    insert_entry,
    latest_results,
    main,
    record_training,
    results_entry,
    results_table,
    summarise,
    summary_test_set,
)
from crab.report import test_sets as sets_scored  # not collected as a test
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


def write_runs(exp, tag, seeds, tuning, fold="main", test_sets=("test",)):
    """Scored-ready runs of a fold: predictions and train_info.json (as stages 5-6 leave them)."""
    for k, seed in enumerate(seeds):
        run = exp / tag / fold / f"seed{seed}"
        for test_set in test_sets:
            (run / f"eval_{test_set}").mkdir(parents=True)
            with open(run / f"eval_{test_set}" / "predictions.csv", "w", newline="") as f:
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
    for line in (
        "- date (scoring): 20",
        "- git commit (training): ",
        "- git commit (scoring): ",
        "; ran on cpu",
    ):
        assert line in entry, line
    for line in ("- device (training): ", "- device (scoring): "):
        assert line in entry, line
    for of in ("training", "scoring"):
        versions = next(line for line in entry.splitlines() if line.startswith(f"- versions ({of}): "))
        assert all(name in versions for name in ("torch ", "speechbrain ", "transformers ")), versions
    assert f"- tuning: `{tuning}`: A narrower head." in entry
    assert "- base config: `conf/crab_tiny.yaml`" in entry
    assert (
        f"- scored by: `{shlex.quote(RECIPE + '/run.sh')} --stage 7 --stop_stage 7 " in entry
        and f"--tuning {tuning}" in entry
    )
    assert (
        "- trained by:\n  - main/seed1: `./run.sh --seeds 1`\n  - main/seed2: `./run.sh --seeds 2`\n" in entry
    )
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


def test_stage_7_says_when_a_mean_is_over_fewer_runs(tmp_path):
    """One of two runs embedded (the other never was, or its model collapsed): the cluster
    scores are of that run alone, and the table and the entry say so."""
    write_runs(tmp_path / "exp", "crab_tiny", (1, 2), None)
    scores = {"silhouette": 0.25, "calinski_harabasz": 3.0, "davies_bouldin": 1.5}
    (tmp_path / "exp" / "crab_tiny" / "main" / "seed1" / "eval_test" / "embedding_scores.json").write_text(
        json.dumps(scores)
    )
    result = stage_7(tmp_path, "--results_md", str(tmp_path / "RESULTS.md"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    embedded = "silhouette 0.250 (1 of 2 runs), calinski_harabasz 3.000 (1 of 2 runs)"
    assert embedded in (tmp_path / "exp" / "crab_tiny" / "results_test.md").read_text()
    assert embedded in (tmp_path / "RESULTS.md").read_text()


def summary_of(exp, tag, path):
    """Score the runs of ``exp/tag`` (``crab.bin.score --summary``) into ``path``."""
    paths = sorted(str(p) for p in (exp / tag).glob("*/seed*/eval_test/predictions.csv"))
    _, summary = results_table(paths, tag=tag, test_set="test")
    path.write_text(json.dumps(summary))
    return summary


def test_the_entry_names_what_trained_the_runs_and_what_scored_them(tmp_path):
    write_runs(tmp_path / "exp", "crab_tiny", (1, 2, 3), None)
    trained = "./run.sh --train_opts --alpha=1.0 --bpe_vocab_size 500"
    for seed in (1, 2):
        info_path = tmp_path / "exp" / "crab_tiny" / "main" / f"seed{seed}" / TRAIN_INFO
        info = json.loads(info_path.read_text())
        info.update(command=trained, commit="0123abc", machine="gpubox; ran on cuda:0")
        if seed == 2:
            del info["versions"]  # recorded by an older release
        info_path.write_text(json.dumps(info))
    (tmp_path / "exp" / "crab_tiny" / "main" / "seed3" / TRAIN_INFO).unlink()
    scoring = "./run.sh --stage 7 --stop_stage 7"
    entry = results_entry(summary_of(tmp_path / "exp", "crab_tiny", tmp_path / "s.json"), scoring)
    unrecorded = f"  - main/seed3: not recorded (no {TRAIN_INFO})\n"
    assert f"- trained by:\n  - main/seed1, main/seed2: `{trained}`\n{unrecorded}" in entry
    assert f"- scored by: `{scoring}`\n" in entry and entry.count(scoring) == 1
    assert f"- git commit (training):\n  - main/seed1, main/seed2: 0123abc\n{unrecorded}" in entry
    assert f"- device (training):\n  - main/seed1, main/seed2: gpubox; ran on cuda:0\n{unrecorded}" in entry
    assert "- date (scoring): 20" in entry and "- device (scoring): " in entry
    versions = json.loads((tmp_path / "exp" / "crab_tiny" / "main" / "seed1" / TRAIN_INFO).read_text())[
        "versions"
    ]
    assert versions.startswith("torch ") and "transformers " in versions
    assert (
        f"- versions (training):\n  - main/seed1: {versions}\n  - main/seed2, main/seed3: not recorded\n"
    ) in entry
    (tmp_path / "exp" / "crab_tiny" / "main" / "seed3").rename(tmp_path / "seed3")  # the same command: once
    entry = results_entry(summary_of(tmp_path / "exp", "crab_tiny", tmp_path / "s.json"), scoring)
    assert f"- trained by: `{trained}`\n" in entry and "- git commit (training): 0123abc\n" in entry


def test_the_entry_names_the_tuning_file_and_config_the_runs_were_trained_with():
    """What the runs' train_info.json recorded trained them; the tuning file and config stage 7
    was given stand only for runs that record none."""
    row = {"run": "exp/x/main/seed1", "num_utterances": 4, **dict.fromkeys(METRICS, 0.5)}
    trained = summarise([{**row, "tuning": "conf/tuning/a.yaml", "config": "conf/a.yaml"}], tag="x")
    given = {"config": "conf/b.yaml", "tuning": "conf/tuning/b.yaml"}
    entry = results_entry(trained, "./run.sh --stage 7", **given)
    assert "- tuning: `conf/tuning/a.yaml`\n- base config: `conf/a.yaml`\n" in entry and "b.yaml" not in entry
    entry = results_entry(summarise([row], tag="x"), "./run.sh --stage 7", **given)
    assert "- tuning: `conf/tuning/b.yaml`\n- base config: `conf/b.yaml`\n" in entry


def test_scoring_again_adds_no_entry_unless_the_results_changed(tmp_path, capsys):
    exp, summary = tmp_path / "exp", tmp_path / "results_test.json"
    results = tmp_path / "RESULTS.md"
    write_runs(exp, "crab_tiny", (1, 2), None)
    write_runs(exp, "other", (1,), None)
    summary_of(exp, "crab_tiny", summary)
    scoring = "./run.sh --stage 7 --stop_stage 7"
    entry, added = add_results_entry(str(results), str(summary), scoring)
    assert added and results.read_text().count(" UTC: crab_tiny on test") == 1
    summary_of(exp, "other", tmp_path / "other.json")  # another experiment's entry in between
    assert add_results_entry(str(results), str(tmp_path / "other.json"), scoring)[1]
    before = results.read_text()
    main(["add_results", "--results_md", str(results), "--summary", str(summary), "--command", scoring])
    assert results.read_text() == before
    heading = entry.splitlines()[0][len("## ") :]
    assert (
        capsys.readouterr().out == f"{results}: '{heading}' has the same commands and table: no entry added\n"
    )

    # another scoring command, or a run trained again, adds an entry at the top
    assert add_results_entry(str(results), str(summary), scoring + " --seeds '1 2'")[1]
    predictions = exp / "crab_tiny" / "main" / "seed2" / "eval_test" / "predictions.csv"
    predictions.write_text(predictions.read_text().replace("utt0,angry,angry,", "utt0,angry,sad,"))
    summary_of(exp, "crab_tiny", summary)
    main(["add_results", "--results_md", str(results), "--summary", str(summary), "--command", scoring])
    assert capsys.readouterr().out.startswith(f"{results}: added at the top: ")
    headings = [line.split(" UTC: ")[1] for line in results.read_text().splitlines() if " UTC: " in line]
    assert headings == ["crab_tiny on test"] * 2 + ["other on test", "crab_tiny on test"]
    # the first results again: the newest entry of the experiment holds others, an older one these
    predictions.write_text(predictions.read_text().replace("utt0,angry,sad,", "utt0,angry,angry,"))
    summary_of(exp, "crab_tiny", summary)
    assert add_results_entry(str(results), str(summary), scoring)[1] == "added"


def test_scoring_again_after_a_tuning_files_comment_changed_replaces_its_description(
    tmp_path, capsys, monkeypatch
):
    """The description of a tuning file is free text: edited, and the same runs scored again by
    the same command, the entry's description is replaced where it is, and no entry is added."""
    monkeypatch.chdir(RECIPE)  # where stage 7 reads the tuning file's config
    exp, summary, results = tmp_path / "exp", tmp_path / "results_test.json", tmp_path / "RESULTS.md"
    tuning = tmp_path / "narrow.yaml"
    tuning.write_text("# A narrower head.\nconfig: conf/crab_tiny.yaml\noverrides:\n  hidden_dim: 8\n")
    write_runs(exp, "narrow", (1, 2), str(tuning))
    write_runs(exp, "other", (1,), None)
    scoring = f"./run.sh --stage 7 --stop_stage 7 --tuning {tuning}"
    summary_of(exp, "narrow", summary)
    add_results_entry(str(results), str(summary), scoring)
    summary_of(exp, "other", tmp_path / "other.json")  # another experiment's entry above it
    add_results_entry(str(results), str(tmp_path / "other.json"), scoring)
    before = results.read_text()
    tuning.write_text(tuning.read_text().replace("A narrower head.", "A narrower head (8 units)."))
    main(["add_results", "--results_md", str(results), "--summary", str(summary), "--command", scoring])
    text = results.read_text()
    assert (
        text == before.replace(f"`{tuning}`: A narrower head.\n", f"`{tuning}`: A narrower head (8 units).\n")
        and text != before
    )
    heading = next(line for line in text.splitlines() if line.endswith(" UTC: narrow on test"))[3:]
    assert capsys.readouterr().out == (
        f"{results}: '{heading}' has the same commands and table: its tuning file's description "
        "replaced, no entry added\n"
    )
    # other numbers with another description: an entry of its own, the older one as it was
    predictions = exp / "narrow" / "main" / "seed2" / "eval_test" / "predictions.csv"
    predictions.write_text(predictions.read_text().replace("utt0,angry,angry,", "utt0,angry,sad,"))
    summary_of(exp, "narrow", summary)
    tuning.write_text(tuning.read_text().replace("(8 units)", "(8 units, again)"))
    assert add_results_entry(str(results), str(summary), scoring)[1] == "added"
    headings = [line.split(" UTC: ")[1] for line in results.read_text().splitlines() if " UTC: " in line]
    assert headings == ["narrow on test", "other on test", "narrow on test"]
    assert results.read_text().endswith(text.split(RESULTS_MARKER)[1].lstrip("\n"))


def test_a_subset_of_the_folds_keeps_apart_from_the_results_of_all(tmp_path):
    exp = tmp_path / "exp" / "crab_tiny"
    for fold in ("main", "other"):
        write_runs(tmp_path / "exp", "crab_tiny", (1, 2), None, fold=fold)
    results = tmp_path / "RESULTS.md"
    every = stage_7(tmp_path, "--folds", "main other", "--results_md", str(results))
    assert every.returncode == 0, every.stdout[-3000:] + every.stderr[-3000:]
    table = (exp / "results_test.md").read_text()
    assert table.startswith("## crab_tiny on test: folds main other, seeds 1 2\n")
    summary = json.loads((exp / "results_test.json").read_text())
    assert (summary["folds"], summary["seeds"], summary["left_out"]) == (["main", "other"], ["1", "2"], [])

    subset = stage_7(tmp_path, "--folds", "main", "--results_md", str(results))
    assert subset.returncode == 0, subset.stdout[-3000:] + subset.stderr[-3000:]
    assert (exp / "results_test.md").read_text() == table  # the results of every fold stay
    assert f"a subset, into {exp}/results_test.main.seed1+2.{{md,json}}" in subset.stdout
    left_out = "2 other run(s) evaluated on test left out (folds other, seeds 1 2)"
    heading = (exp / "results_test.main.seed1+2.md").read_text().splitlines()[0]
    assert heading == f"## crab_tiny on test: folds main, seeds 1 2; {left_out}"
    summary = json.loads((exp / "results_test.main.seed1+2.json").read_text())
    assert (summary["folds"], summary["seeds"], summary["num_runs"]) == (["main"], ["1", "2"], 2)
    assert summary["left_out"] == [str(exp / "other" / f"seed{seed}") for seed in (1, 2)]
    text = results.read_text()
    entries = [line for line in text.splitlines() if line.startswith("## ")]
    assert entries[0].endswith(" UTC: crab_tiny on test (a subset: folds main, seeds 1 2)")
    assert entries[1].endswith(" UTC: crab_tiny on test")
    assert f"- runs: folds main, seeds 1 2; {left_out}" in text
    assert "- runs: folds main other, seeds 1 2\n" in text


def test_a_test_set_named_with_a_dot_keeps_apart_from_another(tmp_path):
    exp = tmp_path / "exp" / "crab_tiny"
    for fold in ("main", "other"):
        write_runs(tmp_path / "exp", "crab_tiny", (1, 2), None, fold=fold, test_sets=("test", "test.v2"))
    for folds in ("main other", "main"):
        result = stage_7(tmp_path, "--folds", folds, "--test_sets", "test test.v2", "--results_md", "")
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    newest = exp / "results_test.v2.main.seed1+2.json"
    os.utime(newest, (newest.stat().st_mtime + 10,) * 2)  # test.v2's subset scored last
    assert sets_scored(str(exp)) == ["test", "test.v2"]
    assert latest_results(str(exp), "test") == str(exp / "results_test.main.seed1+2.json")
    assert latest_results(str(exp), "test.v2") == str(newest)
    assert summary_test_set(str(exp / "results_test.v2.json")) == "test.v2"


def test_sweep_tables_only_the_test_sets_it_scored(tmp_path):
    """Summaries of a test set that an earlier scoring wrote are not tabulated again under this
    sweep's title: the table of another test set would be of older runs, or stop the sweep."""
    for tag in ("ce_only", "mlcs"):
        write_runs(tmp_path / "exp", tag, (1, 2), None, test_sets=("test", "valid"))

    def sweep(test_sets):
        result = subprocess.run(
            [
                "bash", os.path.join(RECIPE, "sweep.sh"), "--ablations", "ce_only mlcs", "--stage", "7",
                "--data_root", str(tmp_path), "--exp_dir", str(tmp_path / "exp"), "--results_md", "",
                "--seeds", "1 2", "--test_sets", test_sets,
            ],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    sweep("test valid")
    assert sorted(p.name for p in (tmp_path / "exp").glob("ablations_*.md")) == [
        "ablations_test.md",
        "ablations_valid.md",
    ]
    (tmp_path / "exp" / "ablations_valid.md").unlink()
    (tmp_path / "exp" / "mlcs" / "results_valid.json").unlink()  # mlcs was never scored on valid
    for summary in (tmp_path / "exp").glob("*/results_*.json"):  # an earlier scoring
        os.utime(summary, (summary.stat().st_mtime - 60,) * 2)
    sweep("test")
    assert [p.name for p in (tmp_path / "exp").glob("ablations_*.md")] == ["ablations_test.md"]


@pytest.mark.slow
def test_sweep_tables_name_the_config_folds_and_seeds_of_their_runs(tmp_path):
    for tag in ("ce_only", "mlcs"):
        for fold in ("main", "other"):
            write_runs(tmp_path / "exp", tag, (1, 2), None, fold=fold)
            for seed in (1, 2):  # each run's fused embeddings: its fold's cluster separation
                rng = np.random.default_rng(seed)
                labels = np.repeat(np.arange(4), 5)
                spread = 6 if fold == "main" else 0.5
                np.savez(
                    tmp_path / "exp" / tag / fold / f"seed{seed}" / "eval_test" / "embeddings.npz",
                    ids=np.array([f"u{i}" for i in range(20)]),
                    embeddings=rng.normal(size=(20, 8)) + spread * np.eye(4, 8)[labels],
                    labels=labels,
                    classes=np.array(CLASSES),
                )

    def sweep(folds):
        result = subprocess.run(
            [
                "bash", os.path.join(RECIPE, "sweep.sh"), "--ablations", "ce_only mlcs", "--stage", "7",
                "--data_root", str(tmp_path), "--exp_dir", str(tmp_path / "exp"), "--results_md", "",
                "--seeds", "1 2", "--folds", folds, "--train_opts", "--alpha=0.5",
            ],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return (tmp_path / "exp" / "ablations_test.md").read_text().splitlines()

    title = "## Ablations on test; --alpha=0.5; config conf/crab_tiny.yaml; folds"
    table = sweep("main other")
    assert table[0] == f"{title} main other, seeds 1 2"
    assert table[5].startswith("| MLCS (Crab) | mlcs | 4 |")
    table = sweep("main")  # the subset this sweep scored, not the results of every fold
    assert table[0] == f"{title} main, seeds 1 2"
    # the first sweep's table, of other runs, is kept with its embedding plot and scores
    (kept,) = (tmp_path / "exp").glob("ablations_test.*.md")
    assert kept.read_text().splitlines()[0] == f"{title} main other, seeds 1 2"
    stamp = kept.name.split(".")[1]
    for name in ("ablations_test_embeddings.{}.md", "ablations_test_embeddings.{}.png"):
        assert (tmp_path / "exp" / name.format(stamp)).is_file()
    assert table[5].startswith("| MLCS (Crab) | mlcs | 2 |")
    assert json.loads((tmp_path / "exp" / "mlcs" / "results_test.json").read_text())["num_runs"] == 4

    def silhouette(fold):  # of the embeddings table, the row of mlcs
        sweep(fold)
        row = (tmp_path / "exp" / "ablations_test_embeddings.md").read_text().split("| mlcs | ")[1]
        return float(row.split(" |")[0])

    dump = np.load(tmp_path / "exp" / "mlcs" / "other" / "seed1" / "eval_test" / "embeddings.npz")
    expected = embedding_scores(dump["embeddings"], dump["labels"])["silhouette"]
    assert silhouette("other") == pytest.approx(expected, abs=5e-4)  # a run of the fold scored
    assert silhouette("main") > 0.5 > expected
