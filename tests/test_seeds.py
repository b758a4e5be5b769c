"""Seeds: a run's training data order comes from its seed, as a stream of its own that no
other seed's shares, and a resumed run keeps the order it started with."""

import os
from types import SimpleNamespace

import pytest
import yaml

from crab.bin import train
from crab.brain import CrabBrain
from crab.experiment import data_order_seed, parse_and_load
from crab.runconfig import ConfigError
from tests import test_brain
from tests.conftest import ROOT
from tests.test_brain import CLASSES, CONFIG, corpus_options
from tests.test_dynamic_batching import DYNAMIC

data = test_brain.data  # the tiny corpus fixture of test_brain (12 training utterances)


def trained_orders(data, out, monkeypatch, *options):
    """``{epoch: [the ids of each batch]}`` of a training by ``crab.bin.train`` with ``options``."""
    orders = {}
    fit_batch = CrabBrain.fit_batch

    def recording(self, batch):
        orders.setdefault(self.hparams.epoch_counter.current, []).append(list(batch.id))
        return fit_batch(self, batch)

    argv = [CONFIG, *corpus_options(data, out)]
    with monkeypatch.context() as patched:
        patched.setattr(CrabBrain, "fit_batch", recording)
        patched.chdir(os.path.join(ROOT, "egs", "TEMPLATE"))  # conf/ paths are relative to the recipe
        train.main([*argv, "--batch_size=4", "--number_of_epochs=2", *options])
    return orders


@pytest.mark.parametrize("batching", [[], DYNAMIC], ids=["fixed", "dynamic"])
def test_two_seeds_share_no_epoch_s_data_order(data, tmp_path, monkeypatch, batching):
    orders = {
        seed: trained_orders(data, tmp_path / f"seed{seed}", monkeypatch, f"--seed={seed}", *batching)
        for seed in (42, 43)
    }
    epochs = {seed: [orders[seed][epoch] for epoch in (1, 2)] for seed in orders}
    # SpeechBrain's samplers shuffle each epoch with their seed + the epoch: seeded with the
    # run's seed, seed 43's first epoch was seed 42's second
    assert not [order for order in epochs[43] if order in epochs[42]]
    assert epochs[42][0] != epochs[42][1]
    for seed in orders:  # the order's seed is in the run's checkpoints
        meta = yaml.safe_load(
            max((tmp_path / f"seed{seed}" / "save").glob("CKPT+*")).joinpath("CKPT.yaml").read_text()
        )
        assert meta["data_order_seed"] == data_order_seed(seed)


def test_a_resumed_run_keeps_the_data_order_it_started_with():
    assert data_order_seed(42) == data_order_seed(42) not in (42, data_order_seed(43))
    assert data_order_seed(42, SimpleNamespace(meta={"data_order_seed": 7})) == 7
    # a checkpoint of an earlier release: SpeechBrain's own shuffling, as the run started
    assert data_order_seed(42, SimpleNamespace(meta={"end-of-epoch": True})) is None


@pytest.mark.parametrize("seed", ["-1", "4294967296", "abc"])
def test_a_seed_numpy_cannot_take_is_an_error_before_anything_runs(seed, tmp_path, monkeypatch):
    """SpeechBrain's seed_everything takes a seed outside 0 to 2**32 - 1 as 0 (a run of seed 0
    again, under another name) and stops with a traceback on one that is no integer."""
    monkeypatch.chdir(os.path.join(ROOT, "egs", "TEMPLATE"))
    argv = [CONFIG, f"--data_root={tmp_path}", f"--data_folder={tmp_path}", f"--output_folder={tmp_path}/exp"]
    with pytest.raises(ConfigError, match=f"seed: {seed}: a seed is an integer from 0 to 4294967295"):
        parse_and_load([*argv, f"--classes=[{','.join(CLASSES)}]", f"--seed={seed}"])
    assert not (tmp_path / "exp").exists()
