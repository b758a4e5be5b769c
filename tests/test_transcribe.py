"""Stage 2 transcription (crab.bin.transcribe): offline, with tiny random-init ASR models.

The tiny Whisper's tokenizer is built here (printable ASCII, no merges) and its
generation config suppresses the special tokens and the space, so that every
transcript is non-empty; the CTC model is a tiny wav2vec 2.0 with a letter vocabulary.
"""

import errno
import json
import os
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from crab import asr
from crab.bin import transcribe
from crab.datadir import read_data_dir
from crab.dataprep import MIN_SAMPLES, validate
from tests.conftest import waiting_for_lock

SPECIAL = [
    "<|endoftext|>",
    "<|startoftranscript|>",
    "<|en|>",
    "<|fr|>",
    "<|translate|>",
    "<|transcribe|>",
    "<|startoflm|>",
    "<|startofprev|>",
    "<|nocaptions|>",
    "<|notimestamps|>",
]


def build_tiny_whisper(out_dir):
    """A random-init Whisper (d_model 16, one layer each side) with its processor, saved to ``out_dir``."""
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizer,
    )

    vocab = {chr(b): i for i, b in enumerate(range(33, 127))}  # byte-level BPE: these bytes map to themselves
    vocab["Ġ"] = len(vocab)  # the space
    tokenizer = WhisperTokenizer(vocab=vocab, merges=[], pad_token="<|endoftext|>")
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL})
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL}
    eos, sot = ids["<|endoftext|>"], ids["<|startoftranscript|>"]
    config = WhisperConfig(
        vocab_size=len(tokenizer),
        num_mel_bins=80,
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_target_positions=64,
        pad_token_id=eos,
        bos_token_id=eos,
        eos_token_id=eos,
        decoder_start_token_id=sot,
    )
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=sot,
        eos_token_id=eos,
        pad_token_id=eos,
        bos_token_id=eos,
        max_length=64,
        is_multilingual=True,
        lang_to_id={"<|en|>": ids["<|en|>"], "<|fr|>": ids["<|fr|>"]},
        task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        no_timestamps_token_id=ids["<|notimestamps|>"],
        prev_sot_token_id=ids["<|startofprev|>"],
        suppress_tokens=list(ids.values()) + [vocab["Ġ"]],
        begin_suppress_tokens=[],
    )
    model.save_pretrained(out_dir)
    WhisperProcessor(WhisperFeatureExtractor(feature_size=80), tokenizer).save_pretrained(out_dir)
    return str(out_dir)


def build_tiny_ctc(out_dir):
    """A random-init wav2vec 2.0 CTC model with a letter vocabulary, saved to ``out_dir``."""
    from transformers import (
        Wav2Vec2Config,
        Wav2Vec2CTCTokenizer,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2ForCTC,
        Wav2Vec2Processor,
    )

    os.makedirs(out_dir, exist_ok=True)
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4}
    vocab.update({c: i + 5 for i, c in enumerate("abcdefghijklmnopqrstuvwxyz'")})
    vocab_file = os.path.join(out_dir, "vocab.json")
    with open(vocab_file, "w") as f:
        json.dump(vocab, f)
    tokenizer = Wav2Vec2CTCTokenizer(vocab_file)
    config = Wav2Vec2Config(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=(16, 16),
        conv_stride=(5, 4),
        conv_kernel=(10, 8),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    Wav2Vec2ForCTC(config).save_pretrained(out_dir)
    Wav2Vec2Processor(Wav2Vec2FeatureExtractor(return_attention_mask=True), tokenizer).save_pretrained(
        out_dir
    )
    return str(out_dir)


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory):
    return build_tiny_whisper(tmp_path_factory.mktemp("tiny_whisper"))


def make_data_dir(root, n=5, seconds=0.5):
    """A data dir with ``n`` noise wavs in wav.scp (deliberately not in sorted order)."""
    data_dir = root / "data"
    data_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    utts = [f"utt{i}" for i in reversed(range(n))]
    lines = []
    for utt in utts:
        wav = root / "wav" / f"{utt}.wav"
        wav.parent.mkdir(exist_ok=True)
        sf.write(str(wav), (0.1 * rng.standard_normal(int(seconds * 16000))).astype("float32"), 16000)
        lines.append(f"{utt} {wav}\n")
    (data_dir / "wav.scp").write_text("".join(lines))
    return data_dir, utts


def transcribed_fold(tmp_path, monkeypatch, n, *args):
    """fold1's data dir of ``n`` utterances, transcribed by a fake model-a with ``args``."""
    fold1, utts = make_data_dir(tmp_path / "fold1", n=n)
    monkeypatch.setattr(asr, "load_transcriber", FakeModel().load)
    run(fold1, "model-a", *args)
    return fold1, utts


def another_fold(tmp_path, data_dir):
    """fold2: a data dir of ``data_dir``'s wav.scp alone."""
    fold2 = tmp_path / "fold2"
    fold2.mkdir()
    (fold2 / "wav.scp").write_text((data_dir / "wav.scp").read_text())
    return fold2


def read_lines(path):
    return [line.split(maxsplit=1) for line in path.read_text(encoding="utf-8").splitlines()]


def run(data_dir, model, *options):
    transcribe.main(["--data_dir", str(data_dir), "--model", str(model), *options])


@pytest.fixture(autouse=True)
def one_gpu(monkeypatch):
    """The tests' runs on cuda:0 (fake models) as on a machine where torch sees one GPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


def test_a_gpu_that_is_not_here_stops_before_the_model_is_loaded(tmp_path, monkeypatch, capsys):
    data_dir, _ = make_data_dir(tmp_path, n=1)
    fake = FakeModel()
    monkeypatch.setattr(asr, "load_transcriber", fake.load)
    with pytest.raises(SystemExit):
        run(data_dir, "model-a", "--device", "cuda:1")
    assert "--device cuda:1: there are 1 CUDA GPU(s) here (cuda:0 to cuda:0) (use --device cpu" in (
        capsys.readouterr().err
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        run(data_dir, "model-a", "--device", "cuda:0")
    assert "--device cuda:0: no CUDA GPU is available (use --device cpu; a recipe: --ngpu 0)" in (
        capsys.readouterr().err
    )
    assert fake.batches == [] and not (data_dir / "text.asr").exists()


class FakeModel:
    """Stands in for ``load_transcriber``: the n-th utterance it hears gets ``texts[n]``
    (default ``words <n>``); batch sizes are recorded; call ``fail_on_call`` is cut off."""

    def __init__(self, texts=None, fail_on_call=None):
        self.texts, self.fail_on_call, self.batches = texts or {}, fail_on_call, []

    def load(self, args):
        def transcriber(audios):
            first = sum(self.batches)
            self.batches.append(len(audios))
            if len(self.batches) == self.fail_on_call:
                raise KeyboardInterrupt
            return [self.texts.get(n, f"words {n}") for n in range(first, first + len(audios))]

        return transcriber


# ---------------------------------------------------------------- real (tiny) models


def test_whisper_writes_one_line_per_utterance_in_wav_scp_order(tmp_path, tiny_whisper, capsys):
    data_dir, utts = make_data_dir(tmp_path)
    run(data_dir, tiny_whisper, "--language", "english", "--batch_size", "2", "--max_new_tokens", "6")
    lines = read_lines(data_dir / "text.asr")
    assert [line[0] for line in lines] == utts
    assert all(len(line) == 2 and line[1].strip() for line in lines)  # suppressed specials: never empty
    assert (data_dir / "text.asr.model").read_text().strip() == tiny_whisper
    assert "5 utterances, 0 empty transcripts" in capsys.readouterr().out


def test_pipeline_backend_gives_the_same_greedy_transcripts(tmp_path, tiny_whisper):
    seq2seq, _ = make_data_dir(tmp_path / "seq2seq")
    pipe, _ = make_data_dir(tmp_path / "pipeline")
    run(seq2seq, tiny_whisper, "--language", "english", "--max_new_tokens", "6", "--backend", "seq2seq")
    run(pipe, tiny_whisper, "--language", "english", "--max_new_tokens", "6", "--backend", "pipeline")
    assert (pipe / "text.asr").read_text() == (seq2seq / "text.asr").read_text()


def test_ctc_model_is_detected_and_transcribes(tmp_path):
    model = build_tiny_ctc(tmp_path / "ctc")
    assert asr.detect_backend(model) == "ctc"
    data_dir, utts = make_data_dir(tmp_path, n=3)
    run(data_dir, model, "--batch_size", "2")
    assert [line[0] for line in read_lines(data_dir / "text.asr")] == utts


def test_language_goes_only_to_multilingual_whisper(tiny_whisper):
    from transformers import GenerationConfig

    whisper = GenerationConfig.from_pretrained(tiny_whisper)
    assert asr.language_kwargs(whisper, "english", None) == {"language": "english"}
    assert asr.language_kwargs(whisper, None, None) == {}
    assert asr.language_kwargs(GenerationConfig(), "english", "transcribe") == {}


# ---------------------------------------------------------------- resume and bookkeeping (fake model)


def test_audio_as_short_as_stage_3_accepts_reaches_the_model(tmp_path, monkeypatch):
    """``MIN_SAMPLES`` samples is long enough (stage 3 keeps it); one fewer gets an empty transcript."""
    data_dir, utts = make_data_dir(tmp_path, n=2)
    wavs = dict(line.split() for line in (data_dir / "wav.scp").read_text().splitlines())
    sf.write(wavs[utts[0]], np.full(MIN_SAMPLES, 0.1, dtype="float32"), 16000)
    sf.write(wavs[utts[1]], np.full(MIN_SAMPLES - 1, 0.1, dtype="float32"), 16000)
    fake = FakeModel()
    monkeypatch.setattr(asr, "load_transcriber", fake.load)
    run(data_dir, "fake")
    assert fake.batches == [1]
    assert read_lines(data_dir / "text.asr") == [[utts[0], "words 0"], [utts[1]]]


def test_interrupted_run_resumes_where_it_stopped(tmp_path, monkeypatch):
    data_dir, utts = make_data_dir(tmp_path, n=5)
    first = FakeModel(fail_on_call=2)
    monkeypatch.setattr(asr, "load_transcriber", first.load)
    with pytest.raises(SystemExit, match="^130$"):  # Ctrl-C, as the command ends on it
        run(data_dir, "fake", "--batch_size", "2")
    assert [line[0] for line in read_lines(data_dir / "text.asr")] == utts[:2]  # the first batch was kept
    with open(data_dir / "text.asr", "a", encoding="utf-8") as f:
        f.write(f"{utts[2]} cut off mid-li")  # a write cut off by the interruption
    second = FakeModel(texts={0: "third", 1: "fourth", 2: "fifth"})
    monkeypatch.setattr(asr, "load_transcriber", second.load)
    run(data_dir, "fake", "--batch_size", "2")
    assert second.batches == [2, 1]  # only the 3 missing utterances, the cut-off one included
    assert read_lines(data_dir / "text.asr") == [
        [utts[0], "words 0"],
        [utts[1], "words 1"],
        [utts[2], "third"],
        [utts[3], "fourth"],
        [utts[4], "fifth"],
    ]


class Killed(BaseException):
    """Stands in for a kill -9: nothing after the call that raises it runs."""


def test_a_kill_once_the_new_model_is_recorded_leaves_none_of_the_old_transcripts(tmp_path, monkeypatch):
    data_dir, _ = make_data_dir(tmp_path, n=2)
    monkeypatch.setattr(asr, "load_transcriber", FakeModel(texts={0: "old", 1: "old"}).load)
    run(data_dir, "model-a")
    real_replace = os.replace

    def killed_once_recorded(src, dst):
        real_replace(src, dst)
        if str(dst).endswith("text.asr.model"):
            raise Killed

    monkeypatch.setattr(os, "replace", killed_once_recorded)
    with pytest.raises(Killed):
        run(data_dir, "model-b", "--overwrite", "true")
    monkeypatch.setattr(os, "replace", real_replace)
    monkeypatch.setattr(asr, "load_transcriber", FakeModel(texts={0: "new", 1: "new"}).load)
    run(data_dir, "model-b")  # run again, resuming: model-a's transcripts are not taken as model-b's
    assert [line[1] for line in read_lines(data_dir / "text.asr")] == ["new", "new"]


def test_a_full_disk_stops_naming_the_transcripts_and_the_rerun_goes_on(tmp_path, monkeypatch):
    data_dir, utts = make_data_dir(tmp_path, n=5)
    monkeypatch.setattr(asr, "load_transcriber", FakeModel().load)
    out, real_fsync, synced = data_dir / "text.asr", os.fsync, []

    def full_after_one_batch(fd):  # a network file system reports a full disk when data is flushed
        if os.readlink(f"/proc/self/fd/{fd}") == str(out):
            if synced:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_after_one_batch)
    with pytest.raises(SystemExit, match=f"ERROR: cannot write {out} \\(No space left on device\\)"):
        run(data_dir, "fake", "--batch_size", "2")
    monkeypatch.setattr(os, "fsync", real_fsync)
    second = FakeModel(texts={0: "third", 1: "fourth", 2: "fifth"})
    monkeypatch.setattr(asr, "load_transcriber", second.load)
    run(data_dir, "fake", "--batch_size", "2")
    assert [line[0] for line in read_lines(out)] == utts and read_lines(out)[0] == [utts[0], "words 0"]


def test_finished_dir_does_not_load_the_model(tmp_path, monkeypatch):
    data_dir, _ = make_data_dir(tmp_path, n=2)
    monkeypatch.setattr(asr, "load_transcriber", FakeModel().load)
    run(data_dir, "fake")
    before = (data_dir / "text.asr").read_text()
    monkeypatch.setattr(asr, "load_transcriber", lambda args: pytest.fail("model loaded"))
    run(data_dir, "fake")
    assert (data_dir / "text.asr").read_text() == before


def test_a_second_run_on_a_data_dir_waits_and_takes_the_firsts_transcripts(tmp_path, monkeypatch, caplog):
    """Stage 2 of two experiments at once: the second waits for the first, then finds the
    transcripts made instead of making them again."""
    data_dir, _ = make_data_dir(tmp_path, n=2)
    monkeypatch.setattr(asr, "load_transcriber", FakeModel().load)
    with waiting_for_lock(data_dir / ".lock", lambda: run(data_dir, "fake"), caplog):
        assert sorted(p.name for p in data_dir.iterdir()) == [".lock", "wav.scp"]  # nothing begun
        first = tmp_path / "first"  # what the first run writes, made beside
        first.mkdir()
        shutil.copy(data_dir / "wav.scp", first)
        run(first, "fake")
        for name in ("text.asr", "text.asr.model", "text.asr.settings"):
            shutil.copy(first / name, data_dir)
        monkeypatch.setattr(asr, "load_transcriber", lambda args: pytest.fail("transcribed again"))
    assert (data_dir / "text.asr").read_text() == (first / "text.asr").read_text()


def test_utterances_of_other_folds_are_taken_from_their_transcripts(tmp_path, monkeypatch):
    """--reuse: an utterance transcribed by the same model in another fold's data
    directory, from the same wav.scp entry, is not transcribed again."""
    fold1, utts = make_data_dir(tmp_path / "fold1", n=4)
    monkeypatch.setattr(asr, "load_transcriber", FakeModel().load)
    run(fold1, "model-a")
    theirs = dict(read_lines(fold1 / "text.asr"))
    other_model, _ = make_data_dir(tmp_path / "other", n=4)
    (other_model / "wav.scp").write_text((fold1 / "wav.scp").read_text())
    monkeypatch.setattr(asr, "load_transcriber", FakeModel(texts={0: "from model-b"}).load)
    run(other_model, "model-b")
    fold2 = tmp_path / "fold2"
    fold2.mkdir()
    entries = dict(line.split() for line in (fold1 / "wav.scp").read_text().splitlines())
    moved = tmp_path / "elsewhere.wav"
    moved.write_bytes(open(entries[utts[1]], "rb").read())
    # utts[0] as in fold1, utts[1] from other audio, utts[2] no longer in fold1's wav.scp
    (fold2 / "wav.scp").write_text(
        f"{utts[0]} {entries[utts[0]]}\n{utts[1]} {moved}\n{utts[2]} {entries[utts[2]]}\n"
    )
    (fold1 / "wav.scp").write_text(f"{utts[0]} {entries[utts[0]]}\n{utts[1]} {entries[utts[1]]}\n")
    fake = FakeModel(texts={0: "new 0", 1: "new 1"})
    monkeypatch.setattr(asr, "load_transcriber", fake.load)
    run(fold2, "model-a", "--reuse", str(other_model), str(fold1))
    assert fake.batches == [2]  # utts[1] and utts[2]; utts[0] taken from fold1, not from model-b's
    assert read_lines(fold2 / "text.asr") == [
        [utts[0], theirs[utts[0]]],
        [utts[1], "new 0"],
        [utts[2], "new 1"],
    ]


def test_other_model_stops_unless_overwrite(tmp_path, monkeypatch):
    data_dir, _ = make_data_dir(tmp_path, n=2)
    monkeypatch.setattr(asr, "load_transcriber", FakeModel().load)
    run(data_dir, "model-a")
    with pytest.raises(SystemExit, match="made with 'model-a', not 'model-b'.*--overwrite true"):
        run(data_dir, "model-b")
    fake = FakeModel(texts={0: "new", 1: "new"})
    monkeypatch.setattr(asr, "load_transcriber", fake.load)
    run(data_dir, "model-b", "--overwrite", "true")
    assert fake.batches == [2]
    assert [line[1] for line in read_lines(data_dir / "text.asr")] == ["new", "new"]
    assert (data_dir / "text.asr.model").read_text().strip() == "model-b"


def test_other_decoding_settings_stop_unless_overwrite(tmp_path, monkeypatch):
    """A run begun on a GPU (dtype auto: float16) and resumed on the CPU (float32), or with
    other decoding options, would mix transcripts of two settings in one text.asr."""
    data_dir, utts = make_data_dir(tmp_path, n=3)
    monkeypatch.setattr(asr, "load_transcriber", FakeModel(fail_on_call=2).load)
    with pytest.raises(SystemExit, match="^130$"):  # Ctrl-C, as the command ends on it
        run(data_dir, "model-a", "--device", "cuda:0", "--batch_size", "2")
    recorded = json.loads((data_dir / "text.asr.settings").read_text())
    assert recorded["dtype"] == "float16" and recorded["num_beams"] == 1
    monkeypatch.setattr(asr, "load_transcriber", lambda args: pytest.fail("model loaded"))
    with pytest.raises(SystemExit, match=r"other decoding settings \(dtype 'float16' then, 'float32' now;"):
        run(data_dir, "model-a", "--device", "cpu")
    with pytest.raises(SystemExit, match="num_beams 1 then, 4 now"):
        run(data_dir, "model-a", "--device", "cuda:0", "--num_beams", "4")
    fake = FakeModel()
    monkeypatch.setattr(asr, "load_transcriber", fake.load)
    run(data_dir, "model-a", "--device", "cuda:0", "--dtype", "float16", "--batch_size", "2")  # the same
    assert fake.batches == [1]
    run(data_dir, "model-a", "--device", "cpu", "--overwrite", "true")
    assert fake.batches == [1, 3] and len(read_lines(data_dir / "text.asr")) == 3
    assert json.loads((data_dir / "text.asr.settings").read_text())["dtype"] == "float32"


@pytest.mark.parametrize("record", ["{not json", '["float16"]', '{"unrecorded_transcripts": -1}', "null"])
def test_a_broken_settings_record_is_named_before_any_model_loads(tmp_path, monkeypatch, record):
    """A hand-edited text.asr.settings that is JSON but no record of stage 2's (a list, a
    negative count) stopped with a traceback; like one that is no JSON, it is named."""
    data_dir, _ = make_data_dir(tmp_path, n=2)
    (data_dir / "text.asr.settings").write_text(record + "\n")
    monkeypatch.setattr(asr, "load_transcriber", lambda args: pytest.fail("model loaded"))
    with pytest.raises(SystemExit, match=r"text\.asr\.settings is not the JSON stage 2 writes"):
        run(data_dir, "model-a")


def test_a_run_cut_off_before_its_first_transcript_binds_no_model_or_settings(tmp_path, monkeypatch):
    """Stopped in its first batch (or an --overwrite run, in the moment after it emptied text.asr),
    stage 2 left the record of a model and settings with no transcript of theirs: a run with
    another model or on another device stopped as if it would mix transcripts."""
    data_dir, _ = make_data_dir(tmp_path, n=3)
    monkeypatch.setattr(asr, "load_transcriber", FakeModel(fail_on_call=1).load)
    with pytest.raises(SystemExit, match="^130$"):
        run(data_dir, "model-a", "--device", "cuda:0")
    assert (data_dir / "text.asr.model").read_text().strip() == "model-a"
    assert read_lines(data_dir / "text.asr") == []
    fake = FakeModel()
    monkeypatch.setattr(asr, "load_transcriber", fake.load)
    run(data_dir, "model-b", "--device", "cpu")
    assert fake.batches == [3] and len(read_lines(data_dir / "text.asr")) == 3
    assert (data_dir / "text.asr.model").read_text().strip() == "model-b"
    assert json.loads((data_dir / "text.asr.settings").read_text())["dtype"] == "float32"
    with pytest.raises(SystemExit, match="was made with 'model-b', not 'model-a'"):  # now it would mix
        run(data_dir, "model-a", "--device", "cpu")


def test_a_finished_dir_reruns_on_another_device_and_keeps_its_record(tmp_path, monkeypatch):
    data_dir, _ = make_data_dir(tmp_path, n=2)
    monkeypatch.setattr(asr, "load_transcriber", FakeModel().load)
    run(data_dir, "model-a", "--device", "cuda:0")
    before = (data_dir / "text.asr").read_text()
    monkeypatch.setattr(asr, "load_transcriber", lambda args: pytest.fail("model loaded"))
    run(data_dir, "model-a", "--device", "cpu")  # nothing left to decode: nothing mixed
    assert (data_dir / "text.asr").read_text() == before
    assert json.loads((data_dir / "text.asr.settings").read_text())["dtype"] == "float16"


def test_missing_audio_alone_loads_no_model(tmp_path, monkeypatch, capsys):
    data_dir, utts = make_data_dir(tmp_path, n=3)
    wavs = dict(line.split() for line in (data_dir / "wav.scp").read_text().splitlines())
    os.remove(wavs[utts[1]])
    monkeypatch.setattr(asr, "load_transcriber", FakeModel().load)
    run(data_dir, "model-a")
    monkeypatch.setattr(asr, "load_transcriber", lambda args: pytest.fail("model loaded"))
    run(data_dir, "model-a")  # the copy still lacks the file: listed again, no model loaded
    failed = (data_dir / "text.asr.failed").read_text()
    assert failed == f"{utts[1]}\tmissing audio file {wavs[utts[1]]}\n"
    assert "3 utterances, 0 empty transcripts, 1 failed" in capsys.readouterr().out
    assert len(read_lines(data_dir / "text.asr")) == 2


def test_many_missing_audio_files_log_ten_lines_and_a_count(tmp_path, monkeypatch, caplog):
    # a corpus copy that lacks 1000s of files: one warning each flooded the log
    data_dir, utts = make_data_dir(tmp_path, n=13)
    for path in dict(line.split() for line in (data_dir / "wav.scp").read_text().splitlines()).values():
        os.remove(path)
    monkeypatch.setattr(asr, "load_transcriber", lambda args: pytest.fail("model loaded"))
    run(data_dir, "model-a")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 11 and warnings[-1].startswith("... and 3 more missing audio files")
    assert len((data_dir / "text.asr.failed").read_text().splitlines()) == 13


def test_transcripts_of_an_older_release_resume_and_are_recorded_as_of_unknown_settings(
    tmp_path, monkeypatch, caplog
):
    """text.asr of a release that kept no settings record, completed now: the record says that
    its older transcripts' settings are unknown (it claimed the current ones for them), so that
    no other fold takes them; the transcripts added are still checked against the record."""
    data_dir, utts = make_data_dir(tmp_path / "fold1", n=3)
    (data_dir / "text.asr").write_text(f"{utts[0]} made before settings were kept\n")
    (data_dir / "text.asr.model").write_text("model-a\n")
    fake = FakeModel(fail_on_call=2)
    monkeypatch.setattr(asr, "load_transcriber", fake.load)
    with pytest.raises(SystemExit, match="^130$"):
        run(data_dir, "model-a", "--batch_size", "1")
    assert read_lines(data_dir / "text.asr")[0][1] == "made before settings were kept"
    record = json.loads((data_dir / "text.asr.settings").read_text())
    assert record["dtype"] == "float32" and record["unrecorded_transcripts"] == 1
    assert "1 transcripts made before stage 2 recorded its decoding settings" in caplog.text
    with pytest.raises(SystemExit, match="dtype 'float32' then, 'float16' now"):
        run(data_dir, "model-a", "--device", "cuda:0")
    monkeypatch.setattr(asr, "load_transcriber", FakeModel().load)
    run(data_dir, "model-a")  # resumed with the same settings: the count stays
    assert len(read_lines(data_dir / "text.asr")) == 3
    assert json.loads((data_dir / "text.asr.settings").read_text())["unrecorded_transcripts"] == 1
    fold2 = another_fold(tmp_path, data_dir)
    fake = FakeModel()
    monkeypatch.setattr(asr, "load_transcriber", fake.load)
    run(fold2, "model-a", "--reuse", str(data_dir))
    assert fake.batches == [3]  # none taken from a text.asr of partly unknown settings
    assert "unrecorded_transcripts" not in json.loads((fold2 / "text.asr.settings").read_text())
    run(data_dir, "model-a", "--overwrite", "true")
    assert "unrecorded_transcripts" not in json.loads((data_dir / "text.asr.settings").read_text())


def test_transcripts_no_record_names_the_model_of_are_not_taken_as_the_given_models(tmp_path, monkeypatch):
    """A text.asr written by hand or copied without its .model: recording --model as their maker
    would be a guess that stage 3 passes on to every run; the user names the model."""
    data_dir, utts = make_data_dir(tmp_path, n=2)
    (data_dir / "text.asr").write_text("".join(f"{utt} made elsewhere\n" for utt in utts))
    monkeypatch.setattr(asr, "load_transcriber", lambda args: pytest.fail("model loaded"))
    with pytest.raises(SystemExit, match=r"text.asr holds transcripts and no .*text.asr.model saying which"):
        run(data_dir, "model-a")
    assert not (data_dir / "text.asr.model").exists() and not (data_dir / "text.asr.settings").exists()
    # named by hand as another system's: kept for stage 3, and stage 2 with --model adds nothing to them
    (data_dir / "text.asr.model").write_text("my-own-asr\n")
    with pytest.raises(SystemExit, match=r"text.asr was made with 'my-own-asr', not 'model-a'"):
        run(data_dir, "model-a")
    # named by hand: kept; a run that adds to them records them as of unknown decoding settings
    (data_dir / "text.asr.model").write_text("model-a\n")
    (data_dir / "text.asr").write_text(f"{utts[0]} made elsewhere\n")
    monkeypatch.setattr(asr, "load_transcriber", FakeModel().load)
    run(data_dir, "model-a")
    assert json.loads((data_dir / "text.asr.settings").read_text())["unrecorded_transcripts"] == 1
    assert read_lines(data_dir / "text.asr") == [[utts[0], "made elsewhere"], [utts[1], "words 0"]]


@pytest.mark.parametrize("there", ["", "gone made elsewhere\n"])
def test_a_run_killed_after_writing_reused_transcripts_resumes(tmp_path, monkeypatch, there):
    """A run that keeps no transcript there (none, or only of utterances no longer in wav.scp and
    no record) records its model before it writes one: a kill just after the transcripts taken
    from another fold leaves no text.asr without its record."""
    fold1, utts = transcribed_fold(tmp_path, monkeypatch, 2)
    fold2 = another_fold(tmp_path, fold1)
    if there:
        (fold2 / "text.asr").write_text(there)

    real_write = asr.write_text_atomic

    def write_then_die(path, text):
        real_write(path, text)
        if path.endswith("text.asr") and text:  # killed once transcripts are written
            raise KeyboardInterrupt

    monkeypatch.setattr(asr, "load_transcriber", lambda args: pytest.fail("model loaded"))
    monkeypatch.setattr(asr, "write_text_atomic", write_then_die)
    with pytest.raises(SystemExit):  # the interrupt, as the command line ends on it
        run(fold2, "model-a", "--reuse", str(fold1))
    assert read_lines(fold2 / "text.asr") == read_lines(fold1 / "text.asr")
    monkeypatch.setattr(asr, "write_text_atomic", real_write)
    run(fold2, "model-a", "--reuse", str(fold1))
    assert (fold2 / "text.asr.model").read_text() == "model-a\n"


def test_other_folds_transcripts_of_other_settings_are_not_reused(tmp_path, monkeypatch):
    fold1, utts = transcribed_fold(tmp_path, monkeypatch, 2, "--num_beams", "4")
    fold2 = another_fold(tmp_path, fold1)
    fake = FakeModel(texts={0: "greedy 0", 1: "greedy 1"})
    monkeypatch.setattr(asr, "load_transcriber", fake.load)
    run(fold2, "model-a", "--reuse", str(fold1))
    assert fake.batches == [2] and read_lines(fold2 / "text.asr") == [
        [utts[0], "greedy 0"],
        [utts[1], "greedy 1"],
    ]


def test_reused_transcripts_are_not_added_to_ones_of_other_settings(tmp_path, monkeypatch):
    """All that is left taken from another fold (of the settings of this run) would join
    transcripts of other settings: it stops as a run that transcribes them would."""
    fold1, _ = transcribed_fold(tmp_path, monkeypatch, 3, "--device", "cpu")
    fold2 = another_fold(tmp_path, fold1)
    monkeypatch.setattr(asr, "load_transcriber", FakeModel(fail_on_call=2).load)
    with pytest.raises(SystemExit, match="^130$"):  # the first batch of two, made on a GPU, is kept
        run(fold2, "model-a", "--device", "cuda:0", "--batch_size", "2")
    monkeypatch.setattr(asr, "load_transcriber", lambda args: pytest.fail("model loaded"))
    with pytest.raises(SystemExit, match=r"other decoding settings \(dtype 'float16' then, 'float32' now;"):
        run(fold2, "model-a", "--device", "cpu", "--reuse", str(fold1))
    assert json.loads((fold2 / "text.asr.settings").read_text())["dtype"] == "float16"
    assert len(read_lines(fold2 / "text.asr")) == 2


def test_a_transcript_taken_from_another_fold_needs_no_audio(tmp_path, monkeypatch, capsys):
    """An utterance whose transcript --reuse takes is not transcribed: its audio, gone since,
    is no failure."""
    fold1, utts = transcribed_fold(tmp_path, monkeypatch, 2)
    fold2 = another_fold(tmp_path, fold1)
    os.remove(dict(read_lines(fold1 / "wav.scp"))[utts[0]])
    monkeypatch.setattr(asr, "load_transcriber", lambda args: pytest.fail("model loaded"))
    capsys.readouterr()
    run(fold2, "model-a", "--reuse", str(fold1))
    assert read_lines(fold2 / "text.asr") == read_lines(fold1 / "text.asr")
    assert not (fold2 / "text.asr.failed").exists()
    assert "2 utterances, 0 empty transcripts\n" in capsys.readouterr().out


def test_empty_outputs_and_bad_audio_give_empty_transcripts(tmp_path, monkeypatch, capsys):
    data_dir, utts = make_data_dir(tmp_path, n=4)
    wavs = dict(line.split() for line in (data_dir / "wav.scp").read_text().splitlines())
    os.remove(wavs[utts[1]])  # missing
    sf.write(wavs[utts[2]], np.zeros(100, dtype="float32"), 16000)  # shorter than the speech encoder's window
    fake = FakeModel(texts={1: "  "})  # utts[0] and utts[3] reach the model; the second comes back blank
    monkeypatch.setattr(asr, "load_transcriber", fake.load)
    run(data_dir, "fake")
    assert fake.batches == [2]
    # the missing file is a failure, not an empty transcript: no line, listed, tried again next run
    assert (data_dir / "text.asr").read_text() == f"{utts[0]} words 0\n{utts[2]}\n{utts[3]}\n"
    assert (data_dir / "text.asr.failed").read_text().startswith(f"{utts[1]}\tmissing audio file")
    assert "4 utterances, 2 empty transcripts, 1 failed" in capsys.readouterr().out
    # Stage 3 decides: here the skip policy leaves out all but the first.
    (data_dir / "utt2emo").write_text("".join(f"{u} happy\n" for u in utts))
    (data_dir / "utt2spk").write_text("".join(f"{u} spk1\n" for u in utts))
    kept = validate(read_data_dir(str(data_dir), "asr"), ["happy"], policy="skip")
    assert list(kept) == [utts[0]]


def test_transcripts_are_one_utf8_line_and_stale_utterances_go(tmp_path, monkeypatch):
    data_dir, utts = make_data_dir(tmp_path, n=2)
    (data_dir / "text.asr").write_text("gone already there\n", encoding="utf-8")
    fake = FakeModel(texts={0: "“Curly” — quotes\nand\ttabs ", 1: "é"})
    monkeypatch.setattr(asr, "load_transcriber", fake.load)
    run(data_dir, "fake")
    expected = f"{utts[0]} “Curly” — quotes and tabs\n{utts[1]} é\n"
    assert (data_dir / "text.asr").read_text(encoding="utf-8") == expected


def test_missing_wav_scp_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="missing .*wav.scp"):
        run(tmp_path, "fake")


def test_a_hub_model_neither_cached_nor_reachable_says_how_to_fail_at_once(monkeypatch):
    import argparse

    import transformers
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError

    from crab.encoders import ModelSourceError

    def unreachable(model):  # what transformers raises once huggingface_hub's retries are spent
        try:
            raise LocalEntryNotFoundError("An error happened while trying to locate the file on the Hub")
        except LocalEntryNotFoundError as err:
            raise OSError("We couldn't connect to 'https://huggingface.co' to load the files") from err

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", staticmethod(unreachable))
    args = argparse.Namespace(model="openai/whisper-tiny")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(ModelSourceError) as err:
        asr.load_transcriber(args)
    assert str(err.value).startswith("--model: 'openai/whisper-tiny' is neither a local directory")
    assert "not in the Hugging Face cache (the hub cannot be reached: offline, HF_HUB_OFFLINE=1" in str(
        err.value
    )
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelSourceError, match=r"^--asr_model: .*\(HF_HUB_OFFLINE is set\): give a local"):
        asr.load_transcriber(args, option="--asr_model")
