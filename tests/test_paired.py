"""Paired comparisons (crab.paired, crab.bin.paired) and the choice of epochs on
validation logs (crab.selection, crab.bin.choose_epochs), against hand-computed cases."""

import itertools
import json
import math
import os

import pytest

from crab.bin import choose_epochs, paired
from crab.paired import (
    PairingError,
    align,
    fold_means,
    load_scores_table,
    load_summary_scores,
    paired_markdown,
    paired_stats,
    run_pair_key,
    verdict,
)
from crab.selection import SelectionError, best_epoch, valid_curve


def test_paired_stats_by_hand():
    # differences +0.01 +0.02 -0.015 +0.03 +0.04 (distinct sizes: no ties in the ranks)
    base = [0.50, 0.60, 0.70, 0.80, 0.90]
    meth = [0.51, 0.62, 0.685, 0.83, 0.94]
    s = paired_stats(base, meth)
    assert s["n"] == 5 and (s["wins"], s["losses"], s["ties"]) == (4, 1, 0)
    assert s["mean_diff"] == pytest.approx(0.017)
    # sum of squared deviations from 0.017: 4.9e-5 + 9e-6 + 1.024e-3 + 1.69e-4 + 5.29e-4 = 1.78e-3
    assert s["std_diff"] == pytest.approx(math.sqrt(1.78e-3 / 4))
    half = 2.776445 * math.sqrt(1.78e-3 / 4) / math.sqrt(5)  # t(0.975, 4 df)
    assert s["t_ci"] == pytest.approx((0.017 - half, 0.017 + half), abs=1e-6)
    assert s["sign_p"] == pytest.approx(2 * 6 / 32)  # P(X >= 4 | n=5, p=1/2) = 6/32, two-sided
    # signed ranks: the only negative difference has rank 2; rank sums <= 2: {}, {1}, {2} -> 3/32
    assert s["wilcoxon_p"] == pytest.approx(2 * 3 / 32)
    low, high = s["boot_ci"]
    assert low < s["mean_diff"] < high and paired_stats(base, meth)["boot_ci"] == (low, high)
    assert verdict(s) == "cannot be told apart"


def test_the_table_row_puts_each_statistic_in_its_column():
    """The by-hand case above as the table shows it: means, std, the t interval (half-width
    2.776445 * 0.021095 / sqrt 5 = 0.026193) before the bootstrap one, the sign test's p before
    Wilcoxon's."""
    s = paired_stats([0.50, 0.60, 0.70, 0.80, 0.90], [0.51, 0.62, 0.685, 0.83, 0.94])
    lines = paired_markdown([("mlcs", s)], "UAR", "ce", confidence=0.95).splitlines()
    assert lines[2].startswith(
        "| method | pairs | ce mean | method mean | mean difference | std of differences "
    )
    assert "| 95% CI (t) | 95% CI (bootstrap) | wins / losses / ties | sign test p | Wilcoxon p |" in lines[2]
    boot = "[{:+.4f}, {:+.4f}]".format(*s["boot_ci"])
    assert lines[4] == (
        f"| mlcs | 5 | 0.7000 | 0.7170 | +0.0170 | 0.0211 | [-0.0092, +0.0432] | {boot} | 4 / 1 / 0 "
        "| 0.375 | 0.188 | cannot be told apart |"
    )
    assert boot != "[-0.0092, +0.0432]"


def test_bootstrap_interval_is_the_percentiles_of_the_resampled_means():
    """The exact bootstrap distribution of the mean of 5 differences (all 5^5 equally likely
    resamples, every mean a multiple of 0.001): the seeded 10000 resamples find its 2.5% and
    97.5% quantiles, to one step of 0.001."""
    base = [0.50, 0.60, 0.70, 0.80, 0.90]
    meth = [0.51, 0.62, 0.685, 0.83, 0.94]
    diffs = [m - b for b, m in zip(base, meth, strict=True)]
    means = sorted(sum(sample) / 5 for sample in itertools.product(diffs, repeat=5))
    quantile = lambda p: means[math.ceil(p * len(means)) - 1]  # noqa: E731
    assert (quantile(0.025), quantile(0.975)) == pytest.approx((-0.001, 0.032), abs=1e-9)
    assert paired_stats(base, meth)["boot_ci"] == pytest.approx((-0.001, 0.032), abs=1.5e-3)
    # a 90% interval: the 5% and 95% quantiles
    assert (quantile(0.05), quantile(0.95)) == pytest.approx((0.002, 0.030), abs=1e-9)
    assert paired_stats(base, meth, confidence=0.9)["boot_ci"] == pytest.approx((0.002, 0.030), abs=1.5e-3)


def test_ties_are_dropped_from_the_sign_and_signed_rank_tests():
    # differences +0.01 +0.02 +0.03 0: 3 wins of 3 untied pairs, P = 2 (1/2)^3 for both tests
    s = paired_stats([0.50, 0.60, 0.70, 0.80], [0.51, 0.62, 0.73, 0.80])
    assert (s["wins"], s["losses"], s["ties"]) == (3, 0, 1)
    assert s["sign_p"] == pytest.approx(0.25) and s["wilcoxon_p"] == pytest.approx(0.25)


def test_verdict_follows_the_interval_and_zero_differences_are_ties():
    assert verdict(paired_stats([0.5, 0.6, 0.7, 0.8], [0.6, 0.71, 0.79, 0.905])) == "helped"
    assert verdict(paired_stats([0.6, 0.71, 0.79, 0.905], [0.5, 0.6, 0.7, 0.8])) == "hurt"
    same = paired_stats([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])
    assert same["ties"] == 3 and same["sign_p"] == 1.0 and same["wilcoxon_p"] is None


def test_an_interval_touching_zero_is_no_verdict():
    """Identical scores: every difference 0, std 0, so both intervals are exactly [0, 0]; an
    interval that reaches 0 does not exclude it, so neither it nor one ending at 0 is a verdict."""
    same = paired_stats([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])
    assert same["t_ci"] == (0.0, 0.0) and same["boot_ci"] == (0.0, 0.0)
    assert verdict(same) == "cannot be told apart"
    assert verdict({"t_ci": (0.0, 0.02)}) == verdict({"t_ci": (-0.02, 0.0)}) == "cannot be told apart"
    assert verdict({"t_ci": (1e-9, 0.02)}) == "helped" and verdict({"t_ci": (-0.02, -1e-9)}) == "hurt"


@pytest.mark.parametrize(
    "base, meth, message",
    [
        ([0.5], [0.6], "at least 2 pairs"),
        ([0.5, 0.6], [0.5], "equal-length"),
        ([0.5, math.nan], [0.5, 0.6], "finite"),
    ],
)
def test_paired_stats_refuses_what_is_not_a_pairing(base, meth, message):
    with pytest.raises(PairingError, match=message):
        paired_stats(base, meth)


def test_pairs_are_fold_and_seed_and_unpaired_runs_are_named():
    assert run_pair_key("exp/mlcs/fold03_08/seed2") == ("fold03_08", "seed2")
    with pytest.raises(PairingError, match="not a run path"):
        run_pair_key("exp/mlcs/fold03_08")
    base = {("f1", "seed1"): 0.5, ("f2", "seed1"): 0.6}
    with pytest.raises(PairingError, match=r"f2/seed1 \(only ce\)"):
        align(base, {("f1", "seed1"): 0.7}, "ce", "mlcs")
    assert align(base, {("f2", "seed1"): 0.9, ("f1", "seed1"): 0.7}) == (
        [("f1", "seed1"), ("f2", "seed1")],
        [0.5, 0.6],
        [0.7, 0.9],
    )


def summary(path, tag, uars):
    runs = [{"run": f"exp/{tag}/{fold}/seed{seed}", "UAR": u} for (fold, seed), u in uars.items()]
    path.write_text(json.dumps({"tag": tag, "runs": runs}))
    return str(path)


def test_cli_pairs_summaries_writes_table_and_figure(tmp_path, capsys):
    keys = [(f, s) for f in ("fold03_08", "fold09_10") for s in (1, 2, 3)]
    ce = summary(tmp_path / "ce.json", "ce_only", {k: 0.80 + 0.01 * i for i, k in enumerate(keys)})
    # the method's runs listed in another order: pairing is by fold and seed, not position
    mlcs = summary(
        tmp_path / "mlcs.json", "mlcs", {k: 0.82 + 0.01 * i for i, k in reversed(list(enumerate(keys)))}
    )
    out, plot = tmp_path / "paired.md", tmp_path / "paired.png"
    paired.main(["--baseline", f"ce_only={ce}", f"mlcs={mlcs}", "--out", str(out), "--plot", str(plot)])
    text = out.read_text()
    assert "| mlcs | 6 | 0.8250 | 0.8450 | +0.0200 |" in text and "| 6 / 0 / 0 |" in text
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and text in capsys.readouterr().out
    short = summary(tmp_path / "short.json", "mlcs", dict.fromkeys(keys[:-1], 0.9))
    with pytest.raises(SystemExit, match="fold09_10/seed3 .only ce_only."):
        paired.main(["--baseline", f"ce_only={ce}", f"mlcs={short}"])
    # one pair per fold, the mean of its 3 seeds: ce 0.81, 0.84; mlcs 0.83, 0.86
    paired.main(["--baseline", f"ce_only={ce}", f"mlcs={mlcs}", "--by_fold", "--out", str(out)])
    text = out.read_text()
    assert "one pair per fold (mean over its seeds)" in text
    assert "| mlcs | 2 | 0.8250 | 0.8450 | +0.0200 | 0.0000 |" in text and "| 2 / 0 / 0 |" in text


def test_cli_rows_are_the_methods_at_the_confidence_asked(tmp_path):
    """--confidence sets the intervals, not only their heading; the baseline gets no row of
    itself against itself."""
    keys = [("main", s) for s in (1, 2, 3, 4, 5)]
    ce = summary(
        tmp_path / "ce.json", "ce_only", dict(zip(keys, [0.50, 0.60, 0.70, 0.80, 0.90], strict=True))
    )
    mlcs = summary(
        tmp_path / "mlcs.json", "mlcs", dict(zip(keys, [0.51, 0.62, 0.685, 0.83, 0.94], strict=True))
    )
    out = tmp_path / "paired.md"
    paired.main(["--baseline", f"ce_only={ce}", f"mlcs={mlcs}", "--confidence", "0.9", "--out", str(out)])
    rows = [line for line in out.read_text().splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 2 and rows[1].startswith("| mlcs | 5 |") and "| 90% CI (t) |" in rows[0]
    # t(0.95, 4 df) = 2.131847: half-width 2.131847 * 0.021095 / sqrt 5 = 0.020112
    assert "| [-0.0031, +0.0371] |" in rows[1]


def test_a_pair_given_twice_is_an_error_not_one_score_replacing_the_other(tmp_path):
    path = tmp_path / "ce.json"
    runs = [{"run": "exp/ce/main/seed1", "UAR": 0.5}, {"run": "other/ce/main/seed1", "UAR": 0.7}]
    path.write_text(json.dumps({"tag": "ce", "runs": runs}))
    with pytest.raises(PairingError, match="ce.json: two runs for fold main, seed1"):
        load_summary_scores(str(path), "UAR")
    table = tmp_path / "scores.tsv"
    table.write_text("setting\tpair\tUAR\nce\t1\t0.4\nce\t1\t0.5\n")
    with pytest.raises(PairingError, match="scores.tsv, line 3: pair '1' of 'ce' given twice"):
        load_scores_table(str(table), "UAR")


def test_cli_pairs_only_runs_of_the_same_test_data(tmp_path):
    """Summaries of two test sets, or a fold and seed scored on another number of utterances,
    pair by fold and seed all the same: an error names them, not a table of mismatched pairs."""

    def scored(name, tag, test_set, counts):
        runs = [
            {"run": f"exp/{tag}/main/seed{seed}", "UAR": 0.5 + 0.01 * seed, "num_utterances": n}
            for seed, n in counts.items()
        ]
        path = tmp_path / name
        path.write_text(json.dumps({"tag": tag, "test_set": test_set, "runs": runs}))
        return str(path)

    ce = scored("ce.json", "ce_only", "test", {1: 80, 2: 80})
    mlcs = scored("mlcs.json", "mlcs", "test", {1: 80, 2: 80})
    on_valid = scored("mlcs_valid.json", "mlcs", "valid", {1: 80, 2: 80})
    fewer = scored("mlcs_fewer.json", "mlcs", "test", {1: 80, 2: 78})
    paired.main(["--baseline", f"ce_only={ce}", f"mlcs={mlcs}", "--out", str(tmp_path / "ok.md")])
    assert "| mlcs | 2 |" in (tmp_path / "ok.md").read_text()
    with pytest.raises(SystemExit, match="different test sets: ce_only test, mlcs valid"):
        paired.main(["--baseline", f"ce_only={ce}", f"mlcs={on_valid}"])
    with pytest.raises(
        SystemExit,
        match="fold main, seed2 was scored on different test data: ce_only 80 utterances, mlcs 78 utterances",
    ):
        paired.main(["--baseline", f"ce_only={ce}", f"mlcs={fewer}"])


def test_a_run_without_a_score_is_named_not_paired(tmp_path):
    """A null (or NaN) score of one run: an error naming it, not a comparison of the other
    pairs, nor a bare TypeError."""
    keys = [("main", 1), ("main", 2), ("main", 3)]
    ce = summary(tmp_path / "ce.json", "ce_only", dict.fromkeys(keys, 0.5))
    for bad in (None, math.nan):
        mlcs = summary(tmp_path / "mlcs.json", "mlcs", {**dict.fromkeys(keys, 0.6), ("main", 2): bad})
        with pytest.raises(SystemExit, match=f"mlcs.json: exp/mlcs/main/seed2: UAR '{bad}' is not a number"):
            paired.main(["--baseline", f"ce_only={ce}", f"mlcs={mlcs}"])
    table = tmp_path / "scores.tsv"
    table.write_text("setting\tpair\tUAR\nce\t1\t0.4\nce\t2\tnan\nmlcs\t1\t0.5\nmlcs\t2\t0.5\n")
    with pytest.raises(SystemExit, match=r"scores.tsv, line 3: UAR 'nan' is not a number"):
        paired.main(["--scores", str(table), "--baseline", "ce", "mlcs"])


def test_cli_refuses_a_name_given_twice(tmp_path):
    """Scores are kept by name: a second one of a name replaced the first (an empty table, or a
    method's row dropped) without a word."""
    keys = [("main", 1), ("main", 2)]
    ce = summary(tmp_path / "ce.json", "ce_only", dict(zip(keys, (0.5, 0.6), strict=True)))
    mlcs = summary(tmp_path / "mlcs.json", "mlcs", dict(zip(keys, (0.6, 0.8), strict=True)))
    with pytest.raises(SystemExit, match="ERROR: ce given twice"):
        paired.main(["--baseline", f"ce={ce}", f"ce={mlcs}"])
    with pytest.raises(SystemExit, match="ERROR: m given twice"):
        paired.main(["--baseline", f"ce={ce}", f"m={mlcs}", f"m={ce}"])
    table = tmp_path / "scores.tsv"
    table.write_text("setting\tpair\tUAR\nce\t1\t0.5\nce\t2\t0.6\nm\t1\t0.6\nm\t2\t0.8\n")
    with pytest.raises(SystemExit, match="ERROR: m given twice"):
        paired.main(["--scores", str(table), "--baseline", "ce", "m", "m"])


def test_fold_means_average_each_folds_seeds():
    keys = [(fold, f"seed{n}") for fold in ("f1", "f2") for n in (1, 2, 3)]
    folds, base, meth = fold_means(keys, [0.1, 0.2, 0.6, 0.3, 0.3, 0.9], [0.5, 0.5, 0.5, 0.0, 0.3, 0.3])
    # means, not medians (0.2, 0.3 and 0.5, 0.3)
    assert folds == [("f1",), ("f2",)]
    assert base == pytest.approx([0.3, 0.5]) and meth == pytest.approx([0.5, 0.2])


def test_fold_means_need_the_same_seeds_in_every_fold():
    keys = [("f1", "seed1"), ("f1", "seed2"), ("f2", "seed1")]
    with pytest.raises(PairingError, match="folds with different numbers of seeds: f1 2, f2 1"):
        fold_means(keys, [0.5, 0.6, 0.7], [0.5, 0.6, 0.7])


def test_scores_table_mode_and_its_errors(tmp_path):
    table = tmp_path / "scores.tsv"
    table.write_text(
        "# per-seed test UAR\nsetting\tpair\tUAR\nce\t1\t0.40\nce\t2\t0.44\nmlcs\t2\t0.45\nmlcs\t1\t0.43\n"
    )
    assert load_scores_table(str(table), "UAR") == {
        "ce": {("1",): 0.40, ("2",): 0.44},
        "mlcs": {("2",): 0.45, ("1",): 0.43},
    }
    out = tmp_path / "p.md"
    paired.main(
        ["--scores", str(table), "--baseline", "ce", "mlcs", "--out", str(out), "--pair_unit", "seed"]
    )
    assert (
        "one pair per seed" in out.read_text()
        and "| mlcs | 2 | 0.4200 | 0.4400 | +0.0200 |" in out.read_text()
    )
    with pytest.raises(SystemExit, match="no setting plain"):
        paired.main(["--scores", str(table), "--baseline", "ce", "plain"])
    table.write_text("setting\tpair\tUAR\nce\t1\tx\n")
    with pytest.raises(PairingError, match=r"scores.tsv, line 2: UAR 'x' is not a number"):
        load_scores_table(str(table), "UAR")
    table.write_text("setting\tUAR\nce\t0.4\n")
    with pytest.raises(PairingError, match="no column 'pair'"):
        load_scores_table(str(table), "UAR")


LOG = (
    "epoch: 1, lr_head: 1.00e-03 - train loss: 2.0 - valid WAR: 5.00e-01, valid UAR: 4.00e-01\n"
    "epoch: 2, lr_head: 9.00e-04 - train loss: 1.0 - valid WAR: 8.00e-01, valid UAR: 7.00e-01\n"
    "epoch: 3, lr_head: 5.00e-04 - train loss: 0.5 - valid WAR: 8.50e-01, valid UAR: 6.00e-01\n"
)


def test_valid_curve_reads_the_log_and_a_resumed_epoch_once(tmp_path):
    log = tmp_path / "train_log.txt"
    log.write_text(
        LOG + LOG.splitlines(keepends=True)[2] + "epoch loaded: 3 - test loss: 1.0, test UAR: 9.99e-01\n"
    )
    assert valid_curve(str(log)) == [0.4, 0.7, 0.6]
    assert valid_curve(str(log), "WAR") == [0.5, 0.8, 0.85]
    # the epoch run again after a resume scored otherwise: its last line is the saved model's
    again = LOG.splitlines(keepends=True)[2].replace("valid UAR: 6.00e-01", "valid UAR: 6.50e-01")
    log.write_text(LOG + again)
    assert valid_curve(str(log)) == [0.4, 0.7, 0.65]
    log.write_text(LOG.replace("valid UAR", "valid uar"))
    with pytest.raises(SelectionError, match="train_log.txt, line 1: no 'valid UAR'"):
        valid_curve(str(log))
    log.write_text(LOG.splitlines(keepends=True)[1])
    with pytest.raises(SelectionError, match=r"epochs \[2\] are not 1..1"):
        valid_curve(str(log))


def test_best_epoch_is_the_best_mean_and_the_earlier_on_ties():
    assert best_epoch({"a": [0.4, 0.7, 0.6], "b": [0.5, 0.6, 0.7]}) == (2, [0.45, 0.65, 0.65])
    with pytest.raises(SelectionError, match="different lengths"):
        best_epoch({"a": [0.4, 0.7], "b": [0.5]})


def test_choose_epochs_cli(tmp_path):
    logs = []
    for fold, lines in (("fold03_08", LOG), ("fold09_10", LOG.replace("6.00e-01", "9.00e-01"))):
        run = tmp_path / "mlcs" / fold / "seed1"
        run.mkdir(parents=True)
        (run / "train_log.txt").write_text(lines)
        logs.append(str(run / "train_log.txt"))
    out, table = tmp_path / "chosen", tmp_path / "curves.md"
    choose_epochs.main([*logs, "--out", str(out), "--table", str(table)])
    assert out.read_text() == "3\n"  # means 0.40, 0.70, 0.75
    assert "| fold09_10/seed1 | 0.400 | 0.700 | 0.900 |" in table.read_text()
    assert "| mean | 0.400 | 0.700 | **0.750** |" in table.read_text()


def test_choose_epochs_refuses_two_runs_of_one_name(tmp_path):
    """Two settings' logs of one fold and seed: one curve replaced the other, and the epochs were
    chosen on fewer runs than given, without a word. The same log given twice is one run."""
    logs = []
    for setting in ("ce_only", "mlcs"):
        run = tmp_path / setting / "main" / "seed1"
        run.mkdir(parents=True)
        (run / "train_log.txt").write_text(LOG)
        logs.append(str(run / "train_log.txt"))
    with pytest.raises(SystemExit, match=f"ERROR: {logs[0]} and {logs[1]} are both run main/seed1"):
        choose_epochs.main(logs)
    out = tmp_path / "chosen"
    choose_epochs.main([logs[0], logs[0], "--out", str(out)])
    assert out.read_text() == "2\n"


class Killed(BaseException):
    """Stands in for a kill -9: nothing after the call that raises it runs."""


def test_a_killed_comparison_or_choice_leaves_the_old_tables_and_figure_whole(tmp_path, monkeypatch):
    """Tables and figures are written whole (crab.fileio): a kill while writing them leaves the old
    ones, never a cut-off table read as the comparison."""
    keys = [(f, s) for f in ("fold03_08", "fold09_10") for s in (1, 2)]
    ce = summary(tmp_path / "ce.json", "ce_only", dict.fromkeys(keys, 0.8))
    mlcs = summary(tmp_path / "mlcs.json", "mlcs", dict.fromkeys(keys, 0.9))
    run = tmp_path / "mlcs" / "fold03_08" / "seed1"
    run.mkdir(parents=True)
    (run / "train_log.txt").write_text(LOG)
    outputs = [tmp_path / name for name in ("paired.md", "paired.png", "chosen", "curves.md")]
    for path in outputs:
        path.write_text("old\n")

    def killed(src, dst):
        raise Killed

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(Killed):
        paired.main(["--baseline", f"ce_only={ce}", f"mlcs={mlcs}", "--out", str(outputs[0])])
    with pytest.raises(Killed):
        paired.main(["--baseline", f"ce_only={ce}", f"mlcs={mlcs}", "--plot", str(outputs[1])])
    with pytest.raises(Killed):
        choose_epochs.main([str(run / "train_log.txt"), "--out", str(outputs[2])])
    with pytest.raises(Killed):
        choose_epochs.main([str(run / "train_log.txt"), "--table", str(outputs[3])])
    assert [path.read_text() for path in outputs] == ["old\n"] * 4


RUN_HPARAMS = """# Generated from a recipe's yaml
seed: {seed}
output_folder: {out}
save_folder: {out}/save
train_log: {out}/train_log.txt
data_folder: {data}
train_manifest: {data}/train.json
num_workers: {num_workers}
number_of_epochs: {number_of_epochs}
alpha: {alpha}
leg_names: {leg_names}
legs: !new:crab.legs.SupervisionLegs
    names: {leg_names}
train_dataloader_opts:
    batch_size: 8
    num_workers: {num_workers}
"""
TRAINED = {"number_of_epochs": 30, "alpha": 0.0, "leg_names": "[]", "num_workers": 0, "data": "data"}
PAIRS = [("f1", 1), ("f1", 2), ("f2", 1), ("f2", 2)]


def experiment(root, tag, wrong, runs=None, **settings):
    """``root/exp/<tag>/``: a run per pair of ``PAIRS`` (trained with ``TRAINED``, ``settings``
    and, for a pair, ``runs[pair]``; ``wrong[i]`` of its 4 test utterances mispredicted), with its
    records as training and evaluation write them, and the stage-7 summary of them all."""
    rows = []
    for i, (fold, seed) in enumerate(PAIRS):
        out = root / "exp" / tag / fold / f"seed{seed}"
        (out / "eval_test").mkdir(parents=True)
        given = {**TRAINED, **settings, **(runs or {}).get((fold, seed), {})}
        data = f"{root}/{given['data']}/{fold}"
        (out / "hyperparams.yaml").write_text(
            RUN_HPARAMS.format(out=out, **{"seed": seed, **given, "data": data})
        )
        (out / "text_source.json").write_text(
            json.dumps(
                {
                    "text_source": given.get("text_source", "gold"),
                    "asr_model": given.get("asr_model"),
                    "tokenizer_sha256": f"tok-{fold}",
                    "manifests_sha256": {
                        "train": given.get("train", f"train-{fold}"),
                        "valid": given.get("valid", f"valid-{fold}"),
                    },
                }
            )
        )
        (out / "eval_test" / "predictions.inputs.json").write_text(
            json.dumps(
                {"checkpoint": "CKPT+1", "test_manifest_sha256": f"test-{fold}", "eval_precision": "fp32"}
            )
        )
        true = ["a", "a", "b", "b"]
        predicted = [("b" if t == "a" else "a") if n < wrong[i] else t for n, t in enumerate(true)]
        lines = ["utt,true,predicted,prob_a,prob_b"] + [
            f"u{n},{t},{p},0.5,0.5" for n, (t, p) in enumerate(zip(true, predicted, strict=True))
        ]
        (out / "eval_test" / "predictions.csv").write_text("\n".join(lines) + "\n")
        rows.append({"run": f"exp/{tag}/{fold}/seed{seed}", "UAR": 1 - wrong[i] / 4, "num_utterances": 4})
    path = root / "exp" / tag / "results_test.json"
    path.write_text(json.dumps({"tag": tag, "test_set": "test", "runs": rows}))
    return str(path)


def test_the_settings_compared_are_listed_with_the_table(tmp_path, capsys):
    """What every pair's runs differ in is what is compared, listed above the table; where the
    runs are, where their data folder is and how many loader workers they had are not settings."""
    ce = experiment(tmp_path, "ce_only", [1, 2, 1, 1])
    mlcs = experiment(
        tmp_path, "mlcs", [0, 1, 0, 1], alpha=2.0, leg_names="[fusion]", num_workers=4, data="data_copy"
    )
    out = tmp_path / "paired.md"
    paired.main(["--baseline", f"ce_only={ce}", f"mlcs={mlcs}", "--out", str(out)])
    text = out.read_text()
    assert (
        "- mlcs against ce_only: alpha: 0.0 vs 2.0; leg_names: [] vs [fusion]; "
        "the objects built from them: legs\n" in text
    )
    assert "| mlcs | 4 | 0.6875 | 0.8750 | +0.1875 |" in text and "WARNING" not in capsys.readouterr().err
    # a setting every pair differs in, whichever value each run has, is compared
    epochs = experiment(
        tmp_path / "epochs",
        "epochs",
        [0, 1, 0, 1],
        runs={("f2", 1): {"number_of_epochs": 25}},
        number_of_epochs=20,
    )
    paired.main(["--baseline", f"ce_only={ce}", f"epochs={epochs}", "--out", str(out)])
    assert "- epochs against ce_only: number_of_epochs: 30 vs 20, 25\n" in out.read_text()
    # the same settings: nothing compared but chance, and said so
    again = experiment(tmp_path / "again", "ce_again", [0, 2, 1, 1])
    paired.main(["--baseline", f"ce_only={ce}", f"ce_again={again}", "--out", str(out)])
    assert "- ce_again against ce_only: nothing: the runs of each pair were trained and tested alike" in (
        out.read_text()
    )


def test_other_data_are_compared_only_where_every_pair_has_them_and_are_warned_about(tmp_path, capsys):
    ce = experiment(tmp_path, "ce_only", [1, 2, 1, 1])
    asr = experiment(tmp_path, "asr", [1, 1, 0, 1], text_source="asr", asr_model="whisper", train="asr-text")
    paired.main(["--baseline", f"ce_only={ce}", f"asr={asr}", "--out", str(tmp_path / "paired.md")])
    text = (tmp_path / "paired.md").read_text()
    assert (
        "- asr against ce_only: asr_model: null vs whisper; text_source: gold vs asr; "
        "train manifest (sha256): other in every pair\n" in text
    )
    assert (
        "WARNING: asr and ce_only were trained or tested on other data: asr_model" in capsys.readouterr().err
    )


@pytest.mark.parametrize(
    "odd, message",
    [
        (
            {"number_of_epochs": 20},
            "ce_only and mlcs differ in number_of_epochs in some pairs only: exp/ce_only/f2/seed1 has 30, "
            "exp/mlcs/f2/seed1 20, while both runs of f1/seed1 have 30",
        ),
        (
            {"text_source": "asr"},
            "ce_only and mlcs differ in text_source in some pairs only: .* has gold, .* asr",
        ),
        ({"train": "other"}, r"differ in train manifest \(sha256\) in some pairs only"),
        ({"valid": "other"}, r"differ in valid manifest \(sha256\) in some pairs only"),
        (
            {"seed": 7},
            "exp/ce_only/f2/seed1 and exp/mlcs/f2/seed1, paired as f2/seed1, were trained with seeds 1 and 7",
        ),
    ],
)
def test_a_setting_only_some_pairs_differ_in_is_an_error_naming_their_runs(tmp_path, odd, message):
    """One method run trained for other epochs, or on other transcripts or data: its pair would
    compare something the others do not."""
    ce = experiment(tmp_path, "ce_only", [1, 2, 1, 1])
    mlcs = experiment(tmp_path, "mlcs", [0, 1, 0, 1], runs={("f2", 1): odd}, alpha=2.0)
    with pytest.raises(SystemExit, match=message):
        paired.main(["--baseline", f"ce_only={ce}", f"mlcs={mlcs}"])


def test_the_runs_beside_a_summary_are_the_ones_compared(tmp_path, monkeypatch):
    """A summary's runs are read beside it first: an older copy of the experiment where the summary
    names its runs (a relative path, here from the working directory) is not what it scored."""
    ce = experiment(tmp_path, "ce_only", [1, 2, 1, 1])
    mlcs = experiment(tmp_path, "mlcs", [0, 1, 0, 1], alpha=2.0)
    experiment(tmp_path / "old", "mlcs", [0, 1, 0, 1], alpha=5.0)
    monkeypatch.chdir(tmp_path / "old")
    paired.main(["--baseline", f"ce_only={ce}", f"mlcs={mlcs}", "--out", str(tmp_path / "paired.md")])
    assert "- mlcs against ce_only: alpha: 0.0 vs 2.0\n" in (tmp_path / "paired.md").read_text()


def test_an_unfinished_run_or_a_stale_score_is_named_not_paired(tmp_path):
    ce = experiment(tmp_path, "ce_only", [1, 2, 1, 1])
    mlcs = experiment(tmp_path, "mlcs", [0, 1, 0, 1], alpha=2.0)
    run = tmp_path / "exp" / "mlcs" / "f1" / "seed2"
    predictions = run / "eval_test" / "predictions.csv"
    predictions.write_text(predictions.read_text().replace("u0,a,b", "u0,a,a"))  # evaluated again: UAR 1.0
    with pytest.raises(
        SystemExit, match="exp/mlcs/f1/seed2: UAR 0.75, but its predictions .* now score 1.000000"
    ):
        paired.main(["--baseline", f"ce_only={ce}", f"mlcs={mlcs}"])
    checkpoint = run / "save" / "CKPT+2"
    checkpoint.mkdir(parents=True)
    (checkpoint / "CKPT.yaml").write_text("end-of-epoch: true\nunixtime: 2\n")
    (checkpoint / "counter.ckpt").write_text("12\n")
    with pytest.raises(SystemExit, match="exp/mlcs/f1/seed2 trained 12 of its 30 epochs"):
        paired.main(["--baseline", f"ce_only={ce}", f"mlcs={mlcs}"])


def test_a_score_is_checked_against_its_predictions_in_the_metric_compared(tmp_path):
    """Classes of unequal size: UAR (2/3 + 1) / 2 = 5/6 and WAR 3/4 differ; the summary's UAR is the
    one its predictions give, and pairs."""
    ce = experiment(tmp_path, "ce_only", [1, 2, 1, 1])
    mlcs = experiment(tmp_path, "mlcs", [0, 1, 0, 1], alpha=2.0)
    lines = [
        "utt,true,predicted,prob_a,prob_b",
        "u0,a,a,.5,.5",
        "u1,a,a,.5,.5",
        "u2,a,b,.5,.5",
        "u3,b,b,.5,.5",
    ]
    (tmp_path / "exp" / "mlcs" / "f1" / "seed1" / "eval_test" / "predictions.csv").write_text(
        "\n".join(lines)
    )
    scored = json.loads(open(mlcs).read())
    scored["runs"][0]["UAR"] = (2 / 3 + 1) / 2
    (tmp_path / "exp" / "mlcs" / "results_test.json").write_text(json.dumps(scored))
    paired.main(["--baseline", f"ce_only={ce}", f"mlcs={mlcs}", "--out", str(tmp_path / "paired.md")])
    assert "| mlcs | 4 | 0.6875 | 0.8333 | +0.1458 |" in (tmp_path / "paired.md").read_text()


def test_runs_without_their_folders_are_said_not_checked(tmp_path, capsys):
    ce = summary(tmp_path / "ce.json", "ce_only", {("f1", 1): 0.5, ("f1", 2): 0.6})
    mlcs = summary(tmp_path / "mlcs.json", "mlcs", {("f1", 1): 0.6, ("f1", 2): 0.8})
    paired.main(["--baseline", f"ce_only={ce}", f"mlcs={mlcs}", "--out", str(tmp_path / "p.md")])
    assert (
        "- mlcs against ce_only: NOT CHECKED: f1/seed1, f1/seed2 (no run folder"
        in (tmp_path / "p.md").read_text()
    )
    assert (
        "WARNING: mlcs against ce_only: the settings of 2 pair(s) are not checked" in capsys.readouterr().err
    )


def trained_by(root, tag, commits, versions="torch 2.6.0"):
    """Give the runs of ``root/exp/<tag>`` (``experiment``) the ``train_info.json`` of a training at
    ``commits[i]`` (pair ``i`` of ``PAIRS``)."""
    for (fold, seed), commit in zip(PAIRS, commits, strict=True):
        info = {"wall_s": 1.0, "invocations": 1, "commit": commit, "versions": versions}
        (root / "exp" / tag / fold / f"seed{seed}" / "train_info.json").write_text(json.dumps(info))


def test_runs_trained_by_other_code_are_listed_and_warned_about_not_refused(tmp_path, capsys):
    """A pair's runs trained at other commits compare the code's changes too: said under the
    settings and on stderr, whichever pairs it is; one clean commit for every run says nothing."""
    ce = experiment(tmp_path, "ce_only", [1, 2, 1, 1])
    mlcs = experiment(tmp_path, "mlcs", [0, 1, 0, 1], alpha=2.0)
    out = tmp_path / "paired.md"
    trained_by(tmp_path, "ce_only", ["abc1234"] * 4)
    trained_by(tmp_path, "mlcs", ["abc1234"] * 4)
    paired.main(["--baseline", f"ce_only={ce}", f"mlcs={mlcs}", "--out", str(out)])
    assert "code" not in out.read_text() and "WARNING" not in capsys.readouterr().err
    trained_by(tmp_path, "mlcs", ["abc1234", "def5678", "def5678", "def5678"])
    paired.main(["--baseline", f"ce_only={ce}", f"mlcs={mlcs}", "--out", str(out)])
    line = "code (git commit): abc1234 (4 runs) vs def5678 (3 runs), abc1234 (1 run)"
    assert f"- mlcs against ce_only: alpha: 0.0 vs 2.0\n  - {line}: the differences may include" in (
        out.read_text()
    )
    assert (
        f"WARNING: mlcs and ce_only were not all trained by the same code: {line}" in capsys.readouterr().err
    )
    # uncommitted changes are not known to be alike, other library versions are other code
    trained_by(tmp_path, "mlcs", ["abc1234+dirty"] * 4, versions="torch 2.7.0")
    paired.main(["--baseline", f"ce_only={ce}", f"mlcs={mlcs}", "--out", str(out)])
    text = out.read_text()
    assert "code (git commit): abc1234 (4 runs) vs abc1234+dirty (4 runs) (+dirty: with uncommitted" in text
    assert "  - libraries: torch 2.6.0 (4 runs) vs torch 2.7.0 (4 runs): the differences" in text
    # trained outside a git checkout: not known to be one code
    trained_by(tmp_path, "ce_only", ["unknown"] * 4)
    trained_by(tmp_path, "mlcs", ["unknown"] * 4)
    paired.main(["--baseline", f"ce_only={ce}", f"mlcs={mlcs}", "--out", str(out)])
    assert "  - code (git commit): unknown (4 runs) vs unknown (4 runs): the differences" in out.read_text()
    trained_by(tmp_path, "ce_only", ["abc1234"] * 4)
    # the same settings, other code: no setting compared, and the code below
    again = experiment(tmp_path / "again", "ce_again", [0, 2, 1, 1])
    trained_by(tmp_path / "again", "ce_again", ["abc1234"] * 3 + [None])
    paired.main(["--baseline", f"ce_only={ce}", f"ce_again={again}", "--out", str(out)])
    assert (
        "- ce_again against ce_only: no setting (the code differs: below)\n"
        "  - code (git commit): abc1234 (4 runs) vs abc1234 (3 runs), not recorded (1 run)"
    ) in out.read_text()
