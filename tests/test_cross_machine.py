"""A run trained on one machine, evaluated, resumed or packaged on another: a CPU-only one after
a GPU (mixed precision), or with other library versions."""

import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
from unittest import mock

import pytest
import speechbrain as sb
import torch
import yaml

from crab.brain import optimizer_batch_change
from crab.checkpointing import Checkpointer, RandomState, library_versions
from crab.experiment import make_brain, parse_and_load, prepare_labels_and_weights
from crab.inference import CrabClassifier
from crab.runconfig import write_run_hparams
from tests.conftest import ROOT, write_tone_corpus
from tests.test_brain import corpus_options
from tests.test_run_config import in_recipe  # egs/TEMPLATE, where the config's relative paths lead

RECIPE = os.path.join(ROOT, "egs", "TEMPLATE")
CONFIG = os.path.join(RECIPE, "conf", "crab_tiny.yaml")
CLASSES = ["angry", "happy", "neutral", "sad"]


def options(root, run_dir):
    data = root / "data"
    return [
        *corpus_options(root / "corpus", run_dir, data),
        "--batch_size=4",
        "--number_of_epochs=1",
    ]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run's record and its checkpoint of epoch 1 (untrained weights), as training leaves them."""
    root = tmp_path_factory.mktemp("cross_machine")
    (root / "corpus").mkdir()
    (root / "data").mkdir()
    write_tone_corpus(root / "corpus", root / "data", {"train": 2, "valid": 1, "test": 1}, CLASSES)
    run_dir = root / "exp" / "seed42"

    def save():
        hparams_file, run_opts, overrides, hparams = parse_and_load(
            [CONFIG, *options(root, run_dir), "--device=cpu"]
        )
        os.makedirs(hparams["save_folder"], exist_ok=True)
        write_run_hparams(hparams_file, overrides, str(run_dir))
        prepare_labels_and_weights(hparams)
        hparams["epoch_counter"].current = 1
        make_brain(hparams, run_opts).checkpointer.save_checkpoint(meta={"UAR": 0.5, "epoch": 1})

    in_recipe(save)
    return root, run_dir


def crab_command(module, *args):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=ROOT)
    command = [sys.executable, "-m", module, CONFIG, *args]
    return subprocess.run(command, cwd=RECIPE, env=env, capture_output=True, text=True, timeout=300)


def as_saved_on_a_gpu(run_dir):
    """Rewrite the torch files of the run's checkpoints as a run on a GPU writes them: every
    tensor tagged cuda:0 (the random state aside: torch gives the CUDA generator's on the CPU)."""
    for path in run_dir.glob("save/CKPT+*/*.ckpt"):
        if path.stem in ("model", "legs", "wce"):
            state = torch.load(path, weights_only=True)
            with mock.patch.object(torch.serialization, "location_tag", lambda storage: "cuda:0"):
                torch.save(state, path)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(next(run_dir.glob("save/CKPT+*/model.ckpt")), weights_only=True)


def test_a_run_trained_in_fp16_on_a_gpu_evaluates_on_a_cpu_with_its_training_options(run, tmp_path):
    """The recipe gives every stage the run's --train_opts: --precision=fp16, training's, which
    evaluation does not use (it runs in --eval_precision), stopped stage 6 on a CPU with
    SpeechBrain's traceback ("fp16 ... not yet supported on CPU")."""
    root, trained = run
    run_dir = tmp_path / "seed42"
    shutil.copytree(trained, run_dir, ignore=shutil.ignore_patterns("eval_*"))
    as_saved_on_a_gpu(run_dir)
    test = root / "data" / "test.json"
    args = [*options(root, run_dir), f"--test_manifest={test}", "--eval_name=test", "--device=cpu"]
    evaluated = crab_command("crab.bin.evaluate", *args, "--precision=fp16")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "--precision=fp16 is training's: evaluation runs in --eval_precision=fp32" in evaluated.stdout
    assert len((run_dir / "eval_test" / "predictions.csv").read_text().splitlines()) == 1 + len(CLASSES)
    # an evaluation precision the CPU cannot run is one line, no traceback
    refused = crab_command("crab.bin.evaluate", *args, "--eval_precision=fp16")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
    assert refused.stderr.strip().splitlines()[-1] == (
        "ERROR: --eval_precision=fp16: fp16 autocast needs a CUDA device, and this runs on cpu: "
        "give --eval_precision=bf16 or fp32"
    )


def test_resuming_an_fp16_run_on_a_cpu_is_one_line_before_anything_is_written(run):
    root, run_dir = run
    record = (run_dir / "hyperparams.yaml").read_text()
    args = [*options(root, run_dir), "--number_of_epochs=2", "--device=cpu", "--precision=fp16"]
    refused = crab_command("crab.bin.train", *args)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
    assert (
        refused.stderr.strip()
        .splitlines()[-1]
        .startswith(
            "ERROR: --precision=fp16: fp16 autocast needs a CUDA device, and this runs on cpu: "
            "give --precision=bf16 or fp32 (a run trained in fp16 resumes in either"
        )
    )
    assert (run_dir / "hyperparams.yaml").read_text() == record
    assert len(list((run_dir / "save").glob("CKPT+*"))) == 1


def test_a_gpu_that_is_not_here_is_one_line_before_anything_is_written(run, tmp_path):
    """A recipe's --ngpu 1 (--device=cuda:0) on a machine where torch sees no GPU stopped inside
    torch with a traceback (a CPU-only torch: "module 'torch._C' has no attribute
    '_cuda_setDevice'"). cuda:99: past the last GPU on a machine with GPUs, none here."""
    root, trained = run
    run_dir = tmp_path / "seed42"
    shutil.copytree(trained, run_dir)
    record = (run_dir / "hyperparams.yaml").read_text()
    test = root / "data" / "test.json"
    resumed = [*options(root, run_dir), "--number_of_epochs=2", "--device=cuda:99"]
    evaluated = [*options(root, run_dir), f"--test_manifest={test}", "--eval_name=test", "--device=cuda:99"]
    extracted = [*options(root, run_dir), f"--feature_cache={tmp_path / 'cache'}", "--device=cuda:99"]
    commands = (("crab.bin.train", resumed), ("crab.bin.evaluate", evaluated))
    for module, args in (*commands, ("crab.bin.extract_features", extracted)):
        refused = crab_command(module, *args)
        assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
        last = refused.stderr.strip().splitlines()[-1]
        assert last.startswith("ERROR: --device=cuda:99: ") and last.endswith(
            "; give --device=cpu (a recipe: --ngpu 0), or run it where the GPU is"
        )
    assert (run_dir / "hyperparams.yaml").read_text() == record
    assert not (run_dir / "eval_test").exists() and not (tmp_path / "cache").exists()
    assert len(list((run_dir / "save").glob("CKPT+*"))) == 1


@pytest.mark.parametrize("cut", ["half", "empty"])
def test_a_checkpoint_cut_short_is_one_line_naming_its_file(run, tmp_path, cut):
    """A checkpoint file cut short (a copy that stopped, a full disk outside the training): resuming
    and evaluating stopped with a traceback from inside torch that named no file, and the resume
    had already recorded its --number_of_epochs in the run's hyperparams.yaml."""
    root, trained = run
    run_dir = tmp_path / "seed42"
    shutil.copytree(trained, run_dir)
    [model] = run_dir.glob("save/CKPT+*/model.ckpt")
    with open(model, "r+b") as f:
        f.truncate(model.stat().st_size // 2 if cut == "half" else 0)
    record = (run_dir / "hyperparams.yaml").read_text()
    test = root / "data" / "test.json"
    resumed = [*options(root, run_dir), "--device=cpu"]
    evaluated = [*resumed, f"--test_manifest={test}", "--eval_name=test"]
    for module, args in (
        ("crab.bin.train", [*resumed, "--number_of_epochs=2"]),  # another count: not recorded
        ("crab.bin.evaluate", evaluated),
    ):
        refused = crab_command(module, *args)
        assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
        last = refused.stderr.strip().splitlines()[-1]
        why = "empty" if cut == "empty" else "BadZipFile: File is not a zip file"
        assert last == (
            f"ERROR: {model.parent} cannot be loaded: {model} ({why}): cut short or damaged. Move that "
            "folder out of save/ (the run then resumes, or is evaluated, from the checkpoint kept before "
            "it, if any), or train the run again"
        ), last
    assert (run_dir / "hyperparams.yaml").read_text() == record
    assert not list((run_dir / "eval_test").glob("predictions*"))


def test_evaluating_a_run_before_its_training_saved_a_checkpoint_names_the_training(run, tmp_path):
    root, trained = run
    run_dir = tmp_path / "seed42"
    shutil.copytree(trained, run_dir)
    for checkpoint in run_dir.glob("save/CKPT+*"):
        shutil.rmtree(checkpoint)
    test = root / "data" / "test.json"
    evaluated = [*options(root, run_dir), f"--test_manifest={test}", "--eval_name=test", "--device=cpu"]
    refused = crab_command("crab.bin.evaluate", *evaluated)
    assert refused.stderr.strip().splitlines()[-1].endswith(": train first.")
    since = "since 2026-01-01 00:00:00 +0000"
    line = f"pid {os.getpid()} on {socket.gethostname()} {since}: python -m crab.bin.train"
    (run_dir / ".lock").write_text(line + "\n")  # this test's process, which runs: as a training would
    refused = crab_command("crab.bin.evaluate", *evaluated)
    assert refused.returncode == 1 and refused.stderr.strip().splitlines()[-1] == (
        f"No checkpoint with UAR in {run_dir / 'save'}: its training is running ({line}): evaluate it once "
        "that has ended."
    )


def test_a_cuda_device_on_a_cpu_only_torch_says_so(monkeypatch):
    from crab.experiment import check_device
    from crab.runconfig import ConfigError, parse_arguments

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _, run_opts, _ = parse_arguments(["hparams.yaml", "--device=cuda:0"])
    for build, note in (("12.8", ""), (None, " (this torch is a CPU-only build)")):
        monkeypatch.setattr(torch.version, "cuda", build)
        with pytest.raises(
            ConfigError, match=re.escape(f"--device=cuda:0: no CUDA GPU is available{note}; give")
        ):
            check_device(run_opts, {})
    _, run_opts, _ = parse_arguments(["hparams.yaml", "--device=cpu"])
    check_device(run_opts, {})


TOO_OLD = (
    "The NVIDIA driver on your system is too old (found version 12020). Please update your GPU driver "
    "by downloading and installing a new version from the URL: http://www.nvidia.com/Download/index.aspx"
)


def test_a_gpu_torch_cannot_use_names_torchs_reason(monkeypatch):
    """A CUDA torch on a machine whose driver is older than its CUDA sees no GPU: saying only "no
    CUDA GPU is available" on a GPU machine points nowhere; torch's own first sentence does."""
    from crab.devices import cuda_problem, gpu_use
    from crab.experiment import check_device
    from crab.runconfig import ConfigError, parse_arguments

    def init():
        raise RuntimeError(TOO_OLD)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "init", init)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    reason = (
        "no CUDA GPU is available (torch: The NVIDIA driver on your system is too old (found version 12020))"
    )
    assert cuda_problem("cuda:0") == reason
    _, run_opts, _ = parse_arguments(["hparams.yaml", "--device=cuda:0"])
    with pytest.raises(ConfigError, match=re.escape(f"--device=cuda:0: {reason}; give --device=cpu")):
        check_device(run_opts, {})
    assert gpu_use() == (
        f"WARNING: torch {torch.__version__} (built for CUDA 13.0) cannot use the NVIDIA GPU here: "
        f"{reason}; install a torch built for the NVIDIA driver here into tools/venv (PyTorch's "
        "install page gives the pip command), then run tools/install.sh --torch keep"
    )
    monkeypatch.setattr(torch.version, "cuda", None)  # a CPU build kept where there is a GPU
    assert gpu_use().endswith(
        "(a CPU-only build) cannot use the NVIDIA GPU here: no CUDA GPU is available; "
        "tools/install.sh --torch cuda installs the CUDA build"
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: f"NVIDIA H200 #{index}")
    assert gpu_use() == f"torch {torch.__version__} uses the GPU(s): NVIDIA H200 #0, NVIDIA H200 #1"


def test_one_cuda_device_for_several_processes_of_a_node_is_refused(monkeypatch):
    """torchrun's processes of a node given the same --device would all train on one GPU (NCCL
    refuses it once the model is built); without one, each takes cuda:LOCAL_RANK."""
    from crab.experiment import check_device
    from crab.runconfig import ConfigError, parse_arguments

    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    for device in ("cuda:0", "cuda"):
        _, run_opts, _ = parse_arguments(["hparams.yaml", f"--device={device}"])
        with pytest.raises(
            ConfigError,
            match=re.escape(f"--device={device}: all 4 processes of this node would train on it;"),
        ):
            check_device(run_opts, {})
    _, run_opts, _ = parse_arguments(["hparams.yaml", "--device=cpu"])  # gloo on the CPU
    check_device(run_opts, {})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    # without one, the process of LOCAL_RANK 3 takes cuda:3 (SpeechBrain), not on a 2-GPU machine
    monkeypatch.setattr(sb.utils.distributed, "infer_device", lambda: "cuda:3")
    _, run_opts, _ = parse_arguments(["hparams.yaml"])
    with pytest.raises(ConfigError) as refused:
        check_device(run_opts, {})
    assert str(refused.value) == (
        "cuda:3: 4 processes on this node (run.sh --ngpu, torchrun's --nproc_per_node), a GPU each, and "
        "there are 2 CUDA GPU(s) here (cuda:0 to cuda:1): ask for at most 2"
    )
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")  # one process may take a GPU of its choice
    _, run_opts, _ = parse_arguments(["hparams.yaml", "--device=cuda:1"])
    check_device(run_opts, {})


def test_a_checkpoint_records_its_library_versions_and_loading_it_under_others_warns(tmp_path, caplog):
    """A run evaluated or resumed after an upgrade (another transformers release) is told so, with
    both versions; another build of the same release (torch +cu124 then, +cpu now) is not."""
    model = torch.nn.Linear(2, 2)
    saved = Checkpointer(tmp_path, {"model": model}).save_checkpoint(meta={"UAR": 0.5})
    assert saved.meta["versions"] == library_versions()
    now = library_versions()
    torch_build = re.match(r"\d+\.\d+", now["torch"]).group() + ".99+cu124"
    meta_file = saved.path / "CKPT.yaml"
    meta = yaml.safe_load(meta_file.read_text())
    meta["versions"] = {**now, "transformers": "4.57.1", "torch": torch_build}
    meta_file.write_text(yaml.safe_dump(meta))
    with caplog.at_level("WARNING", logger="crab.checkpointing"):
        loader = Checkpointer(tmp_path, {"model": model})
        loader.load_checkpoint(loader.find_checkpoint())
    assert f"was saved with other library releases (transformers 4.57.1 then, {now['transformers']} now)" in (
        caplog.text
    )
    assert "torch" not in caplog.text.partition("releases")[2].partition(")")[0]


def test_packaging_and_loading_a_package_under_other_library_releases_warn(run, tmp_path, caplog):
    """Packaging names the releases the checkpoint was trained with (metadata.json's training
    versions, beside packaging's own), and loading the package under other releases warns."""
    root, trained = run
    run_dir = tmp_path / "seed42"
    shutil.copytree(trained, run_dir, ignore=shutil.ignore_patterns("eval_*"))
    (meta_file,) = run_dir.glob("save/CKPT+*/CKPT.yaml")
    meta = yaml.safe_load(meta_file.read_text())
    meta["versions"] = {**meta["versions"], "transformers": "4.57.1"}
    meta_file.write_text(yaml.safe_dump(meta))
    packaged = crab_command("crab.bin.package", *options(root, run_dir), "--out", str(tmp_path / "model"))
    assert packaged.returncode == 0, packaged.stderr[-3000:]
    assert "was saved with other library releases (transformers 4.57.1 then" in packaged.stderr
    metadata_file = tmp_path / "model" / "metadata.json"
    metadata = json.loads(metadata_file.read_text())
    assert metadata["training"]["versions"]["transformers"] == "4.57.1"
    assert metadata["versions"]["transformers"] == library_versions()["transformers"]
    metadata["versions"]["speechbrain"] = "0.5.16"  # not a file the record checks
    metadata_file.write_text(json.dumps(metadata))
    with caplog.at_level("WARNING", logger="crab.checkpointing"):
        classifier = CrabClassifier.from_hparams(source=str(tmp_path / "model"))
    assert classifier.classes == CLASSES
    assert "model was packaged with other library releases (speechbrain 0.5.16 then" in caplog.text


@pytest.mark.slow
def test_resuming_with_another_optimizer_batch_warns_with_the_accumulation_that_keeps_it(run, tmp_path):
    """A run resumed on a node with other GPUs (another number of DDP processes), or with another
    --grad_accumulation_factor (a run option, which a resumed run may change), took optimizer
    steps over another number of utterances without a word; now a warning says how many."""
    root, _ = run
    run_dir = tmp_path / "seed42"
    first = crab_command("crab.bin.train", *options(root, run_dir), "--device=cpu", "--noprogressbar")
    assert first.returncode == 0, first.stderr[-3000:]
    args = [*options(root, run_dir), "--number_of_epochs=2", "--device=cpu", "--noprogressbar"]
    resumed = crab_command("crab.bin.train", *args, "--grad_accumulation_factor=2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (
        "Resuming a checkpoint trained with optimizer steps over 1 process(es) x accumulation 1 batches, "
        "now over 1 x 2: each step averages 2 times as many utterances as before; "
        "--grad_accumulation_factor=1 keeps it"
    ) in resumed.stdout
    assert (run_dir / "train_log.txt").read_text().count("epoch: ") == 2


def test_the_accumulation_that_keeps_the_optimizer_batch_on_other_processes():
    four_gpus = {"processes": 4, "grad_accumulation_factor": 4}
    assert optimizer_batch_change(four_gpus, 4, 4) is None
    assert optimizer_batch_change(four_gpus, 8, 2) is None  # the same 32 batches a step
    assert optimizer_batch_change(four_gpus, 2, 4).endswith(
        "now over 2 x 4: each step averages 0.5 times as many utterances as before; "
        "--grad_accumulation_factor=8 keeps it (the recipe: in --train_opts)"
    )
    assert optimizer_batch_change(four_gpus, 3, 4).endswith(
        "no --grad_accumulation_factor keeps it on 3 process(es)"
    )


def test_a_gpu_runs_random_state_loads_on_a_cpu_without_a_warning(tmp_path, monkeypatch, caplog):
    """A checkpoint of a GPU run holds the CUDA generator's state (a CPU tensor, as torch gives it),
    which nothing draws from on a CPU: evaluating the run on a laptop warned that it was "not
    restored", as if something had gone wrong."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    path = tmp_path / "random_state.ckpt"
    torch.manual_seed(0)
    RandomState()._save(path)
    expected = torch.rand(3)
    state = torch.load(path, weights_only=True)
    torch.save({**state, "cuda": torch.zeros(16, dtype=torch.uint8)}, path)
    torch.manual_seed(1)
    with caplog.at_level("INFO", logger="crab.checkpointing"):
        RandomState()._recover(path, end_of_epoch=True)
    assert torch.equal(torch.rand(3), expected)  # the CPU generator is the checkpoint's
    assert "CUDA random state is not restored: no CUDA device here" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_another_minor_release_warns_and_another_patch_release_does_not(monkeypatch, caplog):
    from crab import checkpointing

    monkeypatch.setattr(
        checkpointing, "library_versions", lambda: {"torch": "2.6.1+cpu", "transformers": "4.57.0"}
    )
    with caplog.at_level("WARNING", logger="crab.checkpointing"):
        checkpointing.warn_version_drift({"torch": "2.6.0+cu124", "transformers": "4.57.3"}, "x")
        assert not caplog.text
        checkpointing.warn_version_drift({"torch": "2.5.1", "transformers": "4.57.3"}, "x")
    assert "x with other library releases (torch 2.5.1 then, 2.6.1+cpu now)" in caplog.text


@pytest.mark.parametrize(("capability", "warned"), [((7, 0), True), ((8, 0), False)])
def test_bf16_on_a_gpu_without_bf16_tensor_cores_is_a_warning(monkeypatch, caplog, capability, warned):
    """A V100 or T4 (compute capability 7.x) runs bf16 autocast without tensor cores: slower than
    fp16, and nothing said so. Training, evaluation and crab-infer warn; an A100 (8.0) is quiet."""
    from crab.batch_inference import resolve_device
    from crab.experiment import check_precision
    from crab.runconfig import parse_arguments

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "Tesla V100-SXM2-16GB")
    monkeypatch.setattr(torch.version, "hip", None)
    for opts in (["--precision=bf16"], ["--eval_precision=bf16"], ["--precision=fp32"]):
        caplog.clear()
        _, run_opts, _ = parse_arguments(["hparams.yaml", "--device=cuda:0", *opts])
        check_precision(run_opts, {})
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        expected = warned and opts != ["--precision=fp32"]
        assert warnings == (
            [
                f"{opts[0]}: Tesla V100-SXM2-16GB (compute capability 7.0) has no bf16 tensor cores (they "
                "came with 8.0, Ampere): bf16 autocast runs without them, slower than fp16; fp16 (with "
                "its gradient scaler) is this GPU's mixed precision"
            ]
            if expected
            else []
        )
    caplog.clear()
    assert resolve_device("cuda", "bf16") == "cuda:0"
    assert [r.getMessage().split(":")[0] for r in caplog.records] == (["--precision bf16"] if warned else [])
