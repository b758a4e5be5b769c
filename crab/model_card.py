"""The README.md of a packaged model (a Hugging Face model card), from its metadata.json.

What someone who did not train the model needs before running it: the classes in output
order, the inputs it expects (16 kHz audio cut to ``max_duration``; gold or which ASR
model's transcripts), the encoders, how it was trained, how it scored on validation and
on the test sets evaluated with the same checkpoint (``crab.packaging.test_scores``), and
the lines that load it. Packaging writes it beside metadata.json and leaves it out of
the record of files, so an owner may edit it before sharing the model.
"""

import os

from crab.metrics import METRICS

CARD = "README.md"


def _row(name, value):
    return f"| {name} | {value} |"


def _encoder(record):
    text = f"`{record['source']}` ({record.get('model_type', 'unknown type')})"
    tokenizer = record.get("tokenizer")
    if tokenizer and tokenizer.get("source") != record["source"]:
        text += f", tokenizer `{tokenizer['source']}`"
    return text


def _transcripts(training):
    source, asr = training.get("text_source", "unknown"), training.get("asr_model")
    if source == "gold":
        return "trained on human (gold) transcripts: give it those (`crab-infer --text_mode gold`)"
    if source == "asr":
        return (
            f"trained on ASR transcripts of `{asr}`: give it that model's "
            f"(`crab-infer --text_mode asr --asr_model {asr}`)"
        )
    return "not recorded (a run from before the record): ask whoever trained it"


def _scores(scores):
    """The metrics of ``scores`` in words (a test set's also hold its num_utterances)."""
    return ", ".join(f"{k} {scores[k]:.4f}" for k in METRICS if isinstance(scores.get(k), (int, float)))


def run_name(output_folder):
    """``<tag>/<fold>/seed<seed>``: the last three parts of the run's folder, not the trainer's paths."""
    return "/".join([p for p in os.path.abspath(output_folder).split(os.sep) if p][-3:])


def model_card(metadata, max_duration=None):
    """The card of a package, from its ``metadata`` (``crab.packaging.package``'s) and the
    ``max_duration`` of its hyperparams.yaml."""
    training, encoders = metadata["training"], metadata["encoders"]
    modality = metadata["modality"]
    inputs = {"bimodal": "audio and its transcript", "speech": "audio", "text": "a transcript"}[modality]
    tag = "text-classification" if modality == "text" else "audio-classification"
    audio = "16 kHz mono (any rate and channel count is converted on reading)"
    if max_duration:
        audio += f"; the first {max_duration:g} s of each utterance, as in training"
    scores, versions = training.get("valid_scores") or {}, metadata.get("versions") or {}
    epoch = training.get("epoch")
    lines = [
        "---",
        "library_name: speechbrain",
        f"pipeline_tag: {tag}",
        "tags:",
        "- speech-emotion-recognition",
        "- crab",
        "---",
        "",
        f"# Crab emotion recognition: {len(metadata['classes'])} classes, {modality}",
        "",
        f"A Crab model ({inputs} in, one emotion out), packaged {metadata['created']} from the run "
        f"`{run_name(training['output_folder'])}` by `crab.bin.package`.",
        "",
        "| | |",
        "|---|---|",
        _row("classes (output order)", ", ".join(metadata["classes"])),
        _row("input", inputs),
    ]
    if "speech" in encoders:
        lines += [_row("audio", audio), _row("speech encoder", _encoder(encoders["speech"]))]
    if "text" in encoders:
        lines += [
            _row("transcripts", _transcripts(training)),
            _row("text encoder", _encoder(encoders["text"])),
        ]
    lines += [
        _row("parameters", f"{metadata['num_parameters']:,}"),
        _row(
            "checkpoint",
            (f"epoch {epoch}, " if epoch is not None else "") + f"best validation {training['ckpt_metric']}",
        ),
        _row("validation", _scores(scores) or "not recorded"),
        *(
            _row(f"test set {name} ({s.get('num_utterances', '?')} utterances)", _scores(s))
            for name, s in (training.get("test_scores") or {}).items()
        ),
        _row("code", f"crab {versions.get('crab', '?')}, commit {metadata.get('git_commit') or '?'}"),
        _row("versions", ", ".join(f"{k} {v}" for k, v in versions.items() if k != "crab")),
        "",
        "## Use",
        "",
        "With the `crab` package installed (the encoders are built from the configs here and",
        "get their weights from `model.ckpt`), from this directory or its Hugging Face Hub id",
        "(`owner/name`: downloaded whole, then checked against `metadata.json`):",
        "",
        "```python",
        "from crab.inference import CrabClassifier",
        "",
        'clf = CrabClassifier.from_hparams(source="DIRECTORY_OR_HUB_ID")',
    ]
    call = {
        "bimodal": 'clf.classify_file("utt.wav", text="the words spoken")',
        "speech": 'clf.classify_file("utt.wav")',
        "text": 'clf.classify_batch(None, ["the words spoken"])',
    }[modality]
    lines += [
        f"out_prob, score, index, text_lab = {call}",
        "```",
        "",
        "or on a Kaldi-style `wav.scp`: `crab-infer --model DIRECTORY_OR_HUB_ID --wav_scp wav.scp ...`",
        "(`crab-infer --help`). `metadata.json` records how the model was trained and every file",
        "of the package with its sha256; loading refuses a package that lost or changed one.",
        "",
    ]
    return "\n".join(lines)
