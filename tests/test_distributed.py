"""DDP: the gathered contrastive loss equals the single-process one over the global
batch (value and gradients), labels and class weights are written once, and a
two-process gloo run of the tiny config trains through ser.sh."""

import dataclasses
import json
import os
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from torch import nn

import crab.experiment
from crab.distributed import end_process_group, gather_batch
from crab.losses import ContrastiveLoss, WeightedCrossEntropy, leg_losses, mpcl, supcon
from tests.conftest import ROOT, write_tone_corpus
from tests.test_brain import CLASSES

WORLD = 2
LABELS = [0, 1, 0, 2, 1, 1, 0, 2, 3]  # class 3 has no positive: an anchor MPCL counts, SupCon skips
# rows of the global batch held by each process: unequal sizes, and one process with a single row
SPLITS = {"4+5": (4, 5), "1+8": (1, 8)}
KINDS = {"mpcl": (mpcl, 0.1), "supcon": (supcon, 0.07)}


def global_batch():
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(len(LABELS), 6, generator=generator)
    layer = nn.Linear(6, 5)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(5, 6, generator=generator))
        layer.bias.copy_(torch.randn(5, generator=generator))
    return inputs, torch.tensor(LABELS), layer


def init_group(rank, rendezvous):
    os.environ["RANK"] = os.environ["LOCAL_RANK"] = str(rank)  # SpeechBrain's main-process test reads them
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=WORLD)


def labels_and_weights(rank, out_dir, manifest):
    """``prepare_labels_and_weights`` of ``manifest``, noting which process counted the classes."""
    save = os.path.join(out_dir, "save")
    os.makedirs(save, exist_ok=True)
    counted_by = os.path.join(out_dir, f"counted_by_rank{rank}")

    def class_counts(*args):
        open(counted_by, "w").close()
        return count_classes(*args)

    count_classes, crab.experiment.class_counts = crab.experiment.class_counts, class_counts
    hparams = {
        "classes": CLASSES,
        "save_folder": save,
        "train_manifest": manifest,
        "wce": WeightedCrossEntropy(len(CLASSES)),
    }
    encoder = crab.experiment.prepare_labels_and_weights(hparams)
    return {"labels": [encoder.ind2lab[i] for i in range(len(encoder))], "weights": hparams["wce"].weight}


def gathered_losses(rank):
    """The gathered loss and its gradients, w.r.t. the local embeddings and, through
    DDP, w.r.t. the parameters of a layer producing them; the gathered labels."""
    inputs, labels, layer = global_batch()
    results = {}
    for split, sizes in SPLITS.items():
        start = sum(sizes[:rank])
        rows = slice(start, start + sizes[rank])
        for kind, (_, temperature) in KINDS.items():
            loss_fn = ContrastiveLoss(kind, temperature, gather=True)
            embeddings = layer(inputs[rows]).detach().requires_grad_()
            loss = loss_fn(embeddings, labels[rows])
            loss.backward()
            ddp = nn.parallel.DistributedDataParallel(nn.Linear(6, 5))
            ddp.module.load_state_dict(layer.state_dict())
            loss_fn(ddp(inputs[rows]), labels[rows]).backward()  # DDP averages the gradients
            results[split, kind] = {
                "loss": loss.detach(),
                "embedding_grad": embeddings.grad,
                "weight_grad": ddp.module.weight.grad,
                "bias_grad": ddp.module.bias.grad,
            }
            legs = {name: z.detach().requires_grad_() for name, z in two_legs(layer(inputs[rows])).items()}
            by_leg = leg_losses(loss_fn, legs, labels[rows])  # the legs in one batch: one exchange
            sum(by_leg.values()).backward()
            results[split, kind, "legs"] = {n: (by_leg[n].detach(), legs[n].grad) for n in legs}
        results[split, "labels"] = gather_batch(inputs[rows], labels[rows])[1]
    return results


def two_legs(embeddings):
    """Two legs' outputs, one of them the embeddings."""
    return {"first": embeddings, "second": 2.0 * embeddings.flip(-1) + 1.0}


def worker(rank, rendezvous, out_dir, manifest):
    """One process of the group: its results into ``out_dir/rank<rank>.pt``."""
    torch.set_num_threads(1)
    init_group(rank, rendezvous)
    results = {**labels_and_weights(rank, out_dir, manifest), **gathered_losses(rank)}
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    # the DDP wrappers are gone with gathered_losses' frame: a wrapper outliving the
    # process group can hang in the group's destructor
    dist.barrier()
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """What each process of a two-process gloo group computed (``worker``), and its directory."""
    out = tmp_path_factory.mktemp("gloo")
    counts = {"angry": 3, "happy": 1, "neutral": 2, "sad": 2}
    manifest = {
        f"{emo}{n}": {"wav": None, "duration": None, "text": "t", "emo": emo, "spk": "s"}
        for emo, count in counts.items()
        for n in range(count)
    }
    (out / "train.json").write_text(json.dumps(manifest))
    group = mp.spawn(
        worker, args=(str(out / "rendezvous"), str(out), str(out / "train.json")), nprocs=WORLD, join=False
    )
    deadline = time.monotonic() + 180
    while not group.join(timeout=5):  # raises if a process failed
        if time.monotonic() > deadline:
            for process in group.processes:
                process.kill()
            pytest.fail("the two-process gloo group did not finish within 180 s")
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)], out


@pytest.fixture(scope="module")
def gathered(ddp_run):
    return ddp_run[0]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("split", SPLITS)
def test_gathered_loss_and_gradients_equal_the_global_batch(gathered, split, kind):
    inputs, labels, layer = global_batch()
    loss_fn, temperature = KINDS[kind]
    embeddings = layer(inputs).detach().requires_grad_()
    reference = loss_fn(embeddings, labels, temperature)
    reference.backward()
    loss_fn(layer(inputs), labels, temperature).backward()
    start = 0
    for rank, size in enumerate(SPLITS[split]):
        got = gathered[rank][split, kind]
        rows = slice(start, start + size)
        start += size
        assert got["loss"].item() == pytest.approx(reference.item(), rel=1e-6)
        # each process returns WORLD x dL/dz of its rows; DDP's average divides by WORLD
        torch.testing.assert_close(got["embedding_grad"] / WORLD, embeddings.grad[rows])
        torch.testing.assert_close(got["weight_grad"], layer.weight.grad)
        torch.testing.assert_close(got["bias_grad"], layer.bias.grad)
        assert got["embedding_grad"].abs().sum() > 0


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("split", SPLITS)
def test_legs_gathered_in_one_batch_equal_each_legs_global_batch(gathered, split, kind):
    inputs, labels, layer = global_batch()
    loss_fn, temperature = KINDS[kind]
    legs = {name: z.detach().requires_grad_() for name, z in two_legs(layer(inputs)).items()}
    for name, embeddings in legs.items():
        loss_fn(embeddings, labels, temperature).backward()
        start = 0
        for rank, size in enumerate(SPLITS[split]):
            loss, grad = gathered[rank][split, kind, "legs"][name]
            assert loss.item() == pytest.approx(loss_fn(embeddings, labels, temperature).item(), rel=1e-6)
            torch.testing.assert_close(grad / WORLD, embeddings.grad[start : start + size])
            start += size


@pytest.mark.parametrize("split", SPLITS)
def test_labels_are_gathered_in_rank_order(gathered, split):
    for rank in range(WORLD):
        assert gathered[rank][split, "labels"].tolist() == LABELS


def test_a_process_group_ends_after_every_process_got_there(tmp_path, monkeypatch):
    """A process tearing its gloo connections down while another still used them aborted
    that one at exit ('terminate called without an active exception'), failing a finished run."""
    calls = []
    monkeypatch.setattr(dist, "barrier", lambda *a, **k: calls.append("barrier"))
    real_destroy = dist.destroy_process_group
    monkeypatch.setattr(dist, "destroy_process_group", lambda: calls.append("destroy") or real_destroy())
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    end_process_group()
    assert calls == ["barrier", "destroy"] and not dist.is_initialized()
    end_process_group()  # none left: nothing
    assert calls == ["barrier", "destroy"]


def test_without_a_process_group_gathering_changes_nothing():
    inputs, labels, layer = global_batch()
    embeddings = layer(inputs)
    assert gather_batch(embeddings, labels) == (embeddings, labels)
    gathered = ContrastiveLoss("mpcl", 0.1, gather=True)(embeddings, labels)
    assert gathered.item() == pytest.approx(mpcl(embeddings, labels, 0.1).item(), rel=1e-6)


def test_labels_and_class_weights_are_written_by_the_main_process_and_read_by_the_others(ddp_run):
    results, out = ddp_run
    assert (out / "counted_by_rank0").exists() and not (out / "counted_by_rank1").exists()
    saved = json.loads((out / "save" / "class_weights.json").read_text())
    assert [saved[c]["count"] for c in CLASSES] == [3, 1, 2, 2]
    assert (out / "save" / "label_encoder.txt").exists()
    for rank in range(WORLD):
        assert results[rank]["labels"] == CLASSES
        assert results[rank]["weights"].tolist() == pytest.approx([8 / 3, 8.0, 4.0, 4.0])  # N / N_c


@pytest.fixture(scope="module")
def recipe_data(tmp_path_factory):
    """Stage-3 output for the mini recipe: 8 training utterances (2 per class), 4
    validation, and a tokenizer; audio in ``corpus``."""
    root = tmp_path_factory.mktemp("ddp_recipe")
    corpus, data = root / "corpus", root / "data" / "main"
    corpus.mkdir()
    data.mkdir(parents=True)
    write_tone_corpus(corpus, data, {"train": 2, "valid": 1}, CLASSES, lengths=(0.3, 0.5))
    return root


def test_two_gloo_processes_train_the_tiny_config_through_the_recipe(recipe_data):
    exp = recipe_data / "exp"
    command = [
        "bash",
        os.path.join(ROOT, "egs", "mini", "run.sh"),
        "--stage",
        "5",
        "--stop_stage",
        "5",
        "--nproc",
        "2",
        "--data_root",
        str(recipe_data / "corpus"),
        "--data_dir",
        str(recipe_data / "data"),
        "--exp_dir",
        str(exp),
        "--train_opts",
        "--number_of_epochs=2 --batch_size=2 --gather_contrastive=true",
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=300
    )  # a collective mismatch hangs
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    run = exp / "crab_tiny" / "main" / "seed42"
    # epoch 2's save deleted epoch 1's checkpoint unless it is the best: the processes agreed
    checkpoints = sorted((run / "save").glob("CKPT+*"))
    assert 1 <= len(checkpoints) <= 2 and all((c / "model.ckpt").exists() for c in checkpoints)
    assert not list((run / "save").glob(".partial-*"))
    # 8 utterances, batches of 2, split over 2 processes: 2 optimizer steps per epoch
    assert yaml.safe_load((checkpoints[-1] / "brain.ckpt").read_text())["optimizer_step"] == 4
    weights = json.loads((run / "save" / "class_weights.json").read_text())
    assert [weights[c]["count"] for c in CLASSES] == [2, 2, 2, 2]
    assert [line.split(",")[0] for line in (run / "train_log.txt").read_text().splitlines()] == [
        "epoch: 1",
        "epoch: 2",
    ]
    assert "2 processes per node (DDP, gloo)" in json.loads((run / "train_info.json").read_text())["machine"]


def torchrun_tiny(script, recipe_data, out, epochs, last):
    """Run ``script`` (which calls crab.bin.train's main) as 2 gloo processes under torchrun on
    the recipe's data, the tiny config, ``epochs`` epochs into ``out``, ``last`` its last argument."""
    command = [
        *(
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(script),
        ),
        os.path.join(ROOT, "egs", "TEMPLATE", "conf", "crab_tiny.yaml"),
        f"--data_root={recipe_data / 'corpus'}",
        f"--data_folder={recipe_data / 'data' / 'main'}",
        f"--output_folder={out}",
        f"--classes=[{','.join(CLASSES)}]",
        *(f"--number_of_epochs={epochs}", "--batch_size=2", "--distributed_backend=gloo", "--noprogressbar"),
        last,
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=ROOT)
    cwd = os.path.join(ROOT, "egs", "TEMPLATE")
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


GLOO_THREADS_AT_EXIT = """
import atexit, os, sys
from crab.bin.train import main

def gloo_threads():  # at exit, before the interpreter's last collection and thread teardown
    names = []
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/comm") as f:
                names.append(f.read().strip())
        except FileNotFoundError:  # a thread that ended since
            pass
    with open(f"{sys.argv[-1]}.rank{os.environ['RANK']}", "w") as f:
        print(*[name for name in names if "gloo" in name], file=f)

atexit.register(gloo_threads)
main(sys.argv[1:-1])
"""


def test_a_ddp_training_ends_its_process_group_threads_before_exit(recipe_data, tmp_path):
    """Left to the interpreter's exit, a gloo thread dropping the last collective's tensors
    needed the GIL while the interpreter was finalizing: the process aborted after its training
    had finished (about 1 run in 20 on a loaded 2-core machine), and torchrun failed the stage."""
    script = tmp_path / "train_threads.py"
    script.write_text(GLOO_THREADS_AT_EXIT)
    done = torchrun_tiny(script, recipe_data, tmp_path / "exp", 1, str(tmp_path / "threads"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    for rank in range(2):
        assert (tmp_path / f"threads.rank{rank}").read_text().strip() == ""  # none left


SIGTERM_ONE_RANK = """
import os, signal, sys
from crab.brain import CrabBrain
from crab.bin.train import main

start = CrabBrain.on_fit_batch_start

def on_fit_batch_start(self, batch, should_step):  # SIGTERM to rank 1 alone, in its first batch
    start(self, batch, should_step)
    with open(f"{sys.argv[-1]}.rank{os.environ['RANK']}", "a") as seen:  # what each process trained on
        print(self.hparams.epoch_counter.current, *batch.id, file=seen)
    if os.environ["RANK"] == "1" and self.step == 1 and not os.path.exists(sys.argv[-1] + ".sent"):
        open(sys.argv[-1] + ".sent", "w").close()
        os.kill(os.getpid(), signal.SIGTERM)

CrabBrain.on_fit_batch_start = on_fit_batch_start
main(sys.argv[1:-1])
"""


@pytest.mark.slow
def test_a_sigterm_to_one_process_stops_every_process_after_a_saved_step(recipe_data, tmp_path):
    script = tmp_path / "train_sigterm.py"
    script.write_text(SIGTERM_ONE_RANK)
    out = tmp_path / "exp"

    def rerun():  # the script's last argument, its marker: one SIGTERM in all
        return torchrun_tiny(script, recipe_data, out, 2, str(tmp_path / "signal"))

    stopped = rerun()
    output = stopped.stdout[-3000:] + stopped.stderr[-5000:]
    assert stopped.returncode != 0 and (tmp_path / "signal.sent").exists(), output
    # both processes stopped after step 1 of epoch 1, with the checkpoint of that step
    assert "SIGTERM: saved a checkpoint at epoch 1, step 1" in output
    assert output.count("crab.bin.train: terminated (SIGTERM)") == 2, output
    [checkpoint] = (out / "save").glob("CKPT+*")
    assert yaml.safe_load((checkpoint / "CKPT.yaml").read_text())["brain_intra_epoch_ckpt"]
    assert yaml.safe_load((checkpoint / "brain.ckpt").read_text())["step"] == 1
    resumed = rerun()
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-5000:]
    assert (out / "train_log.txt").read_text().count("epoch: ") == 2
    # each epoch, across the interruption, the two processes trained on disjoint halves of one new
    # order of the 8 utterances: none twice, none left out
    train_ids = sorted(json.loads((recipe_data / "data" / "main" / "train.json").read_text()))
    orders = {}
    for rank in range(2):
        for line in (tmp_path / f"signal.rank{rank}").read_text().splitlines():
            epoch, *ids = line.split()
            orders.setdefault(int(epoch), []).extend(ids)
    assert sorted(orders) == [1, 2] and all(sorted(ids) == train_ids for ids in orders.values()), orders
    assert orders[1] != orders[2]


def test_a_torchrun_that_kills_its_processes_30_s_after_a_stop_is_named(monkeypatch):
    """torch before 2.12: torchrun sends SIGKILL 30 s after passing a stop on, whatever
    TORCH_ELASTIC_SHUTDOWN_TIMEOUT says, so a step's checkpoint at the paper's size may be lost."""
    import torch.distributed.launcher.api as launcher

    from crab.distributed import short_torchrun_grace

    @dataclasses.dataclass
    class OldLaunchConfig:  # torch 2.11's fields, in part
        min_nodes: int
        max_nodes: int

    @dataclasses.dataclass
    class NewLaunchConfig(OldLaunchConfig):  # torch 2.12 on
        shutdown_timeout: int | None = None

    monkeypatch.setattr(launcher, "LaunchConfig", OldLaunchConfig)
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    assert short_torchrun_grace() is None  # not under torchrun
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    assert "torchrun kills its processes 30 s after it is stopped" in short_torchrun_grace()
    monkeypatch.setattr(launcher, "LaunchConfig", NewLaunchConfig)
    assert short_torchrun_grace() is None
