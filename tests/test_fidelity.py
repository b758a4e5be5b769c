"""The authors' code's behaviour (crab_reference_tiny.yaml) against the default (crab_tiny.yaml),
each checked by its effect: docs/fidelity.md lists them."""

import math
import os
import re

import numpy as np
import pytest
import soundfile as sf
import speechbrain as sb
import torch
from speechbrain.dataio.dataio import read_audio

import crab.bin.package as package_cli
from crab.experiment import (
    batches_per_epoch,
    check_accumulation,
    dataset,
    make_brain,
    parse_and_load,
    prepare_labels_and_weights,
)
from crab.inference import CrabClassifier
from crab.losses import ContrastiveLoss, supcon
from crab.metrics import compute_scores
from tests.conftest import ROOT, write_tone_corpus
from tests.test_brain import corpus_options
from tests.test_inference import save_run_config

TEMPLATE = os.path.join(ROOT, "egs", "TEMPLATE")
DEFAULT = os.path.join(TEMPLATE, "conf", "crab_tiny.yaml")
REFERENCE = os.path.join(TEMPLATE, "conf", "crab_reference_tiny.yaml")
CLASSES = ["angry", "happy", "neutral", "sad"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """12 training utterances (3 per class), 4 validation, 4 test; manifests and tokenizer."""
    root = tmp_path_factory.mktemp("fidelity_data")
    write_tone_corpus(root, root, {"train": 3, "valid": 1, "test": 1}, CLASSES, noise=0.05)
    return root


def in_template(fn, *args):
    cwd = os.getcwd()
    os.chdir(TEMPLATE)  # the configs' conf/ paths are relative to the recipe
    try:
        return fn(*args)
    finally:
        os.chdir(cwd)


def argv(config, data, out, *extra):
    return [
        config,
        *corpus_options(data, out),
        "--batch_size=4",
        *extra,
    ]


def load(config, data, out, *extra):
    _, run_opts, applied, hparams = in_template(parse_and_load, argv(config, data, out, *extra))
    os.makedirs(hparams["save_folder"], exist_ok=True)
    return hparams, run_opts, applied


def brain_for(config, data, out, *extra):
    hparams, run_opts, _ = load(config, data, out, *extra)
    encoder = prepare_labels_and_weights(hparams)
    return make_brain(hparams, run_opts), hparams, encoder


def train(config, data, out, *extra):
    """Train as crab.bin.train does (statistics first), saving the run's hyperparams.yaml;
    batches of 3, so that the reference's accumulation of 4 updates once per epoch."""
    hparams, run_opts, applied = load(config, data, out, "--batch_size=3", *extra)
    save_run_config(config, applied, out)
    encoder = prepare_labels_and_weights(hparams)
    brain = make_brain(hparams, run_opts)
    train_set = dataset(hparams, hparams["train_manifest"], encoder)
    check_accumulation(
        batches_per_epoch(train_set, hparams["train_dataloader_opts"]),
        brain.grad_accumulation_factor,
        hparams["train_manifest"],
    )
    brain.fit_state_normalization(
        train_set, hparams["eval_dataloader_opts"], hparams["state_norm_utterances"]
    )
    in_template(
        brain.fit,
        hparams["epoch_counter"],
        train_set,
        dataset(hparams, hparams["valid_manifest"], encoder, sort=True),
        None,
        hparams["train_dataloader_opts"],
        hparams["eval_dataloader_opts"],
    )
    return brain, hparams


def wavs_of(data, names):
    wavs = [read_audio(str(data / f"{n}.wav")) for n in names]
    padded = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True)
    return padded, torch.tensor([len(w) for w in wavs], dtype=torch.float) / padded.shape[1]


# ---------------------------------------------------------------- the table


def fidelity_keys():
    """``[(keys, defaults, references)]`` of docs/fidelity.md's "key: default / reference" cells
    (`a`, `b`: `x` / `y`, `z`); a default given once holds for every key of its cell."""
    with open(os.path.join(ROOT, "docs", "fidelity.md"), encoding="utf-8") as f:
        rows = [line for line in f if line.startswith("| ") and not line.startswith("| behaviour")]
    found = []
    for row in rows:
        for part in row.strip().strip("|").split(" | ")[4].split("; "):
            match = re.match(r"^((?:`\w+`(?:, )?)+): (.+ / .+)$", part.strip())
            if match:
                keys = re.findall(r"`(\w+)`", match[1])
                default, reference = (
                    re.findall(r"`([^`]+)`", side.split(" (")[0]) for side in match[2].split(" / ", 1)
                )
                found.append((keys, default * len(keys) if len(default) == 1 else default, reference))
    return found


def config_values(name):
    with open(os.path.join(TEMPLATE, "conf", name), encoding="utf-8") as f:
        return dict(re.findall(r"^(\w+):[ \t]*([^#\n]*?)[ \t]*(?:#.*)?$", f.read(), re.MULTILINE))


def test_every_documented_difference_is_set_as_docs_fidelity_says():
    table = fidelity_keys()
    assert len(table) >= 12  # the table's rows were read
    paper, base, reference = (
        config_values(c) for c in ("crab.yaml", "crab_base.yaml", "crab_reference.yaml")
    )
    tiny = [config_values(c) for c in ("crab_tiny.yaml", "crab_reference_tiny.yaml")]
    for keys, defaults, references in table:
        assert [paper[k] for k in keys] == [base[k] for k in keys] == defaults, keys
        assert [reference[k] for k in keys] == references, keys
        assert all(k in values for k in keys for values in tiny), keys


# ---------------------------------------------------------------- the model


@pytest.mark.parametrize(
    "config, depends_on_batch", [(DEFAULT, False), (REFERENCE, True)], ids=["default", "reference"]
)
def test_padding_a_batch_changes_only_the_reference_output(data, tmp_path, config, depends_on_batch):
    # (global waveform statistics have their own test: raw audio here)
    hparams, _, _ = load(config, data, tmp_path, "--waveform_normalization=none")
    model = hparams["model"].eval()
    short = "train_angry_0"
    alone = wavs_of(data, [short])
    longest = max((p for p in data.glob("train_*.wav")), key=lambda p: sf.info(str(p)).frames).stem
    batched = wavs_of(data, [short, longest])
    assert batched[0].shape[1] > alone[0].shape[1]
    with torch.no_grad():
        out_alone = model(*alone, texts=["I feel angry today"])[0][0]
        out_batched = model(*batched, texts=["I feel angry today", "and a much longer transcript than that"])[
            0
        ][0]
    close = torch.allclose(out_alone, out_batched, atol=1e-5, rtol=1e-4)
    assert close != depends_on_batch
    # text: padded to the batch's longest (default) or to text_max_length = 128 tokens (reference)
    states, mask = model.text_encoder.states(["I feel angry today"])
    assert (states.shape[1] == 128) == depends_on_batch and int(mask.sum()) < 128


def test_reference_model_legs_and_pooling(data, tmp_path):
    default = load(DEFAULT, data, tmp_path / "d")[0]
    reference = load(REFERENCE, data, tmp_path / "r", "--waveform_normalization=none")[0]
    hidden = 32
    # fusion leg: 32 -> 16 -> 32 by default, 32 -> 32 -> 32 (h wide) in the authors' code
    assert default["legs"].legs["fusion"][0].out_features == hidden // 2
    assert reference["legs"].legs["fusion"][0].out_features == hidden
    assert reference["legs"].legs["speech_pooled"][0].out_features == hidden  # 64 -> 32: as before
    model = reference["model"].eval()
    wavs, lens = wavs_of(data, ["train_sad_0", "train_happy_1"])
    with torch.no_grad():
        _, taps = model(wavs, lens, ["I feel sad today", "I feel happy today"])
        states, mask = model.encoders["speech"].states(wavs, lens)
        projected, _ = model.unimodal["speech"](model.encoders["speech"].select(states, mask), mask)
    # the unimodal leg reads the projection's mean over every frame, padded ones included
    torch.testing.assert_close(taps["speech_unimodal"], projected.mean(dim=1))
    # unscaled pooling: softmax(x . m), no 1 / sqrt(D)
    pooling = model.pooling["text"]
    x = torch.randn(2, 5, 2 * hidden)
    with torch.no_grad():
        pooled = pooling(x, torch.ones(2, 5, dtype=torch.bool))
        weights = torch.softmax(x @ pooling.query, dim=1)
    torch.testing.assert_close(pooled, (weights.unsqueeze(-1) * x).sum(dim=1))


def test_reference_fusion_leg_is_h_wide_at_any_hidden_dim(data, tmp_path):
    # the authors' fusion leg is bottleneck -> h -> output: it follows --hidden_dim
    reference = load(REFERENCE, data, tmp_path, "--waveform_normalization=none", "--hidden_dim=16")[0]
    fusion = reference["legs"].legs["fusion"]
    assert (fusion[0].in_features, fusion[0].out_features) == (32, 16)  # bottleneck_dim 32, h 16


# ---------------------------------------------------------------- training


@pytest.mark.parametrize(
    "config, clipped", [(DEFAULT, True), (REFERENCE, False)], ids=["default", "reference"]
)
def test_gradient_clipping(data, tmp_path, config, clipped):
    brain, _, _ = brain_for(config, data, tmp_path)
    brain.init_optimizers()
    head = brain.optimizers_dict["head"].param_groups[0]["params"]
    for p in head:
        p.grad = torch.full_like(p, 10.0)
    large = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in head]))
    seen = {}
    step = brain.scaler.step

    def record(optimizer, *args, **kwargs):
        grads = [p.grad for p in optimizer.param_groups[0]["params"] if p.grad is not None]
        if grads:  # the encoders' optimizers got no gradient here
            seen[id(optimizer)] = torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(g) for g in grads])
            )
        return step(optimizer, *args, **kwargs)

    brain.scaler.step = record
    brain.optimizers_step()
    norm = seen[id(brain.optimizers_dict["head"])]
    if clipped:
        assert norm <= 5.0 + 1e-4
    else:
        assert norm == pytest.approx(float(large))  # the large gradient survives


@pytest.mark.parametrize(
    "config, floors", [(DEFAULT, (0.0, 0.0)), (REFERENCE, (1e-6, 1e-7))], ids=["default", "reference"]
)
def test_learning_rate_reaches_its_floor(data, tmp_path, config, floors):
    brain, _ = train(config, data, tmp_path, "--number_of_epochs=2")
    head, encoder = floors
    assert brain.optimizers_dict["head"].param_groups[0]["lr"] == pytest.approx(head, abs=1e-15)
    for name in ("speech_encoder", "text_encoder"):
        assert brain.optimizers_dict[name].param_groups[0]["lr"] == pytest.approx(encoder, abs=1e-15)


# the epochs below are validated without being trained: the scheduler steps with no optimizer step
@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_reference_selects_the_best_macro_f1_checkpoint(data, tmp_path):
    """Two epochs whose validation results disagree: UAR prefers epoch 2, macro-F1 epoch 1."""
    targets = [0, 0, 0, 0, 0, 0, 1, 1, 2, 3]
    epochs = {1: [0, 0, 0, 0, 0, 0, 0, 1, 2, 3], 2: [0, 0, 0, 0, 1, 1, 1, 1, 2, 3]}
    scores = {e: compute_scores(targets, p, 4) for e, p in epochs.items()}
    assert scores[2]["UAR"] > scores[1]["UAR"] and scores[1]["macro_F1"] > scores[2]["macro_F1"]
    chosen = {}
    for name, config in (("default", DEFAULT), ("reference", REFERENCE)):
        brain, hparams, _ = brain_for(config, data, tmp_path / name)
        brain.init_optimizers()
        brain.train_stats = {"loss": 0.0}
        for epoch, predicted in epochs.items():
            hparams["epoch_counter"].current = epoch
            brain._predictions = [
                (
                    [f"u{i}" for i in range(len(targets))],
                    torch.tensor(targets),
                    torch.nn.functional.one_hot(torch.tensor(predicted), 4).float(),
                )
            ]
            brain.on_stage_end(sb.Stage.VALID, 0.0, epoch)
        hparams["epoch_counter"].current = 0
        brain.on_evaluate_start(max_key=hparams["ckpt_metric"])  # what crab.bin.evaluate and package load
        chosen[name] = hparams["epoch_counter"].current
    assert chosen == {"default": 2, "reference": 1}


def test_global_waveform_statistics_are_the_training_sets(data, tmp_path):
    brain, hparams, encoder = brain_for(REFERENCE, data, tmp_path)
    train_set = dataset(hparams, hparams["train_manifest"], encoder)
    brain.fit_state_normalization(train_set, hparams["eval_dataloader_opts"])
    samples = np.concatenate([sf.read(str(p), dtype="float32")[0] for p in sorted(data.glob("train_*.wav"))])
    norm = hparams["model"].speech_encoder.waveform_norm
    assert float(norm.mean) == pytest.approx(samples.astype(np.float64).mean(), rel=1e-5, abs=1e-8)
    assert float(norm.std) == pytest.approx(samples.astype(np.float64).std(), rel=1e-5)
    # and the model applies them: its input is (wav - mean) / std
    wav, lens = wavs_of(data, ["valid_sad_0"])
    assert abs(float(norm.mean)) > 0 or float(norm.std) != 1.0
    torch.testing.assert_close(norm(wav), (wav - norm.mean) / norm.std)
    # the default config passes raw audio to the tiny WavLM (no preprocessor config)
    default = load(DEFAULT, data, tmp_path / "default")[0]["model"].speech_encoder
    assert default.waveform_normalization == "none" and default.waveform_norm is None


@pytest.mark.parametrize("sample", [1, 2, 3])
def test_global_waveform_statistics_use_exactly_state_norm_utterances(data, tmp_path, sample):
    """``state_norm_utterances: k`` fits the statistics on the first k training utterances,
    not on every utterance of the batches that hold them (batches of 4 here)."""
    brain, hparams, encoder = brain_for(REFERENCE, data, tmp_path, f"--state_norm_utterances={sample}")
    train_set = dataset(hparams, hparams["train_manifest"], encoder)
    brain.fit_state_normalization(
        train_set, hparams["eval_dataloader_opts"], hparams["state_norm_utterances"]
    )
    samples = np.concatenate([train_set[i]["sig"].numpy() for i in range(sample)]).astype(np.float64)
    norm = hparams["model"].speech_encoder.waveform_norm
    assert float(norm.mean) == pytest.approx(samples.mean(), rel=1e-5, abs=1e-8)
    assert float(norm.std) == pytest.approx(samples.std(), rel=1e-5)


def test_encoder_state_statistics_use_exactly_state_norm_utterances(data, tmp_path):
    """The same for ``normalize_encoder_states``: the text encoder's statistics come from the
    first 2 training transcripts' tokens, not the batch of 4 that holds them."""
    brain, hparams, encoder = brain_for(
        DEFAULT, data, tmp_path, "--normalize_encoder_states=true", "--state_norm_utterances=2"
    )
    train_set = dataset(hparams, hparams["train_manifest"], encoder)
    brain.fit_state_normalization(
        train_set, hparams["eval_dataloader_opts"], hparams["state_norm_utterances"]
    )
    model = hparams["model"].eval()
    with torch.no_grad():
        frames = torch.cat(
            [model.text_encoder.states([train_set[i]["text"]])[0][0] for i in range(2)]
        ).double()  # (tokens, layers, dim), every token real: one transcript per batch
    norm = model.text_encoder.state_norm
    torch.testing.assert_close(norm.mean.double(), frames.mean(dim=0), rtol=1e-4, atol=1e-5)


def test_global_waveform_normalization_needs_its_statistics(data, tmp_path):
    hparams, _, _ = load(DEFAULT, data, tmp_path, "--waveform_normalization=global")
    with pytest.raises(RuntimeError, match="no statistics yet"):
        hparams["model"](*wavs_of(data, ["valid_sad_0"]), texts=["I feel sad today"])


# ---------------------------------------------------------------- SupCon


def hand_supcon(z, labels, tau, anchors, scale):
    """Khosla et al.'s L_out, one view, written out with loops."""
    n = len(z)
    unit = [[v / math.sqrt(sum(c * c for c in row)) for v in row] for row in z]
    sim = [
        [sum(a * b for a, b in zip(unit[i], unit[j], strict=True)) / tau for j in range(n)] for i in range(n)
    ]
    losses = []
    for i in range(n):
        positives = [j for j in range(n) if j != i and labels[j] == labels[i]]
        if not positives:
            losses.append(None)
            continue
        log_denominator = math.log(sum(math.exp(sim[i][a]) for a in range(n) if a != i))
        losses.append(-sum(sim[i][p] - log_denominator for p in positives) / len(positives))
    defined = [v for v in losses if v is not None]
    mean = sum(defined) / (len(defined) if anchors == "with_positive" else n)
    return mean * (tau / 0.07 if scale == "tau_ratio" else 1.0)


@pytest.mark.parametrize("anchors", ["with_positive", "all"])
@pytest.mark.parametrize("scale", ["tau_ratio", "none"])
def test_supcon_averaging_and_scale_against_hand_computed_values(anchors, scale):
    z = [[1.0, 0.2, -0.5], [0.8, 0.1, -0.1], [-0.3, 1.0, 0.4], [0.1, -0.7, 0.9], [0.5, 0.5, 0.5]]
    labels = [0, 0, 1, 2, 1]  # anchor 3 has no positive
    expected = hand_supcon(z, labels, 0.1, anchors, scale)
    loss = ContrastiveLoss("supcon", 0.1, supcon_anchors=anchors, supcon_scale=scale)(
        torch.tensor(z, dtype=torch.float64), torch.tensor(labels)
    )
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    # the two averages differ by the anchors without a positive: 4 of 5 here
    other = "all" if anchors == "with_positive" else "with_positive"
    assert expected != pytest.approx(hand_supcon(z, labels, 0.1, other, scale))
    assert float(supcon(torch.tensor(z, dtype=torch.float64), torch.tensor(labels), 0.1)) == pytest.approx(
        hand_supcon(z, labels, 0.1, "with_positive", "tau_ratio"), rel=1e-6
    )  # the function's own default


# ---------------------------------------------------------------- packaging


def test_reference_model_with_global_waveform_normalization_packages_and_reloads(data, tmp_path):
    run, model_dir = tmp_path / "run", tmp_path / "model"
    brain, hparams = train(REFERENCE, data, run, "--number_of_epochs=1")
    in_template(
        package_cli.main,
        [
            *argv(REFERENCE, data, run, "--number_of_epochs=1"),
            "--text_source",
            "gold",
            "--out",
            str(model_dir),
        ],
    )
    classifier = CrabClassifier.from_hparams(source=str(model_dir))
    packaged = classifier.mods.model.crab
    trained = brain.modules.model.eval()
    assert packaged.speech_encoder.waveform_normalization == "global"
    assert float(packaged.speech_encoder.waveform_norm.mean) == float(
        trained.speech_encoder.waveform_norm.mean
    )
    assert float(packaged.speech_encoder.waveform_norm.std) == float(trained.speech_encoder.waveform_norm.std)
    assert not packaged.padding_masks and packaged.text_encoder.padding == "max_length"
    wavs, lens = wavs_of(data, [f"test_{emo}_0" for emo in CLASSES])
    texts = [f"I feel {emo} today" for emo in CLASSES]
    with torch.no_grad():
        expected = torch.softmax(trained(wavs, lens, texts)[0], dim=-1)
    torch.testing.assert_close(
        classifier.classify_batch(wavs, texts=texts, wav_lens=lens)[0], expected, atol=1e-5, rtol=1e-5
    )
