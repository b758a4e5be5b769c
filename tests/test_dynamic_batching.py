"""Dynamic batching: item lengths, batches within max_batch_length that cover every
utterance once per epoch (also split over DDP processes), padding to each batch's
longest item, and a short training and evaluation run."""

import json
import os

import pytest
import speechbrain as sb
import yaml
from speechbrain.dataio.sampler import DistributedSamplerWrapper, ReproducibleRandomSampler

from crab.bin import evaluate, train
from crab.data import label_encoder, load_manifest, make_dataset
from crab.experiment import dataset, item_lengths, loader_options, prepare_labels_and_weights
from tests import test_brain
from tests.conftest import ROOT
from tests.test_brain import CLASSES, CONFIG, corpus_options, load

# the tiny corpus fixture of test_brain, found by pytest under the same name; assigned, not
# imported, so that the test parameters of that name redefine no unused import (ruff F811)
data = test_brain.data

# seconds; 7.5 is longer than MAX_LENGTH and must be alone in its batch
DURATIONS = [0.5, 0.7, 0.9, 1.2, 1.5, 0.6, 2.4, 3.1, 0.8, 1.1, 7.5, 0.4, 2.0, 1.7, 0.9, 2.8, 1.3, 0.5]
MAX_LENGTH = 4.0
DYNAMIC = ["--dynamic_batching=true", "--max_batch_length=2.0", "--num_buckets=3"]


def manifest_dataset(durations, texts=None):
    texts = texts or ["x" * (k + 1) for k in range(len(durations))]
    entries = {
        f"utt{k:02d}": {"duration": d, "text": t}
        for k, (d, t) in enumerate(zip(durations, texts, strict=True))
    }
    return sb.dataio.dataset.DynamicItemDataset(entries)


def options(train=True, order_seed=None, **hparams):
    base = {
        "train_dataloader_opts": {"batch_size": 8, "shuffle": True, "num_workers": 0},
        "eval_dataloader_opts": {"batch_size": 8, "num_workers": 0},
        "dynamic_batching": True,
        "max_batch_length": MAX_LENGTH,
        "num_buckets": 4,
        "max_duration": 12.0,
        "seed": 3,
    }
    return lambda data: loader_options({**base, **hparams}, data, train, order_seed)


def epoch(sampler, number):
    sampler.set_epoch(number)
    return [list(batch) for batch in sampler]


def test_item_lengths_are_durations_cut_at_max_duration_or_characters_without_audio():
    assert item_lengths(manifest_dataset([3.0, 15.0, 0.5]), max_duration=12.0) == [3.0, 12.0, 0.5]
    assert item_lengths(manifest_dataset([None, None], ["abc", "hello"])) == [3, 5]
    with pytest.raises(ValueError, match="utterance 'utt01' has no duration"):
        item_lengths(manifest_dataset([1.0, None]))


def test_without_dynamic_batching_the_options_are_the_yaml_ones_shuffled_by_the_run_s_sampler():
    opts = options(dynamic_batching=False)(manifest_dataset(DURATIONS))
    assert opts == {"batch_size": 8, "shuffle": True, "num_workers": 0}  # SpeechBrain's own shuffling
    seeded = options(dynamic_batching=False, order_seed=5)(manifest_dataset(DURATIONS))
    sampler = seeded.pop("sampler")  # in place of shuffle: true
    assert seeded == {"batch_size": 8, "num_workers": 0}
    assert isinstance(sampler, ReproducibleRandomSampler) and sampler.seed == 5
    # shuffle: false keeps the manifest's order, data-order seed or not
    in_order = {"batch_size": 8, "shuffle": False, "num_workers": 0}
    unshuffled = options(dynamic_batching=False, order_seed=5, train_dataloader_opts=in_order)
    assert unshuffled(manifest_dataset(DURATIONS)) == in_order


def test_batches_respect_max_batch_length_and_cover_every_utterance_once_per_epoch():
    opts = options()(manifest_dataset(DURATIONS))
    assert "batch_size" not in opts and "shuffle" not in opts
    sampler = opts["batch_sampler"]
    epochs = [epoch(sampler, n) for n in range(3)]
    for batches in epochs:
        assert sorted(i for batch in batches for i in batch) == list(range(len(DURATIONS)))
        for batch in batches:
            lengths = [DURATIONS[i] for i in batch]
            # padded to its longest item, a batch stays within the limit; a longer item is alone
            assert len(batch) * max(lengths) <= MAX_LENGTH or len(batch) == 1
        assert [10] in batches
        assert max(len(batch) for batch in batches) > 1
    assert epochs[0] != epochs[1]  # reshuffled each epoch
    assert epoch(sampler, 1) == epochs[1]  # the same for the same epoch (resume, DDP ranks)


def test_evaluation_batches_come_in_ascending_length_without_shuffling():
    sampler = options(train=False)(manifest_dataset(DURATIONS))["batch_sampler"]
    batches = epoch(sampler, 0)
    assert sorted(i for batch in batches for i in batch) == list(range(len(DURATIONS)))
    longest = [max(DURATIONS[i] for i in batch) for batch in batches]
    assert longest == sorted(longest) and epoch(sampler, 1) == batches


def test_ddp_processes_share_the_dynamic_batches_of_an_epoch():
    """What SpeechBrain's Brain does with a batch sampler under DDP."""
    sampler = options()(manifest_dataset(DURATIONS))["batch_sampler"]
    all_batches = epoch(sampler, 0)
    per_rank = []
    for rank in range(2):
        wrapper = DistributedSamplerWrapper(sampler, num_replicas=2, rank=rank, shuffle=True)
        per_rank.append(epoch(wrapper, 0))
    assert len(per_rank[0]) == len(per_rank[1]) == (len(all_batches) + 1) // 2
    received = per_rank[0] + per_rank[1]
    assert all(batch in all_batches for batch in received)
    assert all(batch in received for batch in all_batches)
    # a batch is repeated only to give both processes as many batches
    assert len(received) - len(all_batches) == len(all_batches) % 2


def test_a_dataset_reads_audio_up_to_max_duration_and_sorts_by_duration_when_asked(data):
    """Each waveform is read up to ``max_duration``, and an evaluation set (``sort``) comes in
    ascending duration, which keeps its batches' padding small (docs/training.md)."""
    manifest = str(data / "train.json")
    durations = {utt: entry["duration"] for utt, entry in load_manifest(manifest).items()}
    assert min(durations.values()) < 0.5 < max(durations.values())
    items = list(make_dataset(manifest, label_encoder(CLASSES), str(data), max_duration=0.5, sort=True))
    assert [durations[item["id"]] for item in items] == sorted(durations.values())
    for item in items:
        assert item["sig"].shape == (min(round(durations[item["id"]] * 16000), 8000),), item["id"]


def test_a_batch_is_padded_to_its_own_longest_item(data, tmp_path):
    hparams, _ = load(data, tmp_path, *DYNAMIC)
    os.makedirs(hparams["save_folder"], exist_ok=True)
    encoder = prepare_labels_and_weights(hparams)
    train_set = dataset(hparams, hparams["train_manifest"], encoder)
    opts = loader_options(hparams, train_set, train=True)
    loader = sb.dataio.dataloader.make_dataloader(train_set, **opts)
    text_encoder = hparams["model"].encoders["text"]
    sizes = set()
    for batch in loader:
        wavs, rel_lens = batch.sig
        lengths = [round(float(r) * wavs.shape[1]) for r in rel_lens]
        assert wavs.shape[1] == max(lengths)
        _, mask = text_encoder.states(batch.text)
        alone = [text_encoder.states([text])[1].shape[1] for text in batch.text]
        assert mask.shape[1] == max(alone) and mask.sum(1).tolist() == alone
        sizes.add(len(batch.id))
    assert len(sizes) > 1  # batches of several sizes: the lengths decide


def test_training_and_evaluation_with_dynamic_batches(data, tmp_path):
    out = tmp_path / "exp"
    argv = [
        CONFIG,
        *corpus_options(data, out),
        "--number_of_epochs=2",
        *DYNAMIC,
    ]
    cwd = os.getcwd()
    os.chdir(os.path.join(ROOT, "egs", "TEMPLATE"))  # conf/ paths are relative to the recipe
    try:
        train.main(argv)
        evaluate.main(argv + ["--eval_name=dyn"])
    finally:
        os.chdir(cwd)
    log = (out / "train_log.txt").read_text().splitlines()
    assert [line.split(",")[0] for line in log[:2]] == ["epoch: 1", "epoch: 2"]
    hparams, _ = load(data, tmp_path / "again", *DYNAMIC)
    train_set = dataset(hparams, hparams["train_manifest"], label_encoder(CLASSES))
    batches_per_epoch = len(loader_options(hparams, train_set, train=True)["batch_sampler"])
    assert batches_per_epoch < 12  # 12 utterances: several in some batches
    checkpoint = max((out / "save").glob("CKPT+*"))
    assert yaml.safe_load((checkpoint / "brain.ckpt").read_text())["optimizer_step"] == 2 * batches_per_epoch
    scores = json.loads((out / "eval_dyn" / "scores.json").read_text())
    assert scores["num_utterances"] == 4
