"""What a package says of its run: metadata.json keeps the checkpoint's epoch and training time
apart from its validation scores, no file names the training machine's folders, and the
custom_interface.py of foreign_class loads a package only where it is whole."""

import contextlib
import io
import json
import logging
import os
import re
import shutil
from types import SimpleNamespace
from unittest import mock

import pytest
import torch
from speechbrain.inference.interfaces import foreign_class
from speechbrain.utils.fetching import LocalStrategy

from crab.bin import package as package_cli
from crab.experiment import parse_and_load, prepare_labels_and_weights
from crab.inference import CrabClassifier, ModelFileError
from crab.packaging import class_weights, portable
from tests import test_inference
from tests.conftest import ROOT
from tests.test_infer_paths import hf_snapshot
from tests.test_inference import CONFIG, in_template, overrides, save_run_config

# the fixture of test_inference, found by pytest under the same name (see test_model_security)
data = test_inference.data

SCORES = {"WAR": 0.5, "UAR": 0.475, "macro_F1": 0.3, "weighted_F1": 0.31}


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    """A run's checkpoint at epoch 3 (untrained weights), trained on the transcripts of an ASR
    model in a local folder, packaged by crab.bin.package; what it printed, the checkpoint's
    training time (the checkpointer records it)."""
    tmp = tmp_path_factory.mktemp("metadata_run")
    run_dir = tmp / "exp" / "crab_tiny" / "main" / "seed42"
    asr_model = tmp / "models" / "whisper-local"

    def save_checkpoint():
        _, _, applied, hparams = parse_and_load([CONFIG, *overrides(data, run_dir)])
        os.makedirs(hparams["save_folder"], exist_ok=True)
        save_run_config(CONFIG, applied, run_dir)
        prepare_labels_and_weights(hparams)
        hparams["epoch_counter"].current = 3
        return hparams["checkpointer"].save_checkpoint(meta={**SCORES, "epoch": 3}).meta["train_s"]

    train_s = in_template(save_checkpoint)
    argv = [CONFIG, *overrides(data, run_dir), "--text_source", "asr", "--asr_model", str(asr_model)]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        in_template(package_cli.main, [*argv, "--out", str(run_dir / "model")])
    return run_dir / "model", printed.getvalue(), train_s


def test_the_epoch_and_training_time_are_not_scores(run):
    model_dir, printed, train_s = run
    training = json.loads((model_dir / "metadata.json").read_text())["training"]
    assert training["valid_scores"] == SCORES
    assert (training["epoch"], training["train_s"]) == (3, train_s) and train_s is not None
    assert printed.endswith(
        f"checkpoint of epoch 3, {train_s:.0f} s of training "
        "(valid WAR 0.5000, UAR 0.4750, macro_F1 0.3000, weighted_F1 0.3100)\n"
    )
    assert "| checkpoint | epoch 3, best validation UAR |" in (model_dir / "README.md").read_text()


def test_no_file_names_the_training_machines_folders(run, data, tmp_path_factory):
    model_dir = run[0]
    trainer = (str(tmp_path_factory.getbasetemp()), ROOT)  # the run, the data, the recipe
    for base, _, names in os.walk(model_dir):
        for name in names:
            content = (model_dir / base / name).read_bytes()
            assert not any(folder.encode() in content for folder in trainer), os.path.join(base, name)
    training = json.loads((model_dir / "metadata.json").read_text())["training"]
    assert training["output_folder"] == ".../crab_tiny/main/seed42"
    assert training["checkpoint"].startswith("CKPT+") and training["hparams_file"] == "train_hyperparams.yaml"
    assert training["asr_model"] == ".../whisper-local"
    assert f"--data_root=.../{data.name}" in training["arguments"]  # inference_data<N>
    assert "from the run `crab_tiny/main/seed42`" in (model_dir / "README.md").read_text()
    assert f"data_root: .../{data.name}\n" in (model_dir / "train_hyperparams.yaml").read_text()
    assert CrabClassifier.from_hparams(source=str(model_dir)).classes == test_inference.CLASSES


def test_a_gpu_trained_checkpoint_is_packaged_with_cpu_tensors(run, data, tmp_path):
    """The checkpoint of a run trained on a GPU tags its tensors cuda:0 (stood in for here); the
    package's model.ckpt holds the same weights on the CPU, so a plain ``torch.load`` (a user's
    own code) reads it on a machine without a GPU."""
    run_dir = tmp_path / "exp" / "crab_tiny" / "main" / "seed42"
    shutil.copytree(run[0].parent, run_dir, ignore=shutil.ignore_patterns("model"))
    (ckpt,) = run_dir.glob("save/CKPT+*/model.ckpt")
    weights = torch.load(ckpt, weights_only=True)
    with mock.patch.object(torch.serialization, "location_tag", lambda storage: "cuda:0"):
        torch.save(weights, ckpt)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(ckpt, weights_only=True)
    argv = [CONFIG, *overrides(data, run_dir), "--out", str(run_dir / "model")]
    with contextlib.redirect_stdout(io.StringIO()):
        in_template(package_cli.main, argv)
    packaged = torch.load(run_dir / "model" / "model.ckpt", weights_only=True)
    assert packaged.keys() == weights.keys()
    assert all(packaged[k].device.type == "cpu" and torch.equal(packaged[k], weights[k]) for k in weights)
    assert CrabClassifier.from_hparams(source=str(run_dir / "model")).classes == test_inference.CLASSES


def test_a_run_whose_label_order_is_not_its_classes_is_refused(run, data, tmp_path):
    """The run's saved label encoder is the model's output order: one that disagrees with the
    run's classes stops packaging, naming it, rather than labelling the outputs in another order."""
    run_dir = tmp_path / "exp" / "crab_tiny" / "main" / "seed42"
    shutil.copytree(run[0].parent, run_dir, ignore=shutil.ignore_patterns("model"))
    encoder = run_dir / "save" / "label_encoder.txt"
    first, second = test_inference.CLASSES[:2]
    swapped = {f"'{first}' =>": f"'{second}' =>", f"'{second}' =>": f"'{first}' =>"}
    text = encoder.read_text()
    encoder.write_text(re.sub("|".join(map(re.escape, swapped)), lambda m: swapped[m.group()], text))
    argv = [CONFIG, *overrides(data, run_dir), "--out", str(run_dir / "model")]
    with pytest.raises(SystemExit, match=f"{re.escape(str(encoder))} holds labels \\['{second}', '{first}'"):
        in_template(package_cli.main, argv)
    assert not (run_dir / "model").exists()


def test_each_class_keeps_its_own_weight_and_count(tmp_path):
    """class_weights.json pairs each class with its own weight (wce.ckpt, in the classes' order)
    and training count (the run's class_weights.json), or the run's weight without a wce.ckpt."""
    torch.save({"weight": torch.tensor([1.0, 2.0, 4.0])}, tmp_path / "wce.ckpt")
    counts = {"ang": {"count": 8, "weight": 0.5}, "hap": {"count": 4, "weight": 0.25}, "sad": {"count": 2}}
    (tmp_path / "class_weights.json").write_text(json.dumps(counts))
    hparams, classes = {"save_folder": str(tmp_path)}, ["ang", "hap", "sad"]
    checkpoint = SimpleNamespace(paramfiles={"wce": str(tmp_path / "wce.ckpt")})
    assert class_weights(hparams, checkpoint, classes) == {
        "ang": {"count": 8, "weight": 1.0},
        "hap": {"count": 4, "weight": 2.0},
        "sad": {"count": 2, "weight": 4.0},
    }
    assert class_weights(hparams, SimpleNamespace(paramfiles={}), classes) == {
        "ang": {"count": 8, "weight": 0.5},
        "hap": {"count": 4, "weight": 0.25},
        "sad": {"count": 2, "weight": None},
    }


def test_portable_keeps_names_and_urls():
    run = "/home/someone/recipe/exp/crab/session1/seed42"
    text = (
        f"output_folder: {run}  # exp/<tag>/<fold>/seed<seed>, {{data_root}}/wav\n"
        f"save_folder: {run}/save\nother: {run}0/x\nsource: https://huggingface.co/a/b\n"
        "lr: 1.0e-4  # lr / 10\nlist: [/data/corpus, '/opt/models/wavlm-large']\n"
    )
    assert portable(text, run) == (
        "output_folder: .../crab/session1/seed42  # exp/<tag>/<fold>/seed<seed>, {data_root}/wav\n"
        "save_folder: .../crab/session1/seed42/save\nother: .../x\nsource: https://huggingface.co/a/b\n"
        "lr: 1.0e-4  # lr / 10\nlist: [.../corpus, '.../wavlm-large']\n"
    )


def test_portable_names_no_folder_of_a_path_with_spaces():
    run = "/home/Jane Doe/my recipe/exp/crab/main/seed42"
    text = (
        "# Generated from:\n# /home/Jane Doe/my recipe/conf/crab.yaml\n"
        "data_root: /home/Jane Doe/my  corpus/wav files\nsource: /opt/my models/wavlm  # local\n"
    )
    assert portable(text, run) == (
        "# Generated from:\n# .../crab.yaml\ndata_root: .../wav files\nsource: .../wavlm  # local\n"
    )
    arguments = ["--data_root=/home/Jane Doe/corpus", f"--output_folder={run}"]
    assert portable(arguments, run) == ["--data_root=.../corpus", "--output_folder=.../crab/main/seed42"]
    # two paths, or a path and options, on one line: each path on its own, the words between kept
    assert portable("cmd: python /a/train.py /a/hp.yaml --seed 1\n", run) == (
        "cmd: python .../train.py .../hp.yaml --seed 1\n"
    )
    assert portable("a: /x/y <- copied from /z/w\n", run) == "a: .../y <- copied from .../w\n"


def test_foreign_class_needs_the_whole_package_where_it_is(run, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(run[0], model)
    savedir = tmp_path / "save"
    with pytest.raises(
        ModelFileError, match=f"{savedir}/metadata.json is missing: the package's record"
    ) as err:
        foreign_class(
            source=str(model),
            pymodule_file="custom_interface.py",
            classname="CrabClassifier",
            savedir=str(savedir),
            local_strategy=LocalStrategy.COPY,
        )
    built = set(os.listdir(savedir)) - {"__pycache__"}  # Python's bytecode of the imported module
    assert "\n" not in str(err.value) and built == {"custom_interface.py"}  # nothing built

    linked = foreign_class(
        source=str(model),
        pymodule_file="custom_interface.py",
        classname="CrabClassifier",
        savedir=str(tmp_path / "linked"),
        local_strategy=LocalStrategy.SYMLINK,
    )
    assert linked.classes == test_inference.CLASSES

    (model / "metadata.json").unlink()  # its record is what checks the other files
    with pytest.raises(ModelFileError, match=f"{model}/metadata.json is missing"):
        foreign_class(source=str(model), pymodule_file="custom_interface.py", classname="CrabClassifier")


@pytest.mark.parametrize("strategy", [LocalStrategy.COPY, LocalStrategy.SYMLINK], ids=lambda s: s.name)
def test_a_savedir_is_a_whole_package_that_loads_again(strategy, run, tmp_path):
    savedir = tmp_path / "save"
    loaded = CrabClassifier.from_hparams(source=str(run[0]), savedir=str(savedir), local_strategy=strategy)
    assert sorted(os.listdir(savedir)) == sorted(n for n in os.listdir(run[0]) if n != "__pycache__")
    again = CrabClassifier.from_hparams(source=str(savedir))  # checked as a package: metadata.json there
    assert again.classes == loaded.classes == test_inference.CLASSES


def test_foreign_class_loads_a_hub_cache_snapshot(run, tmp_path):
    snapshot = hf_snapshot(run[0], tmp_path / "models--me--crab")  # every file a link into blobs/
    loaded = foreign_class(
        source=str(snapshot), pymodule_file="custom_interface.py", classname="CrabClassifier"
    )
    assert loaded.classes == test_inference.CLASSES


def test_a_package_without_its_metadata_is_refused_unless_put_together_by_hand(run, tmp_path, caplog):
    model = tmp_path / "model"
    shutil.copytree(run[0], model)
    (model / "metadata.json").unlink()
    with pytest.raises(
        ModelFileError, match=f"{model}/metadata.json is missing: crab.bin.package wrote"
    ) as err:
        CrabClassifier.from_hparams(source=str(model))
    assert "\n" not in str(err.value)
    yaml = model / "hyperparams.yaml"  # a yaml of one's own: the package's with another first line
    yaml.write_text("# my model\n" + yaml.read_text().split("\n", 1)[1])
    with caplog.at_level(logging.WARNING, logger="crab.inference"):
        assert CrabClassifier.from_hparams(source=str(model)).classes == test_inference.CLASSES
    assert f"{model} has no metadata.json: its files are not checked" in caplog.text
