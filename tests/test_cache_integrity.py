"""Feature cache integrity: audio replaced in place, corrupt shards, old caches, fsync."""

import json
import os
import re
import shutil
import types

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

import crab.features
from crab.bin import extract_features, train
from crab.checkpointing import Checkpointer
from crab.features import FeatureCache, FeatureCacheError
from crab.fileio import WriteError
from tests.conftest import write_tiny_whisper
from tests.test_brain import data  # noqa: F401  (the tiny corpus fixture)
from tests.test_features import argv, model_and_duration, run


@pytest.fixture
def corpus(data, tmp_path):  # noqa: F811
    """A copy of the tiny corpus, free to edit."""
    return shutil.copytree(data, tmp_path / "data")


def extract(corpus, cache, *extra):
    run(extract_features.main, argv(corpus, cache.parent / "x", f"--feature_cache={cache}", *extra))


def shards(cache):
    return {
        k: v.clone()
        for s in sorted(os.listdir(cache))
        if s.endswith(".safetensors")  # not memory-mapped
        for k, v in load_file(cache / s).items()
    }


def test_audio_replaced_in_place_with_the_same_length_is_an_error(corpus, tmp_path):
    cache = tmp_path / "cache"
    extract(corpus, cache)
    wav = corpus / "train_angry_0.wav"
    # touched (or moved back and forth): same bytes, new stat values -> hashed again, accepted
    os.utime(wav, ns=(1, 1))
    model, duration = model_and_duration(corpus, tmp_path)
    FeatureCache(str(cache)).check(model, duration, [str(corpus / "train.json")], str(corpus))
    # other samples, same length, same duration in the manifest: stale speech states
    audio, rate = sf.read(wav, dtype="float32")
    size, subtype = wav.stat().st_size, sf.info(str(wav)).subtype
    sf.write(wav, np.flip(audio).copy(), rate, subtype=subtype)
    assert wav.stat().st_size == size
    with pytest.raises(
        FeatureCacheError,
        match=r"utterance 'train_angry_0': its audio .*train_angry_0\.wav "
        r"changed since .* \(same size, other bytes: sha256",
    ):
        FeatureCache(str(cache)).check(model, duration, [str(corpus / "train.json")], str(corpus))
    # training stops with it (one line), and so does extraction into the same cache
    with pytest.raises(SystemExit, match="ERROR: utterance 'train_angry_0': its audio"):
        run(train.main, argv(corpus, tmp_path / "run", f"--feature_cache={cache}"))
    with pytest.raises(SystemExit, match="ERROR: utterance 'train_angry_0': its audio"):
        extract(corpus, cache)
    # another length: said so
    sf.write(wav, audio[: len(audio) // 2], rate)
    with pytest.raises(FeatureCacheError, match=r"train_angry_0.*\(size \d+ -> \d+ bytes\)"):
        FeatureCache(str(cache)).check(model, duration, [str(corpus / "train.json")], str(corpus))


def test_cache_without_audio_fingerprints_must_be_extracted_again(corpus, tmp_path):
    cache = tmp_path / "cache"
    extract(corpus, cache, "--manifests", str(corpus / "train.json"))
    index = json.loads((cache / "index.json").read_text())
    del index["audio"], index["version"]  # as an older crab wrote it
    (cache / "index.json").write_text(json.dumps(index))
    with pytest.raises(SystemExit, match="without audio fingerprints.*extract into a new directory"):
        run(
            train.main,
            argv(
                corpus,
                tmp_path / "run",
                f"--feature_cache={cache}",
                f"--valid_manifest={corpus / 'train.json'}",
            ),
        )
    with pytest.raises(SystemExit, match="without audio fingerprints.*extract into a new directory"):
        extract(corpus, cache, "--manifests", str(corpus / "train.json"))


def test_a_cache_of_another_version_is_refused_and_one_without_a_version_read_as_before(corpus, tmp_path):
    """A newer crab's cache layout is not read as this one's; an index from before the
    versions (audio fingerprints and all) is."""
    cache, train_json = tmp_path / "cache", str(corpus / "train.json")
    extract(corpus, cache, "--manifests", train_json)
    path, model_duration = cache / "index.json", model_and_duration(corpus, tmp_path)
    index = json.loads(path.read_text())
    assert index["version"] == crab.features.INDEX_VERSION
    path.write_text(json.dumps({k: v for k, v in index.items() if k != "version"}))
    FeatureCache(str(cache)).check(*model_duration, [train_json], str(corpus))
    path.write_text(json.dumps({**index, "version": 3}))
    newer = re.escape(f"{path} is of version 3, a layout this crab (version 2) does not know")
    way_on = "read the cache with the crab that wrote it, or extract into a new directory"
    with pytest.raises(FeatureCacheError, match=f"{newer}.*{way_on}"):
        FeatureCache(str(cache))
    with pytest.raises(SystemExit, match=f"ERROR: feature cache index {newer}"):
        run(
            train.main,
            argv(corpus, tmp_path / "run", f"--feature_cache={cache}", f"--valid_manifest={train_json}"),
        )
    with pytest.raises(SystemExit, match=f"ERROR: feature cache index {newer}"):
        extract(corpus, cache, "--manifests", train_json)
    assert json.loads(path.read_text())["version"] == 3  # left as it was


@pytest.mark.parametrize("damage", ["garbage", "truncated", "missing tensor"])
def test_corrupt_shard_is_named_on_reading_and_repaired_by_extraction(corpus, tmp_path, damage):
    cache = tmp_path / "cache"
    extract(corpus, cache, "--shard_size=7")
    before = shards(cache)
    index = json.loads((cache / "index.json").read_text())
    shard, utts = sorted(index["shards"].items())[1]
    path = cache / shard
    if damage == "garbage":
        path.write_bytes(b"\x00\xff" * 64 + path.read_bytes()[128:])
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:  # a valid file that lacks one listed utterance
        tensors = load_file(path)
        del tensors[f"{utts[0]}/speech"]
        crab.features.save_file(tensors, str(path))

    # reading: one line naming the shard (and the utterance) and the fix
    model, duration = model_and_duration(corpus, tmp_path)
    reader = FeatureCache(str(cache))
    fix = r"re-run the extraction \(crab.bin.extract_features with --feature_cache="
    if damage != "missing tensor":
        with pytest.raises(
            FeatureCacheError, match=rf"shard {path} \(utterance '{utts[0]}'\) is corrupt .*{fix}"
        ):
            reader.get(utts[0], "speech")
    with pytest.raises(SystemExit, match=rf"ERROR: feature cache shard {path} \(.*\) is corrupt .*{fix}"):
        run(train.main, argv(corpus, tmp_path / "run", f"--feature_cache={cache}"))

    # extraction: the shard is dropped, logged, and its utterances extracted again (only those)
    calls, warnings = [], []
    real = crab.features._encode_batch
    crab_encode = lambda model, branches, batch, *a: calls.extend(batch) or real(model, branches, batch, *a)  # noqa: E731
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(crab.features, "_encode_batch", crab_encode)
        patch.setattr(crab.features.logger, "warning", lambda msg, *a: warnings.append(msg % a))
        extract(corpus, cache, "--shard_size=7")
    assert sorted(calls) == sorted(utts)
    [warning] = warnings
    assert f"{shard} is corrupt" in warning and f"extracting its {len(utts)} utterance(s) again" in warning
    index = json.loads((cache / "index.json").read_text())
    assert shard not in index["shards"] and not path.exists() and len(index["shards"]) == 3
    assert (
        sorted(u for s in index["shards"].values() for u in s)
        == sorted(index["inputs"])
        == sorted(index["audio"])
    )
    after = shards(cache)
    assert after.keys() == before.keys()
    for key in before:
        torch.testing.assert_close(after[key], before[key], rtol=0, atol=0)
    FeatureCache(str(cache)).check(model, duration, [str(corpus / "train.json")], str(corpus))


def test_a_full_disk_stops_extraction_naming_the_shard_and_the_rerun_goes_on(corpus, tmp_path, monkeypatch):
    whole = tmp_path / "whole"
    extract(corpus, whole, "--shard_size=7")
    cache = tmp_path / "cache"
    real_save = crab.features.save_file
    written = []

    def full_after_one(tensors, path):
        if written:
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        written.append(os.path.basename(path))
        real_save(tensors, path)

    monkeypatch.setattr(crab.features, "save_file", full_after_one)
    full = rf"ERROR: cannot write {cache}/shard_00001.safetensors \(.*No space left on device"
    with pytest.raises(SystemExit, match=full):
        extract(corpus, cache, "--shard_size=7")
    assert sorted(os.listdir(cache)) == [".lock", "index.json", "shard_00000.safetensors"]
    # the index cannot be written either: the shard's error is the one told, the index's a warning
    real_write = crab.features.write_atomic

    def index_full(path, write):
        if os.path.basename(path) == "index.json":
            raise WriteError.of(path, OSError(28, "No space left on device"), "it is left as it was")
        return real_write(path, write)

    monkeypatch.setattr(crab.features, "write_atomic", index_full)
    (cache / "index.json").unlink()  # shard 0 is extracted again, shard 1 fails as before
    written.clear()
    with pytest.raises(SystemExit, match=full):
        extract(corpus, cache, "--shard_size=7")
    assert "index.json" not in os.listdir(cache)
    monkeypatch.setattr(crab.features, "write_atomic", real_write)
    monkeypatch.setattr(crab.features, "save_file", real_save)
    extract(corpus, cache, "--shard_size=7")
    after, before = shards(cache), shards(whole)
    assert after.keys() == before.keys()
    for key in before:
        torch.testing.assert_close(after[key], before[key], rtol=0, atol=0)


def index_writes(events):
    return sum(e[0] == "rename" and os.path.basename(e[2]) == "index.json" for e in events)


def test_extraction_rewrites_its_index_once_a_minute_not_after_every_shard(corpus, tmp_path, monkeypatch):
    # the index grows with the corpus: rewritten after each of its shards, it made an
    # extraction quadratic in the number of utterances
    events = _fsync_log(monkeypatch, crab.features)
    now = [0.0]
    monkeypatch.setattr(crab.features, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    extract(corpus, tmp_path / "quick", "--shard_size=3")  # 20 utterances: 7 shards within a minute
    assert index_writes(events) == 1
    events.clear()

    def a_minute_per_call():
        now[0] += crab.features.INDEX_INTERVAL_S
        return now[0]

    monkeypatch.setattr(crab.features, "time", types.SimpleNamespace(monotonic=a_minute_per_call))
    extract(corpus, tmp_path / "slow", "--shard_size=3")
    assert index_writes(events) == 7


def test_checking_a_cache_looks_each_utterance_up_once_whatever_the_number_of_shards(corpus, tmp_path):
    # each shard's utterances found by a pass over the manifest: shards x utterances lookups
    cache = tmp_path / "cache"
    extract(corpus, cache, "--shard_size=1")
    lookups = []

    class Counted(dict):
        def __getitem__(self, utt):
            lookups.append(utt)
            return super().__getitem__(utt)

    reader = FeatureCache(str(cache))
    reader.shard_of = Counted(reader.shard_of)
    model, duration = model_and_duration(corpus, tmp_path)
    reader.check(model, duration, [str(corpus / "train.json")], str(corpus))
    assert sorted(lookups) == sorted(json.loads((corpus / "train.json").read_text()))


def test_shards_a_killed_extraction_left_unindexed_are_removed(corpus, tmp_path):
    cache = tmp_path / "cache"
    extract(corpus, cache, "--shard_size=7")
    before = shards(cache)
    shutil.copy(cache / "shard_00000.safetensors", cache / "shard_00003.safetensors")  # not in the index
    extract(corpus, cache, "--shard_size=7")
    assert sorted(os.listdir(cache)) == [
        ".lock",
        "index.json",
        *(f"shard_0000{i}.safetensors" for i in range(3)),
    ]
    assert shards(cache).keys() == before.keys()


def _fsync_log(monkeypatch, module):
    """Record fsync and rename calls, by path, in order."""
    events = []
    real_fsync, real_replace, real_rename = os.fsync, os.replace, os.rename

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("rename", str(src), str(dst)))
        real_replace(src, dst)

    def rename(src, dst):
        events.append(("rename", str(src), str(dst)))
        real_rename(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "rename", rename)
    return events


def _assert_synced_renames(events, expect):
    renames = [i for i, e in enumerate(events) if e[0] == "rename"]
    assert len(renames) >= expect, events
    for i in renames:
        _, src, dst = events[i]
        synced_before = [e[1] for e in events[:i] if e[0] == "fsync"]
        assert src in synced_before, f"{src} renamed before fsync"
        if os.path.isdir(dst):  # a staged checkpoint: each of its files too
            assert all(os.path.join(src, f) in synced_before for f in os.listdir(dst)), src
        assert ("fsync", os.path.dirname(dst)) in events[i + 1 :], f"{dst}'s directory not fsynced after"


def test_shards_index_and_checkpoints_are_fsynced_before_their_rename(corpus, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    events = _fsync_log(monkeypatch, crab.features)
    extract(corpus, cache, "--shard_size=7", "--manifests", str(corpus / "train.json"))
    # 12 utterances: 2 shards, then the index (within a minute: written once)
    assert [os.path.basename(e[2]) for e in events if e[0] == "rename"] == [
        "shard_00000.safetensors",
        "shard_00001.safetensors",
        "index.json",
    ]
    _assert_synced_renames(events, 3)

    events.clear()
    checkpointer = Checkpointer(tmp_path / "save", {"model": torch.nn.Linear(2, 2)})
    checkpoint = checkpointer.save_checkpoint(meta={"n": 1})
    assert [e[2] for e in events if e[0] == "rename"] == [str(checkpoint.path)]
    _assert_synced_renames(events, 1)


def test_text_states_are_keyed_by_the_tokenizer_not_its_size(tmp_path):
    """Two folds' BPE tokenizers of one size map text to other ids: their text states
    are not each other's (the cache identity holds the tokenizer's digest)."""
    from transformers import AutoTokenizer

    from crab.encoders import TextEncoder
    from crab.features import encoder_identity
    from crab.tokenizer import build_bpe_tokenizer
    from tests.conftest import MINI_CONF

    def identity(tokenizer_dir):
        torch.manual_seed(0)  # the same random weights
        source = os.path.join(MINI_CONF, "roberta_tiny")
        return encoder_identity(TextEncoder(source, tokenizer=str(tokenizer_dir), pretrained=False))

    build_bpe_tokenizer(["I feel angry today", "so happy right now"] * 4, str(tmp_path / "a"), 300)
    build_bpe_tokenizer(["this makes me sad", "calm and neutral here"] * 4, str(tmp_path / "b"), 300)
    a, b = identity(tmp_path / "a"), identity(tmp_path / "b")
    assert a["vocab"] == b["vocab"] and a["tokenizer_sha256"] != b["tokenizer_sha256"]
    assert identity(tmp_path / "a") == a  # loaded again: the same
    # a tokenizer saved to pad on the left, padded on the right since: not its older cached states
    AutoTokenizer.from_pretrained(tmp_path / "a", padding_side="left").save_pretrained(tmp_path / "left")
    left = identity(tmp_path / "left")
    assert left["padding_side"] == "right" and "padding_side" not in a
    assert {k: v for k, v in left.items() if k != "padding_side"} == a


@pytest.mark.parametrize(
    "index, problem",
    [
        # the first caches' index: no per-utterance input digests, no version, no fingerprints
        ({"branches": {}, "dtype": "float32", "shards": {"shard_00000.safetensors": ["u1"]}}, "lacks inputs"),
        ("{not json", "is not JSON"),
        ([], "lacks branches, dtype, shards, inputs"),
        # a newer crab's layout, which may lack what this one reads: its version is the problem
        ({"version": 3, "states": {}}, "is of version 3, a layout this crab"),
        (
            {"version": "2", "branches": {}, "dtype": "float32", "shards": {}, "inputs": {}},
            'is of version "2"',
        ),
    ],
)
def test_an_index_this_crab_cannot_read_is_named_with_the_way_on(tmp_path, index, problem):
    text = index if isinstance(index, str) else json.dumps(index)
    (tmp_path / "index.json").write_text(text)
    named = re.escape(f"{tmp_path / 'index.json'} {problem}")
    with pytest.raises(FeatureCacheError, match=f"{named}.*extract into a new directory"):
        FeatureCache(str(tmp_path))


def test_audio_rewritten_with_its_modification_time_set_back_is_an_error(corpus, tmp_path):
    """Other bytes of the same size with the recorded mtime restored (as rsync -t or a copy
    keeping times does): the change time, which cannot be set back, has it hashed again."""
    cache = tmp_path / "cache"
    extract(corpus, cache, "--manifests", str(corpus / "train.json"))
    wav = corpus / "train_angry_0.wav"
    before = wav.stat()
    audio, rate = sf.read(wav, dtype="float32")
    sf.write(wav, np.flip(audio).copy(), rate, subtype=sf.info(str(wav)).subtype)
    os.utime(wav, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (wav.stat().st_size, wav.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    model, duration = model_and_duration(corpus, tmp_path)
    with pytest.raises(FeatureCacheError, match=r"train_angry_0.*\(same size, other bytes"):
        FeatureCache(str(cache)).check(model, duration, [str(corpus / "train.json")], str(corpus))


def test_a_changed_duration_or_transcript_or_another_dtype_is_refused_by_the_cache(corpus, tmp_path):
    """An utterance's cached states were computed from its audio up to its duration and its
    transcript: a manifest that gives another one is refused on reading and by an extraction
    into the same cache; so is an extraction of another dtype than the cache holds."""
    cache, train_json = tmp_path / "cache", corpus / "train.json"
    extract(corpus, cache, "--manifests", str(train_json))
    entries = json.loads(train_json.read_text())
    model, duration = model_and_duration(corpus, tmp_path)
    entries["train_sad_1"]["duration"] += 0.5
    train_json.write_text(json.dumps(entries))
    with pytest.raises(FeatureCacheError, match="1 utterance.*another text or audio.*train_sad_1"):
        FeatureCache(str(cache)).check(model, duration, [str(train_json)], str(corpus))
    entries["train_sad_1"]["duration"] -= 0.5
    entries["train_sad_1"]["text"] = "I feel very sad today"
    train_json.write_text(json.dumps(entries))
    with pytest.raises(SystemExit, match="utterance 'train_sad_1' has another text or audio"):
        extract(corpus, cache, "--manifests", str(train_json))
    with pytest.raises(
        SystemExit, match=r"already holds features of other encoders or dtype \(dtype float32, not float16\)"
    ):
        extract(corpus, cache, "--manifests", str(corpus / "valid.json"), "--dtype=float16")
    path = cache / "index.json"
    index = json.loads(path.read_text())
    index["branches"]["speech"]["config"]["hidden_act"] = (
        "relu"  # the model folder's config.json since edited
    )
    path.write_text(json.dumps(index))
    with pytest.raises(
        SystemExit, match=r"other encoders or dtype \(speech encoder: config\.hidden_act differ\)"
    ):
        extract(corpus, cache, "--manifests", str(corpus / "valid.json"))


def test_a_cache_whose_identity_lacks_a_key_the_model_has_is_refused(corpus, tmp_path):
    """Written before the identity held the tokenizer's digest (or padding side, or the tuned
    top layers): what the missing key would say is unknown, so the cache is not read."""
    cache, train_json = tmp_path / "cache", str(corpus / "train.json")
    extract(corpus, cache, "--manifests", train_json)
    model, duration = model_and_duration(corpus, tmp_path)
    path = cache / "index.json"
    index = json.loads(path.read_text())
    del index["branches"]["text"]["tokenizer_sha256"]
    path.write_text(json.dumps(index))
    with pytest.raises(FeatureCacheError, match=r"another text encoder setting \(tokenizer_sha256 differ\)"):
        FeatureCache(str(cache)).check(model, duration, [train_json], str(corpus))
    index = json.loads(path.read_text())
    del index["branches"]["speech"]["config"]  # before the config was recorded
    path.write_text(json.dumps(index))
    with pytest.raises(FeatureCacheError, match=r"another speech encoder setting \(config differ\)"):
        FeatureCache(str(cache)).check(model, duration, [train_json], str(corpus))


@pytest.mark.parametrize(
    "branch, setting, key",
    [
        ("speech", {"layer_weighting": 1}, "layer_weighting"),
        ("speech", {"normalize_waveform": "utterance"}, "normalize_waveform"),
        ("speech", {"max_duration": 3.0}, "max_duration"),
        ("text", {"layer_weighting": 1}, "layer_weighting"),
        ("text", {"max_length": 8}, "max_length"),
    ],
)
def test_a_cache_of_another_encoder_setting_is_refused(tmp_path, tokenizer_dir, branch, setting, key):
    """Each setting that changes a frozen encoder's states (the layer read, the waveform's
    normalisation, where the audio is cut, where the text is truncated) is part of the cache's
    identity: the same weights with another setting do not read the cache."""
    from crab.encoders import SpeechEncoder, TextEncoder
    from crab.features import INDEX_VERSION, encoder_identity
    from tests.conftest import MINI_CONF

    options = dict(setting)
    max_duration = options.pop("max_duration", 2.0)

    def encoder(**options):
        torch.manual_seed(0)  # the same random weights
        if branch == "speech":
            source = os.path.join(MINI_CONF, "wavlm_tiny")
            return SpeechEncoder(
                source, pretrained=False, freeze=True, **{"normalize_waveform": "none", **options}
            )
        source = os.path.join(MINI_CONF, "roberta_tiny")
        return TextEncoder(source, tokenizer=tokenizer_dir, pretrained=False, freeze=True, **options)

    index = {"version": INDEX_VERSION, "dtype": "float32", "shards": {}, "inputs": {}, "audio": {}}
    index["branches"] = {branch: encoder_identity(encoder(), 2.0)}
    (tmp_path / "index.json").write_text(json.dumps(index))
    model = types.SimpleNamespace(branches=[branch], encoders={branch: encoder(**options)})
    with pytest.raises(FeatureCacheError, match=rf"another {branch} encoder setting \({key} differ\)"):
        FeatureCache(str(tmp_path)).check(model, max_duration)


def test_identity_differences_name_each_config_entry_and_skip_those_one_side_lacks():
    from crab.features import identity_differences

    cached = {"class": "SpeechEncoder", "dim": 64, "config": {"hidden_act": "gelu", "num_attention_heads": 2}}
    assert identity_differences(cached, json.loads(json.dumps(cached))) == []
    edited = {**cached, "config": {"hidden_act": "relu", "num_attention_heads": 2}}
    assert identity_differences(cached, edited) == ["config.hidden_act"]
    # an entry a newer transformers adds (or an older one lacks) is not compared
    newer = {**cached, "config": {**cached["config"], "new_option": True}}
    assert identity_differences(cached, newer) == []
    older = {k: v for k, v in cached.items() if k != "config"}  # recorded before the config
    assert identity_differences(older, cached) == ["config"]
    assert identity_differences({**older, "dim": 32}, cached) == ["dim", "config"]
    # a feature extractor's config (Whisper's log-mel), entry by entry the same way
    whisper = {**cached, "features": {"n_fft": 400, "hop_length": 160}}
    assert identity_differences(whisper, {**whisper, "features": {"n_fft": 512, "hop_length": 160}}) == [
        "features.n_fft"
    ]
    assert identity_differences(cached, whisper) == ["features"]  # recorded before the features


def test_a_cache_of_an_encoder_whose_config_was_edited_is_refused(tmp_path):
    """The same weights under another config.json (another activation) compute other
    states: the cache names the entry. Training-only entries (layer drop, dropout, SpecAugment)
    may differ between the runs that share a cache."""
    from crab.encoders import SpeechEncoder
    from crab.features import INDEX_VERSION, encoder_identity
    from tests.conftest import MINI_CONF

    source = tmp_path / "wavlm"
    torch.manual_seed(0)
    SpeechEncoder(os.path.join(MINI_CONF, "wavlm_tiny"), pretrained=False).model.save_pretrained(source)
    edited = tmp_path / "wavlm_edited"
    shutil.copytree(source, edited)
    config = json.loads((edited / "config.json").read_text())
    assert config["hidden_act"] == "gelu"
    config.update(hidden_act="relu", layerdrop=0.3, hidden_dropout=0.2)
    (edited / "config.json").write_text(json.dumps(config))

    def encoder(folder, **options):
        return SpeechEncoder(str(folder), freeze=True, normalize_waveform="none", **options)

    index = {"version": INDEX_VERSION, "dtype": "float32", "shards": {}, "inputs": {}, "audio": {}}
    index["branches"] = {"speech": encoder_identity(encoder(source), 2.0)}
    (tmp_path / "index.json").write_text(json.dumps(index))
    model = types.SimpleNamespace(branches=["speech"], encoders={"speech": encoder(edited)})
    with pytest.raises(
        FeatureCacheError, match=r"another speech encoder setting \(config\.hidden_act differ\)"
    ):
        FeatureCache(str(tmp_path)).check(model, 2.0)
    model.encoders["speech"] = encoder(source, layerdrop=0.3)
    assert FeatureCache(str(tmp_path)).check(model, 2.0) == ["speech"]


def test_a_whisper_cache_of_another_log_mel_is_refused_and_an_unsupported_hop_named(tmp_path, caplog):
    """Whisper's states start from the feature extractor's log-mel: the same weights with another
    ``preprocessor_config.json`` (FFT window, dither) compute other states, so the cache names
    the entry. A hop or sampling rate other than Whisper's own is refused on loading; a dither,
    which makes the features random, is warned about."""
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    from crab.encoders import ModelSourceError, SpeechEncoder
    from crab.features import INDEX_VERSION, encoder_identity

    source = tmp_path / "whisper"
    write_tiny_whisper(source)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(source)
    WhisperModel(WhisperConfig.from_pretrained(source)).save_pretrained(source)  # weights to load

    def edited(name, **entries):
        folder = tmp_path / name
        shutil.copytree(source, folder)
        path = folder / "preprocessor_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **entries}))
        return folder

    def encoder(folder):
        return SpeechEncoder(str(folder), freeze=True, normalize_waveform="none")

    index = {"version": INDEX_VERSION, "dtype": "float32", "shards": {}, "inputs": {}, "audio": {}}
    index["branches"] = {"speech": encoder_identity(encoder(source), 2.0)}
    assert index["branches"]["speech"]["features"]["n_fft"] == 400
    (tmp_path / "index.json").write_text(json.dumps(index))
    model = types.SimpleNamespace(branches=["speech"], encoders={"speech": encoder(source)})
    assert FeatureCache(str(tmp_path)).check(model, 2.0) == ["speech"]
    model.encoders["speech"] = encoder(edited("n_fft", n_fft=512))
    with pytest.raises(FeatureCacheError, match=r"another speech encoder setting \(features\.n_fft differ\)"):
        FeatureCache(str(tmp_path)).check(model, 2.0)
    hop = r"preprocessor_config\.json\) reads 16000 Hz audio with a hop of 320 samples"
    with pytest.raises(ModelSourceError, match=hop):
        encoder(edited("hop", hop_length=320))
    assert "dither" not in caplog.text  # every encoder above had Whisper's dither 0.0
    encoder(edited("dither", dither=0.5))
    assert "adds dither 0.5 (preprocessor_config.json): Whisper's log-mel features are random" in caplog.text


def test_a_cache_extracted_with_other_library_releases_is_read_with_a_warning(corpus, tmp_path, caplog):
    """The same weights and config may compute other states under another transformers (or
    torch) release, which the identity cannot see: training and a further extraction say so."""
    from crab.checkpointing import library_versions

    cache, train_json = tmp_path / "cache", str(corpus / "train.json")
    extract(corpus, cache, "--manifests", train_json)
    path = cache / "index.json"
    index = json.loads(path.read_text())
    assert index["versions"] == library_versions()
    model, duration = model_and_duration(corpus, tmp_path)
    with caplog.at_level("WARNING", logger="crab"):
        FeatureCache(str(cache)).check(model, duration, [train_json], str(corpus))
    assert "other library releases" not in caplog.text
    index["versions"]["transformers"] = "4.30.2"
    path.write_text(json.dumps(index))
    with caplog.at_level("WARNING", logger="crab"):
        assert FeatureCache(str(cache)).check(model, duration, [train_json], str(corpus)) == [
            "speech",
            "text",
        ]
        extract(corpus, cache, "--manifests", str(corpus / "valid.json"))
    drift = [r.getMessage() for r in caplog.records if "other library releases" in r.getMessage()]
    assert len(drift) == 2, caplog.text
    for message in drift:
        assert message.startswith(f"feature cache {cache} was extracted with other library releases")
        assert f"transformers 4.30.2 then, {library_versions()['transformers']} now" in message
