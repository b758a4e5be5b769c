"""Which probability is which: each results line of crab-infer names the utterance it
classified, with that utterance's transcript and unpadded audio, and its probabilities
under the model's classes (most on a stand-in model, without training); the classifier pairs
each transcript with its audio, names its classes in the label encoder's order, and its ASR
model hears each utterance unpadded; packaging refuses a package that does not give the
trained model's probabilities."""

import copy
import csv
import json
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch

from crab import batch_inference
from crab.batch_inference import InferenceJob, classify_wav_scp, make_batches
from crab.inference import PACKAGED_YAML, AudioError, CrabClassifier, ModelFileError, load_audio_file
from crab.packaging import PackageError, check_package
from tests.test_inference import copy_package, data, refused, trained  # noqa: F401 - fixtures

# not in alphabetical order: a column or label sorted by name would show
CLASSES = ["sad", "angry", "happy"]


class StandInClassifier:
    """Scores from what it hears (the unpadded samples of ``wav_lens``) and reads (the
    transcript): another utterance's audio, its padding or its transcript change them."""

    device = "cpu"
    max_samples = None
    min_samples = 1

    def load_audio(self, path):
        return load_audio_file(path)

    def classify_batch(self, wavs, texts=None, wav_lens=None):
        if wav_lens is None:
            wav_lens = torch.ones(wavs.shape[0])
        if texts is not None and len(texts) != wavs.shape[0]:
            raise ValueError(f"{len(texts)} transcripts for {wavs.shape[0]} utterances")
        lengths = torch.round(wav_lens * wavs.shape[1]).long().tolist()
        logits = torch.tensor(
            [
                [n / 4000, float(wav[:n].abs().mean()) * 20, len(text) / 8]
                for wav, n, text in zip(wavs, lengths, texts or [""] * len(lengths), strict=True)
            ]
        )
        out_prob = torch.softmax(logits, dim=-1)
        return out_prob, *out_prob.max(dim=-1), None

    def transcribe_batch(self, wavs):
        return [f"heard {len(wav)} samples" for wav in wavs]

    def alone(self, path, text):
        """The probabilities of one utterance classified on its own."""
        return self.classify_batch(self.load_audio(path)[None], [text])[0][0]


@pytest.fixture
def inputs(tmp_path, monkeypatch):
    """A stand-in package, and five utterances of other lengths, loudness and transcripts,
    listed in wav.scp neither by length nor by name."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "hyperparams.yaml").write_text(
        f"{PACKAGED_YAML}\nclasses: [{', '.join(CLASSES)}]\nmodality: bimodal\nmax_duration: null\n"
    )
    rng = np.random.default_rng(0)
    texts, lines = {}, []
    for k, (utt, seconds) in enumerate([("u3", 0.3), ("u1", 0.9), ("u5", 0.5), ("u2", 0.7), ("u4", 0.4)]):
        path = tmp_path / f"{utt}.wav"
        wav = (0.05 + 0.1 * k) * rng.standard_normal(int(16000 * seconds))
        sf.write(path, wav.astype("float32"), 16000)
        lines.append(f"{utt} {path}\n")
        texts[utt] = "word " * (k + 1)
    (tmp_path / "wav.scp").write_text("".join(lines))
    (tmp_path / "text").write_text("".join(f"{u} {t}\n" for u, t in texts.items()))
    classifier = StandInClassifier()
    monkeypatch.setattr(batch_inference, "load_classifier", lambda job, device: classifier)
    return tmp_path, classifier, {u: " ".join(t.split()) for u, t in texts.items()}


def job(tmp_path, **options):
    files = {"model": "model", "wav_scp": "wav.scp", "out": "r.tsv", "text": "text"}
    paths = {key: str(tmp_path / name) for key, name in files.items()}
    return InferenceJob(**{**paths, "text_mode": "gold", "device": "cpu", **options})


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def assert_probs(row, expected):
    """The probabilities of the results ``row`` are ``expected``, under the model's classes."""
    probs = torch.tensor([float(row[f"prob_{c}"]) for c in CLASSES])
    torch.testing.assert_close(probs, expected, atol=2e-6, rtol=0)


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_each_line_is_its_utterances_audio_and_transcript(inputs, batch_size):
    tmp_path, classifier, texts = inputs
    assert classify_wav_scp(job(tmp_path, batch_size=batch_size)).now == 5
    results = rows(tmp_path / "r.tsv")
    assert [r["id"] for r in results] == ["u3", "u1", "u5", "u2", "u4"]  # wav.scp order
    for row in results:
        expected = classifier.alone(str(tmp_path / f"{row['id']}.wav"), texts[row["id"]])
        assert_probs(row, expected)
        assert row["predicted"] == CLASSES[int(expected.argmax())] and row["text"] == texts[row["id"]]
        assert float(row["score"]) == pytest.approx(float(expected.max()), abs=2e-6)


def test_each_line_has_the_transcript_of_its_own_audio(inputs):
    tmp_path, classifier, _ = inputs
    classify_wav_scp(job(tmp_path, text_mode="asr", text=None, batch_size=8))
    for row in rows(tmp_path / "r.tsv"):
        path = str(tmp_path / f"{row['id']}.wav")
        assert row["text"] == f"heard {len(load_audio_file(path))} samples"
        assert_probs(row, classifier.alone(path, row["text"]))


def test_an_empty_asr_transcript_fails_its_utterance_once(inputs, monkeypatch):
    tmp_path, classifier, _ = inputs

    def nothing_heard_in_u5(wavs):
        return ["" if len(wav) == 8000 else "words" for wav in wavs]

    monkeypatch.setattr(classifier, "transcribe_batch", nothing_heard_in_u5)
    tally = classify_wav_scp(job(tmp_path, text_mode="asr", text=None, batch_size=8))
    assert tally.now == 4 and [f.utt for f in tally.failed] == ["u5"]
    assert "empty transcript" in tally.failed[0].reason


def test_overwrite_classifies_everything_again(inputs, monkeypatch):
    tmp_path, classifier, texts = inputs
    classify_wav_scp(job(tmp_path))
    real = classifier.classify_batch
    # another model: it hears the audio at half the loudness
    monkeypatch.setattr(classifier, "classify_batch", lambda wavs, texts, lens: real(wavs / 2, texts, lens))
    tally = classify_wav_scp(job(tmp_path, overwrite=True))
    assert (tally.before, tally.now) == (0, 5)
    for row in rows(tmp_path / "r.tsv"):
        wav = load_audio_file(str(tmp_path / f"{row['id']}.wav"))
        assert_probs(row, real(wav[None] / 2, [texts[row["id"]]])[0][0])


def test_a_batch_that_fails_is_classified_one_by_one_with_its_own_transcripts(inputs, monkeypatch):
    tmp_path, classifier, texts = inputs
    real = classifier.classify_batch

    def fails_on_batches(wavs, texts=None, wav_lens=None):
        if wavs.shape[0] > 1:
            raise RuntimeError("out of memory")
        return real(wavs, texts, wav_lens)

    monkeypatch.setattr(classifier, "classify_batch", fails_on_batches)
    tally = classify_wav_scp(job(tmp_path, batch_size=8))
    assert tally.now == 5 and not tally.failed
    for row in rows(tmp_path / "r.tsv"):
        wav = load_audio_file(str(tmp_path / f"{row['id']}.wav"))
        assert_probs(row, real(wav[None], [texts[row["id"]]])[0][0])


def test_batches_go_longest_first_within_the_padded_seconds():
    items = [("b", 1.0), ("a", 10.0), ("c", 1.0), ("d", 2.0)]
    assert make_batches(items, 8, 0) == [["a", "d", "b", "c"]]
    # the padded audio of a batch is its longest utterance times its size
    assert make_batches(items, 8, 12.0) == [["a"], ["d", "b", "c"]]
    assert make_batches(items, 2, 0) == [["a", "d"], ["b", "c"]]


def test_the_jsonl_probabilities_are_named_by_the_models_classes(inputs):
    tmp_path, classifier, texts = inputs
    classify_wav_scp(job(tmp_path, out=str(tmp_path / "r.jsonl"), batch_size=2))
    for line in (tmp_path / "r.jsonl").read_text().splitlines():
        record = json.loads(line)
        expected = classifier.alone(str(tmp_path / f"{record['id']}.wav"), texts[record["id"]])
        assert list(record["probs"]) == CLASSES
        torch.testing.assert_close(torch.tensor(list(record["probs"].values())), expected, atol=2e-6, rtol=0)


def test_the_asr_model_hears_each_utterance_unpadded_and_in_order():
    def asr(audios):
        return [f"words {len(audio)}" for audio in audios]

    generator = torch.Generator().manual_seed(0)
    wavs = [0.1 * torch.randn(n, generator=generator) for n in (3000, 8000, 5000)]
    padded = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True)
    classifier = SimpleNamespace(asr=asr)
    expected = ["words 3000", "words 8000", "words 5000"]
    lens = torch.tensor([3000, 8000, 5000]) / 8000
    assert CrabClassifier.transcribe_batch(classifier, padded, lens) == expected
    assert CrabClassifier.transcribe_batch(classifier, wavs) == expected


def test_each_transcript_goes_with_its_audio(trained, data):  # noqa: F811
    classifier = CrabClassifier.from_hparams(source=str(trained[2]))
    utts, texts = ["test_sad_0", "test_angry_0"], ["I feel sad today", "I feel angry today"]  # not sorted
    wavs = [load_audio_file(str(data / f"{u}.wav")) for u in utts]
    padded = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True)
    lens = torch.tensor([len(w) for w in wavs]) / padded.shape[1]
    out_prob = classifier.classify_batch(padded, texts, lens)[0]
    for utt, text, probs in zip(utts, texts, out_prob, strict=True):
        torch.testing.assert_close(probs, classifier.classify_file(str(data / f"{utt}.wav"), text)[0][0])
    # a short utterance is refused as such, padded in a batch or not
    with pytest.raises(AudioError, match="utterance 1 of the batch: audio too short"):
        classifier.classify_batch(padded, texts, torch.tensor([1.0, 100 / padded.shape[1]]))


def test_a_label_encoder_in_another_order_is_refused(trained, tmp_path):  # noqa: F811
    """The probabilities are named in the label encoder's order: one holding the classes in
    another order than hyperparams.yaml (a package made before the record of its files) is refused."""
    model = copy_package(trained, tmp_path, recorded=False)
    (model / "label_encoder.ckpt").write_text(
        "'sad' => 0\n'angry' => 1\n'happy' => 2\n'neutral' => 3\n================\n'starting_index' => 0\n"
    )
    refused(model, ModelFileError, r"label_encoder.ckpt holds \['sad', 'angry', 'happy', 'neutral'\], but")


def test_results_with_the_classes_in_another_order_are_not_resumed(tmp_path):
    out = tmp_path / "r.tsv"
    other = batch_inference.Results(str(out), "tsv", sorted(CLASSES), "gold")
    out.write_text(other.header + other.line("u1", [0.2, 0.3, 0.5], "words"))
    with pytest.raises(batch_inference.UsageError, match="another header"):
        batch_inference.Results(str(out), "tsv", CLASSES, "gold").read()


def test_a_package_that_does_not_give_the_trained_models_probabilities_is_refused(trained):  # noqa: F811
    brain, _, model_dir, _ = trained
    other = copy.deepcopy(brain.modules.model)
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.mul_(1.5)
    with pytest.raises(PackageError, match="does not reproduce the trained one"):
        check_package(str(model_dir), other, {"speech": True, "text": True})
