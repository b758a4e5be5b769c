"""Frozen-encoder feature cache: same training as without it, resumable, checked."""

import json
import os
import re

import pytest
import torch
from safetensors.torch import load_file

import crab.features
from crab.bin import evaluate, extract_features, train
from crab.experiment import parse_and_load
from crab.features import FeatureCache, FeatureCacheError
from tests import test_brain
from tests.conftest import ROOT, write_tiny_whisper
from tests.test_brain import CONFIG, corpus_options

# the tiny corpus fixture of test_brain, found by pytest under the same name; assigned, not
# imported, so that the test parameters of that name redefine no unused import (ruff F811)
data = test_brain.data

FROZEN = [
    "--freeze_speech_encoder=true",
    "--freeze_text_encoder=true",
    "--layer_weighting=weighted_sum",
    "--normalize_encoder_states=true",
]


def argv(data, out, *extra):
    """Training options (frozen encoders, unless ``extra`` says otherwise)."""
    given = {arg.split("=")[0] for arg in extra}
    frozen = [arg for arg in FROZEN if arg.split("=")[0] not in given]
    return [
        CONFIG,
        *corpus_options(data, out),
        "--batch_size=4",
        "--number_of_epochs=2",
        *frozen,
        *extra,
    ]


def run(main, args):
    cwd = os.getcwd()
    os.chdir(os.path.join(ROOT, "egs", "TEMPLATE"))  # conf/ paths are relative to the recipe
    try:
        main(args)
    finally:
        os.chdir(cwd)


def model_and_duration(data, out):
    cwd = os.getcwd()
    os.chdir(os.path.join(ROOT, "egs", "TEMPLATE"))
    try:
        _, _, _, hparams = parse_and_load(argv(data, out))
    finally:
        os.chdir(cwd)
    return hparams["model"], hparams["max_duration"]


def final_state(out):
    save = os.path.join(out, "save")
    latest = sorted(d for d in os.listdir(save) if d.startswith("CKPT"))[-1]
    return torch.load(os.path.join(save, latest, "model.ckpt"))


def test_cached_training_equals_end_to_end(data, tmp_path):
    cache = tmp_path / "cache"
    plain, cached = tmp_path / "plain", tmp_path / "cached"
    run(train.main, argv(data, plain))
    run(extract_features.main, argv(data, plain, f"--feature_cache={cache}", "--shard_size=7"))
    run(train.main, argv(data, cached, f"--feature_cache={cache}"))
    run(evaluate.main, argv(data, plain))
    run(evaluate.main, argv(data, cached, f"--feature_cache={cache}"))

    index = json.loads((cache / "index.json").read_text())
    assert sorted(index["branches"]) == ["speech", "text"] and len(index["shards"]) == 3  # 20 utts / 7

    def epochs(out):  # each epoch's losses and validation scores (without the lr)
        lines = (out / "train_log.txt").read_text().splitlines()
        return [line.split("train loss")[1] for line in lines if "train loss" in line]

    assert len(epochs(plain)) == 2 and epochs(plain) == epochs(cached)
    a, b = final_state(plain), final_state(cached)
    assert a.keys() == b.keys()
    for key in a:
        # equal up to float rounding: the encoders saw other batch paddings (~1e-5 after 6 Adam steps)
        torch.testing.assert_close(a[key], b[key], rtol=1e-3, atol=2e-4, msg=key)
    assert bool(b["encoders.speech.state_norm.ready"]) and bool(b["encoders.text.state_norm.ready"])
    # the learned layer weights moved, so the cached path trains them
    assert not torch.equal(
        b["encoders.speech.layer_weights.logits"], torch.zeros_like(b["encoders.speech.layer_weights.logits"])
    )
    scores = [json.loads((out / "eval_test" / "scores.json").read_text()) for out in (plain, cached)]
    assert scores[0] == pytest.approx(scores[1])


def test_an_evaluation_from_cached_states_is_kept_only_from_states_of_the_same_type(data, tmp_path):
    """Predictions from a float16 cache are not those of the encoders run on the audio (nor of a
    float32 cache): stage 6 run again without --feature_cache (the cache deleted to free the
    disk, say) evaluates again rather than keep them."""
    out, half = tmp_path / "run", tmp_path / "half"
    run(train.main, argv(data, out))
    run(extract_features.main, argv(data, out, f"--feature_cache={half}", "--dtype=float16"))
    assert FeatureCache(str(half)).get("train_angry_0", "speech").dtype == torch.float32  # read as float32
    predictions = out / "eval_test" / "predictions.csv"

    def evaluate_and_tell(*opts):
        """(was predictions.csv replaced, its text)"""
        before = predictions.stat().st_ino if predictions.exists() else None
        run(evaluate.main, argv(data, out, "--skip_if_current", *opts))
        return predictions.stat().st_ino != before, predictions.read_text()

    replaced, from_half = evaluate_and_tell(f"--feature_cache={half}")
    assert replaced and evaluate_and_tell(f"--feature_cache={half}") == (False, from_half)
    replaced, from_audio = evaluate_and_tell()
    assert replaced and from_audio != from_half
    record = json.loads((out / "eval_test" / "predictions.inputs.json").read_text())
    assert record["feature_cache"] is None


def test_an_evaluation_by_a_padding_dependent_encoder_is_kept_only_at_the_same_batching(data, tmp_path):
    """Whisper's last frames depend on the batch padding (so do the group-norm speech encoders',
    run without an attention mask): its predictions at --batch_size=1 are not those of batches of
    4, and stage 6 run again with another evaluation batching evaluates again."""
    speech = [f"--speech_encoder_source={write_tiny_whisper(tmp_path / 'whisper')}", "--modality=speech"]
    out = tmp_path / "run"
    run(train.main, argv(data, out, *speech))
    predictions = out / "eval_test" / "predictions.csv"

    def evaluate_and_tell(*opts):
        """(was predictions.csv replaced, its text)"""
        before = predictions.stat().st_ino if predictions.exists() else None
        run(evaluate.main, argv(data, out, *speech, "--skip_if_current", *opts))
        return predictions.stat().st_ino != before, predictions.read_text()

    replaced, batched = evaluate_and_tell()
    assert replaced and evaluate_and_tell() == (False, batched)
    replaced, alone = evaluate_and_tell("--batch_size=1")
    assert replaced and alone != batched
    assert evaluate_and_tell("--batch_size=1", "--num_workers=1") == (False, alone)  # workers: no matter


def assert_same_states(cache, other):
    """The two caches hold the same states, bit for bit, whatever their shards; returns how many."""
    first, second = (
        {k: v for shard in sorted(d.glob("*.safetensors")) for k, v in load_file(shard).items()}
        for d in (cache, other)
    )
    assert first.keys() == second.keys()
    for key in first:
        torch.testing.assert_close(first[key], second[key], rtol=0, atol=0)
    return len(first)


def test_interrupted_extraction_resumes_and_matches(data, tmp_path, monkeypatch):
    once, resumed = tmp_path / "once", tmp_path / "resumed"
    run(extract_features.main, argv(data, tmp_path / "x", f"--feature_cache={once}", "--shard_size=5"))

    real_save, calls = crab.features.save_file, []

    def dies_on_third_shard(tensors, path):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real_save(tensors, path)

    monkeypatch.setattr(crab.features, "save_file", dies_on_third_shard)
    with pytest.raises(SystemExit, match="^130$"):  # Ctrl-C, as the command ends on it
        run(extract_features.main, argv(data, tmp_path / "x", f"--feature_cache={resumed}", "--shard_size=5"))
    assert len(json.loads((resumed / "index.json").read_text())["shards"]) == 2
    monkeypatch.setattr(crab.features, "save_file", real_save)
    run(extract_features.main, argv(data, tmp_path / "x", f"--feature_cache={resumed}", "--shard_size=5"))

    index = json.loads((resumed / "index.json").read_text())
    utts = [u for shard in index["shards"].values() for u in shard]
    assert len(utts) == len(set(utts)) == 20

    assert_same_states(once, resumed)


def test_a_shard_is_written_once_its_states_reach_shard_mib(data, tmp_path):
    """The states of a shard are held in memory until it is written: with a size limit
    below one batch's states, each batch (4 utterances: --batch_size=4, in order of length)
    is its own shard; the cache holds the same states as one of 256-utterance shards."""
    whole, small = tmp_path / "whole", tmp_path / "small"
    run(extract_features.main, argv(data, tmp_path / "x", f"--feature_cache={whole}"))
    run(extract_features.main, argv(data, tmp_path / "x", f"--feature_cache={small}", "--shard_mib=0.001"))
    shards = json.loads((small / "index.json").read_text())["shards"]
    assert [len(utts) for utts in shards.values()] == [4] * 5
    assert len(json.loads((whole / "index.json").read_text())["shards"]) == 1
    assert assert_same_states(whole, small) == 40  # 20 utterances x speech, text


def test_cache_is_checked_against_the_model_and_manifests(data, tmp_path):
    # (a FeatureCacheError ends a command with its message: SystemExit "ERROR: ...")
    cache = tmp_path / "cache"
    run(
        extract_features.main,
        argv(data, tmp_path / "x", f"--feature_cache={cache}", "--manifests", str(data / "train.json")),
    )
    # other random weights (another seed): the weights digest differs
    with pytest.raises(SystemExit, match="weights_sha256"):
        run(train.main, argv(data, tmp_path / "a", f"--feature_cache={cache}", "--seed=7"))
    # an encoder that is fine-tuned cannot read cached states
    with pytest.raises(SystemExit, match="speech encoder is not frozen"):
        run(
            train.main,
            argv(data, tmp_path / "b", f"--feature_cache={cache}", "--freeze_speech_encoder=false"),
        )
    # utterances of a manifest that was not extracted
    with pytest.raises(SystemExit, match="lacks 4 utterance.*valid.json"):
        run(train.main, argv(data, tmp_path / "c", f"--feature_cache={cache}"))
    assert "train_0" not in FeatureCache(str(cache)) and "train_angry_0" in FeatureCache(str(cache))
    # an edited transcript: its cached text states are stale
    edited = json.loads((data / "train.json").read_text())
    edited["train_sad_2"]["text"] = "I feel very sad today"
    (tmp_path / "edited").mkdir()
    (tmp_path / "edited" / "train.json").write_text(json.dumps(edited))
    with pytest.raises(FeatureCacheError, match="1 utterance.*another text or audio.*train_sad_2"):
        FeatureCache(str(cache)).check(
            *model_and_duration(data, tmp_path), [str(tmp_path / "edited" / "train.json")]
        )


def test_layer_probe_scores_every_layer_on_validation(data, tmp_path, capsys):
    from crab.bin import layer_probe

    cache = tmp_path / "cache"
    run(extract_features.main, argv(data, tmp_path / "x", f"--feature_cache={cache}"))
    layer_probe.main(["--cache", str(cache), "--fold", str(data), "--branch", "speech"])
    out = capsys.readouterr().out
    assert "| layer 0 | layer 1 | layer 2 |" in out  # tiny WavLM: embeddings + 2 layers
    best = int(out.split("best layer on valid: ")[1].split()[0])
    means = [float(v) for v in out.split("| mean | ")[1].split(" |\n")[0].split(" | ")]
    assert len(means) == 3 and means[best] == max(means)


def test_top_layer_finetuning_trains_on_the_cache_as_end_to_end(data, tmp_path):
    whisper = write_tiny_whisper(tmp_path / "whisper")
    # batches of one: Whisper's last frames depend on the batch padding, which would differ
    top = [
        f"--speech_encoder_source={whisper}",
        "--modality=speech",
        "--freeze_speech_encoder=false",
        "--finetune_top_speech_layers=1",
        "--layer_weighting=2",
        "--lr=0.01",
        "--batch_size=1",
    ]
    cache = tmp_path / "cache"
    plain, cached = tmp_path / "plain", tmp_path / "cached"
    run(train.main, argv(data, plain, *top))
    run(extract_features.main, argv(data, plain, *top, f"--feature_cache={cache}"))
    run(train.main, argv(data, cached, *top, f"--feature_cache={cache}"))
    # the tuned layer changed, so the cache is checked against the frozen part only
    run(evaluate.main, argv(data, cached, *top, f"--feature_cache={cache}"))
    run(evaluate.main, argv(data, plain, *top))

    index = json.loads((cache / "index.json").read_text())
    assert index["branches"]["speech"]["finetune_top_layers"] == 1
    assert list(load_file(cache / "shard_00000.safetensors").values())[0].shape[-2:] == (1, 16)
    a, b = final_state(plain), final_state(cached)
    cwd = os.getcwd()
    os.chdir(os.path.join(ROOT, "egs", "TEMPLATE"))
    try:  # the same seed builds the same initial weights
        init = parse_and_load(argv(data, tmp_path / "init", *top))[3]["model"].state_dict()
    finally:
        os.chdir(cwd)
    speech = "encoders.speech.model."
    for key in (k for k in a if k.startswith(speech)):
        tuned = key.startswith((speech + "layers.1.", speech + "layer_norm."))
        assert torch.equal(a[key], init[key]) != tuned, key  # only the top layer (and final norm) trained
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-3, atol=2e-4, msg=key)
    scores = [json.loads((out / "eval_test" / "scores.json").read_text()) for out in (plain, cached)]
    assert scores[0] == pytest.approx(scores[1])
    # another layer setting reads other states: the cache says so
    with pytest.raises(SystemExit, match=r"\(finetune_top_layers, weights_sha256 differ\)"):
        run(
            train.main,
            argv(
                data,
                tmp_path / "frozen",
                *top,
                "--finetune_top_speech_layers=0",
                "--freeze_speech_encoder=true",
                f"--feature_cache={cache}",
            ),
        )


def test_cached_states_masks_keep_their_lengths_on_the_host():
    """A training batch of cached states goes to the device with masks that keep their
    lengths on the host, so that the GRU's packing does not wait for the device (it
    counted each mask there). The ``meta`` device stands in for CUDA: nothing on it can
    be read back."""
    from types import SimpleNamespace

    from speechbrain.dataio.batch import PaddedBatch

    from crab.brain import CrabBrain
    from crab.masks import host_lengths

    brain = SimpleNamespace(device="meta", modules=SimpleNamespace(model=lambda *inputs: inputs))
    items = [{"id": f"u{i}", "text": "a", "speech_states": torch.randn(5 - 2 * i, 2, 3)} for i in range(2)]
    wavs, wav_lens, _, states = CrabBrain.forward_model(brain, PaddedBatch(items))
    assert wavs is None and wav_lens is None
    cached, mask = states["speech"]
    assert cached.device.type == mask.device.type == "meta" and mask.shape == (2, 5)
    assert host_lengths(mask).tolist() == [5, 3]


def test_extraction_estimates_its_size_from_the_first_shard_and_warns_of_a_small_disk(
    data, tmp_path, monkeypatch, caplog
):
    cache = tmp_path / "cache"
    free = type("Usage", (), {"free": 10_000})  # bytes: less than the 3 shards still to write
    monkeypatch.setattr(crab.features.shutil, "disk_usage", lambda path: free)
    with caplog.at_level("INFO", logger="crab.features"):
        run(extract_features.main, argv(data, tmp_path / "x", f"--feature_cache={cache}", "--shard_size=5"))
    shards = sorted(cache.glob("shard_*.safetensors"))
    rest = sum(s.stat().st_size for s in shards[1:])
    estimate = re.search(r"about ([\d.e+]+) GB more to write", caplog.text)
    # first shard's bytes per second of audio x the seconds left: within 30% of what was written
    assert len(shards) == 4 and abs(float(estimate.group(1)) * 1e9 / rest - 1) < 0.3, (estimate, rest)
    warning = [
        r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "free" in r.getMessage()
    ]
    assert (
        len(warning) == 1 and "the disk has 1e-05 GB free" in warning[0] and "--dtype float16" in warning[0]
    )


def test_a_tokenizer_digests_the_same_after_a_padded_truncated_call(tokenizer_dir, tmp_path):
    """transformers leaves the truncation and padding of a fast tokenizer's last call in its
    serialisation: a run's or cache's recorded digest must not depend on whether the tokenizer
    was used before it was taken. A fresh tokenizer digests as before (recorded runs match)."""
    import hashlib

    from transformers import AutoTokenizer

    from crab.features import tokenizer_digest
    from crab.tokenizer import build_bpe_tokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    fresh = tokenizer_digest(tokenizer)
    assert fresh == hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()
    tokenizer(["a long sentence to cut", "short"], padding=True, truncation=True, max_length=3)
    assert tokenizer.backend_tokenizer.truncation is not None  # the state the digest leaves out
    assert tokenizer_digest(tokenizer) == fresh
    build_bpe_tokenizer(["other words entirely"] * 8, str(tmp_path / "other"), vocab_size=120)
    assert tokenizer_digest(AutoTokenizer.from_pretrained(tmp_path / "other")) != fresh


def test_extraction_runs_on_trainings_device_without_a_device_option(data, tmp_path, caplog):
    """No ``--device``: the device training would take (SpeechBrain's guess: the first GPU where
    there is one), not no device at all, which left the encoders where they were built (the CPU)."""
    cache = tmp_path / "cache"
    with caplog.at_level("INFO", logger="crab.features"):
        run(extract_features.main, argv(data, tmp_path / "x", f"--feature_cache={cache}"))
    [line] = [r.getMessage() for r in caplog.records if "to extract" in r.getMessage()]
    assert line.endswith(" on cpu"), line
