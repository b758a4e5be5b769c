"""The recipes' real-data scripts (egs/{emodb,meld}/local/cpu_results.sh) end to end on
the corpus fixtures, with tiny random encoders saved as local pretrained directories:
data, feature cache and layer probe, both ablations' training and evaluation, the tables."""

import json
import os
import re
import subprocess
import sys

import pytest
from transformers import AutoConfig, AutoModel

from crab.tokenizer import build_bpe_tokenizer
from tests.conftest import MINI_CONF, ROOT, read_settings
from tests.test_recipe_emodb import NO_BYTECODE
from tests.test_recipe_emodb import make_fixture as make_emodb
from tests.test_recipe_meld import TEXTS as MELD_TEXTS
from tests.test_recipe_meld import split_rows, write_csv
from tests.test_transcribe import build_tiny_whisper

pytestmark = pytest.mark.slow  # end-to-end recipe runs

FOLD = "fold03_08"  # sorted pairing: test 03 + 08, validation 09 + 10


def run_script(recipe, *options, env, status=0, cwd=None):
    """``local/cpu_results.sh`` of ``recipe``, run from ``cwd``; its exit status must be ``status``."""
    script = os.path.join(ROOT, "egs", recipe, "local", "cpu_results.sh")
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]
    result = subprocess.run(
        ["bash", script, *options],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **NO_BYTECODE, "PATH": path, "OMP_NUM_THREADS": "1", **env},
    )
    assert result.returncode == status, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def ablation_rows(table_path):
    """tag -> number of runs, from a sweep.sh ablations table."""
    rows = re.findall(r"^\| [^|]+ \| (\w+) \| (\d+) \|", table_path.read_text(), re.MULTILINE)
    return {tag: int(runs) for tag, runs in rows}


def test_emodb_cpu_results(tmp_path):
    corpus = make_emodb(tmp_path / "emodb")
    whisper = build_tiny_whisper(tmp_path / "whisper")  # one encoder layer: hidden states 0 and 1
    data, exp = tmp_path / "data", tmp_path / "exp"
    options = [
        "--whisper",
        whisper,
        "--seeds",
        "1 2",
        "--jobs",
        "2",
        "--folds",
        FOLD,
        "--layer",
        "1",
        "--data_dir",
        str(data),
        "--exp_dir",
        str(exp),
        "--data_opts",
        "--pairing sorted --check_counts false",
        "--extra_opts",
        "--number_of_epochs=2 --batch_size=8",
    ]
    env = {"EMODB": str(corpus)}
    output = run_script("emodb", *options, env=env).stdout

    probe = (exp / "layer_probe.md").read_text()
    assert "\n| fold | layer 0 | layer 1 |\n" in probe  # validation UAR per layer
    assert re.search(rf"^\| {FOLD} \| [01]\.\d{{3}} \| [01]\.\d{{3}} \|$", probe, re.MULTILINE)
    assert "best layer on valid:" in output
    assert (exp / "features_layer1" / "index.json").is_file()
    assert sorted(os.listdir(exp)) == [
        "ablations_test.md",
        "ablations_test.md.lock",  # its writer's, one at a time
        "ce_only",
        "ce_only_seed1.log",
        "ce_only_seed2.log",
        "extract_features",
        "features_all_layers",
        "features_layer1",
        "layer_probe.md",
        "mlcs",
        "mlcs_seed1.log",
        "mlcs_seed2.log",
        "paired_test.md",
        "paired_test.png",
    ]  # no empty run folders
    assert ablation_rows(exp / "ablations_test.md") == {"ce_only": 2, "mlcs": 2}
    assert "| mlcs | 2 |" in (exp / "paired_test.md").read_text()  # paired by fold and seed
    chosen = {m: int((exp / m / "chosen_epochs").read_text()) for m in ("ce_only", "mlcs")}
    assert set(chosen.values()) <= {1, 2} and "| mean |" in (exp / "mlcs" / "valid_curves.md").read_text()
    run = exp / "mlcs" / FOLD / "seed1"
    settings = run_settings(run)
    assert (settings["layer_weighting"], settings["number_of_epochs"], settings["alpha"]) == (1, 2, 2.0)
    assert settings["feature_cache"] == str(exp / "features_layer1")
    assert (run / "eval_test" / "predictions.csv").is_file()

    # --trainval: train = train + valid of the held-out protocol, valid and test unchanged. Run
    # from elsewhere, with the encoder and the corpus given relative to there.
    relative = [v if v != whisper else "whisper" for v in options]
    run_script("emodb", *relative, "--trainval", "true", "--stage", "5", env={"EMODB": "emodb"}, cwd=tmp_path)
    held_out, merged = data / FOLD, tmp_path / "data_trainval" / FOLD
    train = json.loads((merged / "train.json").read_text())
    assert set(train) == set(json.loads((held_out / "train.json").read_text())) | set(
        json.loads((held_out / "valid.json").read_text())
    )
    assert {e["spk"] for e in train.values()} == {"09", "10", "11", "12", "13", "14", "15", "16"}
    assert (merged / "test.json").read_text() == (held_out / "test.json").read_text()
    assert ablation_rows(tmp_path / "exp_trainval" / "ablations_test.md") == {"ce_only": 2, "mlcs": 2}
    for m in ("ce_only", "mlcs"):  # no <tuning>_8spk.yaml for the frozen setting: the held-out file's
        settings = run_settings(tmp_path / "exp_trainval" / m / FOLD / "seed2")
        assert (settings["number_of_epochs"], settings["ckpt_metric"]) == (2, "UAR")


def run_settings(run_dir):
    """A run's saved hyperparams.yaml (hyperpyyaml tags read as None)."""
    return read_settings(run_dir / "hyperparams.yaml")


def build_tiny_text_encoder(out_dir):
    """A random-init RoBERTa (the mini recipe's tiny config, 2 layers) saved with a BPE
    tokenizer in one directory, as a local MiniLM would be."""
    build_bpe_tokenizer([t for texts in MELD_TEXTS.values() for t in texts] * 4, str(out_dir), vocab_size=300)
    config = AutoConfig.from_pretrained(os.path.join(MINI_CONF, "roberta_tiny"))
    AutoModel.from_config(config).save_pretrained(out_dir)
    return str(out_dir)


def test_meld_cpu_results_frozen_then_fine_tuned(tmp_path):
    corpus = tmp_path / "MELD.Raw"  # the CSVs only: the runs are text only
    corpus.mkdir()
    for split in ("train", "dev", "test"):
        write_csv(corpus / f"{split}_sent_emo.csv", split_rows(split))
    minilm = build_tiny_text_encoder(tmp_path / "minilm")
    options = [
        "--minilm",
        minilm,
        "--seeds",
        "1",
        "--data_dir",
        str(tmp_path / "data"),
        "--data_opts",
        "--check_counts false",
        "--settings",
        "ce_only mlcs",
        "--extra_opts",
        "--number_of_epochs=1 --batch_size=4",
    ]
    results = tmp_path / "RESULTS.md"
    env = {"MELD": str(corpus), "CRAB_RESULTS_MD": str(results)}
    frozen, tuned = tmp_path / "frozen", tmp_path / "tuned"
    output = run_script("meld", *options, "--exp_dir", str(frozen), env=env).stdout

    assert re.search(r"^\| official( \| [01]\.\d{3}){3} \|$", output, re.MULTILINE)  # 3 hidden states
    assert (frozen / "features_all_layers" / "index.json").is_file()
    assert ablation_rows(frozen / "ablations_test.md") == {
        "minilm_frozen_ce_only": 1,
        "minilm_frozen_mlcs": 1,
    }
    settings = run_settings(frozen / "minilm_frozen_mlcs" / "official" / "seed1")
    assert (settings["freeze_text_encoder"], settings["layer_weighting"]) == (True, "weighted_sum")
    assert settings["feature_cache"] == str(frozen / "features_all_layers")
    assert (settings["text_encoder_source"], settings["number_of_epochs"]) == (minilm, 1)  # over the tuning's
    assert (
        settings["leg_names"] != []
        and run_settings(frozen / "minilm_frozen_ce_only" / "official" / "seed1")["leg_names"] == []
    )

    # Fine-tuned, on the data of the first run: no cache, the encoder trains.
    run_script("meld", *options, "--exp_dir", str(tuned), "--finetune", "true", "--stage", "5", env=env)
    assert ablation_rows(tuned / "ablations_test.md") == {"minilm_ft_ce_only": 1, "minilm_ft_mlcs": 1}
    settings = run_settings(tuned / "minilm_ft_mlcs" / "official" / "seed1")
    assert (settings["freeze_text_encoder"], settings["feature_cache"]) == (False, None)
    assert (settings["layer_weighting"], settings["number_of_epochs"]) == ("last", 1)
    assert not list(tuned.glob("features*"))

    # Seeds trained at the same time: a failed one stops the script before the scoring.
    before = results.read_text()
    failed = run_script(
        "meld",
        *options,
        "--exp_dir",
        str(tuned),
        "--finetune",
        "true",
        "--stage",
        "5",
        "--parallel",
        "true",
        "--seeds",
        "1 2",
        "--extra_opts",
        "--number_of_epochs=1 --no_such_key=1",
        env=env,
        status=1,
    )
    assert f"2 job(s) failed, see the end of: {tuned}/seed1.log {tuned}/seed2.log" in failed.stderr
    assert "no_such_key" in (tuned / "seed2.log").read_text() and results.read_text() == before

    # RESULTS.md: an entry per setting, newest first, each naming its tuning file.
    headings = [line for line in results.read_text().splitlines() if line.startswith("## ")]
    assert [h.split(" UTC: ")[1] for h in headings] == [
        "minilm_ft_mlcs on test",
        "minilm_ft_ce_only on test",
        "minilm_frozen_mlcs on test",
        "minilm_frozen_ce_only on test",
    ]
    for name in ("minilm_ft_mlcs", "minilm_frozen_ce_only"):
        assert f"- tuning: `conf/tuning/{name}.yaml`: " in results.read_text()
