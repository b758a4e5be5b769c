"""Reports: per-run provenance, the scores of predictions files, results tables (mean and
std over folds and seeds), the ablation table, the alpha sweep, and the training logger.
The command lines over them are ``crab.bin.score`` and ``crab.bin.compare``.

Light on imports (numpy; SpeechBrain and matplotlib only where needed), because
the recipe calls the small command-line part for every run:

    python -m crab.report overrides [--tuning FILE] [--table conf/ablations.txt --ablation NAME
                                    [--keep_ablation]] [--opts "..."] -- [--key=value ...]
        print the yaml overrides of one run, one per line: the tuning file's, the
        ablation's, then the given ones; a later value of a key replaces an earlier one
        (--keep_ablation: another value of a key the ablation sets is an error, for sweep.sh)
    python -m crab.report tuning FILE
        check a tuning file (conf/tuning/<name>.yaml) and print its base config
    python -m crab.report record_training --run_dir DIR --wall_s S --command CMD [--device D]
                                          [--config C --tuning FILE] [--trained_now false]
        add S seconds to DIR/train_info.json and note the commit, machine, command,
        config and tuning file (--trained_now false: a run this invocation trained nothing
        of, recorded only where its latest checkpoint holds the training time)
    python -m crab.report add_results --results_md RESULTS.md --summary exp/<tag>/results_<test>.json
                                      --command CMD [--config C --tuning FILE --device D --corpus NAME]
        prepend an entry (environment, setting, the commands that trained and scored the runs,
        results table) to a recipe's RESULTS.md, unless its newest entry on the experiment holds the same
        (where only its tuning file's description differs, that entry's is replaced)
    python -m crab.report results_name --test_set TEST PREDICTIONS...
        print the name stage 7 gives the results of these runs: results_<TEST>, or, when they
        leave out runs of their experiment evaluated on TEST, results_<TEST>.<folds>.seed<seeds>
    python -m crab.report latest_results exp/<tag> TEST
        print the results summary (.json) stage 7 wrote last for the experiment on TEST
    python -m crab.report test_sets exp/<tag> [--since EPOCH_S]
        print the test sets the experiment has results summaries of (written since), one per line
    python -m crab.report check_trained --stage N exp/<tag>/<fold>/seed<seed>...
        an error naming each run whose training stopped before its number_of_epochs
    python -m crab.report embeddings exp/<tag>/results_<test>[...].json
        print the embeddings.npz of the summary's first run that has one (nothing if none)
"""

import argparse
import csv
import datetime
import glob
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys

import numpy as np

from crab import cli, evalrecord
from crab.embeddings import EMBEDDING_SCORES
from crab.fileio import WriteError, make_dirs, write_text_atomic
from crab.locking import holder_now
from crab.metrics import METRICS, classification_report
from crab.provenance import describe, file_digest, read_run_provenance, trained_text_source

TRAIN_INFO = "train_info.json"
EVALUATED_CHECKPOINT = "checkpoint.txt"  # in an evaluation's folder: the checkpoint its scores are of


# ---------------------------------------------------------------- provenance


def git_commit(path=None, short=True):
    """The commit of the git checkout holding ``path`` (default: the crab package), short
    (7 hex digits) or (``short=False``) full, with ``+dirty`` when the working tree differs
    from it: a tracked file changed (but a ``RESULTS.md``, which stage 7 writes), or code or
    configuration neither committed nor ignored (a new recipe's scripts: ``_untracked_code``);
    None when there is no git, no checkout or
    no commit. The one place that asks
    git for the commit (``train_info.json``, the results tables, a package's metadata.json),
    in one ``git status``: it does not look into ignored folders (``exp*/``, ``data/``) and
    takes no lock (a recipe's jobs ask at the same time as the user's git commands)."""
    path = path or os.path.dirname(os.path.abspath(__file__))
    status = "git --no-optional-locks status --porcelain=v2 --branch --no-ahead-behind -unormal".split()
    try:
        run = subprocess.run(status, cwd=path, capture_output=True, text=True, check=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = run.stdout.splitlines()
    commit = next((line.split()[-1] for line in lines if line.startswith("# branch.oid ")), "(initial)")
    if commit == "(initial)":  # no commit yet
        return None
    dirty = any(
        _untracked_code(line[2:])
        if line.startswith("? ")
        else not (line.startswith("# ") or _results_file(line))
        for line in lines
    )
    return (commit[:7] if short else commit) + ("+dirty" if dirty else "")


def _results_file(line):
    """Is a changed tracked entry of ``git status --porcelain=v2`` a recipe's ``RESULTS.md``? Stage
    7 adds its entries there: a sweep's later settings, or any run after a scoring, are of the
    commit all the same."""
    return line.startswith("1 ") and os.path.basename(line.split(" ", 8)[-1]) == "RESULTS.md"


# untracked files that change what a run does (a new recipe's scripts and configs), unlike what
# commands write beside them (crab-infer's results.tsv, its .lock, logs)
CODE_SUFFIXES = (".py", ".sh", ".yaml", ".yml", ".txt", ".cfg", ".toml")


def _untracked_code(path):
    """Is an untracked entry of ``git status`` code or configuration? A folder (git names a
    new folder, not its files) is counted: it may hold a whole new recipe."""
    path = path.strip('"')  # git quotes names with special characters
    return path.endswith("/") or path.endswith(CODE_SUFFIXES)


def machine(device="cpu"):
    """One line: architecture, CPU model and cores, GPU, and the device used."""
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    gpus = "none"
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
                check=True,
            ).stdout
            gpus = ", ".join(line.strip() for line in out.splitlines() if line.strip()) or "none"
        except (OSError, subprocess.SubprocessError):
            pass
    return f"{platform.machine()}, {cpu} ({os.cpu_count()} cores), GPU: {gpus}; ran on {device}"


def record_training(run_dir, wall_s, command, device="cpu", config=None, tuning=None):
    """Record the training wall time in ``run_dir/train_info.json``: that of its latest
    checkpoint (``crab.checkpointing.Checkpointer``: over every resume, including
    processes killed after a checkpoint), else ``wall_s`` seconds added to what an
    earlier invocation recorded; the trainings that made it (``invocations``: the latest
    checkpoint's count of them, every resume that saved one included; else one more than
    recorded); with the commit, machine and command of this invocation, the base
    ``config`` and ``tuning`` file it was given (``ser.sh --tuning``; None: none) and the
    transcripts the run was trained on (``text_source``, ``asr_model``: the run's
    ``text_source.json``, written by training)."""
    path = os.path.join(run_dir, TRAIN_INFO)
    info = read_train_info(run_dir) or {"wall_s": 0.0, "invocations": 0}
    latest = latest_checkpoint(run_dir)
    meta = latest[1] if latest else {}
    seconds = meta.get("train_s")  # crab.checkpointing.TRAIN_SECONDS, INVOCATIONS
    info["wall_s"] = float(seconds) if seconds is not None else float(info["wall_s"]) + float(wall_s)
    invocations = meta.get("invocations")
    info["invocations"] = int(invocations) if invocations is not None else int(info.get("invocations", 0)) + 1
    text_source, asr_model = trained_text_source(read_run_provenance(run_dir))
    info.update(
        command=command,
        commit=git_commit() or "unknown",
        machine=machine(device),
        versions=package_versions(),
        finished=datetime.datetime.now().isoformat(timespec="seconds"),
        text_source=text_source,  # from training's record (crab.provenance)
        asr_model=asr_model,
    )
    if config is not None or tuning is not None:
        info.update(config=config, tuning=tuning or None)
    make_dirs(run_dir)
    write_text_atomic(path, json.dumps(info, indent=2))
    return info


def latest_checkpoint(run_dir, save_folder=None):
    """``(folder, meta)`` of the most recent checkpoint in ``save_folder`` (``run_dir/save``);
    None without one."""
    import yaml  # SpeechBrain's dependency, needed only here

    save_folder = save_folder or os.path.join(run_dir, "save")
    latest = None
    for meta_file in glob.glob(os.path.join(glob.escape(save_folder), "CKPT+*", "CKPT.yaml")):
        with open(meta_file, encoding="utf-8") as f:
            meta = yaml.safe_load(f) or {}
        if latest is None or meta.get("unixtime", 0) > latest[1].get("unixtime", 0):
            latest = os.path.dirname(meta_file), meta
    return latest


def checkpointed_training_seconds(run_dir):
    """``train_s`` of the most recent checkpoint in ``run_dir/save``; None without one."""
    latest = latest_checkpoint(run_dir)
    seconds = None if latest is None else latest[1].get("train_s")  # crab.checkpointing.TRAIN_SECONDS
    return None if seconds is None else float(seconds)


def epochs_trained(run_dir, save_folder=None):
    """``(epochs done, latest checkpoint)`` of the training in ``run_dir`` (its checkpoints in
    ``save_folder``, ``run_dir/save``); None without a checkpoint (or one that does not tell)."""
    latest = latest_checkpoint(run_dir, save_folder)
    if latest is None:
        return None
    folder, meta = latest
    counter = os.path.join(folder, "counter.ckpt")  # the epoch counter: the epoch under way or done
    if os.path.isfile(counter):
        with open(counter, encoding="utf-8") as f:
            trained = int(f.read().strip()) - (0 if meta.get("end-of-epoch", True) else 1)
    else:
        trained = meta.get("epoch")
    return (trained, folder) if isinstance(trained, int) else None


def unfinished_training(run_dir):
    """``(epochs trained, number_of_epochs, latest checkpoint)`` of a run in ``run_dir`` whose
    training stopped before its ``number_of_epochs`` (its hyperparams.yaml, which each training
    invocation rewrites: more epochs asked for count); None when it finished, or when there is
    nothing to tell it by (no checkpoint, no hyperparams.yaml)."""
    from crab.runconfig import RUN_HPARAMS, TagTolerantLoader  # yaml only

    done = epochs_trained(run_dir)
    hparams_file = os.path.join(run_dir, RUN_HPARAMS)
    if done is None or not os.path.isfile(hparams_file):
        return None
    import yaml

    with open(hparams_file, encoding="utf-8") as f:
        wanted = (yaml.load(f, Loader=TagTolerantLoader) or {}).get("number_of_epochs")
    trained, folder = done
    if not isinstance(wanted, int) or trained >= wanted:
        return None
    return trained, wanted, folder


def check_trained(run_dirs, stage):
    """A ``UserError`` naming each run of ``run_dirs`` whose training stopped before its last
    epoch (``unfinished_training``): recipe stage ``stage`` would evaluate, score or package
    an interrupted run as if it were the finished one."""
    lines, example, training = [], None, []
    for run in run_dirs:
        found = unfinished_training(run) if os.path.isdir(run) else None
        if found and (holder := holder_now(run)):  # not stopped: it trains now
            training.append(f"{run}: {found[0]} of its {found[1]} epochs so far, trained by {holder}")
        elif found:
            trained, wanted, folder = found
            lines.append(f"{run}: trained {trained} of its {wanted} epochs (latest checkpoint {folder})")
            fold, seed = os.path.basename(os.path.dirname(run)), os.path.basename(run).removeprefix("seed")
            example = example or (
                f"--stage 5 --stop_stage 5 --folds {fold} --seeds {seed} --train_opts "
                f'"<its options> --number_of_epochs={trained}"'
            )
    if training:
        raise cli.UserError(
            f"stage {stage} needs finished runs, and these are still training: {'; '.join(training)}. "
            "Run it once their training has ended"
        )
    if lines:
        raise cli.UserError(
            f"stage {stage} needs finished runs, and training stopped early in: {'; '.join(lines)}. "
            "Finish them first: rerun stage 5 with the options they were trained with (it resumes); "
            f"or end one where it stands, at the epochs it has trained: run.sh {example}"
        )


def read_train_info(run_dir):
    path = os.path.join(run_dir, TRAIN_INFO)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def format_duration(seconds):
    if seconds is None:
        return "n/a"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes:02d}m" if hours else (f"{minutes}m {secs:02d}s" if minutes else f"{secs}s")


# ---------------------------------------------------------------- ablations and overrides


CORPUS_NAMES = {"meld": "MELD", "iemocap": "IEMOCAP", "msp_podcast": "MSP-Podcast", "emodb": "EmoDB"}


def parse_paper_numbers(text, origin="ablation table"):
    """``corpus[/test_set]=value; ...`` (the paper column of the ablation table) as a dict."""
    numbers = {}
    for item in filter(None, (part.strip() for part in text.split(";"))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"{origin}: paper numbers are 'corpus[/test_set]=value; ...', got '{item}'")
        numbers[key.strip().lower()] = value.strip()
    return numbers


def paper_number(numbers, corpus, test_set=None):
    """The paper's number for ``corpus`` (its ``corpus/test_set`` entry first), else ``n/a``."""
    corpus = corpus.lower()
    return numbers.get(f"{corpus}/{test_set}") or numbers.get(corpus) or "n/a"


def read_ablations(path):
    """The ablation table: ``name | method | paper | overrides`` lines, ``#`` comments.

    Returns ``{name: {"method", "paper", "overrides": [--key=value, ...]}}`` in file
    order; ``paper`` maps a corpus (``meld``, or ``corpus/test_set``) to the paper's
    UAR for it; ``overrides`` are shell words (quote values with spaces, e.g.
    ``--encoder_lr='!ref <lr>'``).
    """
    table = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            fields = [field.strip() for field in line.split("|")]
            if len(fields) != 4 or not fields[0]:
                raise ValueError(
                    f"{path}:{number}: expected 'name | method | paper | overrides', got '{line}'"
                )
            name, method, paper, overrides = fields
            if name in table:
                raise ValueError(f"{path}:{number}: ablation '{name}' defined twice")
            table[name] = {
                "method": method,
                "paper": parse_paper_numbers(paper, f"{path}:{number}"),
                "overrides": split_overrides(overrides, origin=f"{path}:{number}"),
            }
    return table


def merge_overrides(*groups):
    """Concatenate ``--key=value`` lists; a later value of a key replaces an earlier
    one in its place (hyperpyyaml rejects a key given twice)."""
    merged = {}
    for group in groups:
        for word in group:
            key = override_key(word)
            merged.pop(key, None)
            merged[key] = word
    return list(merged.values())


def override_key(word):
    """The ``--key`` of an override word ``--key=value``."""
    return word.split("=", 1)[0] if word.startswith("--") else word


def split_overrides(text, origin="--train_opts"):
    """``--key=value`` words of a shell-quoted string (``--a=1 --b='!ref <lr>'``), and
    SpeechBrain's run options that are flags (``--compile``, ``--noprogressbar``); anything
    else is a ValueError naming ``origin``."""
    try:
        words = shlex.split(text)
    except ValueError as err:
        raise ValueError(f"{origin}: {err} in '{text}'") from None
    bad = [w for w in words if not (w.startswith("--") and "=" in w)]
    if bad:  # SpeechBrain is imported only here: ser.sh calls this for every stage
        flags = run_option_flags()
        bad = [w for w in bad if w not in flags]
    if bad:
        raise ValueError(
            f"{origin}: overrides must be --key=value (or a SpeechBrain flag: --compile, ...), got {bad}"
        )
    return words


def run_option_flags():
    """SpeechBrain's run options given without a value (``--compile``): its booleans."""
    from speechbrain.utils.run_opts import RunOptions

    return {f"--{key}" for key, value in RunOptions().as_dict().items() if value is False}


def ablation_overrides(table_path, name, extra=(), keep=False):
    """The overrides of ablation ``name`` followed by ``extra``. With ``keep`` (a sweep's
    settings), another value in ``extra`` of a key the ablation sets is a ValueError: the run
    would not be the ablation it is named after."""
    table = read_ablations(table_path)
    if name not in table:
        raise KeyError(f"no ablation '{name}' in {table_path}; known: {' '.join(table)}")
    own = {override_key(word): word for word in table[name]["overrides"]}
    for word in extra if keep else ():
        mine = own.get(override_key(word))
        if mine is not None and mine != word:
            raise ValueError(
                f"--train_opts gives {word}, and ablation {name} is {mine}: its row would not be {name}; "
                f"leave {override_key(word)} out of --train_opts"
            )
    return merge_overrides(table[name]["overrides"], extra)


# ---------------------------------------------------------------- results tables


def _cell(mean, std=None, digits=4):
    if mean is None or (isinstance(mean, float) and np.isnan(mean)):
        return "n/a"
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def mean_std(values):
    """Mean and sample standard deviation (ddof 1; None for fewer than 2 values),
    ignoring missing values; (None, None) when there is none. The tables say how many
    runs a mean covers where some lack the value (``runs_note``)."""
    values = np.array([v for v in values if v is not None], dtype=float)
    if len(values) == 0:
        return None, None
    return float(values.mean()), (float(values.std(ddof=1)) if len(values) > 1 else None)


def runs_note(summary, key):
    """`` (k of n runs)`` when only k of a summary's n runs have a value of ``key`` (runs never
    embedded, a collapsed model's undefined cluster scores, runs without a ``train_info.json``),
    which ``mean_std`` leaves out; "" when all or none have one."""
    rows = summary["runs"]
    have = sum(row.get(key) is not None for row in rows)
    return f" ({have} of {len(rows)} runs)" if 0 < have < len(rows) else ""


def mean_cell(summary, key, digits=4):
    """``mean ± std`` of ``key`` over a summary's runs, with the runs it covers where it
    covers fewer than all (``runs_note``)."""
    return _cell(summary["mean"].get(key), summary["std"].get(key), digits) + runs_note(summary, key)


def runs_covered(runs):
    """The folds and seeds of run directories ``<tag>/<fold>/seed<seed>``, each in the order
    first seen; other paths are passed over."""
    folds, seeds = {}, {}
    for run in runs:
        parts = os.path.normpath(run).split(os.sep)
        if len(parts) >= 2 and parts[-1].startswith("seed") and len(parts[-1]) > len("seed"):
            folds[parts[-2]] = seeds[parts[-1][len("seed") :]] = None
    return list(folds), list(seeds)


def _folds_and_seeds(runs):
    folds, seeds = runs_covered(runs)
    return f"folds {' '.join(folds)}, seeds {' '.join(seeds)}" if folds else ""


def coverage(summary):
    """``(covered, left_out)`` in words: the folds and seeds of a summary's runs ("folds a b,
    seeds 1 2"; "" when its runs are not ``<fold>/seed<seed>`` folders) and, when it is a
    subset, the runs of its experiment it leaves out (``left_out_runs``; "" for none)."""
    left_out = summary.get("left_out") or []
    on = summary.get("test_set") or "the same test set"
    others = f"{len(left_out)} other run(s) evaluated on {on} left out ({_folds_and_seeds(left_out)})"
    return _folds_and_seeds(row["run"] for row in summary["runs"]), others if left_out else ""


def comparison_about(entries):
    """The configs, folds and seeds of the experiments of a comparison (``(name, summary)``
    pairs), in words for its title; folds and seeds per experiment where they differ."""
    configs = sorted({row["config"] for _, s in entries for row in s["runs"] if row.get("config")})
    about = [("config " if len(configs) == 1 else "configs ") + ", ".join(configs)] if configs else []
    covered = {name: coverage(summary)[0] for name, summary in entries}
    if len(set(covered.values())) > 1:
        about.append("not the same runs: " + "; ".join(f"{n} {c or 'n/a'}" for n, c in covered.items()))
    elif any(covered.values()):
        about.append(next(iter(covered.values())))
    return "; ".join(about)


def summarise(rows, **meta):
    """Summary of scored runs: ``meta``, the folds and seeds of the runs (``runs_covered``),
    the rows, mean and std per metric (and per embedding score, where the runs have them)."""
    folds, seeds = runs_covered(row["run"] for row in rows)
    summary = {
        **meta,
        "folds": folds,
        "seeds": seeds,
        "num_runs": len(rows),
        "runs": rows,
        "mean": {},
        "std": {},
    }
    for key in METRICS + EMBEDDING_SCORES + ("wall_s",):
        values = [row.get(key) for row in rows]
        if any(v is not None for v in values):
            summary["mean"][key], summary["std"][key] = mean_std(values)
    return summary


def results_markdown(summary, title=None):
    """Markdown results of one experiment on one test set: the ``title`` with the folds and
    seeds of the runs (and the runs a subset leaves out: ``coverage``), a row per run with its
    training wall time and commit, mean ± std over the runs (each mean that some runs lack a
    value of says over how many: ``mean_cell``), then each run's machine and command, and
    notes on classes absent from the test data."""
    rows = summary["runs"]
    covered, left_out = coverage(summary)
    heading = "; ".join(filter(None, (f"{title}: {covered}" if covered else title, left_out)))
    lines = [f"## {heading}", ""] if title else []
    lines += [
        "| run | N | " + " | ".join(METRICS) + " | train wall time | commit |",
        "|" + "---|" * (len(METRICS) + 4),
    ]
    for row in rows:
        cells = [_cell(row[m]) for m in METRICS]
        lines.append(
            f"| {row['run']} | {row['num_utterances']} | "
            + " | ".join(cells)
            + f" | {format_duration(row.get('wall_s'))} | {row.get('commit') or 'n/a'} |"
        )
    if len(rows) > 1:
        cells = [mean_cell(summary, m) for m in METRICS]
        wall = format_duration(summary["mean"].get("wall_s")) + " mean" + runs_note(summary, "wall_s")
        lines.append(f"| mean ± std ({len(rows)} runs) | | " + " | ".join(cells) + f" | {wall} | |")
    if any(k in summary["mean"] for k in EMBEDDING_SCORES):
        lines += [
            "",
            "Fused (fc1) embeddings of the test set: "
            + ", ".join(f"{k} {mean_cell(summary, k, 3)}" for k in EMBEDDING_SCORES)
            + " (silhouette and Calinski-Harabasz: higher is better; Davies-Bouldin: lower).",
        ]
    notes = [
        f"- {row['run']}: no test utterance of {', '.join(row['absent_from_references'])} "
        f"(UAR over the other classes)"
        for row in rows
        if row.get("absent_from_references")
    ]
    notes += [
        f"- {row['run']}: never predicted {', '.join(row['never_predicted'])} (recall 0)"
        for row in rows
        if row.get("never_predicted")
    ]
    if notes:
        lines += ["", "Classes:", *notes]
    lines += [
        "",
        "Runs (machine and command of the last training invocation;"
        " wall time of training up to its last checkpoint, over resumes):",
    ]
    for row in rows:
        if row.get("command"):
            trained_on = (
                f"; trained on {describe(row)}"
                if row.get("text_source") not in (None, "unknown", "none")
                else ""
            )
            setting = f"; tuning `{row['tuning']}`" if row.get("tuning") else ""
            lines.append(f"- {row['run']}: {row.get('machine')}; `{row['command']}`{setting}{trained_on}")
        else:
            lines.append(f"- {row['run']}: no {TRAIN_INFO} (trained outside the recipe's stage 5)")
    return "\n".join(lines) + "\n"


def per_class_markdown(report, title=None):
    """Per-class precision, recall and F1 with the counts, n/a where undefined."""
    lines = [f"## {title}", ""] if title else []
    lines += ["| class | support | predicted | precision | recall | F1 |", "|---|---|---|---|---|---|"]
    for name in report["classes"]:
        c = report["per_class"][name]
        lines.append(
            f"| {name} | {c['support']} | {c['predicted']} | {_cell(c['precision'])} "
            f"| {_cell(c['recall'])} | {_cell(c['F1'])} |"
        )
    lines.append(
        "| **all** | " + f"{report['num_utterances']} | | | UAR {report['UAR']:.4f} "
        f"| macro-F1 {report['macro_F1']:.4f} |"
    )
    if report["absent_from_references"]:
        lines.append(
            f"\nNo test utterance of: {', '.join(report['absent_from_references'])}: "
            "recall undefined, left out of UAR."
        )
    if report["never_predicted"]:
        lines.append(
            f"\nNever predicted: {', '.join(report['never_predicted'])}: precision undefined, "
            "recall and F1 0."
        )
    return "\n".join(lines) + "\n"


def comparison_markdown(entries, ablation_table=None, title=None, corpus=None, test_set=None):
    """One table over experiments in the layout of the paper's Tables III/IV.

    ``entries`` is a list of ``(name, summary)``; the method name comes from the
    ablation table when it knows the name, and with a ``corpus`` (the recipe's
    directory name) so does the paper's UAR on that corpus (and ``test_set``), n/a
    where the paper has none. With a ``ce_only`` entry, a column gives each UAR
    minus the CE-only UAR. The heading is ``title`` with the experiments' configs, folds
    and seeds (``comparison_about``). A cell over fewer runs than its row's ``runs`` says so
    (``mean_cell``).
    """
    table = read_ablations(ablation_table) if ablation_table else {}
    base = dict(entries).get("ce_only")
    has_embeddings = any(any(k in s["mean"] for k in EMBEDDING_SCORES) for _, s in entries)
    header = ["method", "tag", "runs"] + list(METRICS)
    header += ["ΔUAR vs CE"] if base else []
    header += ["silhouette ↑", "CH ↑", "DB ↓"] if has_embeddings else []
    show_paper = bool(table) and bool(corpus)
    if show_paper:
        where = CORPUS_NAMES.get(corpus.lower(), corpus) + (f" {test_set}" if test_set else "")
        header.append(f"paper UAR ({where})")
    heading = "; ".join(filter(None, (title, comparison_about(entries))))
    lines = [f"## {heading}", ""] if heading else []
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, summary in entries:
        mean = summary["mean"]
        cells = [table.get(name, {}).get("method", name), name, str(summary["num_runs"])]
        cells += [mean_cell(summary, m) for m in METRICS]
        if base:
            cells.append(f"{mean['UAR'] - base['mean']['UAR']:+.4f}")
        if has_embeddings:
            cells += [mean_cell(summary, k, 3) for k in EMBEDDING_SCORES]
        if show_paper:
            cells.append(paper_number(table.get(name, {}).get("paper", {}), corpus, test_set))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def alpha_of(tag):
    """The alpha of an alpha-sweep experiment, from its tag ``alpha<value>``.

    >>> alpha_of("alpha0.25")
    0.25
    """
    match = re.fullmatch(r"alpha([0-9.]+)", tag)
    if not match:
        raise ValueError(f"experiment '{tag}' is not named alpha<value>")
    return float(match.group(1))


def alpha_sweep(entries, baseline, title=None):
    """Markdown table of the alpha sweep (CE-only first); ``alpha_figure`` draws the paper's Figure 3.

    Parameters
    ----------
    entries : list of (str, dict)
        Each experiment's tag (``alpha<value>``) and summary (``summarise``).
    baseline : dict or None
        The summary of the CE-only experiment: a first row.
    title : str, optional
        Heading of the table, with the experiments' configs, folds and seeds
        (``comparison_about``).

    Returns
    -------
    str
        The table and the best UAR and WAR with their alpha (and their difference from CE only).
    """
    entries = sorted(entries, key=lambda e: alpha_of(e[0]))
    alphas = [alpha_of(name) for name, _ in entries]
    rows = ([("CE only", baseline)] if baseline else []) + [
        (f"{a:g}", s) for a, (_, s) in zip(alphas, entries, strict=True)
    ]
    compared = entries + ([("ce_only", baseline)] if baseline else [])
    heading = "; ".join(filter(None, (title, comparison_about(compared))))
    lines = [f"## {heading}", ""] if heading else []
    lines += ["| alpha | runs | " + " | ".join(METRICS) + " |", "|" + "---|" * (len(METRICS) + 2)]
    for name, summary in rows:
        cells = [mean_cell(summary, m) for m in METRICS]
        lines.append(f"| {name} | {summary['num_runs']} | " + " | ".join(cells) + " |")
    for metric in ("UAR", "WAR"):
        alpha, (_, best) = max(zip(alphas, entries, strict=True), key=lambda e: e[1][1]["mean"][metric])
        lines.append("\n" + best_alpha_line(metric, alpha, best, baseline))
    return "\n".join(lines) + "\n"


def alpha_figure(entries, baseline, plot, title=None):
    """Draw the alpha sweep of ``entries`` (``alpha_sweep``'s) into the PNG ``plot``: UAR and WAR
    against alpha with their stds, CE only's as horizontal lines (the paper's Figure 3)."""
    from crab.plots import plot_alpha

    entries = sorted(entries, key=lambda e: alpha_of(e[0]))
    means = {m: [s["mean"][m] for _, s in entries] for m in ("UAR", "WAR")}
    stds = {m: [s["std"].get(m) or 0.0 for _, s in entries] for m in ("UAR", "WAR")}
    base = {m: baseline["mean"][m] for m in ("UAR", "WAR")} if baseline else None
    plot_alpha([alpha_of(name) for name, _ in entries], means, plot, stds=stds, baseline=base, title=title)


def table_setting(text):
    """What a sweep's table (``comparison_markdown``, ``alpha_sweep``) is of, not its numbers: its
    heading (test set, ``--train_opts``, the runs' config, folds and seeds) and the first two cells
    of each row (the setting: method and tag, or alpha and runs)."""
    lines = text.splitlines()
    heading = next((line for line in lines if line.startswith("## ")), "")
    rows = [line.strip("|").split("|")[:2] for line in lines if line.startswith("|") and "---|" not in line]
    return heading, [[cell.strip() for cell in row] for row in rows]


def keep_other_sweeps_table(out, text, companions=()):
    """Before the table ``text`` is written to ``out``: when ``out`` holds the table of another
    setting (``table_setting``: other settings, runs or ``--train_opts``), rename it and those of
    ``companions`` (its figure, its embedding plot) that exist to ``<name>.<date>.<ext>``, the date
    (UTC) it was written, so that a second sweep into the same folder keeps the first's; the same
    sweep run again replaces its own. Returns the new name of ``out``, or None."""
    if not os.path.isfile(out):
        return None
    with open(out, encoding="utf-8", errors="replace") as f:
        if table_setting(f.read()) == table_setting(text):
            return None
    written = datetime.datetime.fromtimestamp(os.path.getmtime(out), datetime.UTC)
    moved = [path for path in (out, *companions) if path and os.path.isfile(path)]
    stamp, n = f"{written:%Y-%m-%d_%H-%M-%S}", 1
    while any(os.path.lexists(_dated(path, stamp)) for path in moved):  # two sweeps in one second
        n += 1
        stamp = f"{written:%Y-%m-%d_%H-%M-%S}_{n}"
    for path in moved:
        os.replace(path, _dated(path, stamp))
    return _dated(out, stamp)


def _dated(path, stamp):
    stem, ext = os.path.splitext(path)
    return f"{stem}.{stamp}{ext}"


def best_alpha_line(metric, alpha, best, baseline):
    """The sweep's best mean of ``metric`` (at ``alpha``, summary ``best``) with its std and
    runs, and its difference from CE only's (said either way: CE only may be the best of all),
    and whether that difference exceeds the larger of their seed-to-seed stds."""
    value = best["mean"][metric]
    line = f"Best {metric}: {mean_cell(best, metric)} at alpha {alpha:g} ({_runs(best)}"
    if baseline:
        base, stds = baseline["mean"][metric], [s["std"].get(metric) for s in (best, baseline)]
        line += f"; {value - base:+.4f} against CE only's {mean_cell(baseline, metric)}, {_runs(baseline)}"
        if None not in stds:
            within = "more than" if abs(value - base) > max(stds) else "within"
            line += f": {within} the larger std, {max(stds):.4f}; paired by fold and seed: crab.bin.paired"
    return line + ")."


def _runs(summary):
    return f"{summary['num_runs']} run{'s' * (summary['num_runs'] != 1)}"


# ---------------------------------------------------------------- scoring runs


def read_predictions(path):
    """Class list and (true, predicted) index lists of one ``predictions.csv``.

    The classes are those of its ``prob_<class>`` columns, in order.
    """
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        classes = [c[len("prob_") :] for c in reader.fieldnames or [] if c.startswith("prob_")]
        index = {c: i for i, c in enumerate(classes)}
        rows = list(reader)
    try:
        y_true = [index[r["true"]] for r in rows]
        y_pred = [index[r["predicted"]] for r in rows]
    except KeyError as err:
        raise ValueError(f"{path}: label {err} has no prob_ column") from None
    if not rows:
        raise ValueError(f"{path}: no predictions")
    return classes, y_true, y_pred


def run_dir_of(path):
    """The run directory of a predictions file: two levels above it (``exp/<tag>/<fold>/seed<seed>``)."""
    return os.path.dirname(os.path.dirname(path)) or path


def left_out_runs(paths):
    """The runs of the experiments of ``paths`` (predictions files) that have predictions on
    the same test set but are not among them (``exp/<tag>/*/seed*/eval_<test>/``), as run
    directories: what makes scoring ``paths`` a subset (``results_name``)."""
    given = {os.path.abspath(p) for p in paths}
    patterns = set()  # one per experiment and test set, however many of its runs are given
    for path in paths:
        experiment = os.path.dirname(os.path.dirname(run_dir_of(path)))
        eval_dir, name = os.path.split(path)
        patterns.add(
            os.path.join(glob.escape(experiment), "*", "seed*", glob.escape(os.path.basename(eval_dir)), name)
        )
    found = {p for pattern in patterns for p in glob.glob(pattern) if os.path.abspath(p) not in given}
    return sorted(run_dir_of(p) for p in found)


def results_name(paths, test_set):
    """The file name (no extension) of the results of the runs of ``paths`` on ``test_set``:
    ``results_<test_set>``; for a subset (other runs of the experiment have predictions on it:
    ``left_out_runs``) ``results_<test_set>.<fold>+<fold>.seed<seed>+<seed>``, so that scoring
    some of the folds or seeds never replaces the results of all of them.

    The folders on disk decide, not a recipe's list of folds (which ``ser.sh`` does not know):
    the first folds scored, before the others are trained, are the experiment's results until
    more are scored together.
    """
    if not left_out_runs(paths):
        return f"results_{test_set}"
    folds, seeds = runs_covered(run_dir_of(p) for p in paths)
    return f"results_{test_set}.{'+'.join(folds)}.seed{'+'.join(seeds)}"


def summary_test_set(path):
    """The test set of a results summary: the ``test_set`` it stores (stage 7 always gives
    one), else the part of its file name after ``results_`` up to the first dot."""
    try:
        with open(path, encoding="utf-8") as f:
            stored = json.load(f).get("test_set")
    except (OSError, ValueError, AttributeError):
        stored = None
    return stored or os.path.basename(path)[len("results_") :].split(".")[0]


def test_sets(experiment, since=None):
    """The test sets that ``experiment`` (``exp/<tag>``) has results summaries of, sorted. A
    test set's name may hold dots: each summary's own ``test_set`` decides, not its file name.
    With ``since`` (seconds since the epoch), only summaries written then or later count: the
    test sets a sweep scored, not those of an older scoring of the experiment."""
    summaries = glob.glob(os.path.join(glob.escape(experiment), "results_*.json"))
    if since is not None:
        summaries = [p for p in summaries if os.path.getmtime(p) >= since]
    return sorted({summary_test_set(p) for p in summaries})


def latest_results(experiment, test_set):
    """The summary stage 7 wrote last for ``experiment`` (``exp/<tag>``) on ``test_set``: that
    of all its runs, ``results_<test_set>.json``, or a subset's (``results_name``); the former
    when there is none (``read_summary`` says so). A subset's file of another test set whose
    name begins the same (``test`` and ``test.v2``) is told apart by the test set it stores."""
    plain = os.path.join(experiment, f"results_{test_set}.json")
    pattern = os.path.join(glob.escape(experiment), f"results_{glob.escape(test_set)}.*.json")
    subsets = [p for p in glob.glob(pattern) if summary_test_set(p) == test_set]
    found = ([plain] if os.path.isfile(plain) else []) + subsets
    return max(found, key=os.path.getmtime, default=plain)


def summary_embeddings(path):
    """The fused embeddings (``eval_<test>/embeddings.npz``) of the first run of a results
    summary that has them, of the checkpoint of its predictions (``current_embedding_scores``),
    or None: a sweep's plot shows runs that its tables score."""
    _, summary = read_summary(path)
    test_set = summary.get("test_set") or summary_test_set(path)  # the file's name, without one
    for row in summary.get("runs", []):
        eval_dir = os.path.join(row["run"], f"eval_{test_set}")
        dump = os.path.join(eval_dir, "embeddings.npz")
        scored = os.path.isfile(os.path.join(eval_dir, "embedding_scores.json"))
        # a dump without its scores names no checkpoint: taken as of the predictions'
        if os.path.isfile(dump) and (not scored or current_embedding_scores(eval_dir) is not None):
            return dump
    return None


def score_run(path, per_run=False, test_manifest=None):
    """The scores of one predictions file with its run's provenance: a row of ``summarise``.

    Parameters
    ----------
    path : str
        A ``predictions.csv`` (``CrabBrain.evaluate``).
    per_run : bool
        Also write ``scores.json``, ``per_class.md`` and ``confusion.png`` beside it.
    test_manifest : str, optional
        The test manifest the predictions must be of (``check_test_manifest``).

    Returns
    -------
    dict
        The run, its metrics and class notes, the training wall time, commit, machine,
        command, config and tuning file, and transcripts (``train_info.json``, else the
        run's provenance), and the embedding cluster scores of ``embedding_scores.json``
        beside the predictions.
    """
    classes, y_true, y_pred = read_predictions(path)
    report = classification_report(y_true, y_pred, classes)
    run_dir = run_dir_of(path)
    check_evaluated_checkpoint(path, run_dir)
    if test_manifest is not None:
        check_test_manifest(path, test_manifest)
    info = read_train_info(run_dir) or {}
    row = {
        "run": run_dir,
        "num_utterances": report["num_utterances"],
        **{m: report[m] for m in METRICS},
        "absent_from_references": report["absent_from_references"],
        "never_predicted": report["never_predicted"],
        **{
            k: info.get(k) for k in ("wall_s", "commit", "machine", "versions", "command", "config", "tuning")
        },
    }
    source, asr_model = trained_text_source(read_run_provenance(run_dir))  # the run's own record
    if source != "none":  # a train_info.json from before speech-only runs were told apart says gold
        source, asr_model = info.get("text_source", source), info.get("asr_model", asr_model)
    row.update(text_source=source, asr_model=asr_model)
    embedded = current_embedding_scores(os.path.dirname(path))
    if embedded:
        row.update({k: v for k, v in embedded.items() if k in EMBEDDING_SCORES})
    if per_run:
        write_run_files(os.path.dirname(path), report, run_dir)
    return row


def current_embedding_scores(eval_dir):
    """The ``embedding_scores.json`` of an evaluation folder, or None when there is none or it
    names another checkpoint than the predictions beside it (their ``checkpoint.txt``): the run
    trained on after it was embedded, and a table would put the old model's cluster scores beside
    the new model's metrics (said on stderr). So too when their records (``crab.evalrecord``)
    differ: the same checkpoint evaluated again on another test manifest or with other code
    (stage 6 without --embeddings). Scores or predictions that name no checkpoint or have no
    record (an older release) are taken as of the same one."""
    path = os.path.join(eval_dir, "embedding_scores.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        scores = json.load(f)
    embedded, evaluated = scores.get("checkpoint"), evaluated_checkpoint(eval_dir)
    if embedded and evaluated and embedded != evaluated:
        return _left_out(path, f"is of checkpoint {embedded}, the predictions beside it of {evaluated}")
    changed = evalrecord.other_inputs(eval_dir)
    if changed:
        return _left_out(
            path, f"was computed from other inputs ({', '.join(changed)}) than the predictions beside it"
        )
    return scores


def _left_out(path, why):
    print(
        f"Note: {path} {why}: its embeddings are left out (stage 6 with --embeddings true makes them again)",
        file=sys.stderr,
    )
    return None


def evaluated_checkpoint(eval_dir):
    """The checkpoint an evaluation folder's predictions are of (its ``checkpoint.txt``), or None
    where it records none (an older release)."""
    try:
        with open(os.path.join(eval_dir, EVALUATED_CHECKPOINT), encoding="utf-8") as f:
            return f.read().strip()
    except FileNotFoundError:
        return None


def check_evaluated_checkpoint(path, run_dir):
    """A ``UserError`` when the predictions ``path`` are of a checkpoint (their folder's
    ``checkpoint.txt``) that the run's ``save/`` no longer holds while it holds others: the
    run trained on after it was evaluated, and its best checkpoint replaced that one. Nothing
    to tell without the record or without checkpoints (an older evaluation, a cleaned run)."""
    evaluated = evaluated_checkpoint(os.path.dirname(path))
    if evaluated is None:
        return
    held = [os.path.basename(p) for p in glob.glob(os.path.join(glob.escape(run_dir), "save", "CKPT+*"))]
    if held and evaluated not in held:
        raise cli.UserError(
            f"{path}: predictions of checkpoint {evaluated}, which {os.path.join(run_dir, 'save')} no longer "
            f"holds (it holds {', '.join(sorted(held))}): the run trained on after it was evaluated. "
            "Evaluate it again (stage 6)"
        )


def check_test_manifest(path, manifest):
    """A ``UserError`` when the predictions ``path`` were computed from another test manifest than
    ``manifest`` holds now (the digest their evaluation recorded, ``crab.evalrecord``): an
    utterance added, removed or relabelled since, or stage 3 run again; their scores are of the
    old test set. Nothing to tell without the record (an older release); without the manifest
    (results scored where the data folder is not) it says so on stderr."""
    if not os.path.isfile(manifest):
        print(f"Note: {path}: not checked against its test manifest: none at {manifest}", file=sys.stderr)
        return
    record = evalrecord.read(os.path.dirname(path), evalrecord.PREDICTIONS_RECORD) or {}
    evaluated = record.get("test_manifest_sha256")
    if evaluated is not None and evaluated != file_digest(manifest):
        raise cli.UserError(
            f"{path}: predictions of another {manifest} than the one there now (it changed after they "
            "were made). Evaluate it again (stage 6)"
        )


def write_run_files(eval_dir, report, name):
    """Write ``scores.json``, ``per_class.md`` and ``confusion.png`` of a classification
    ``report`` (``crab.metrics.classification_report``) of run ``name`` to ``eval_dir``."""
    from crab.plots import plot_confusion  # matplotlib only when drawing

    write_text_atomic(os.path.join(eval_dir, "scores.json"), json.dumps(report, indent=2))
    write_text_atomic(
        os.path.join(eval_dir, "per_class.md"), per_class_markdown(report, title=f"{name}: per-class scores")
    )
    scores = ", ".join(f"{m} {report[m]:.4f}" for m in ("WAR", "UAR"))
    plot_confusion(
        report["confusion_matrix"],
        report["classes"],
        os.path.join(eval_dir, "confusion.png"),
        title=f"{name} ({scores})",
    )


def results_table(paths, per_run=False, title=None, test_manifests=None, **meta):
    """Score runs and tabulate them.

    Parameters
    ----------
    paths : list of str
        Their ``predictions.csv`` files.
    per_run : bool
        Also write the per-run files beside each (``write_run_files``).
    test_manifests : list of str, optional
        The test manifest of each, which its predictions must be of (``check_test_manifest``).
    title : str, optional
        Heading of the markdown.
    **meta
        Stored in the summary (``tag``, ``test_set``).

    Returns
    -------
    tuple of (str, dict)
        The markdown results (``results_markdown``) and the summary (``summarise``, with the
        runs of the experiment left out, ``left_out_runs``), JSON-ready.
    """
    manifests = test_manifests or [None] * len(paths)
    rows = [score_run(p, per_run, m) for p, m in zip(paths, manifests, strict=True)]
    summary = summarise(rows, left_out=left_out_runs(paths), **meta)
    return results_markdown(summary, title), summary


def read_summary(path):
    """``(name, summary)`` of a summary written by ``crab.bin.score --summary``; the name is
    its tag, else the name of its folder."""
    if not os.path.isfile(path):
        raise cli.UserError(f"no results summary at {path}: run the score stage (7) for it first")
    with open(path, encoding="utf-8") as f:
        summary = json.load(f)
    summary.setdefault("tag", os.path.basename(os.path.dirname(path)))
    return summary["tag"] or os.path.basename(os.path.dirname(path)), summary


# ---------------------------------------------------------------- training logger


def _no_torchvision_message(record):
    return not record.getMessage().startswith("torchvision is not available")


def _quiet_image_saver():
    """Importing ``speechbrain.utils.train_logger`` logs "torchvision is not available -
    cannot save figures" (its ProgressSampleLogger's image saver, which crab does not
    use: the figures are matplotlib's, ``crab.plots``). Drop that one message, at its
    logger, before the import."""
    import logging

    log = logging.getLogger("speechbrain.utils.train_logger")
    if _no_torchvision_message not in log.filters:
        log.addFilter(_no_torchvision_message)


def _drop_torn_line(path):
    """Cut the last line of ``path`` when it has no newline: an epoch's line whose write failed
    (a full disk, before the epoch's checkpoint), which the resumed run logs again whole."""
    try:
        with open(path, "rb+") as f:
            data = f.read()
            if data and not data.endswith(b"\n"):
                f.truncate(data.rfind(b"\n") + 1)
    except FileNotFoundError:
        pass


class TrainLogger:
    """SpeechBrain's ``FileTrainLogger`` (per-epoch stats in ``save_file``), and the
    same stats in TensorBoard when ``use_tensorboard`` is true.

    TensorBoard is optional: ``use_tensorboard: true`` without the ``tensorboard``
    package is an error that says how to install it.
    """

    def __init__(self, save_file, tensorboard_dir=None, use_tensorboard=False, precision=2):
        _quiet_image_saver()
        from speechbrain.utils.train_logger import FileTrainLogger

        _drop_torn_line(save_file)
        self.file_logger = FileTrainLogger(save_file, precision=precision)
        self.tensorboard = None
        if use_tensorboard:
            try:
                import tensorboard  # noqa: F401  (torch.utils.tensorboard needs it)
            except ImportError:
                raise ImportError(
                    "use_tensorboard: true needs the tensorboard package: "
                    "tools/venv/bin/pip install tensorboard (or set use_tensorboard: false)"
                ) from None
            from speechbrain.utils.train_logger import TensorboardLogger

            self.tensorboard = TensorboardLogger(tensorboard_dir)

    def log_stats(self, stats_meta, train_stats=None, valid_stats=None, test_stats=None, verbose=True):
        try:
            self.file_logger.log_stats(stats_meta, train_stats, valid_stats, test_stats, verbose=verbose)
        except OSError as err:  # a full disk, before the epoch's checkpoint: it is trained again
            raise WriteError.of(
                self.file_logger.save_file,
                err,
                "the run's latest checkpoint is kept, and running the training again resumes from it",
            ) from err
        if self.tensorboard is not None:
            self.tensorboard.log_stats(stats_meta, train_stats, valid_stats, test_stats)


# ---------------------------------------------------------------- a recipe's RESULTS.md

RESULTS_MARKER = "<!-- stage 7 (ser.sh --results_md) adds each new entry below this line, newest first -->"


def package_versions(packages=("torch", "speechbrain", "transformers")):
    """``torch 2.6.0, speechbrain 1.0.3, ...`` (installed versions, read without importing them)."""
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in packages:
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            found.append(f"{name} not installed")
    return ", ".join(found) + f" (python {platform.python_version()})"


def _by_run(label, rows, key, show=str, missing=f"not recorded (no {TRAIN_INFO})"):
    """Markdown list lines of the values of ``key`` over a summary's ``rows``, each once
    (``show(value)``; rows without one: ``missing``): ``- label: value``, or where they
    differ one item per value, after its runs (``<fold>/seed<seed>``)."""
    runs = {}
    for row in rows:
        parts = os.path.normpath(row["run"]).split(os.sep)
        runs.setdefault(row.get(key) or None, []).append(os.path.join(*parts[-2:]))
    shown = {(show(v) if v else missing): names for v, names in runs.items()}
    if len(shown) == 1:
        return [f"- {label}: {next(iter(shown))}"]
    return [f"- {label}:", *(f"  - {', '.join(names)}: {value}" for value, names in shown.items())]


def results_entry(summary, command, config=None, tuning=None, device="cpu", date=None):
    """One entry of a recipe's RESULTS.md (icefall / ESPnet style), markdown.

    A heading with the date (UTC) and the experiment (and, for a subset, its folds and
    seeds), the environment, the config and tuning file of the runs, their folds and seeds
    (``coverage``), the commands that trained them and ``command``, the one that scored
    them (stage 7), then the results table of ``results_markdown``. ``summary`` is the JSON
    of ``crab.bin.score --summary``. What the runs' ``train_info.json`` recorded (their
    rows, ``score_run``) is what trained them: the command, commit, machine, config and
    tuning file, package versions (the given ``config`` and ``tuning`` only where none is
    recorded); the date, versions and ``machine(device)`` of the scoring follow, with its commit.
    """
    from crab.runconfig import ConfigError, read_tuning  # yaml only

    date = date or datetime.datetime.now(datetime.UTC)
    runs = summary["runs"]
    recorded = {key: sorted({row[key] for row in runs if row.get(key)}) for key in ("tuning", "config")}
    tunings = recorded["tuning"] or ([tuning] if tuning else [])
    configs = recorded["config"] or ([config] if config else [])
    experiment = f"{summary.get('tag') or 'experiment'} on {summary.get('test_set') or 'test'}"
    covered, left_out = coverage(summary)
    if left_out:
        experiment += f" (a subset: {covered})"
    lines = [
        f"## {date:%Y-%m-%d %H:%M} UTC: {experiment}",
        "",
        f"Environment (of the training: the runs' {TRAIN_INFO}; of the scoring: stage 7):",
        "",
        *_by_run("git commit (training)", runs, "commit"),
        *_by_run("device (training)", runs, "machine"),
        *_by_run("versions (training)", runs, "versions", missing="not recorded"),
        f"- date (scoring): {date.isoformat(timespec='seconds')}",
        f"- git commit (scoring): {git_commit() or 'unknown'}",
        f"- device (scoring): {machine(device)}",
        f"- versions (scoring): {package_versions()}",
        "",
    ]
    lines += ["Setting:", ""]
    for name in tunings:
        try:
            about = read_tuning(name)["description"]
        except ConfigError:  # changed or gone since: the path still names it
            about = ""
        lines.append(f"- tuning: `{name}`" + (f": {about}" if about else ""))
    if configs:
        lines.append(("- base config: " if tunings else "- config: ") + ", ".join(f"`{c}`" for c in configs))
    if covered:
        lines.append(f"- runs: {covered}" + (f"; {left_out}" if left_out else ""))
    lines += [
        *_by_run("trained by", runs, "command", lambda c: f"`{c}`"),
        f"- scored by: `{command}`",
        "",
        "",
    ]
    return "\n".join(lines) + results_markdown(summary)


def _experiment_and_result(entry):
    """``(experiment, result)`` of a RESULTS.md entry written by ``results_entry``: its heading
    after the date, and all from its setting on (the commands and the table); None otherwise."""
    heading, _, body = entry.partition("\n")
    _, utc, experiment = heading.partition(" UTC: ")
    _, setting, result = body.partition("\nSetting:\n")
    return (experiment, result.strip()) if utc and setting else None


def _newest_entry(parts, entry):
    """The index in ``parts`` (a RESULTS.md split at its ``## `` headings) of the newest entry on
    the experiment of ``entry`` (its tag, test set and, for a subset, folds and seeds), or None."""
    experiment = _experiment_and_result(entry)[0]
    for at, old in enumerate(parts[1:], 1):
        found = _experiment_and_result(old)
        if found and found[0] == experiment:
            return at
    return None


# a tuning file's line in an entry's setting: its name, then its description (free text)
TUNING_LINE = re.compile(r"^(- tuning: `[^`\n]*`)(?:: .*)?$", re.M)


def _without_descriptions(entry):
    """``_experiment_and_result`` of an entry without its tuning files' descriptions: their
    comment edited, the runs, commands and numbers are what the entry already holds."""
    experiment, result = _experiment_and_result(entry)
    return experiment, TUNING_LINE.sub(r"\1", result)


def _with_descriptions_of(old, entry):
    """The RESULTS.md entry ``old`` with the tuning lines (names and descriptions) of ``entry``."""
    lines = iter(match.group(0) for match in TUNING_LINE.finditer(entry))
    return TUNING_LINE.sub(lambda _: next(lines), old)


def insert_entry(text, entry, title="Results"):
    """``text`` (a RESULTS.md, or None) with ``entry`` at the top of its entries: after
    ``RESULTS_MARKER``, else before its first ``## `` heading, else at its end; a new
    file gets ``# title``, a line on what it holds and the marker."""
    entry = entry.rstrip("\n") + "\n"
    if not text or not text.strip():
        intro = (
            "Newest first. Stage 7 of `run.sh` adds an entry per experiment and test set "
            "(`--results_md`): the environment, the config or tuning file of its runs, the commands "
            "that trained and scored them, and the results (mean ± std over folds and seeds)."
        )
        return f"# {title}\n\n{intro}\n\n{RESULTS_MARKER}\n\n{entry}"
    at = text.find(RESULTS_MARKER)
    if at >= 0:
        at += len(RESULTS_MARKER)
        return text[:at].rstrip("\n") + "\n\n" + entry + "\n" + text[at:].lstrip("\n")
    heading = 0 if text.startswith("## ") else text.find("\n## ")
    if heading >= 0:
        heading += 0 if heading == 0 else 1
        return text[:heading] + entry + "\n" + text[heading:]
    return text.rstrip("\n") + "\n\n" + entry


def add_results_entry(path, summary_path, command, config=None, tuning=None, device="cpu", corpus=None):
    """Prepend the entry of ``summary_path`` (``results_entry``) to the results file ``path``
    (created when absent), under a lock on its folder; the file is replaced whole, so a
    reader never sees half of it. Scoring again what the newest entry of the experiment
    holds (the same commands and table: ``_newest_entry``) adds nothing, and where only the
    descriptions of its tuning files differ (their comment edited) they replace that entry's.
    Returns the entry as the file has it, and what was done: "added", "described" (the
    descriptions replaced) or None."""
    from crab.locking import folder_lock

    _, summary = read_summary(summary_path)
    entry = results_entry(summary, command, config=config, tuning=tuning, device=device)
    path = os.path.realpath(path)
    title = f"{CORPUS_NAMES.get((corpus or '').lower(), corpus)} results" if corpus else "Results"
    # one writer at a time (the settings of a sweep run in parallel)
    with folder_lock(os.path.dirname(path), "results folder", wait=True):
        old = None
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                old = f.read()
        parts = re.split(r"^(?=## )", old or "", flags=re.M)
        at = _newest_entry(parts, entry)
        if at is not None and _experiment_and_result(parts[at]) == _experiment_and_result(entry):
            return parts[at], None
        if at is not None and _without_descriptions(parts[at]) == _without_descriptions(entry):
            parts[at] = _with_descriptions_of(parts[at], entry)
            write_text_atomic(path, "".join(parts))
            return parts[at], "described"
        write_text_atomic(path, insert_entry(old, entry, title))
    return entry, "added"


# ---------------------------------------------------------------- command line


@cli.entry_point
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=cli.HelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    over = cli.add_command(commands, "overrides", "print the yaml overrides of one run")
    over.add_argument("--table", help="ablation table (conf/ablations.txt)")
    over.add_argument("--ablation", help="ablation name in the table")
    over.add_argument(
        "--opts", default="", help="further --key=value overrides, as shell words in one string"
    )
    over.add_argument("extra", nargs="*", help="further --key=value overrides (after --)")
    over.add_argument("--tuning", help="tuning file (conf/tuning/<name>.yaml): its overrides come first")
    over.add_argument(
        "--keep_ablation",
        action="store_true",
        help="an error when the further overrides give another value of a key the ablation sets",
    )
    tun = cli.add_command(commands, "tuning", "check a tuning file and print its base config")
    tun.add_argument("file", help="conf/tuning/<name>.yaml")
    rec = cli.add_command(commands, "record_training", "note a training invocation in train_info.json")
    rec.add_argument("--run_dir", required=True, help="exp/<tag>/<fold>/seed<seed>")
    rec.add_argument("--wall_s", type=float, required=True, help="the invocation's wall time, in seconds")
    rec.add_argument("--command", required=True, help="the command as typed")
    rec.add_argument("--device", default="cpu", help="the training device, as the results name it")
    rec.add_argument("--config", help="the base config the run was given")
    rec.add_argument("--tuning", help="the tuning file the run was given (empty: none)")
    rec.add_argument(
        "--trained_now",
        type=cli.str2bool,
        default=True,
        help="false: this invocation trained nothing (a run an interrupted one finished): recorded only "
        "where its latest checkpoint holds the training time, not a run an older release or a hand-run "
        "trained",
    )
    add = cli.add_command(commands, "add_results", "prepend an entry to a recipe's RESULTS.md")
    add.add_argument("--results_md", required=True, help="the results file (created when absent)")
    add.add_argument("--summary", required=True, help="exp/<tag>/results_<test>.json (crab.bin.score)")
    add.add_argument("--command", dest="typed", required=True, help="the scoring command as typed")
    add.add_argument("--config", help="the base config")
    add.add_argument("--tuning", help="the tuning file (empty: none)")
    add.add_argument("--device", default="cpu", help="the device of the scoring (train_info.json: the runs')")
    add.add_argument("--corpus", help="the recipe's directory name: the title of a new file")
    name = cli.add_command(commands, "results_name", "print the name of the results of some runs")
    name.add_argument("--test_set", required=True, help="the test set's name")
    name.add_argument("predictions", nargs="+", help="the runs' predictions.csv files")
    latest = cli.add_command(commands, "latest_results", "print the summary stage 7 wrote last")
    latest.add_argument("experiment", help="exp/<tag>")
    latest.add_argument("test_set", help="the test set's name")
    sets = cli.add_command(commands, "test_sets", "print the test sets an experiment has summaries of")
    sets.add_argument("experiment", help="exp/<tag>")
    sets.add_argument("--since", type=float, help="only summaries written at or after this time (epoch s)")
    done = cli.add_command(commands, "check_trained", "an error naming the runs whose training stopped early")
    done.add_argument("--stage", required=True, help="the recipe stage that needs them finished")
    done.add_argument("run_dirs", nargs="*", help="exp/<tag>/<fold>/seed<seed>")
    agree = cli.add_command(commands, "check_agree", "an error naming an option that contradicts a run")
    agree.add_argument("--opts", default="", help="ser.sh --train_opts")
    agree.add_argument("run_dirs", nargs="*", help="exp/<tag>/<fold>/seed<seed>")
    emb = cli.add_command(commands, "embeddings", "print the embeddings.npz of a summary's first run")
    emb.add_argument("summary", help="exp/<tag>/results_<test>[...].json")
    args = parser.parse_args(argv)
    from crab.runconfig import read_tuning  # yaml only

    if args.command == "overrides":
        if args.ablation and not args.table:
            parser.error("--ablation needs --table")
        try:
            first = read_tuning(args.tuning)["overrides"] if args.tuning else []
            extra = [*split_overrides(args.opts), *args.extra]
            words = (
                merge_overrides(
                    first, ablation_overrides(args.table, args.ablation, extra, args.keep_ablation)
                )
                if args.ablation
                else merge_overrides(first, extra)
            )
        except (KeyError, ValueError, OSError) as err:
            sys.exit(f"ERROR: {err.args[0] if isinstance(err, KeyError) else err}")
        for word in words:
            print(word)
    elif args.command == "tuning":
        print(read_tuning(args.file)["config"])
    elif args.command == "results_name":
        print(results_name(args.predictions, args.test_set))
    elif args.command == "latest_results":
        print(latest_results(args.experiment, args.test_set))
    elif args.command == "test_sets":
        print("\n".join(test_sets(args.experiment, args.since)))
    elif args.command == "check_trained":
        check_trained(args.run_dirs, args.stage)
    elif args.command == "check_agree":
        from crab.runconfig import check_runs_agree

        try:
            words = split_overrides(args.opts)
        except ValueError as err:
            sys.exit(f"ERROR: {err}")
        check_runs_agree(args.run_dirs, words)
    elif args.command == "embeddings":
        print(summary_embeddings(args.summary) or "")
    elif args.command == "add_results":
        entry, done = add_results_entry(
            args.results_md,
            args.summary,
            args.typed,
            config=args.config,
            tuning=args.tuning or None,
            device=args.device,
            corpus=args.corpus,
        )
        heading = entry.split("\n", 1)[0][len("## ") :]
        if done == "added":
            print(f"{args.results_md}: added at the top: {heading}")
        elif done == "described":
            print(
                f"{args.results_md}: '{heading}' has the same commands and table: "
                "its tuning file's description replaced, no entry added"
            )
        else:
            print(f"{args.results_md}: '{heading}' has the same commands and table: no entry added")
    elif args.trained_now or checkpointed_training_seconds(args.run_dir) is not None:
        record_training(args.run_dir, args.wall_s, args.command, args.device, args.config, args.tuning)
    else:
        print(
            f"{args.run_dir}: no {TRAIN_INFO}, and its checkpoint does not record the training time "
            "(trained by an older release, or outside the recipe): left unrecorded"
        )


if __name__ == "__main__":
    main()
