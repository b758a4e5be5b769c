"""Reports: aggregation of runs into the results table, the ablation table and the
alpha sweep, the figures, embedding dumps, the ablation configs (each builds the
intended model and trains one step), and the training logger."""

import csv
import errno
import importlib.metadata
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import speechbrain as sb
import torch
from hyperpyyaml.core import resolve_references

import crab.embeddings
import crab.plots
from crab.bin import compare, embeddings, score
from crab.cli import UserError
from crab.embeddings import EMBEDDING_SCORES, embedding_scores, write_embeddings
from crab.experiment import make_brain, parse_and_load
from crab.metrics import METRICS
from crab.provenance import file_digest
from crab.report import (
    TrainLogger,
    ablation_overrides,
    alpha_figure,
    alpha_of,
    best_alpha_line,
    comparison_markdown,
    mean_std,
    merge_overrides,
    read_ablations,
    record_training,
    results_markdown,
    results_table,
    split_overrides,
    summarise,
    summary_embeddings,
)
from crab.report import (
    main as report_main,
)
from crab.selection import valid_curve
from crab.tokenizer import build_bpe_tokenizer
from tests.conftest import ROOT
from tests.test_brain import corpus_options

TEMPLATE = os.path.join(ROOT, "egs", "TEMPLATE")
TINY = os.path.join(TEMPLATE, "conf", "crab_tiny.yaml")
ABLATIONS = os.path.join(TEMPLATE, "conf", "ablations.txt")
CLASSES = ["angry", "happy", "neutral", "sad"]
PNG = b"\x89PNG\r\n\x1a\n"


def write_predictions(path, pairs, classes=CLASSES):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "true", "predicted"] + [f"prob_{c}" for c in classes])
        for n, (true, predicted) in enumerate(pairs):
            probs = [0.7 if c == predicted else 0.1 for c in classes]
            writer.writerow([f"utt{n}", true, predicted] + probs)


def assert_png(path, min_bytes=5000):
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == PNG and len(data) > min_bytes, path


# ---------------------------------------------------------------- aggregation


@pytest.fixture
def two_runs(tmp_path):
    """Two fake runs of one experiment: fold main, seeds 1 and 2, with train_info."""
    exp = tmp_path / "exp" / "mlcs"
    # seed1: 4 right of 4 -> all metrics 1. seed2: sad never in the references,
    # neutral never predicted: WAR 2/4, UAR (1 + 1 + 0) / 3.
    write_predictions(
        exp / "main" / "seed1" / "eval_test" / "predictions.csv",
        [("angry", "angry"), ("happy", "happy"), ("neutral", "neutral"), ("sad", "sad")],
    )
    write_predictions(
        exp / "main" / "seed2" / "eval_test" / "predictions.csv",
        [("angry", "angry"), ("happy", "happy"), ("neutral", "angry"), ("neutral", "sad")],
    )
    record_training(str(exp / "main" / "seed1"), 60, "./run.sh --seeds '1 2'")
    record_training(str(exp / "main" / "seed2"), 50, "./run.sh --seeds '1 2'")
    record_training(str(exp / "main" / "seed2"), 25, "./run.sh --seeds '1 2' --stage 4")  # a resume adds up
    return exp


def test_two_runs_aggregate_into_the_expected_table(two_runs, capsys):
    preds = [str(two_runs / "main" / s / "eval_test" / "predictions.csv") for s in ("seed1", "seed2")]
    out, summary_path = two_runs / "results_test.md", two_runs / "results_test.json"
    score.main(
        [
            "--per_run",
            "--tag",
            "mlcs",
            "--test_set",
            "test",
            "--title",
            "mlcs on test",
            "--out",
            str(out),
            "--summary",
            str(summary_path),
            *preds,
        ]
    )
    table = out.read_text()
    assert table == capsys.readouterr().out.rstrip("\n") + "\n"
    # seed2 by hand: confusion rows angry [1 0 0 0], happy [0 1 0 0], neutral [1 0 0 1], sad [0 0 0 0]
    # F1: angry 2/3, happy 1, neutral 0, sad 0 (predicted, never true) -> macro 5/12;
    # weighted (1 * 2/3 + 1 * 1 + 2 * 0) / 4 = 5/12
    war, uar, macro, weighted = 0.5, 2 / 3, 5 / 12, 5 / 12
    lines = table.splitlines()
    run1, run2 = (str(two_runs / "main" / s) for s in ("seed1", "seed2"))
    commit = lines[4].split(" | ")[-1].rstrip(" |")
    assert lines[0] == "## mlcs on test: folds main, seeds 1 2"  # the runs it covers
    assert lines[2] == "| run | N | WAR | UAR | macro_F1 | weighted_F1 | train wall time | commit |"
    assert lines[4] == f"| {run1} | 4 | 1.0000 | 1.0000 | 1.0000 | 1.0000 | 1m 00s | {commit} |"
    assert lines[5] == f"| {run2} | 4 | 0.5000 | 0.6667 | 0.4167 | 0.4167 | 1m 15s | {commit} |"
    cells = [f"{np.mean([1, v]):.4f} ± {np.std([1, v], ddof=1):.4f}" for v in (war, uar, macro, weighted)]
    assert lines[6] == "| mean ± std (2 runs) | | " + " | ".join(cells) + " | 1m 08s mean | |"
    assert commit and commit != "n/a"
    assert f"- {run2}: no test utterance of sad (UAR over the other classes)" in lines
    assert f"- {run2}: never predicted neutral (recall 0)" in lines
    # provenance of each row: machine and the command of its last training invocation
    assert any(
        line.startswith(f"- {run2}: ")
        and "GPU: " in line
        and line.endswith("`./run.sh --seeds '1 2' --stage 4`")
        for line in lines
    )
    summary = json.loads(summary_path.read_text())
    assert summary["tag"] == "mlcs" and summary["num_runs"] == 2
    assert (summary["folds"], summary["seeds"], summary["left_out"]) == (["main"], ["1", "2"], [])
    assert summary["mean"]["UAR"] == pytest.approx((1 + uar) / 2)
    assert summary["std"]["WAR"] == pytest.approx(np.std([1, war], ddof=1))
    assert summary["runs"][1]["wall_s"] == 75
    # per run: the full scores file, the per-class table, the confusion matrix
    eval2 = two_runs / "main" / "seed2" / "eval_test"
    scores = json.loads((eval2 / "scores.json").read_text())
    assert scores["UAR"] == pytest.approx(uar) and scores["absent_from_references"] == ["sad"]
    assert scores["per_class"]["sad"]["recall"] is None and scores["never_predicted"] == ["neutral"]
    per_class = (eval2 / "per_class.md").read_text()
    assert "| neutral | 2 | 0 | n/a | 0.0000 | 0.0000 |" in per_class
    assert "| sad | 0 | 1 | 0.0000 | n/a | 0.0000 |" in per_class
    assert_png(eval2 / "confusion.png")


def test_one_run_has_no_mean_row_and_missing_info_is_said(tmp_path):
    path = tmp_path / "exp" / "x" / "f" / "seed1" / "eval_test" / "predictions.csv"
    write_predictions(path, [("angry", "angry"), ("sad", "happy")])
    table, summary = results_table([str(path)])
    assert "mean ± std" not in table and summary["std"]["WAR"] is None
    assert "| 2 | 0.5000 |" in table and "| n/a | n/a |" in table
    assert "no train_info.json" in table


def test_mean_std_is_over_the_values_present():
    # 0.1, 0.2, 0.6 (None left out, not counted as 0): mean 0.3 (the median would be 0.2);
    # deviations -0.2, -0.1, 0.3, squares 0.04 + 0.01 + 0.09 = 0.14, sample std sqrt(0.14 / 2)
    mean, std = mean_std([0.1, None, 0.2, 0.6])
    assert mean == pytest.approx(0.3) and std == pytest.approx(math.sqrt(0.07))
    assert mean_std([None, 0.4]) == (0.4, None)  # one value: no std
    assert mean_std([None, None]) == (None, None)


def test_a_score_of_zero_is_a_value_not_a_missing_one():
    """A run that got every utterance wrong scores 0.0: in the mean and std like any other, and
    not said to lack the value."""
    # 0.0 and 0.6: mean 0.3, deviations -0.3 and 0.3, sample std sqrt(0.18 / 1)
    assert mean_std([0.0, 0.6]) == pytest.approx((0.3, math.sqrt(0.18)))
    rows = [
        {"run": f"exp/x/f/seed{i}", "num_utterances": 4, **dict.fromkeys(METRICS, score), "wall_s": 60.0}
        for i, score in ((1, 0.0), (2, 0.6))
    ]
    lines = results_markdown(summarise(rows)).splitlines()
    assert lines[4] == (
        "| mean ± std (2 runs) | | " + " | ".join(["0.3000 ± 0.4243"] * 4) + " | 1m 00s mean | |"
    )


def test_summary_of_a_score_some_runs_lack_is_over_the_runs_that_have_it():
    rows = [
        {"run": f"exp/x/f/seed{i}", "WAR": war, "silhouette": sil}
        for i, (war, sil) in enumerate([(0.5, 0.2), (0.6, None), (0.7, 0.4)], 1)
    ]
    summary = summarise(rows)
    assert summary["mean"]["WAR"] == pytest.approx(0.6) and summary["std"]["WAR"] == pytest.approx(0.1)
    # silhouette of runs 1 and 3: mean 0.3, std sqrt((0.1^2 + 0.1^2) / 1)
    assert summary["mean"]["silhouette"] == pytest.approx(0.3)
    assert summary["std"]["silhouette"] == pytest.approx(math.sqrt(0.02))
    assert "davies_bouldin" not in summary["mean"]  # no run has it


def test_a_mean_over_fewer_runs_than_its_row_says_how_many(tmp_path):
    """Runs never embedded, a collapsed model's null cluster scores, a run without its
    training time: the mean leaves them out, and every table that shows it says so."""

    def rows(tag, silhouettes, uars=(0.5, 0.6, 0.7)):
        return [
            {
                "run": f"exp/{tag}/f/seed{i}",
                "num_utterances": 4,
                **dict.fromkeys(("WAR", "macro_F1", "weighted_F1"), 0.5),
                "UAR": uar,
                "wall_s": 60.0 if i == 1 else None,
                **dict.fromkeys(EMBEDDING_SCORES, sil),
            }
            for i, (uar, sil) in enumerate(zip(uars, silhouettes, strict=True), 1)
        ]

    some = summarise(rows("mlcs", [0.2, None, 0.4]), tag="mlcs")  # seed2 collapsed
    every = summarise(rows("ce_only", [0.1, 0.1, 0.1]), tag="ce_only")
    lines = results_markdown(some).splitlines()
    assert lines[5] == (
        "| mean ± std (3 runs) | | 0.5000 ± 0.0000 | 0.6000 ± 0.1000 | 0.5000 ± 0.0000 | 0.5000 ± 0.0000 "
        "| 1m 00s mean (1 of 3 runs) | |"
    )
    some_runs = "0.300 ± 0.141 (2 of 3 runs)"
    assert f"silhouette {some_runs}, calinski_harabasz {some_runs}, davies_bouldin {some_runs} (" in lines[7]
    assert "(3 of 3" not in results_markdown(every)  # all runs: no note
    table = comparison_markdown([("ce_only", every), ("mlcs", some)]).splitlines()
    assert table[4].endswith("| +0.0000 | 0.100 ± 0.000 | 0.100 ± 0.000 | 0.100 ± 0.000 |")
    assert table[5].endswith(f"| +0.0000 | {some_runs} | {some_runs} | {some_runs} |")
    # the alpha sweep, with a UAR one run lacks (a summary from elsewhere)
    paths = []
    for tag, uars in (("ce_only", (0.5, 0.6, 0.7)), ("alpha2", (0.5, None, 0.7))):
        (tmp_path / tag).mkdir()
        paths.append(tmp_path / tag / "results_test.json")
        paths[-1].write_text(json.dumps(summarise(rows(tag, [0.1] * 3, uars), tag=tag)))
    out = tmp_path / "alpha_test.md"
    compare.main(["alpha", "--baseline", str(paths[0]), "--out", str(out), str(paths[1])])
    text = out.read_text()
    assert "| CE only | 3 | 0.5000 ± 0.0000 | 0.6000 ± 0.1000 | 0.5000 ± 0.0000 |" in text
    assert "| 2 | 3 | 0.5000 ± 0.0000 | 0.6000 ± 0.1414 (2 of 3 runs) | 0.5000 ± 0.0000 |" in text


def test_a_row_says_the_transcripts_its_run_was_trained_on(tmp_path):
    """A speech-only run (its text_source.json records no tokenizer) read no transcripts, whatever an
    older train_info.json says; another run's transcripts are those its train_info.json records."""
    sources = []
    for seed, tokenizer in ((1, None), (2, "abc")):
        run = tmp_path / "exp" / "x" / "main" / f"seed{seed}"
        write_predictions(run / "eval_test" / "predictions.csv", [("angry", "angry"), ("sad", "happy")])
        record = {"text_source": "gold", "asr_model": None, "tokenizer_sha256": tokenizer}
        (run / "text_source.json").write_text(json.dumps(record))
        info = {"wall_s": 1.0, "command": "./run.sh", "text_source": "asr", "asr_model": "whisper"}
        (run / "train_info.json").write_text(json.dumps(info))
        row = results_table([str(run / "eval_test" / "predictions.csv")])[1]["runs"][0]
        sources.append((row["text_source"], row["asr_model"]))
    assert sources == [("none", None), ("asr", "whisper")]


def test_predictions_given_twice_are_refused_not_counted_twice(tmp_path):
    """The same run twice (a seed or fold listed twice, a path written two ways) would weigh double
    in the mean and shrink the std: an error naming it, before anything is written."""
    path = tmp_path / "exp" / "x" / "main" / "seed1" / "eval_test" / "predictions.csv"
    write_predictions(path, [("angry", "angry"), ("sad", "happy")])
    other = tmp_path / "exp" / "x" / "main" / "seed2" / "eval_test" / "predictions.csv"
    write_predictions(other, [("angry", "angry"), ("sad", "sad")])
    again = tmp_path / "exp" / "x" / "main" / "seed2" / ".." / "seed1" / "eval_test" / "predictions.csv"
    with pytest.raises(SystemExit) as err:
        score.main([str(path), str(other), str(again), "--out", str(tmp_path / "results.md")])
    assert str(err.value) == f"ERROR: predictions given more than once: {again}"
    (tmp_path / "linked").symlink_to(tmp_path / "exp")  # the same file through a link
    linked = tmp_path / "linked" / "x" / "main" / "seed1" / "eval_test" / "predictions.csv"
    with pytest.raises(SystemExit) as err:
        score.main([str(path), str(other), str(linked)])
    assert str(err.value) == f"ERROR: predictions given more than once: {linked}"
    assert not (tmp_path / "results.md").exists()
    score.main([str(path), str(other), "--out", str(tmp_path / "results.md")])
    assert "2 runs" in (tmp_path / "results.md").read_text()


def test_predictions_of_a_checkpoint_the_run_no_longer_holds_are_refused(tmp_path, capsys):
    run = tmp_path / "exp" / "x" / "main" / "seed1"
    path = run / "eval_test" / "predictions.csv"
    write_predictions(path, [("angry", "angry"), ("sad", "happy")])
    (run / "eval_test" / "checkpoint.txt").write_text("CKPT+epoch2\n")
    (run / "save" / "CKPT+epoch2").mkdir(parents=True)
    score.main([str(path)])  # the checkpoint evaluated is the run's
    (run / "save" / "CKPT+epoch2").rename(run / "save" / "CKPT+epoch4")  # trained on: a better one
    with pytest.raises(SystemExit) as stale:
        score.main([str(path), "--out", str(tmp_path / "results.md")])
    assert str(stale.value) == (
        f"ERROR: {path}: predictions of checkpoint CKPT+epoch2, which {run / 'save'} no longer holds "
        "(it holds CKPT+epoch4): the run trained on after it was evaluated. Evaluate it again (stage 6)"
    )
    assert not (tmp_path / "results.md").exists()
    (run / "save" / "CKPT+epoch4").rmdir()  # a cleaned run: no checkpoint to tell by, scored as it is
    score.main([str(path), "--out", str(tmp_path / "results.md")])
    assert (tmp_path / "results.md").exists()


def evaluated_and_embedded(tmp_path, inputs=None):
    """A run's evaluation at checkpoint CKPT+epoch1 with embeddings of two clusters beside it:
    ``(run folder, predictions.csv, embedding scores)``."""
    run = tmp_path / "exp" / "mlcs" / "main" / "seed1"
    path = run / "eval_test" / "predictions.csv"
    write_predictions(path, [("angry", "angry"), ("sad", "happy")])
    (run / "save" / "CKPT+epoch1").mkdir(parents=True)
    (path.parent / "checkpoint.txt").write_text("CKPT+epoch1\n")
    ids, labels = ["utt0", "utt1", "utt2", "utt3"], np.array([0, 0, 3, 3])
    points = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0]])
    scores = write_embeddings(
        str(path.parent), ids, points, labels, CLASSES, checkpoint="CKPT+epoch1", inputs=inputs
    )
    return run, path, scores


def test_embeddings_of_another_checkpoint_than_the_predictions_are_left_out(tmp_path, capsys):
    """A run embedded, then trained on and evaluated again without --embeddings: its old
    embeddings are not scored beside the new predictions, nor drawn by the sweep."""
    run, path, scores = evaluated_and_embedded(tmp_path)
    eval_dir = path.parent
    assert json.loads((eval_dir / "embedding_scores.json").read_text())["checkpoint"] == "CKPT+epoch1"
    _, summary = results_table([str(path)], tag="mlcs", test_set="test")
    assert summary["runs"][0]["silhouette"] == pytest.approx(scores["silhouette"])
    (tmp_path / "results_test.json").write_text(json.dumps(summary))
    assert summary_embeddings(str(tmp_path / "results_test.json")) == str(eval_dir / "embeddings.npz")
    (run / "save" / "CKPT+epoch1").rename(run / "save" / "CKPT+epoch3")  # trained on, evaluated again
    (eval_dir / "checkpoint.txt").write_text("CKPT+epoch3\n")
    capsys.readouterr()
    _, summary = results_table([str(path)], tag="mlcs", test_set="test")
    assert "silhouette" not in summary["runs"][0] and "silhouette" not in summary["mean"]
    assert "is of checkpoint CKPT+epoch1, the predictions beside it of CKPT+epoch3" in capsys.readouterr().err
    assert summary_embeddings(str(tmp_path / "results_test.json")) is None


def test_embeddings_of_other_inputs_than_the_predictions_are_left_out(tmp_path, capsys):
    """Embedded, then the test manifest changed and stage 6 run again without --embeddings:
    the predictions are new, the embeddings of the old manifest (same checkpoint) are not
    scored beside them. Records of the same inputs, or none (an older release), are."""
    inputs = {"checkpoint": "CKPT+epoch1", "test_manifest_sha256": "a" * 64}
    _, path, _ = evaluated_and_embedded(tmp_path, inputs)
    eval_dir = path.parent
    assert "silhouette" in results_table([str(path)])[1]["runs"][0]  # no record of the predictions
    (eval_dir / "predictions.inputs.json").write_text(json.dumps(inputs))
    assert "silhouette" in results_table([str(path)])[1]["runs"][0]  # the same inputs
    record = eval_dir / "embeddings.inputs.json"  # and what only the embeddings use
    record.write_text(json.dumps({**inputs, "projection_library": {"scikit-learn": "1.5.0"}}))
    assert "silhouette" in results_table([str(path)])[1]["runs"][0]
    (eval_dir / "predictions.inputs.json").write_text(
        json.dumps({**inputs, "test_manifest_sha256": "b" * 64})
    )
    capsys.readouterr()
    _, summary = results_table([str(path)], tag="mlcs", test_set="test")
    assert "silhouette" not in summary["runs"][0]
    err = capsys.readouterr().err
    assert (
        f"{eval_dir / 'embedding_scores.json'} was computed from other inputs (test_manifest_sha256)" in err
    )


def test_new_embeddings_leave_no_plot_of_the_old_ones(tmp_path):
    """A plot of another projection is of the dump it was drawn from: one drawn before the
    dump was replaced goes with it, so that --skip_if_current never keeps it as current."""
    ids, labels = [f"u{i}" for i in range(8)], np.repeat(np.arange(4), 2)
    rng = np.random.default_rng(0)
    write_embeddings(str(tmp_path), ids, rng.normal(size=(8, 4)), labels, CLASSES, "pca")
    write_embeddings(str(tmp_path), ids, rng.normal(size=(8, 4)), labels, CLASSES, "tsne")
    assert (tmp_path / "embeddings_tsne.png").exists() and not (tmp_path / "embeddings_pca.png").exists()


def test_comparison_table_in_the_paper_layout(two_runs, tmp_path):
    def summary(tag, uar, runs=2):
        rows = [
            {
                "run": f"{tag}/{i}",
                "num_utterances": 4,
                "WAR": uar + 0.1,
                "UAR": uar + d,
                "macro_F1": uar,
                "weighted_F1": uar,
            }
            # runs may be 1 (the first offset only): unequal lengths expected
            for i, d in zip(range(runs), (-0.01, 0.01), strict=False)
        ]
        return tag, summarise(rows, tag=tag)

    entries = [summary("ce_only", 0.50), summary("mlcs", 0.55), summary("speech_only", 0.30)]
    table = comparison_markdown(entries, ABLATIONS, title="Ablations", corpus="meld").splitlines()
    assert table[2] == (
        "| method | tag | runs | WAR | UAR | macro_F1 | weighted_F1 | ΔUAR vs CE | paper UAR (MELD) |"
    )
    assert table[4] == (
        "| CE | ce_only | 2 | 0.6000 ± 0.0000 | 0.5000 ± 0.0141 | 0.5000 ± 0.0000 "
        "| 0.5000 ± 0.0000 | +0.0000 | .5253 (IV) |"
    )
    assert table[5].startswith("| MLCS (Crab) | mlcs | 2 |") and "| +0.0500 | .5565 (IV) |" in table[5]
    assert (
        table[6].startswith("| speech-only MLCS | speech_only |") and "| -0.2000 | .3176 (III) |" in table[6]
    )
    # the command line reads the summaries crab.bin.score writes
    for tag, s in entries:
        (tmp_path / tag).mkdir()
        (tmp_path / tag / "results_test.json").write_text(json.dumps(s))
    out = tmp_path / "ablations_test.md"
    compare.main(
        [
            "table",
            "--ablation_table",
            ABLATIONS,
            "--title",
            "Ablations",
            "--out",
            str(out),
            "--corpus",
            "meld",
            *[str(tmp_path / t / "results_test.json") for t, _ in entries],
        ]
    )
    assert out.read_text().splitlines() == table


def test_comparison_titles_name_the_config_folds_and_seeds(two_runs):
    preds = [str(two_runs / "main" / s / "eval_test" / "predictions.csv") for s in ("seed1", "seed2")]
    record_training(str(two_runs / "main" / "seed1"), 1, "./run.sh", config="conf/crab.yaml")
    both, one = results_table(preds)[1], results_table(preds[:1])[1]
    assert one["left_out"] == [str(two_runs / "main" / "seed2")]  # a subset
    table = comparison_markdown([("ce_only", both), ("mlcs", both)], title="Ablations; --alpha=1")
    assert table.startswith("## Ablations; --alpha=1; config conf/crab.yaml; folds main, seeds 1 2\n")
    table = comparison_markdown([("ce_only", both), ("mlcs", one)])
    runs = "not the same runs: ce_only folds main, seeds 1 2; mlcs folds main, seeds 1"
    assert table.startswith(f"## config conf/crab.yaml; {runs}\n")


def test_comparison_table_gives_the_papers_number_for_its_corpus():
    def summary(tag):
        rows = [
            {"run": tag, "num_utterances": 4, "WAR": 0.5, "UAR": 0.5, "macro_F1": 0.5, "weighted_F1": 0.5}
        ]
        return tag, summarise(rows, tag=tag)

    entries = [summary("ce_only"), summary("mlcs")]
    iemocap = comparison_markdown(entries, ABLATIONS, corpus="iemocap").splitlines()
    assert iemocap[0].endswith("| paper UAR (IEMOCAP) |")
    assert iemocap[2].endswith("| n/a |") and iemocap[3].endswith("| .7585 (II) |")  # Table IV is MELD only
    msp = comparison_markdown(entries, ABLATIONS, corpus="msp_podcast", test_set="test2").splitlines()
    assert msp[0].endswith("| paper UAR (MSP-Podcast test2) |") and msp[3].endswith("| .3382 (VII) |")
    mini = comparison_markdown(entries, ABLATIONS, corpus="mini").splitlines()
    assert (
        mini[0].endswith("| paper UAR (mini) |")
        and mini[2].endswith("| n/a |")
        and mini[3].endswith("| n/a |")
    )
    assert "paper" not in comparison_markdown(entries, ABLATIONS).splitlines()[0]  # no corpus: no column


def test_comparison_table_numbers_by_hand(tmp_path):
    """ΔUAR is of UAR (WAR moves otherwise), the paper's number is the test set's where the table
    has one beside the corpus's (its corpus names in any case), and without a CE-only experiment
    there is no Δ column."""
    table = tmp_path / "ablations.txt"
    table.write_text(
        "ce_only | CE   | IEMOCAP=.70 (II); iemocap/s5=.65 (II) | --leg_names=[]\n"
        "mlcs    | MLCS | iemocap=.75 (II); iemocap/s5=.72 (II) |\n"
    )

    def summary(tag, war, uar):
        row = {"run": f"exp/{tag}/s5/seed1", "num_utterances": 4, "WAR": war, "UAR": uar}
        return tag, summarise([{**row, "macro_F1": uar, "weighted_F1": war}], tag=tag)

    entries = [summary("ce_only", 0.60, 0.50), summary("mlcs", 0.62, 0.56)]  # ΔWAR +0.02, ΔUAR +0.06
    lines = comparison_markdown(entries, str(table), corpus="iemocap", test_set="s5").splitlines()
    assert lines[5] == "| MLCS | mlcs | 1 | 0.6200 | 0.5600 | 0.5600 | 0.6200 | +0.0600 | .72 (II) |"
    lines = comparison_markdown(entries, str(table), corpus="iemocap").splitlines()
    assert lines[4].endswith("| +0.0000 | .70 (II) |") and lines[5].endswith("| +0.0600 | .75 (II) |")
    assert "ΔUAR" not in comparison_markdown(entries[1:])  # no CE-only experiment to subtract
    # the command line passes the test set on
    paths = []
    for tag, s in entries:
        (tmp_path / tag).mkdir()
        paths.append(tmp_path / tag / "results_s5.json")
        paths[-1].write_text(json.dumps(s))
    out = tmp_path / "ablations_s5.md"
    options = ["--ablation_table", str(table), "--corpus", "iemocap", "--test_set", "s5", "--out", str(out)]
    compare.main(["table", *options, *map(str, paths)])
    assert out.read_text().splitlines()[5].endswith("| +0.0600 | .72 (II) |")


def test_alpha_sweep_table_and_figure(tmp_path):
    def write(tag, war, uar):
        (tmp_path / tag).mkdir()
        rows = [
            {"run": tag, "num_utterances": 4, "WAR": war, "UAR": uar, "macro_F1": uar, "weighted_F1": war}
        ]
        path = tmp_path / tag / "results_test.json"
        path.write_text(json.dumps(summarise(rows, tag=tag)))
        return str(path)

    base = write("ce_only", 0.60, 0.52)
    paths = [
        write(f"alpha{a}", war, uar)
        for a, war, uar in (("2.0", 0.62, 0.556), ("0.25", 0.61, 0.53), ("2.75", 0.63, 0.54))
    ]
    out, plot = tmp_path / "alpha_test.md", tmp_path / "alpha_test.png"
    compare.main(["alpha", "--baseline", base, "--plot", str(plot), "--out", str(out), *paths])
    text = out.read_text()
    rows = [line.split(" | ")[0] for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows == ["| alpha", "| CE only", "| 0.25", "| 2", "| 2.75"]  # sorted by alpha, CE first
    assert "Best UAR: 0.5560 at alpha 2 (1 run; +0.0360 against CE only's 0.5200, 1 run)." in text
    assert "Best WAR: 0.6300 at alpha 2.75 (1 run; +0.0300 against CE only's 0.6000, 1 run)." in text
    # CE only above every alpha: the best alpha's line says it is below
    higher = write("ce_only_higher", 0.70, 0.60)
    compare.main(["alpha", "--baseline", higher, "--out", str(out), *paths])
    assert "Best UAR: 0.5560 at alpha 2 (1 run; -0.0440 against CE only's 0.6000, 1 run)." in out.read_text()
    assert_png(plot)
    with pytest.raises(ValueError, match="alpha<value>"):
        alpha_of("mlcs")


@pytest.fixture
def drawn(monkeypatch):
    """The figures crab.plots draws, kept instead of written."""
    figures = []
    monkeypatch.setattr(crab.plots, "_save", lambda fig, path, dpi=150: figures.append(fig) or path)
    return figures


def test_figures_draw_each_value_where_it_belongs(drawn, monkeypatch):
    """Alphas given in any order are drawn in order with their own values and stds, the best one
    annotated; the paired panels put the baseline on x; the confusion matrix has the true class on
    rows, and marks a recall under 0.2, not one of 0.2."""
    crab.plots.plot_alpha(
        [2.0, 0.25, 1.0], {"UAR": [0.50, 0.60, 0.55]}, "a.png", stds={"UAR": [0.01, 0.02, 0.03]}
    )
    (line, _, (bars,)), annotation = drawn[0].axes[0].containers[0], drawn[0].axes[0].texts[0]
    assert line.get_xydata().tolist() == [[0.25, 0.60], [1.0, 0.55], [2.0, 0.50]]
    assert [tuple(np.round(s[:, 1], 6)) for s in bars.get_segments()] == [
        (0.58, 0.62),
        (0.52, 0.58),
        (0.49, 0.51),
    ]
    assert annotation.get_text() == "0.600" and annotation.xy == (0.25, 0.60)

    crab.plots.plot_paired([("mlcs", [0.5, 0.6], [0.7, 0.6], [("f1", "seed1"), ("f1", "seed2")])], "p.png")
    ax = drawn[1].axes[0]
    assert ax.collections[0].get_offsets().tolist() == [[0.5, 0.7], [0.6, 0.6]]
    assert ax.get_title() == "mlcs: above the diagonal 1 of 2"  # a tie is not above

    # true angry: 1 of 5 right (recall 0.2: not under it); true sad: 1 of 10 (0.1: marked)
    crab.plots.plot_confusion([[1, 4], [9, 1]], ["angry", "sad"], "c.png")
    cells = {text.get_position(): text for text in drawn[2].axes[0].texts}
    assert [cells[(j, i)].get_text() for i in (0, 1) for j in (0, 1)] == ["0.20", "0.80", "0.90", "0.10"]
    assert cells[(0, 0)].get_color() == "black" and cells[(1, 1)].get_color() == "red"

    def plot_alpha(alphas, means, path, stds, baseline, title):
        drawn.append((alphas, means, stds, baseline))

    monkeypatch.setattr(crab.plots, "plot_alpha", plot_alpha)

    def summary(uar, war, uar_std, war_std):
        return {"mean": {"UAR": uar, "WAR": war}, "std": {"UAR": uar_std, "WAR": war_std}}

    alpha_figure(
        [("alpha2", summary(0.5, 0.6, 0.01, 0.02)), ("alpha0.5", summary(0.55, 0.65, 0.03, None))],
        summary(0.4, 0.45, 0.0, 0.0),
        "alpha.png",
    )
    assert drawn[3] == (
        [0.5, 2.0],
        {"UAR": [0.55, 0.5], "WAR": [0.65, 0.6]},
        {"UAR": [0.03, 0.01], "WAR": [0.0, 0.02]},
        {"UAR": 0.4, "WAR": 0.45},
    )


def test_a_sweep_of_other_settings_keeps_the_table_it_would_replace(tmp_path, capsys):
    """A second sweep into the same folder (another alpha grid, other runs, other --train_opts)
    renames the first's table and its figures to <name>.<date written>.<ext> instead of replacing
    them; the same sweep again, with other numbers, replaces its own."""
    out, plot = tmp_path / "alpha_test.md", tmp_path / "alpha_test.png"
    title = "UAR and WAR against alpha on test"
    kept = "alpha_test.2026-01-01_00-00-00"

    def summary(tag, uar=0.5):
        rows = [{"run": f"{tag}/main/seed1", "num_utterances": 4, "WAR": 0.6, "UAR": uar}]
        rows[0].update(macro_F1=uar, weighted_F1=0.6)
        path = tmp_path / f"{tag}.json"
        path.write_text(json.dumps(summarise(rows, tag=tag)))
        return str(path)

    def sweep(alphas, uar=0.5, about=""):
        if out.exists():
            os.utime(out, (1767225600, 1767225600))  # written 2026-01-01 00:00:00 UTC
        paths = [summary(f"alpha{a}", uar) for a in alphas]
        options = ["--plot", str(plot), "--out", str(out), "--title", title + about]
        compare.main(["alpha", "--baseline", summary("ce_only"), *options, *paths])
        return out.read_text()

    def folder(pattern):  # the tables and figures, not the lock of their writer
        return sorted(p.name for p in tmp_path.glob(pattern) if p.suffix != ".lock")

    first = sweep(["0.5", "2"])
    assert sweep(["0.5", "2"], uar=0.9) != first  # the same sweep, its settings trained again
    assert folder("alpha_test*") == ["alpha_test.md", "alpha_test.png"]
    again = out.read_text()
    sweep(["0.5"])  # another grid
    assert folder("alpha_test*") == [f"{kept}.md", f"{kept}.png", "alpha_test.md", "alpha_test.png"]
    assert (tmp_path / f"{kept}.md").read_text() == again
    assert f"{out} is the table of another sweep" in capsys.readouterr().err
    sweep(["0.5"], about="; --lr=0.01")  # other --train_opts, written in the same second
    assert (tmp_path / f"{kept}_2.md").exists() and (tmp_path / f"{kept}_2.png").exists()

    # the ablation table takes its embedding plot and scores with it
    table = tmp_path / "ablations_test.md"
    embeddings = [tmp_path / "ablations_test_embeddings.png", tmp_path / "ablations_test_embeddings.md"]
    for tags in (["ce_only", "mlcs"], ["ce_only", "speech_only"]):
        if table.exists():
            os.utime(table, (1767225600, 1767225600))
        paths = [summary(tag) for tag in tags]
        compare.main(["table", "--out", str(table), "--companions", *map(str, embeddings), "--", *paths])
        embeddings[0].write_bytes(PNG)  # what sweep.sh draws after the table
        embeddings[1].write_text(f"scores of {tags[1]}")
    assert folder("ablations_*") == [
        "ablations_test.2026-01-01_00-00-00.md",
        "ablations_test.md",
        "ablations_test_embeddings.2026-01-01_00-00-00.md",
        "ablations_test_embeddings.2026-01-01_00-00-00.png",
        "ablations_test_embeddings.md",
        "ablations_test_embeddings.png",
    ]
    assert "| mlcs |" in (tmp_path / "ablations_test.2026-01-01_00-00-00.md").read_text()
    assert (tmp_path / "ablations_test_embeddings.2026-01-01_00-00-00.md").read_text() == "scores of mlcs"


def test_the_best_alpha_is_told_against_the_spread_of_its_runs():
    def summary(tag, *uars):
        rows = [{"run": f"{tag}/f/seed{i}", "num_utterances": 4, "UAR": u} for i, u in enumerate(uars)]
        return summarise([{**r, "WAR": r["UAR"], "macro_F1": 0, "weighted_F1": 0} for r in rows], tag=tag)

    base = summary("ce_only", 0.50, 0.54)  # mean 0.52, std 0.0283
    near, far = summary("alpha2", 0.52, 0.56), summary("alpha2", 0.60, 0.62)
    assert best_alpha_line("UAR", 2.0, near, base) == (
        "Best UAR: 0.5400 ± 0.0283 at alpha 2 (2 runs; +0.0200 against CE only's 0.5200 ± 0.0283, 2 runs: "
        "within the larger std, 0.0283; paired by fold and seed: crab.bin.paired)."
    )
    assert ": more than the larger std, 0.0283;" in best_alpha_line("UAR", 2.0, far, base)
    below = summary("alpha2", 0.40, 0.44)  # CE only the best of all, by 0.1000
    assert "-0.1000 against CE only's 0.5200 ± 0.0283, 2 runs: more than the larger std, 0.0283;" in (
        best_alpha_line("UAR", 2.0, below, base)
    )
    assert best_alpha_line("UAR", 2.0, far, None) == "Best UAR: 0.6100 ± 0.0141 at alpha 2 (2 runs)."
    # stds 0.0566 and 0.0141 (0.08 / sqrt 2, 0.02 / sqrt 2): +0.0500 is within the larger one
    wide = summary("alpha2", 0.52, 0.60)
    assert best_alpha_line("UAR", 2.0, wide, summary("ce_only", 0.50, 0.52)).endswith(
        "+0.0500 against CE only's 0.5100 ± 0.0141, 2 runs: within the larger std, 0.0566; "
        "paired by fold and seed: crab.bin.paired)."
    )


# ---------------------------------------------------------------- embeddings


def test_the_silhouette_of_a_large_test_set_is_that_of_a_fixed_sample(monkeypatch):
    # it compares every pair of points: minutes on 100,000s of test utterances
    import sklearn.metrics

    scored, real = [], sklearn.metrics.silhouette_score
    monkeypatch.setattr(sklearn.metrics, "silhouette_score", lambda x, y: scored.append(len(x)) or real(x, y))
    monkeypatch.setattr(crab.embeddings, "SILHOUETTE_SAMPLE", 30)
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 10)
    points = rng.normal(size=(40, 8)) + 6 * np.eye(4, 8)[labels]
    first, again = embedding_scores(points, labels), embedding_scores(points, labels)
    assert scored == [30, 30] and first == again and first["silhouette"] > 0.5
    embedding_scores(points[:30], labels[:30])
    assert scored[-1] == 30  # every point of a set no larger than the sample
    monkeypatch.setattr(crab.embeddings, "SILHOUETTE_SAMPLE", 1)  # a sample of one group: no silhouette
    assert embedding_scores(points, labels)["silhouette"] is None


def test_embedding_dump_scores_and_comparison_figure(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 10)
    separated = rng.normal(size=(40, 8)) + 6 * np.eye(4, 8)[labels]
    mixed = rng.normal(size=(40, 8))
    ids = [f"u{i}" for i in range(40)]
    good = write_embeddings(str(tmp_path / "mlcs"), ids, separated, labels, CLASSES, title="mlcs")
    bad = write_embeddings(str(tmp_path / "ce"), ids, mixed, labels, CLASSES, "tsne", title="ce")
    assert good["silhouette"] > 0.5 > bad["silhouette"]
    assert good["calinski_harabasz"] > bad["calinski_harabasz"]
    assert good["davies_bouldin"] < bad["davies_bouldin"]
    assert_png(tmp_path / "mlcs" / "embeddings_pca.png")
    assert_png(tmp_path / "ce" / "embeddings_tsne.png")
    saved = json.loads((tmp_path / "mlcs" / "embedding_scores.json").read_text())
    assert saved["num_utterances"] == 40 and saved["dim"] == 8
    dump = np.load(tmp_path / "mlcs" / "embeddings.npz")
    assert dump["embeddings"].shape == (40, 8) and list(dump["classes"]) == CLASSES
    # row i of the dump is that of ids[i] (u0, u1, ..., u10: not in sorted order)
    assert list(dump["ids"]) == ids and np.array_equal(dump["embeddings"], separated)
    assert np.array_equal(dump["labels"], labels)
    plot, out = tmp_path / "both.png", tmp_path / "both.md"
    compare.main(
        [
            "embeddings",
            "--plot",
            str(plot),
            "--out",
            str(out),
            f"ce_only={tmp_path / 'ce' / 'embeddings.npz'}",
            f"mlcs={tmp_path / 'mlcs' / 'embeddings.npz'}",
        ]
    )
    assert_png(plot, 20000)
    assert f"| mlcs | {good['silhouette']:.3f} |" in out.read_text()


@pytest.mark.parametrize("projection, size, needed", [("pca", 1, 2), ("tsne", 1, 3), ("tsne", 2, 3)])
def test_a_test_set_too_small_to_project_gets_an_empty_panel_saying_why(
    tmp_path, caplog, projection, size, needed
):
    """scikit-learn refuses PCA of one point and t-SNE of fewer points than its perplexity: the
    plot is optional, so the dump and scores are written and the panel says why it is empty."""
    rng = np.random.default_rng(0)
    ids, labels, points = [f"u{i}" for i in range(size)], np.arange(size), rng.normal(size=(size, 4))
    name = {"pca": "PCA", "tsne": "t-SNE"}[projection]
    why = f"{size} utterance(s), {name} needs at least {needed}"
    scores = write_embeddings(str(tmp_path / "tiny"), ids, points, labels, CLASSES, projection)
    assert scores == dict.fromkeys(scores)  # one utterance per class: undefined
    assert f"{name} projection of the embeddings of {tmp_path / 'tiny'} skipped: {why}" in caplog.text
    assert_png(tmp_path / "tiny" / f"embeddings_{projection}.png", 1000)
    write_embeddings(
        str(tmp_path / "big"),
        [f"v{i}" for i in range(8)],
        rng.normal(size=(8, 4)),
        np.repeat(np.arange(4), 2),
        CLASSES,
        projection,
    )
    plot, out = tmp_path / "both.png", tmp_path / "both.md"
    dumps = [f"{run}={tmp_path / run / 'embeddings.npz'}" for run in ("tiny", "big")]
    compare.main(["embeddings", "--projection", projection, "--plot", str(plot), "--out", str(out), *dumps])
    assert_png(plot)
    assert "| tiny | n/a | n/a | n/a |" in out.read_text()
    assert f"{tmp_path / 'tiny' / 'embeddings.npz'} skipped: {why}" in caplog.text


@pytest.mark.parametrize("projection", ["pca", "tsne"])
def test_one_dimensional_embeddings_get_an_empty_panel_saying_why(tmp_path, caplog, projection):
    """bottleneck_dim 1: scikit-learn's PCA (and t-SNE's PCA initialisation) refuses to
    project one feature to 2-D; the scores are defined and written."""
    labels = np.repeat(np.arange(4), 3)
    points = labels[:, None] + np.random.default_rng(0).normal(scale=0.1, size=(12, 1))
    out = tmp_path / "narrow"
    scores = write_embeddings(str(out), [f"u{i}" for i in range(12)], points, labels, CLASSES, projection)
    assert scores["silhouette"] > 0.5 and scores["davies_bouldin"] is not None
    name = {"pca": "PCA", "tsne": "t-SNE"}[projection]
    why = f"1-dimensional embeddings (bottleneck_dim), {name} to 2-D needs at least 2"
    assert f"{name} projection of the embeddings of {out} skipped: {why}" in caplog.text
    assert_png(out / f"embeddings_{projection}.png", 1000)


def test_extracted_embeddings_keep_each_utterance_with_its_id_and_label():
    """Over several batches, row i of the embeddings and labels is that of the i-th id."""
    from types import SimpleNamespace

    batches = [
        SimpleNamespace(
            id=[f"u{i}" for i in ids],
            fusion=torch.tensor([[float(i), -float(i)] for i in ids]),
            emo_encoded=SimpleNamespace(data=torch.tensor([[i % 4] for i in ids])),
        )
        for ids in ([3, 0], [2], [1, 4])
    ]
    brain = SimpleNamespace(
        modules=torch.nn.Module(),
        make_dataloader=lambda test_set, stage, **kwargs: batches,
        forward_model=lambda batch: (None, {"fusion": batch.fusion}),
    )
    ids, points, labels = crab.embeddings.extract_embeddings(brain, None, {})
    order = [3, 0, 2, 1, 4]
    assert ids == [f"u{i}" for i in order]
    assert points.tolist() == [[float(i), -float(i)] for i in order]
    assert labels.tolist() == [i % 4 for i in order]


def test_embeddings_stopped_before_their_record_leave_none_of_the_old_ones(tmp_path, monkeypatch):
    """The record of the old inputs must not vouch for the new dump (stage 6 would keep it)."""
    import crab.plots

    labels = np.repeat(np.arange(4), 3)
    points = np.random.default_rng(0).normal(size=(12, 8))
    ids, out = [f"u{i}" for i in range(12)], tmp_path / "eval"
    write_embeddings(str(out), ids, points, labels, CLASSES, inputs={"checkpoint": "old"})
    assert (out / "embeddings.inputs.json").exists()

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(crab.plots, "plot_embeddings", killed)
    with pytest.raises(KeyboardInterrupt):
        write_embeddings(str(out), ids, points + 1, labels, CLASSES, inputs={"checkpoint": "new"})
    assert not (out / "embeddings.inputs.json").exists()


def test_embeddings_all_zero_have_undefined_scores():
    labels = np.repeat(np.arange(4), 3)
    assert embedding_scores(np.zeros((12, 8)), labels) == dict.fromkeys(EMBEDDING_SCORES)


def test_collapsed_embeddings_have_undefined_scores_and_no_projection(tmp_path, caplog):
    """Every embedding one point: scikit-learn's Davies-Bouldin 0 would read as the best
    clustering and Calinski-Harabasz 1 as a number, and t-SNE of them kills the process."""
    labels = np.repeat(np.arange(4), 3)
    collapsed = np.full((12, 8), 0.25, dtype=np.float32) + np.float32(1e-9)  # float32 rounding
    ids, out = [f"u{i}" for i in range(12)], tmp_path / "collapsed"
    assert write_embeddings(str(out), ids, collapsed, labels, CLASSES) == dict.fromkeys(EMBEDDING_SCORES)
    why = "all 12 embeddings are one point (a collapsed model)"
    assert (
        f"Embedding scores silhouette, calinski_harabasz, davies_bouldin undefined (n/a): {why}"
        in caplog.text
    )
    assert f"PCA projection of the embeddings of {out} skipped: {why}" in caplog.text
    saved = json.loads((out / "embedding_scores.json").read_text())
    assert saved["davies_bouldin"] is None and saved["undefined"] == dict.fromkeys(EMBEDDING_SCORES, why)
    plot, table = tmp_path / "tsne.png", tmp_path / "tsne.md"
    compare_embeddings = [sys.executable, "-m", "crab.bin.compare", "embeddings", "--projection", "tsne"]
    run = [*compare_embeddings, "--plot", str(plot), "--out", str(table), f"c={out / 'embeddings.npz'}"]
    done = subprocess.run(run, capture_output=True, text=True, timeout=120)  # a crash is a status
    assert done.returncode == 0, done.stderr
    assert f"t-SNE projection of the embeddings of {out / 'embeddings.npz'} skipped: {why}" in done.stderr
    assert "| c | n/a | n/a | n/a |" in table.read_text()
    assert_png(plot, 1000)
    # each class one point, the classes apart: Calinski-Harabasz is infinite, not scikit-learn's 1
    points = np.eye(4, 8)[labels]
    scores = embedding_scores(points, labels)
    assert scores["calinski_harabasz"] is None and scores["davies_bouldin"] == 0 and scores["silhouette"] == 1


def test_the_scores_file_says_why_each_null_score_is_undefined(tmp_path, monkeypatch, caplog):
    rng, ids = np.random.default_rng(0), [f"u{i}" for i in range(6)]
    points = rng.normal(size=(6, 8))

    def written(labels, n=6):
        out = tmp_path / str(len(os.listdir(tmp_path)))
        write_embeddings(str(out), ids[:n], points[:n], np.array(labels), CLASSES)
        return json.loads((out / "embedding_scores.json").read_text())

    one_label = written([2] * 6)
    assert one_label["undefined"] == dict.fromkeys(EMBEDDING_SCORES, "1 label(s) among the 6 utterances")
    assert one_label["silhouette"] is None and one_label["davies_bouldin"] is None
    own_labels = written([0, 1, 2, 3], n=4)
    assert own_labels["undefined"] == dict.fromkeys(
        EMBEDDING_SCORES, "each of the 4 utterances has a label of its own"
    )
    assert "undefined" not in written([0, 0, 1, 1, 2, 2])  # every score a number
    monkeypatch.setattr(crab.embeddings, "SILHOUETTE_SAMPLE", 1)  # of 6: a sample of one label
    sampled = written([0, 0, 1, 1, 2, 2])
    assert sampled["undefined"] == {"silhouette": "its sample of 1 utterances holds one label"}
    assert sampled["silhouette"] is None and sampled["davies_bouldin"] > 0
    assert (
        "Embedding score silhouette undefined (n/a): its sample of 1 utterances holds one label"
        in caplog.text
    )


# ---------------------------------------------------------------- ablations


EXPECTED = {  # name: (legs, leg output size, leg loss, encoders, cross-modal block, hierarchical lr)
    "plain_ce": ([], None, "mpcl", {"speech", "text"}, True, True),
    "ce_only": ([], None, "mpcl", {"speech", "text"}, True, True),
    "ce_mpcl_fusion": (["fusion"], 32, "mpcl", {"speech", "text"}, True, True),
    "mls_ce": (
        ["speech_unimodal", "text_unimodal", "speech_pooled", "text_pooled", "fusion"],
        4,
        "wce",
        {"speech", "text"},
        True,
        True,
    ),
    "mlcs_supcon": (
        ["speech_unimodal", "text_unimodal", "speech_pooled", "text_pooled", "fusion"],
        32,
        "supcon",
        {"speech", "text"},
        True,
        True,
    ),
    "mlcs_no_hier_lr": (
        ["speech_unimodal", "text_unimodal", "speech_pooled", "text_pooled", "fusion"],
        32,
        "mpcl",
        {"speech", "text"},
        True,
        False,
    ),
    "mlcs": (
        ["speech_unimodal", "text_unimodal", "speech_pooled", "text_pooled", "fusion"],
        32,
        "mpcl",
        {"speech", "text"},
        True,
        True,
    ),
    "speech_only": (["speech_unimodal", "speech_pooled", "fusion"], 32, "mpcl", {"speech"}, False, True),
    "text_only": (["text_unimodal", "text_pooled", "fusion"], 32, "mpcl", {"text"}, False, True),
}


def test_ablation_table_lists_the_papers_variants():
    table = read_ablations(ABLATIONS)
    assert list(table) == list(EXPECTED)
    assert table["mls_ce"]["overrides"] == ["--leg_output_dim=!ref <num_classes>", "--leg_loss=!ref <wce>"]
    assert table["mlcs"]["overrides"] == []


def test_overrides_merge_later_wins(capsys):
    assert merge_overrides(["--a=1", "--b=2"], ["--c=3", "--a=4"]) == ["--b=2", "--c=3", "--a=4"]
    assert ablation_overrides(ABLATIONS, "ce_only", ["--leg_names=[fusion]"]) == ["--leg_names=[fusion]"]
    report_main(
        ["overrides", "--table", ABLATIONS, "--ablation", "mlcs_no_hier_lr", "--", "--number_of_epochs=2"]
    )
    assert capsys.readouterr().out == "--encoder_lr=!ref <lr>\n--number_of_epochs=2\n"
    with pytest.raises(SystemExit, match="no ablation 'ce'"):
        report_main(["overrides", "--table", ABLATIONS, "--ablation", "ce"])


def test_bad_ablation_table(tmp_path):
    bad = tmp_path / "ablations.txt"
    bad.write_text("# comment\nx | X | | --alpha=1\nx | X | | --alpha=2\n")
    with pytest.raises(ValueError, match="defined twice"):
        read_ablations(bad)
    bad.write_text("y | Y | | alpha=1\n")
    with pytest.raises(ValueError, match="--key=value"):
        read_ablations(bad)


def test_train_opts_take_speechbrains_flags():
    words = split_overrides("--alpha=1 --compile --compile_using_dynamic_shape_tracing --noprogressbar")
    assert words == ["--alpha=1", "--compile", "--compile_using_dynamic_shape_tracing", "--noprogressbar"]
    # a flag's key is itself: given twice, it stays once
    assert merge_overrides(["--compile"], ["--compile", "--a=1"]) == ["--compile", "--a=1"]
    for bad in ("--alpha", "--device", "--compiled", "alpha=1"):  # --device takes a value
        with pytest.raises(ValueError, match=rf"--train_opts: overrides must be --key=value .*'{bad}'"):
            split_overrides(f"--a=1 {bad}")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """Four test utterances (one per class), manifests and a tokenizer."""
    root = tmp_path_factory.mktemp("ablation_data")
    manifest = {}
    for k, emo in enumerate(CLASSES):
        wav = 0.3 * np.sin(2 * np.pi * (100 + 80 * k) * np.arange(4000 + 800 * k) / 16000)
        sf.write(root / f"u{k}.wav", wav.astype("float32"), 16000)
        manifest[f"u{k}"] = {
            "wav": f"{{data_root}}/u{k}.wav",
            "duration": len(wav) / 16000,
            "text": f"I feel {emo} today",
            "emo": emo,
            "spk": "s",
        }
    for split in ("train", "valid", "test"):
        (root / f"{split}.json").write_text(json.dumps(manifest))
    build_bpe_tokenizer([f"I feel {e} today" for e in CLASSES] * 3, str(root / "tokenizer"), 300)
    return root


def ablation_argv(name, data, out):
    base = [
        *corpus_options(data, out),
        "--lr=1e-3",
        "--encoder_lr=!ref <lr> / 10",
    ]
    return merge_overrides(base, read_ablations(ABLATIONS)[name]["overrides"])


def load_ablation(name, data, out):
    cwd = os.getcwd()
    os.chdir(TEMPLATE)  # conf/ paths are relative to the recipe
    try:
        _, run_opts, _, hparams = parse_and_load([TINY, *ablation_argv(name, data, out)])
    finally:
        os.chdir(cwd)
    return hparams, run_opts


def batch_of(data):
    items = []
    for k, emo in enumerate(CLASSES):
        wav, _ = sf.read(data / f"u{k}.wav", dtype="float32")
        items.append(
            {
                "id": f"u{k}",
                "sig": torch.from_numpy(wav),
                "text": f"I feel {emo} today",
                "emo_encoded": torch.LongTensor([k]),
            }
        )
    return sb.dataio.batch.PaddedBatch(items)


# Raised inside transformers' WavLM attention, not by crab.
@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")
@pytest.mark.parametrize("name", list(EXPECTED))
def test_ablation_builds_the_intended_model_and_trains_a_step(name, tiny_data, tmp_path):
    legs_expected, leg_dim, loss_kind, branches, cross_modal, hierarchical = EXPECTED[name]
    hparams, run_opts = load_ablation(name, tiny_data, tmp_path / "exp")
    model, legs = hparams["model"], hparams["legs"]
    assert legs.names == legs_expected
    assert set(model.encoders) == branches
    assert (model.text_encoder is None) == ("text" not in branches)
    assert (model.cross_modal is not None) == cross_modal
    assert hparams["wce"].class_weighting == (name != "plain_ce")
    for leg in legs.legs.values():
        assert leg[-1].out_features == leg_dim
    if loss_kind == "wce":
        assert hparams["leg_loss"] is hparams["wce"]
    else:
        assert hparams["leg_loss"].kind == loss_kind
    assert hparams["encoder_lr"] == pytest.approx(1e-4 if hierarchical else 1e-3)

    torch.manual_seed(0)
    brain = make_brain(hparams, {**run_opts, "noprogressbar": True})
    brain.init_optimizers()
    assert {n: o.param_groups[0]["lr"] for n, o in brain.optimizers_dict.items()} == pytest.approx(
        {**{f"{b}_encoder": hparams["encoder_lr"] for b in branches}, "head": 1e-3}
    )
    before = [p.detach().clone() for p in model.classifier.parameters()]
    brain.on_stage_start(sb.Stage.TRAIN)
    loss = brain.fit_batch(batch_of(tiny_data))
    assert torch.isfinite(loss)
    parts = brain._loss_parts
    assert set(parts) == {"wce", *(f"leg_{n}" for n in legs_expected)}
    # eq. 8 for every row, the CE heads of "MLS + CE" included: WCE + alpha * mean over the legs
    legs_mean = sum(parts[f"leg_{n}"] for n in legs_expected) / len(legs_expected) if legs_expected else 0.0
    assert float(loss) == pytest.approx(parts["wce"] + hparams["alpha"] * legs_mean, rel=1e-5)
    assert any(not torch.equal(b, p) for b, p in zip(before, model.classifier.parameters(), strict=True))


@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")
def test_embeddings_command_dumps_the_fused_layer(tiny_data, tmp_path):
    """crab.bin.embeddings on a saved (untrained) checkpoint: fc1 outputs of every utterance."""
    hparams, run_opts = load_ablation("mlcs", tiny_data, tmp_path / "exp")
    os.makedirs(hparams["save_folder"], exist_ok=True)
    checkpointer = make_brain(hparams, run_opts).checkpointer
    best = checkpointer.save_checkpoint(meta={"UAR": 0.5}).path
    checkpointer.save_checkpoint(meta={"UAR": 0.25})  # newer, worse on ckpt_metric: not the one embedded
    # the run's own configuration, as training saves it (crab.bin.embeddings loads the run from it)
    applied = "".join(
        f"{w[2:].split('=', 1)[0]}: {w.split('=', 1)[1]}\n"
        for w in ablation_argv("mlcs", tiny_data, tmp_path / "exp")
    )
    with open(TINY, encoding="utf-8") as f:
        (tmp_path / "exp" / "hyperparams.yaml").write_text(resolve_references(f, applied).getvalue())
    out = tmp_path / "exp" / "eval_test"

    def embed(*opts):
        """Whether crab.bin.embeddings replaced embeddings.npz."""
        before = (out / "embeddings.npz").stat().st_ino if (out / "embeddings.npz").exists() else None
        cwd = os.getcwd()
        os.chdir(TEMPLATE)
        try:
            embeddings.main(
                [
                    TINY,
                    f"--data_root={tiny_data}",
                    f"--data_folder={tiny_data}",
                    f"--output_folder={tmp_path / 'exp'}",
                    f"--classes=[{','.join(CLASSES)}]",
                    "--eval_name=test",
                    "--noprogressbar",
                    *opts,
                ]
            )
        finally:
            os.chdir(cwd)
        return (out / "embeddings.npz").stat().st_ino != before

    assert embed("--skip_if_current")
    # the same inputs: kept (the recipe's stage 6); without its plot, or without the flag: made again
    assert not embed("--skip_if_current")
    assert not embed("--skip_if_current", "--eval_precision=bf16")  # embeddings are float32 whatever it is
    (out / "embeddings_pca.png").unlink()
    assert embed("--skip_if_current") and embed()
    record = json.loads((out / "embeddings.inputs.json").read_text())
    dump = np.load(out / "embeddings.npz")
    assert dump["embeddings"].shape == (4, hparams["bottleneck_dim"])
    assert sorted(dump["ids"]) == ["u0", "u1", "u2", "u3"]
    assert sorted(dump["labels"].tolist()) == [0, 1, 2, 3]
    assert_png(out / "embeddings_pca.png")
    saved = json.loads((out / "embedding_scores.json").read_text())
    assert set(saved) >= {"silhouette", "davies_bouldin"}
    assert record["projection_library"]["scikit-learn"] == importlib.metadata.version("scikit-learn")
    assert "eval_precision" not in record
    assert saved["checkpoint"] == record["checkpoint"] == os.path.basename(best)


# ---------------------------------------------------------------- training logger


def test_a_training_log_on_a_full_disk_is_an_error_naming_it(tmp_path, monkeypatch):
    logger = TrainLogger(str(tmp_path / "train_log.txt"), str(tmp_path / "tb"))

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("builtins.print", full_disk)  # how SpeechBrain's FileTrainLogger writes the line
    full = f"cannot write {tmp_path}/train_log.txt \\(No space left on device\\)"
    with pytest.raises(UserError, match=full):
        logger.log_stats({"epoch": 1}, train_stats={"loss": 1.5}, valid_stats={"UAR": 0.5})


def test_a_line_the_disk_cut_short_is_dropped_when_the_run_resumes(tmp_path):
    log = tmp_path / "train_log.txt"
    log.write_text("epoch: 1, lr: 1e-05 - valid UAR: 4.00e-01\nepoch: 2, lr: 1e-05 - valid U")
    TrainLogger(str(log)).log_stats({"epoch": 2, "lr": 1e-05}, valid_stats={"UAR": 0.5})
    assert log.read_text().splitlines()[1:] == ["epoch: 2, lr: 1.00e-05 - valid UAR: 5.00e-01"]
    assert valid_curve(str(log)) == [0.4, 0.5]


def test_train_logger_writes_the_file_log_and_asks_for_tensorboard(tmp_path):
    logger = TrainLogger(str(tmp_path / "train_log.txt"), str(tmp_path / "tb"))
    logger.log_stats({"epoch": 1}, train_stats={"loss": 1.5}, valid_stats={"UAR": 0.5})
    assert (tmp_path / "train_log.txt").read_text() == "epoch: 1 - train loss: 1.50 - valid UAR: 5.00e-01\n"
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install tensorboard"):
            TrainLogger(str(tmp_path / "log2.txt"), str(tmp_path / "tb"), use_tensorboard=True)
    else:
        logger = TrainLogger(str(tmp_path / "log2.txt"), str(tmp_path / "tb"), use_tensorboard=True)
        logger.log_stats({"epoch": 1}, train_stats={"loss": 1.5})
        assert os.listdir(tmp_path / "tb")


def test_a_run_trained_by_no_invocation_of_this_release_is_left_unrecorded(tmp_path, capsys):
    """Stage 5 rerun on a finished run without train_info.json records it only where its
    checkpoint holds the training time (an invocation killed before it recorded); a run an
    older release or a hand-run trained would get this do-nothing invocation's time and command."""
    checkpoint = tmp_path / "run" / "save" / "CKPT+old"
    checkpoint.mkdir(parents=True)
    (checkpoint / "CKPT.yaml").write_text("end-of-epoch: true\nunixtime: 1.0\n")
    rerun = ["record_training", "--run_dir", str(tmp_path / "run"), "--wall_s", "3", "--command", "./run.sh"]
    report_main([*rerun, "--trained_now", "false"])
    assert not (tmp_path / "run" / "train_info.json").exists()
    assert "does not record the training time" in capsys.readouterr().out
    (checkpoint / "CKPT.yaml").write_text("end-of-epoch: true\nunixtime: 1.0\ntrain_s: 41.5\n")
    report_main([*rerun, "--trained_now", "false"])
    info = json.loads((tmp_path / "run" / "train_info.json").read_text())
    assert (info["wall_s"], info["command"]) == (41.5, "./run.sh")


def test_a_kept_evaluation_needs_its_record_its_outputs_the_same_device_type_and_cache_dtype(tmp_path):
    """is_current: an evaluation is kept only with a readable record equal to the inputs now and
    every output present; the record names the device type (not its index: cuda:1 is cuda)."""
    from types import SimpleNamespace

    from crab import evalrecord

    manifest = tmp_path / "test.json"
    manifest.write_text("{}")
    hparams = {
        "ckpt_metric": "UAR",
        "test_manifest": str(manifest),
        "model": SimpleNamespace(speech_encoder=None),
    }
    brain = SimpleNamespace(
        checkpointer=SimpleNamespace(find_checkpoint=lambda max_key: None),
        eval_precision="fp32",
        device="cuda:1",
    )
    wanted = evalrecord.inputs(hparams, brain)
    assert wanted["device_type"] == "cuda"
    record, outputs = evalrecord.PREDICTIONS_RECORD, ["predictions.csv", "metrics.json"]
    for name in outputs:
        (tmp_path / name).write_text("x")
    (tmp_path / record).write_text(json.dumps(wanted))
    assert evalrecord.is_current(str(tmp_path), record, wanted, outputs)
    assert not evalrecord.is_current(
        str(tmp_path),
        record,
        evalrecord.inputs(hparams, SimpleNamespace(**{**vars(brain), "device": "cpu"})),
        outputs,
    )
    (tmp_path / "metrics.json").unlink()
    assert not evalrecord.is_current(str(tmp_path), record, wanted, outputs)
    (tmp_path / "metrics.json").write_text("x")
    (tmp_path / record).write_text("{")  # cut short
    assert not evalrecord.is_current(str(tmp_path), record, wanted, outputs)
    # a record without an input recorded now (an older release's): not known to be the same
    (tmp_path / record).write_text(json.dumps({k: v for k, v in wanted.items() if k != "code_sha256"}))
    assert not evalrecord.is_current(str(tmp_path), record, wanted, outputs)
    # states read from a float16 cache are not those of a float32 one
    half, full = (
        evalrecord.inputs(hparams, brain, (SimpleNamespace(dtype=d), ["text"]))
        for d in ("float16", "float32")
    )
    assert half["feature_cache"] == {"branches": ["text"], "dtype": "float16"}
    (tmp_path / record).write_text(json.dumps(half))
    assert evalrecord.is_current(str(tmp_path), record, half, outputs)
    assert not evalrecord.is_current(str(tmp_path), record, full, outputs)
    # a speech encoder whose states depend on the padding: its batching counts, unless read from a cache
    hparams.update(model=SimpleNamespace(speech_encoder=SimpleNamespace(padding_dependent=True)))
    hparams["eval_dataloader_opts"] = {"batch_size": 4}
    assert evalrecord.inputs(hparams, brain)["batching"] == {"batch_size": 4}
    assert (
        evalrecord.inputs(hparams, brain, (SimpleNamespace(dtype="float32"), ["speech"]))["batching"] is None
    )


def test_predictions_of_another_version_of_the_test_manifest_are_refused(tmp_path, capsys):
    """An utterance removed or relabelled after stage 6 (the manifest edited, stage 3 run again):
    the old predictions score the old test set, and a table would mix them with new ones."""
    run = tmp_path / "exp" / "x" / "main" / "seed1"
    path = run / "eval_test" / "predictions.csv"
    write_predictions(path, [("angry", "angry"), ("sad", "happy")])
    manifest = tmp_path / "data" / "main" / "test.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text('{"utt0": {"emo": "angry"}, "utt1": {"emo": "sad"}}')
    record = {"test_manifest_sha256": file_digest(str(manifest))}
    (path.parent / "predictions.inputs.json").write_text(json.dumps(record))
    score.main([str(path), "--test_manifests", str(manifest)])  # the manifest they were made from
    manifest.write_text('{"utt0": {"emo": "angry"}, "utt1": {"emo": "happy"}}')  # relabelled
    with pytest.raises(SystemExit) as stale:
        score.main(
            ["--test_manifests", str(manifest), "--out", str(tmp_path / "results.md"), "--", str(path)]
        )
    assert str(stale.value) == (
        f"ERROR: {path}: predictions of another {manifest} than the one there now (it changed after they "
        "were made). Evaluate it again (stage 6)"
    )
    assert not (tmp_path / "results.md").exists()
    score.main([str(path)])  # not asked: scored as they are
    manifest.unlink()  # scored where the data folder is not: said, not refused
    capsys.readouterr()
    score.main([str(path), "--test_manifests", str(manifest)])
    assert f"not checked against its test manifest: none at {manifest}" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # one manifest per predictions file
        score.main([str(path), str(path), "--test_manifests", str(manifest)])


def test_missing_predictions_say_whether_to_evaluate_or_to_train(tmp_path):
    """A run without predictions but with a checkpoint is evaluated (stage 6); one without a
    checkpoint (a seed never trained, or given by mistake) cannot be: stage 6 would say so again."""
    trained = tmp_path / "exp" / "x" / "main" / "seed1"
    (trained / "save" / "CKPT+epoch2").mkdir(parents=True)
    never = tmp_path / "exp" / "x" / "main" / "seed9"
    paths = [str(run / "eval_test" / "predictions.csv") for run in (trained, never)]
    with pytest.raises(SystemExit) as missing:
        score.main(paths)
    assert str(missing.value) == (
        f"ERROR: no predictions at {paths[0]}: run the evaluate stage (6) first; no predictions at "
        f"{paths[1]}, and {never} holds no trained checkpoint: train it (stage 5), or leave its fold or "
        "seed out (--folds, --seeds)"
    )
