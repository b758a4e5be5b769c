"""CrabBrain: optimizer groups, cosine schedule, accumulation, best checkpoint, evaluation."""

import json
import math
import os
import re

import pytest
import soundfile as sf
import torch
import yaml

from crab.brain import CrabBrain
from crab.data import DataError
from crab.experiment import (
    batches_per_epoch,
    check_accumulation,
    dataset,
    make_brain,
    optimizer_batch,
    parse_and_load,
    prepare_labels_and_weights,
)
from tests.conftest import ROOT, write_tone_corpus

CONFIG = os.path.join(ROOT, "egs", "TEMPLATE", "conf", "crab_tiny.yaml")
CLASSES = ["angry", "happy", "neutral", "sad"]


def corpus_options(data_root, out, folder=None):
    """The options that point a run at a tone corpus (audio under ``data_root``, manifests
    in ``folder``, by default the same) with ``CLASSES``, and at its output folder ``out``."""
    return [
        f"--data_root={data_root}",
        f"--data_folder={folder or data_root}",
        f"--output_folder={out}",
        f"--classes=[{','.join(CLASSES)}]",
    ]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """12 training utterances (3 per class), 4 validation, 4 test; manifests and tokenizer."""
    root = tmp_path_factory.mktemp("brain_data")
    write_tone_corpus(root, root, {"train": 3, "valid": 1, "test": 1}, CLASSES)
    return root


def load(data, out, *overrides):
    argv = [
        CONFIG,
        *corpus_options(data, out),
        "--batch_size=2",
        *overrides,
    ]
    os.chdir(os.path.join(ROOT, "egs", "TEMPLATE"))  # conf/ paths are relative to the recipe
    _, run_opts, _, hparams = parse_and_load(argv)
    return hparams, run_opts


def fit(data, out, *overrides):
    cwd = os.getcwd()
    try:
        hparams, run_opts = load(data, out, *overrides)
        os.makedirs(hparams["save_folder"], exist_ok=True)
        encoder = prepare_labels_and_weights(hparams)
        brain = make_brain(hparams, run_opts)
        brain.fit(
            hparams["epoch_counter"],
            dataset(hparams, hparams["train_manifest"], encoder),
            dataset(hparams, hparams["valid_manifest"], encoder, sort=True),
            train_loader_kwargs=hparams["train_dataloader_opts"],
            valid_loader_kwargs=hparams["eval_dataloader_opts"],
        )
        return brain, hparams, encoder
    finally:
        os.chdir(cwd)


def test_hierarchical_lr_cosine_schedule_and_accumulation(data, tmp_path):
    brain, hparams, _ = fit(
        data,
        tmp_path / "exp",
        "--number_of_epochs=3",
        "--lr=1e-3",
        "--encoder_lr=1e-4",
        "--grad_accumulation_factor=2",
        "--freeze_text_encoder=true",
    )
    # a frozen text encoder gets no optimizer; the others get their own lr
    assert set(brain.optimizers_dict) == {"speech_encoder", "head"}
    head_params = {id(p) for p in brain.optimizers_dict["head"].param_groups[0]["params"]}
    assert {id(p) for p in brain.modules.legs.parameters()} <= head_params
    # cosine annealing per epoch over 3 epochs: after 3 steps lr = lr0 * (1 + cos(pi)) / 2 = 0
    for name, lr0 in (("head", 1e-3), ("speech_encoder", 1e-4)):
        scheduler = brain.schedulers[name]
        assert scheduler.last_epoch == 3
        assert scheduler.base_lrs == [pytest.approx(lr0)]
        assert brain.optimizers_dict[name].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    # 12 utterances in batches of 2 = 6 batches per epoch; one update per 2 batches
    assert brain.optimizer_step == 3 * 3
    # what a step averaged over, which a resumed training compares with its own
    for checkpoint in (tmp_path / "exp" / "save").glob("CKPT+*"):
        saved = yaml.safe_load((checkpoint / "brain.ckpt").read_text())
        assert saved["optimizer_batch"] == {"processes": 1, "grad_accumulation_factor": 2}
    log = (tmp_path / "exp" / "train_log.txt").read_text().splitlines()
    lrs = [float(line.split("lr_head: ")[1].split(" ")[0]) for line in log]
    assert lrs == pytest.approx([1e-3 * (1 + math.cos(math.pi * e / 3)) / 2 for e in range(3)], rel=1e-2)


def test_each_encoder_trains_at_encoder_lr_and_the_head_at_lr_down_to_their_floors(data, tmp_path):
    cwd = os.getcwd()
    try:
        floors = ("--lr_floor=1e-5", "--encoder_lr_floor=1e-6")
        hparams, run_opts = load(data, tmp_path, "--lr=1e-3", "--encoder_lr=1e-4", *floors)
        brain = make_brain(hparams, run_opts)
        brain.init_optimizers()
    finally:
        os.chdir(cwd)
    lrs = {
        name: (opt.param_groups[0]["lr"], brain.schedulers[name].eta_min)
        for name, opt in brain.optimizers_dict.items()
    }
    assert lrs == {"speech_encoder": (1e-4, 1e-6), "text_encoder": (1e-4, 1e-6), "head": (1e-3, 1e-5)}


def test_the_log_gives_each_loss_part_s_mean_over_the_epoch_s_batches(data, tmp_path, monkeypatch):
    seen = []
    add_parts = CrabBrain._add_parts

    def recording(self, batch, values):
        seen.append(values)
        return add_parts(self, batch, values)

    monkeypatch.setattr(CrabBrain, "_add_parts", recording)
    fit(data, tmp_path / "exp", "--number_of_epochs=1", "--batch_size=4")
    assert len(seen) == 3  # 12 utterances in batches of 4
    (line,) = (tmp_path / "exp" / "train_log.txt").read_text().splitlines()
    for part in seen[0]:
        logged = float(re.search(rf"train {part}: ([-+0-9.eE]+)", line).group(1))
        assert logged == pytest.approx(sum(values[part] for values in seen) / 3, rel=5e-3), part


def test_ce_only_and_mlcs_at_alpha_0_train_the_same_weights(data, tmp_path):
    """The legs draw nothing from the run's random stream: a run without them has the same
    initial weights, data order and dropout masks, so at alpha 0 the same model, bit for bit."""
    options = ("--number_of_epochs=1", "--dropout=0.5", "--ckpt_metric=epoch")
    ce, _, _ = fit(data, tmp_path / "ce_only", "--leg_names=[]", *options)
    mlcs, _, _ = fit(data, tmp_path / "mlcs", "--alpha=0.0", *options)
    assert len(mlcs.modules.legs.legs) == 5 and len(ce.modules.legs.legs) == 0
    ce_weights, mlcs_weights = ce.modules.model.state_dict(), mlcs.modules.model.state_dict()
    assert [k for k, v in ce_weights.items() if not torch.equal(v, mlcs_weights[k])] == []


def test_every_split_reads_the_first_max_duration_seconds(data, tmp_path):
    cwd = os.getcwd()
    try:
        hparams, _ = load(data, tmp_path, "--max_duration=0.25")
        os.makedirs(hparams["save_folder"], exist_ok=True)
        encoder = prepare_labels_and_weights(hparams)
        for split in ("train", "valid", "test"):
            items = dataset(hparams, hparams[f"{split}_manifest"], encoder)
            for i, utt in enumerate(items.data_ids):
                wav, _ = sf.read(str(data / f"{utt}.wav"), dtype="float32")
                assert len(wav) > 4000  # every file is longer than 0.25 s
                torch.testing.assert_close(items[i]["sig"], torch.from_numpy(wav[:4000]))
    finally:
        os.chdir(cwd)


def test_an_epoch_without_a_complete_accumulation_is_an_error(caplog):
    items = list(range(12))
    assert batches_per_epoch(items, {"batch_size": 5}) == 3
    assert batches_per_epoch(items, {"batch_size": 5, "drop_last": True}) == 2
    assert batches_per_epoch(items, {"batch_sampler": [[0, 1]] * 7}) == 7
    check_accumulation(4, 4, "train.json")
    with caplog.at_level("INFO", logger="crab.experiment"):
        check_accumulation(7, 2, "train.json")
    assert "the last 1 of each epoch are dropped" in caplog.text
    with pytest.raises(
        DataError,
        match=r"train.json: 3 training batch\(es\) per epoch, fewer than grad_accumulation_factor 4",
    ):
        check_accumulation(3, 4, "train.json")


def test_the_optimizer_batch_counts_every_process(monkeypatch):
    """Under DDP each process has its batches and its accumulation: the paper's 8 x 4 on
    four processes steps over 128 utterances, not 32."""
    import crab.experiment

    assert (
        optimizer_batch({"batch_size": 8}, 4)
        == "1 process(es) x batches of 8 x accumulation 4 = 32 utterances"
    )
    monkeypatch.setattr(crab.experiment, "world_size", lambda: 4)
    assert (
        optimizer_batch({"batch_size": 8}, 4)
        == "4 process(es) x batches of 8 x accumulation 4 = 128 utterances"
    )
    assert optimizer_batch({"batch_sampler": []}, 2) == "4 process(es) x dynamic batches x accumulation 2"


def test_best_checkpoint_evaluation_and_saved_class_weights(data, tmp_path):
    out = tmp_path / "exp"
    brain, hparams, encoder = fit(data, out, "--number_of_epochs=2", "--ckpt_metric=macro_F1")
    checkpoints = brain.checkpointer.find_checkpoints(max_key="macro_F1")
    assert checkpoints and all("UAR" in c.meta and "weighted_F1" in c.meta for c in checkpoints)
    state = torch.load(os.path.join(checkpoints[0].path, "wce.ckpt"))
    assert state["weight"].tolist() == [4.0, 4.0, 4.0, 4.0]  # N / N_c = 12 / 3

    cwd = os.getcwd()
    os.chdir(os.path.join(ROOT, "egs", "TEMPLATE"))
    try:
        test_set = dataset(hparams, hparams["test_manifest"], encoder, sort=True)
        # nothing set beyond the hparams: <output_folder>/eval_<eval_name>
        brain.evaluate(test_set, max_key="macro_F1")
        brain.evaluate(
            test_set,
            max_key="macro_F1",
            test_loader_kwargs=hparams["eval_dataloader_opts"],
            eval_folder=tmp_path / "eval",
        )
    finally:
        os.chdir(cwd)
    for folder in (out / f"eval_{hparams['eval_name']}", tmp_path / "eval"):
        scores = json.loads((folder / "scores.json").read_text())
        assert scores["num_utterances"] == 4 and set(scores) >= {"WAR", "UAR", "macro_F1", "weighted_F1"}
        assert (folder / "predictions.csv").read_text().count("\n") == 5


def test_a_run_without_a_checkpoint_takes_the_classes_it_starts_with(data, tmp_path):
    from crab.losses import WeightedCrossEntropy

    save = tmp_path / "save"
    save.mkdir()

    def labels(classes):
        hparams = {"classes": classes, "save_folder": str(save), "wce": WeightedCrossEntropy(num_classes=4)}
        encoder = prepare_labels_and_weights({**hparams, "train_manifest": str(data / "train.json")})
        return [encoder.ind2lab[i] for i in range(4)]

    assert labels(CLASSES) == CLASSES  # a training killed before its first checkpoint
    reordered = ["happy", "angry", "neutral", "sad"]
    assert labels(reordered) == reordered  # starts over, as with any other setting
    (save / "CKPT+1").mkdir()  # a checkpoint: the label order is the trained model's
    with pytest.raises(DataError, match="holds labels"):
        labels(CLASSES)


def test_fused_adamw_on_cuda_only():
    """Adam/AdamW from the yaml (``!name:`` partials) are fused on CUDA; nothing changes
    on CPU, for other optimizers, or when the yaml chooses the implementation."""
    import functools

    from crab.brain import fast_optimizer_options

    adamw = functools.partial(torch.optim.AdamW, weight_decay=0.01)
    assert fast_optimizer_options(adamw, "cuda:0") == {"fused": True}
    assert fast_optimizer_options(torch.optim.Adam, "cuda") == {"fused": True}
    assert fast_optimizer_options(adamw, "cpu") == {}
    assert fast_optimizer_options(torch.optim.SGD, "cuda:0") == {}
    assert fast_optimizer_options(functools.partial(torch.optim.AdamW, foreach=True), "cuda:0") == {}
    assert fast_optimizer_options(functools.partial(torch.optim.AdamW, fused=False), "cuda:0") == {}


def test_a_run_resumed_on_another_device_keeps_that_devices_optimizer_update(data, tmp_path, monkeypatch):
    """A checkpoint's optimizer groups name the update kernel of the machine that saved
    it (fused on CUDA). A run saved on CPU and resumed on CUDA steps fused, also under
    fp16's gradient scaler (before: torch's unfused update got the scaler's inf check and
    failed at the first step); one saved on CUDA and resumed on CPU steps as CPU runs do.
    CUDA is stood in for by CPU's fused AdamW and a CPU gradient scaler."""
    from speechbrain.dataio.dataloader import make_dataloader

    import crab.brain

    fit(data, tmp_path / "cpu", "--number_of_epochs=1")
    monkeypatch.setattr(crab.brain, "fast_optimizer_options", lambda *args: {"fused": True})
    _, hparams, _ = fit(data, tmp_path / "cuda", "--number_of_epochs=1")

    cwd = os.getcwd()
    try:
        hparams, run_opts = load(data, tmp_path / "cpu", "--number_of_epochs=2")
        encoder = prepare_labels_and_weights(hparams)
        brain = make_brain(hparams, run_opts)
        brain.init_optimizers()
        assert brain.checkpointer.recover_if_possible() is not None
        assert all(opt.param_groups[0]["fused"] for opt in brain.optimizers_dict.values())
        brain.scaler = torch.GradScaler("cpu")  # SpeechBrain's for fp16 on CUDA
        loader = make_dataloader(dataset(hparams, hparams["train_manifest"], encoder), batch_size=2)
        assert math.isfinite(brain.fit_batch(next(iter(loader))).item())

        monkeypatch.setattr(crab.brain, "fast_optimizer_options", lambda *args: {})
        hparams, run_opts = load(data, tmp_path / "cuda", "--number_of_epochs=2")
        brain = make_brain(hparams, run_opts)
        brain.init_optimizers()
        assert brain.checkpointer.recover_if_possible() is not None
        assert not any(opt.param_groups[0]["fused"] for opt in brain.optimizers_dict.values())
    finally:
        os.chdir(cwd)


# bf16 autocast against fp32 on the first training step of the tiny model (2 utterances):
# a relative difference of the loss of 2.4e-4 measured (1.50864 fp32, 1.50828 bf16;
# torch 2.13 CPU, 2026-12-01); the tolerance leaves room for other CPUs' bf16 kernels
BF16_LOSS_RTOL = 1e-2


def test_bf16_training_step_through_speechbrain_agrees_with_fp32(data, tmp_path):
    """``--precision=bf16`` (SpeechBrain's autocast) runs CrabBrain's training step
    (forward, the five MPCL legs, backward, optimizer step) on CPU; its loss agrees with
    the fp32 step's within ``BF16_LOSS_RTOL``. Dropout is off (modules in eval mode) so
    that both steps see the same network."""
    from speechbrain.dataio.dataloader import make_dataloader

    cwd = os.getcwd()
    losses, changed = {}, {}
    try:
        for precision in ("fp32", "bf16"):
            hparams, run_opts = load(data, tmp_path / precision, f"--precision={precision}")
            os.makedirs(hparams["save_folder"], exist_ok=True)
            encoder = prepare_labels_and_weights(hparams)
            torch.manual_seed(0)
            brain = make_brain(hparams, run_opts)
            assert brain.precision == precision
            brain.init_optimizers()
            loader = make_dataloader(
                dataset(hparams, hparams["train_manifest"], encoder),
                **{**hparams["train_dataloader_opts"], "shuffle": False},
            )
            batch = next(iter(loader))
            brain.modules.eval()
            before = [p.detach().clone() for p in brain.modules.parameters() if p.requires_grad]
            losses[precision] = brain.fit_batch(batch).item()
            after = [p for p in brain.modules.parameters() if p.requires_grad]
            changed[precision] = sum(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    finally:
        os.chdir(cwd)
    print(f"first-step loss: {losses}")  # shown by pytest -rP (PERFORMANCE.md)
    assert math.isfinite(losses["bf16"]) and changed["bf16"] == changed["fp32"] > 0
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=BF16_LOSS_RTOL), losses


def test_an_evaluation_cut_short_leaves_the_previous_predictions(tmp_path, monkeypatch):
    """predictions.csv and scores.json are replaced together, each whole: a failure while
    writing them (a kill) leaves the previous pair, not a shorter test set to score."""
    from types import SimpleNamespace

    from crab.brain import CrabBrain

    stand_in = SimpleNamespace(hparams=SimpleNamespace(classes=["a", "b"]), eval_folder=lambda: str(tmp_path))
    stats = {"WAR": 0.5, "UAR": 0.5, "macro_F1": 0.5, "weighted_F1": 0.5}
    CrabBrain._write_eval(stand_in, ["u1", "u2"], [0, 1], torch.tensor([[0.9, 0.1], [0.2, 0.8]]), stats)
    before = {name: (tmp_path / name).read_text() for name in ("predictions.csv", "scores.json")}
    assert before["predictions.csv"].splitlines()[1:] == [
        "u1,a,a,0.900000,0.100000",
        "u2,b,b,0.200000,0.800000",
    ]

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(json, "dump", killed)  # scores.json, written after predictions.csv
    with pytest.raises(KeyboardInterrupt):
        CrabBrain._write_eval(stand_in, ["u3"], [0], torch.tensor([[0.6, 0.4]]), stats)
    assert {name: (tmp_path / name).read_text() for name in before} == before
    assert sorted(os.listdir(tmp_path)) == [
        "checkpoint.txt",
        "predictions.csv",
        "scores.json",
    ]  # no temporary


def test_an_evaluation_killed_between_its_renames_leaves_no_record_of_other_inputs(tmp_path, monkeypatch):
    """The record of inputs goes first and comes back last: a kill after predictions.csv is
    replaced leaves no record (evaluated again), never the previous one beside new predictions."""
    from types import SimpleNamespace

    from crab import evalrecord
    from crab.brain import CrabBrain

    def stand_in(manifest):
        hparams = SimpleNamespace(classes=["a", "b"])
        return SimpleNamespace(hparams=hparams, eval_folder=lambda: str(tmp_path), eval_inputs=manifest)

    stats = {"WAR": 1.0, "UAR": 1.0, "macro_F1": 1.0, "weighted_F1": 1.0}
    CrabBrain._write_eval(
        stand_in({"test_manifest_sha256": "old"}), ["u1"], [0], torch.tensor([[0.9, 0.1]]), stats
    )
    assert evalrecord.read(str(tmp_path), evalrecord.PREDICTIONS_RECORD) == {"test_manifest_sha256": "old"}
    replace = os.replace

    def killed_after_the_first_rename(src, dst):
        replace(src, dst)
        raise KeyboardInterrupt

    new = stand_in({"test_manifest_sha256": "new"})
    monkeypatch.setattr(os, "replace", killed_after_the_first_rename)
    with pytest.raises(KeyboardInterrupt):
        CrabBrain._write_eval(new, ["u2"], [1], torch.tensor([[0.2, 0.8]]), stats)
    monkeypatch.undo()
    assert "u2,b,b" in (tmp_path / "predictions.csv").read_text()
    assert evalrecord.read(str(tmp_path), evalrecord.PREDICTIONS_RECORD) is None


TORCH_OOM = (
    "CUDA out of memory. Tried to allocate 2.50 GiB. GPU 0 has a total capacity of 23.54 GiB of which "
    "1.02 GiB is free. Including non-PyTorch memory, this process has 22.50 GiB memory in use."
)


def out_of_memory_at(monkeypatch, stage, step):
    """torch's CUDA out-of-memory error from the forward pass of batch ``step`` of ``stage``."""
    from crab.brain import CrabBrain

    forward, raised_at = CrabBrain.compute_forward, (stage, step)

    def compute_forward(self, batch, stage):
        if (stage, self.step) == raised_at:
            raise torch.OutOfMemoryError(TORCH_OOM)
        return forward(self, batch, stage)

    monkeypatch.setattr(CrabBrain, "compute_forward", compute_forward)


def test_out_of_gpu_memory_names_the_batch_and_what_lowers_the_memory(data, tmp_path, monkeypatch):
    import speechbrain as sb

    from crab.brain import GPUMemoryError
    from crab.cli import UserError

    out_of_memory_at(monkeypatch, sb.Stage.TRAIN, 2)
    with pytest.raises(GPUMemoryError) as err:
        fit(data, tmp_path / "exp", "--number_of_epochs=1", "--grad_accumulation_factor=2")
    message = str(err.value)
    assert isinstance(err.value, UserError) and "\n" not in message  # one line through crab.cli
    assert message.startswith(
        "training: out of GPU memory at epoch 1, step 2, on a batch of 2 utterance(s) ("
    )
    assert re.search(
        r"\), audio padded to 0\.\d s \(tried to allocate 2\.50 GiB\)\. Lower the memory it needs: ", message
    )
    assert "--gradient_checkpointing=true (" in message and "the run resumes with it" in message
    assert (
        "a shorter max_duration (now 12.0 s) in a new run; or --precision=bf16. Not --batch_size=1: "
        in message
    )
    assert message.endswith(
        "the contrastive legs (MLCS) need, so they would add nothing to the cross-entropy"
    )
    assert isinstance(err.value.__cause__, torch.OutOfMemoryError)

    monkeypatch.undo()
    out_of_memory_at(monkeypatch, sb.Stage.VALID, 1)
    with pytest.raises(
        GPUMemoryError, match=r"^validation: out of GPU memory at epoch 1, step 1, .*--eval_precision"
    ):
        fit(data, tmp_path / "valid", "--number_of_epochs=1")


def test_out_of_gpu_memory_on_cuda_says_the_device_s_memory_and_the_peak(monkeypatch):
    from types import SimpleNamespace

    import speechbrain as sb

    from crab.brain import out_of_memory_message

    properties = SimpleNamespace(total_memory=24 * 2**30)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: properties)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "NVIDIA GeForce RTX 4090")
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: 21.25 * 2**30)
    batch = SimpleNamespace(id=["u1", "u2", "u3", "u4"])  # cached encoder states: no audio
    hparams = {"batch_size": 4, "dynamic_batching": True, "max_batch_length": 96.0, "max_duration": 12.0}
    message = out_of_memory_message(
        torch.OutOfMemoryError("CUDA out of memory."), sb.Stage.TRAIN, 3, 7, batch, "cuda:0", hparams
    )
    assert message.startswith(
        "training: out of GPU memory at epoch 3, step 7, on a batch of 4 utterance(s) (u1, u2, u3, ...): "
        "NVIDIA GeForce RTX 4090 has 24.0 GiB, this process's tensors peaked at 21.2 GiB. "
    )
    assert "a new run with a lower max_batch_length (now 96.0 s)" in message and "--batch_size" not in message
    test = out_of_memory_message(
        torch.OutOfMemoryError("CUDA out of memory."), sb.Stage.TEST, 1, 2, batch, "cuda:0", hparams
    )
    assert test.startswith("evaluation: ") and test.endswith(
        "a smaller --batch_size (an evaluation may change it: a prediction does not depend on its batch), "
        "or --eval_precision=bf16"
    )


@pytest.mark.parametrize(
    "batch_size, settings, halved",
    [
        (2, {}, None),  # batches of 1: the legs would never see a pair of one class
        (3, {}, None),
        (4, {}, "--batch_size=2 --grad_accumulation_factor=2 "),
        (2, {"leg_names": []}, "--batch_size=1 --grad_accumulation_factor=2 "),  # CE only
        (2, {"alpha": 0.0}, "--batch_size=1 --grad_accumulation_factor=2 "),
        (2, {"gather_contrastive": True}, "--batch_size=1 --grad_accumulation_factor=2 "),  # global batch
    ],
)
def test_out_of_memory_advice_never_leaves_the_contrastive_legs_batches_of_one(batch_size, settings, halved):
    from types import SimpleNamespace

    import speechbrain as sb

    from crab.brain import out_of_memory_message

    hparams = {
        "batch_size": batch_size,
        "max_duration": 12.0,
        "alpha": 2.0,
        "leg_names": ["fusion"],
        **settings,
    }
    batch = SimpleNamespace(id=["u1", "u2"])
    message = out_of_memory_message(
        torch.OutOfMemoryError("CUDA out of memory."), sb.Stage.TRAIN, 1, 1, batch, "cpu", hparams
    )
    assert "--gradient_checkpointing=true" in message and "--precision=bf16" in message
    if halved:
        assert f"a new run with {halved}" in message and message.endswith("--precision=bf16")
    else:
        assert "a new run with --batch_size" not in message
        assert message.endswith(
            "or --precision=bf16. Not --batch_size=1: a batch of one utterance never holds two of one class, "
            "which the contrastive legs (MLCS) need, so they would add nothing to the cross-entropy"
        )


def single_utterance_batch(seconds):
    from types import SimpleNamespace

    return SimpleNamespace(id=["Ses01F_long"], sig=SimpleNamespace(data=torch.zeros(1, int(seconds * 16000))))


@pytest.mark.parametrize("dynamic", [True, False])
def test_out_of_memory_on_one_utterance_names_it_and_advises_no_smaller_batch(dynamic):
    """A batch of one long utterance (dynamic batching puts one longer than max_batch_length alone,
    the last batch of an epoch may hold one): a smaller batch is the same batch."""
    import speechbrain as sb

    from crab.brain import out_of_memory_message

    hparams = {"batch_size": 8, "max_duration": 30.0, "alpha": 2.0, "leg_names": ["fusion"]}
    if dynamic:
        hparams.update(dynamic_batching=True, max_batch_length=24.0)
    oom = torch.OutOfMemoryError("CUDA out of memory.")
    message = out_of_memory_message(oom, sb.Stage.TRAIN, 2, 5, single_utterance_batch(30.0), "cpu", hparams)
    assert message.startswith(
        "training: out of GPU memory at epoch 2, step 5, on a batch of one utterance, Ses01F_long, "
        "its audio 30.0 s long. Lower the memory it needs: --gradient_checkpointing=true ("
    )
    assert "max_batch_length (now" not in message and "--batch_size=" not in message
    assert message.endswith(
        "; or a shorter max_duration (now 30.0 s: every utterance's audio, this one's too, is cut there) "
        "in a new run; or --precision=bf16. Not a smaller batch (--batch_size, max_batch_length): this one "
        "is a single utterance"
    )
    test = out_of_memory_message(oom, sb.Stage.TEST, 2, 5, single_utterance_batch(30.0), "cpu", hparams)
    assert test.endswith(
        "--eval_precision=bf16 (the batch is one utterance: a smaller --batch_size cannot help)"
    )


@pytest.mark.parametrize(
    "settings, warned", [({}, True), ({"leg_names": []}, False), ({"alpha": 0.0}, False)]
)
def test_out_of_memory_advice_of_dynamic_batching_says_a_lower_max_batch_length_leaves_legs_singles(
    settings, warned
):
    from types import SimpleNamespace

    import speechbrain as sb

    from crab.brain import out_of_memory_message

    hparams = {
        "dynamic_batching": True,
        "max_batch_length": 96.0,
        "max_duration": 12.0,
        "alpha": 2.0,
        "leg_names": ["fusion"],
        **settings,
    }
    batch = SimpleNamespace(id=["u1", "u2", "u3"])
    message = out_of_memory_message(
        torch.OutOfMemoryError("CUDA out of memory."), sb.Stage.TRAIN, 1, 1, batch, "cpu", hparams
    )
    legs = (
        "a new run with a lower max_batch_length (now 96.0 s): more of the longest utterances then come "
        "alone, and a batch of one utterance gives the contrastive legs (MLCS) nothing; or "
    )
    assert (legs in message) == warned
    assert "a new run with a lower max_batch_length (now 96.0 s)" in message


@pytest.mark.parametrize("batch_size, warned", [(1, True), (6, False)])  # 6 of 4 classes: a pair
def test_an_epoch_whose_batches_hold_no_pair_of_a_class_says_mlcs_added_nothing(
    data, tmp_path, caplog, batch_size, warned
):
    """A batch of one utterance has no positive pair: its MPCL is 0 (paper's convention), and an
    epoch of such batches trains the cross-entropy alone, which the log said only as 0.00e+00."""
    with caplog.at_level("WARNING", logger="crab.brain"):
        brain, _, _ = fit(data, tmp_path, "--number_of_epochs=1", f"--batch_size={batch_size}")
    legs = [v for k, v in brain.train_stats.items() if k.startswith("leg_")]
    assert len(legs) == 5 and (not any(legs)) == warned
    message = "Epoch 1: every contrastive leg loss was 0: no training batch held two utterances of one class"
    assert (message in caplog.text) == warned
    assert not warned or f"(batch_size {batch_size})" in caplog.text
