"""The benchmark's machinery (``crab.bin.benchmark`` is its command line): speed and
memory of Crab's training and inference, measured side by side on encoders with
random weights built from configs; see ``crab.bin.benchmark`` for what is measured
and how. ``run(args)`` measures and returns the report.
"""

import contextlib
import datetime
import functools
import gc
import json
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback
import warnings

import numpy as np
import soundfile as sf
import torch
import transformers
import yaml
from transformers import RobertaConfig, WavLMConfig

from crab.brain import CrabBrain, fast_optimizer_options
from crab.encoders import SpeechEncoder, TextEncoder
from crab.experiment import dataset, feature_cache, parse_and_load, prepare_labels_and_weights
from crab.features import extract
from crab.legs import SupervisionLegs
from crab.losses import ContrastiveLoss, WeightedCrossEntropy, leg_losses, total_loss
from crab.model import Crab
from crab.runconfig import TagTolerantLoader
from crab.tokenizer import build_bpe_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONF = os.path.join(ROOT, "egs", "TEMPLATE", "conf")
MELD_CLASSES = ["anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"]
SAMPLE_RATE = 16000
AUDIO_SECONDS = (2.5, 3.5)
SIZES = ("tiny", "base", "large")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# Dense (no sparsity) tensor-core peaks in TFLOP/s from the vendors' data sheets:
# (bf16/fp16, tf32), matched in this order against torch.cuda.get_device_name.
PEAK_TFLOPS = [
    ("H200", (989.5, 494.7)),
    ("H100 PCIe", (756.0, 378.0)),
    ("H100", (989.5, 494.7)),  # SXM
    ("A100", (312.0, 156.0)),
    ("L40S", (362.1, 183.0)),
    ("RTX 4090", (165.2, 82.6)),
]

# Short conversational lines like MELD's (written for this benchmark).
SENTENCES = [
    "Oh my God, you guys, I got the job!",
    "Wait, you did what with my sandwich?",
    "I don't want to talk about it right now.",
    "Could you please pass me the remote?",
    "That is the worst idea I have ever heard.",
    "Are you serious? She actually said yes?",
    "I think I left my keys at the coffee house.",
    "No, no, no, that is not what I meant at all.",
    "Hey, how was your date last night?",
    "Get away from me, I mean it!",
    "I'm so sorry, I didn't know you were here.",
    "Well, that was a surprise, wasn't it?",
    "We should probably get going before it rains.",
    "You ate the last piece of cheesecake again?",
    "I just miss him so much, you know?",
    "Okay, everybody, calm down for one second.",
]

STEP_ROWS = {
    "train_legs": "train step, 5 MPCL legs (ours: masked, dynamic padding)",
    "train_ce": "train step, CE only",
    "train_reference": "train step, 5 MPCL legs, text padded to 128, nothing masked (reference)",
    "infer_full": "inference, full model",
    "infer_encoders": "inference, the two encoders only",
}
INFER_ROWS = ("infer_full", "infer_encoders")  # --infer_only
COMPILE_ROWS = ("train_legs", "train_ce")  # --compile: each configuration compiles in each process
EPOCH_ROWS = {
    "extract": "feature extraction (paid once per corpus)",
    "epoch_end_to_end": "epoch, frozen encoders, end to end",
    "epoch_cached": "epoch, frozen encoders, cached features",
}
# (label, numerator, denominator, target or None)
RATIOS = [
    ("a. train step, 5 legs / CE only", "train_legs", "train_ce", 1.05),
    ("b. inference, full model / encoders only", "infer_full", "infer_encoders", 1.10),
    ("c. train step, ours / reference padding", "train_legs", "train_reference", None),
    ("d. epoch, cached / end to end", "epoch_cached", "epoch_end_to_end", None),
]
HEAD_KEYS = (
    "hidden_dim",
    "num_heads",
    "attention_dropout",
    "scaled_pooling",
    "bottleneck_dim",
    "dropout",
    "unimodal_leg_input",
    "leg_names",
    "leg_output_dim",
    "contrastive_loss",
    "temperature",
    "alpha",
    "lr",
    "weight_decay",
    "max_grad_norm",
    "text_max_length",
    "freeze_feature_extractor",
)


class BenchSpeechEncoder(SpeechEncoder):
    """SpeechEncoder with a ``reference`` mode: an all-True mask goes downstream,
    as in the reference code, which masks nothing after the encoders."""

    reference = False

    def _states(self, wavs, wav_lens):
        states, mask = super()._states(wavs, wav_lens)
        return states, torch.ones_like(mask) if self.reference else mask


class _PadToMaxLength:
    """Tokenizer proxy that pads every batch to ``max_length`` tokens, whatever
    padding the caller asks for (the reference code's tokenization)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, texts, **kwargs):
        return self.tokenizer(texts, **{**kwargs, "padding": "max_length"})

    def __len__(self):
        return len(self.tokenizer)


class BenchTextEncoder(TextEncoder):
    """TextEncoder with a ``reference`` mode: every transcript is padded to
    ``max_length`` tokens; the encoder sees the attention mask, nothing
    downstream does (an all-True mask)."""

    reference = False

    def _states(self, texts):
        if not self.reference:
            return super()._states(texts)
        tokenizer, self.tokenizer = self.tokenizer, _PadToMaxLength(self.tokenizer)
        try:
            states, _ = super()._states(texts)
        finally:
            self.tokenizer = tokenizer
        return states, torch.ones(states.shape[:2], dtype=torch.bool, device=states.device)


def head_settings(hparams_file):
    """The head, legs, loss and optimizer settings of a recipe config."""
    with open(hparams_file, encoding="utf-8") as f:
        values = yaml.load(f, Loader=TagTolerantLoader)
    missing = [k for k in HEAD_KEYS if values.get(k) is None]
    if missing:
        raise ValueError(f"{hparams_file}: no plain value for {missing}")
    return {k: values[k] for k in HEAD_KEYS}


# WavLM Large and RoBERTa Large (microsoft/wavlm-large, roberta-large): what differs
# from the config classes' base-size defaults.
LARGE = {
    "speech": dict(
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        conv_bias=True,
        num_conv_pos_embedding_groups=16,
        layer_norm_eps=1e-5,
    ),
    "text": dict(
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
        layer_norm_eps=1e-5,
    ),
}


def write_encoder_configs(out_dir, size):
    """``(speech_dir, text_dir, tokenizer_dir)``: config-only model directories and a
    BPE tokenizer trained on ``SENTENCES`` (its vocabulary fits the text model's)."""
    if size == "tiny":
        speech_dir, text_dir = os.path.join(CONF, "wavlm_tiny"), os.path.join(CONF, "roberta_tiny")
    else:
        speech_dir, text_dir = (
            os.path.join(out_dir, f"wavlm_{size}"),
            os.path.join(out_dir, f"roberta_{size}"),
        )
        large = size == "large"
        # layerdrop 0: every step runs all layers, so steps are comparable.
        WavLMConfig(layerdrop=0.0, **(LARGE["speech"] if large else {})).save_pretrained(speech_dir)
        RobertaConfig(
            max_position_embeddings=514, type_vocab_size=1, **(LARGE["text"] if large else {})
        ).save_pretrained(text_dir)
    tokenizer_dir = os.path.join(out_dir, "tokenizer")
    build_bpe_tokenizer(SENTENCES * 4, tokenizer_dir, vocab_size=1000)
    return speech_dir, text_dir, tokenizer_dir


def make_waveforms(count, rng, seconds=AUDIO_SECONDS):
    """``count`` noise waveforms of ``seconds`` (min, max) each (float32 numpy arrays)."""
    low, high = int(seconds[0] * SAMPLE_RATE), int(seconds[1] * SAMPLE_RATE)
    lengths = rng.integers(low, high, count) if high > low else np.full(count, low)
    return [(0.1 * rng.standard_normal(n)).astype("float32") for n in lengths]


class Bench:
    """One Crab, its legs and losses, and one batch, on ``device``."""

    def __init__(self, setup, with_legs=True):
        head, device = setup["head"], setup["device"]
        torch.manual_seed(0)
        # random weights drawn where they run: drawn on the CPU, WavLM Large and RoBERTa
        # Large took seconds each, and a benchmark builds the model up to nine times
        with torch.device(device):
            self._build(setup, head, with_legs)
        self.alpha, self.max_grad_norm = head["alpha"], head["max_grad_norm"]
        wavs = [torch.from_numpy(w) for w in setup["wavs"]]
        self.wavs = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True).to(device)
        self.wav_lens = torch.tensor([len(w) / self.wavs.shape[1] for w in wavs])  # on the host, as CrabBrain
        self.texts = setup["texts"]
        self.labels = torch.tensor(setup["labels"], device=device)
        self.optimizers = None
        self.encoders = dict(self.model.encoders)  # encoders-only inference
        if setup.get("compile"):
            self._compile(setup["compile"])
        self.device_type = torch.device(device).type
        self.dtype = PRECISIONS[setup["precision"]]
        self.scaler = torch.amp.GradScaler(self.device_type, enabled=setup["precision"] == "fp16")

    def _build(self, setup, head, with_legs):
        """The model, its legs and losses, on the default device."""
        self.model = Crab(
            num_classes=len(MELD_CLASSES),
            speech_encoder=lambda: BenchSpeechEncoder(
                setup["speech_dir"],
                pretrained=False,
                freeze_feature_extractor=head["freeze_feature_extractor"],
                layerdrop=0.0,
                gradient_checkpointing=setup["gradient_checkpointing"],
            ),
            text_encoder=lambda: BenchTextEncoder(
                setup["text_dir"],
                tokenizer=setup["tokenizer_dir"],
                pretrained=False,
                max_length=head["text_max_length"],
                gradient_checkpointing=setup["gradient_checkpointing"],
            ),
            hidden_dim=head["hidden_dim"],
            num_heads=head["num_heads"],
            attention_dropout=head["attention_dropout"],
            scaled_pooling=head["scaled_pooling"],
            bottleneck_dim=head["bottleneck_dim"],
            dropout=head["dropout"],
            unimodal_leg_input=head["unimodal_leg_input"],
        )
        names = head["leg_names"] if with_legs else []
        self.legs = SupervisionLegs(self.model.tap_dims, names, head["leg_output_dim"])
        self.leg_loss = ContrastiveLoss(head["contrastive_loss"], head["temperature"])
        self.wce = WeightedCrossEntropy(len(MELD_CLASSES))

    def _compile(self, mode):
        """SpeechBrain's ``--compile --compile_using_dynamic_shape_tracing --compile_mode=mode``:
        each module through torch.compile for dynamic shapes; the encoders also on their
        own, for encoders-only inference. Compiled at their first run."""
        compiled = functools.partial(torch.compile, mode=mode, dynamic=True)
        self.model, self.legs, self.leg_loss, self.wce = (
            compiled(module) for module in (self.model, self.legs, self.leg_loss, self.wce)
        )
        self.encoders = {name: compiled(encoder) for name, encoder in self.encoders.items()}

    def autocast(self):
        """SpeechBrain's ``--precision``: autocast to bf16 or fp16, nothing for fp32."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def set_reference(self, reference):
        for encoder in self.model.encoders.values():
            encoder.reference = reference

    def make_optimizers(self, lr, weight_decay):
        """One AdamW per group as CrabBrain: each encoder at lr / 10, head and legs at lr."""
        groups = [
            (self.model.encoder_parameters("speech"), lr / 10),
            (self.model.encoder_parameters("text"), lr / 10),
            (self.model.head_parameters() + list(self.legs.parameters()), lr),
        ]
        fast = fast_optimizer_options(torch.optim.AdamW, self.wavs.device)  # CrabBrain's: fused on CUDA
        self.optimizers = [
            torch.optim.AdamW(p, lr=g_lr, weight_decay=weight_decay, **fast) for p, g_lr in groups if p
        ]

    def train_step(self, with_legs):
        """CrabBrain's step: WCE + alpha * mean leg loss, backward, clip and step per optimizer."""
        self.model.train()
        self.legs.train()
        with self.autocast():
            logits, taps = self.model(self.wavs, self.wav_lens, self.texts)
            ce = self.wce(logits, self.labels)
            outputs = self.legs(taps) if with_legs else {}
            loss = total_loss(ce, list(leg_losses(self.leg_loss, outputs, self.labels).values()), self.alpha)
        self.scaler.scale(loss).backward()
        for optimizer in self.optimizers:
            self.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(optimizer.param_groups[0]["params"], self.max_grad_norm)
            self.scaler.step(optimizer)
            optimizer.zero_grad(set_to_none=True)
        self.scaler.update()

    @torch.no_grad()
    def infer(self, encoders_only):
        self.model.eval()
        with self.autocast():
            if encoders_only:
                self.encoders["speech"](self.wavs, self.wav_lens)
                self.encoders["text"](self.texts)
            else:
                self.model(self.wavs, self.wav_lens, self.texts)


def _run_config(bench, name):
    if name == "train_legs":
        bench.set_reference(False)
        bench.train_step(with_legs=True)
    elif name == "train_ce":
        bench.set_reference(False)
        bench.train_step(with_legs=False)
    elif name == "train_reference":
        bench.set_reference(True)
        bench.train_step(with_legs=True)
    else:
        bench.set_reference(False)
        bench.infer(encoders_only=name == "infer_encoders")


def _timed(fn, device):
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def time_steps(setup):
    """Seconds per run of each of ``setup["steps"]``, interleaved round-robin, and the
    analysis of the first (the 5-leg training step, or full inference)."""
    names = setup["steps"]
    training = any(name.startswith("train") for name in names)
    phases, lap = {}, _stopwatch()
    bench = Bench(setup, with_legs=training)
    if training:
        bench.make_optimizers(setup["head"]["lr"], setup["head"]["weight_decay"])
    phases["model build"] = lap()
    first_runs = {}  # seconds of each configuration's first run (compiled there, under --compile)
    for _ in range(setup["warmup"]):
        for name in names:
            seconds = _timed(lambda name=name: _run_config(bench, name), setup["device"])
            first_runs.setdefault(name, seconds)
    phases["warm-up"] = lap()
    times = {name: [] for name in names}
    for round_ in range(setup["repeats"]):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(_timed(lambda name=name: _run_config(bench, name), setup["device"]))
    phases["timed rounds"] = lap()
    cuda = setup["device"].startswith("cuda")
    result = {
        "times": times,
        "first_runs": first_runs,
        "checkpoint_bytes": checkpoint_bytes(bench) if training else None,
        "flops": step_flops(bench, names[0]),
        "profile": profile_table(bench, setup, names[0]) if setup["profile_steps"] else None,
        "syncs": count_syncs(bench, setup["device"], names[0]),
        "device_name": torch.cuda.get_device_name(setup["device"]) if cuda else cpu_model(),
    }
    if setup.get("compile"):
        from torch._dynamo.utils import counters

        # compiled graphs inductor ran without CUDA graphs (reduce-overhead), reasons in its log
        result["cudagraph_skips"] = counters["inductor"]["cudagraph_skips"]
    phases["FLOP count, profile, host waits"] = lap()
    return {**result, "phases": phases}


def _stopwatch():
    """A function returning the seconds since it was last called (first: since this call)."""
    last = [time.perf_counter()]

    def lap():
        now = time.perf_counter()
        seconds, last[0] = now - last[0], now
        return seconds

    return lap


def tensor_bytes(state):
    """Bytes of the tensors in ``state``, a tensor or nested dicts, lists and tuples of them."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(tensor_bytes(value) for value in state.values())
    if isinstance(state, list | tuple):
        return sum(tensor_bytes(value) for value in state)
    return 0


def checkpoint_bytes(bench):
    """``(weights, optimizer)``: the bytes of the tensors a training checkpoint of ``bench``
    holds, the model's and legs' weights and buffers, and its optimizers' state (after a
    step: AdamW's two moments of every trained weight)."""
    weights = tensor_bytes(bench.model.state_dict()) + tensor_bytes(bench.legs.state_dict())
    return weights, sum(tensor_bytes(optimizer.state_dict()["state"]) for optimizer in bench.optimizers)


def peak_tflops(device_name, precision, tf32):
    """The device's dense peak for ``precision`` (``PEAK_TFLOPS``), or None: unknown
    device, a CPU, or fp32 without TF32 (no tensor-core peak applies)."""
    for name, (half, tf32_peak) in PEAK_TFLOPS:
        if name in device_name:
            if precision in ("bf16", "fp16"):
                return half
            return tf32_peak if tf32 else None
    return None


def step_flops(bench, name):
    """FLOPs of one run of step configuration ``name`` that torch.utils.flop_counter
    counts (matmuls, convolutions, attention; forward and, in training, backward), run
    eagerly (compiled, the same step does the same arithmetic)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    # eagerly under --compile: the count does not depend on which operators compiled code calls
    with counter, torch.compiler.set_stance("force_eager"), warnings.catch_warnings():
        # the counter's module hooks run once more for a compiled module's wrapper: no operator
        # is counted twice (torch warns that they would fire twice)
        warnings.filterwarnings("ignore", "Using `torch.compile\\(module\\)` when there are global hooks")
        _run_config(bench, name)
    return counter.get_total_flops()


PROFILE_ROWS = 15


def profile_table(bench, setup, name):
    """The top operators (self time on the device, else on the CPU) of
    ``setup["profile_steps"]`` runs of step configuration ``name`` under torch.profiler, and the
    number of operator calls (and, on CUDA, kernels) per step."""
    from torch.profiler import ProfilerActivity, profile

    cuda = setup["device"].startswith("cuda")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    steps = setup["profile_steps"]
    with profile(activities=activities) as prof:
        for _ in range(steps):
            _run_config(bench, name)
        if cuda:
            torch.cuda.synchronize(setup["device"])
    averages = prof.key_averages()
    sort_by = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    table = averages.table(sort_by=sort_by, row_limit=PROFILE_ROWS, max_name_column_width=50)
    events = prof.events()
    ops = sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CPU)
    kernels = sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    return {
        "table": table,
        "sort_by": sort_by,
        "steps": steps,
        "ops_per_step": ops / steps,
        "kernels_per_step": kernels / steps if cuda else None,
    }


def count_syncs(bench, device, name):
    """On CUDA, the operations of one run of step configuration ``name`` that make the
    host wait for the device (torch.cuda.set_sync_debug_mode warns on each); None on CPU."""
    if not device.startswith("cuda"):
        return None
    torch.cuda.synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            _run_config(bench, name)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    found = [w for w in caught if "synchroniz" in str(w.message)]
    return {
        "count": len(found),
        "where": sorted({f"{os.path.relpath(w.filename, ROOT)}:{w.lineno}" for w in found})[:10],
    }


def step_memory(setup, name):
    """A fresh model for one configuration (legs only where they are trained),
    run twice: the optimizer state exists from the first step on, so the second
    holds everything a step holds."""
    bench = Bench(setup, with_legs=name in ("train_legs", "train_reference"))
    if name.startswith("train"):
        bench.make_optimizers(setup["head"]["lr"], setup["head"]["weight_decay"])
    for _ in range(2):
        _run_config(bench, name)
    return {}


def cuda_step_memories(setup, names):
    """Every configuration's peak in one process (CUDA): each is measured from the
    allocated memory left once the previous one's model and optimizer are freed,
    which CUDA counts exactly (RSS, on CPU, needs a process each)."""
    device, peaks = setup["device"], {}
    for name in names:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step_memory(setup, name)
        peaks[name] = {"peak_mib": (torch.cuda.max_memory_allocated(device) - before) / 2**20}
    return {"peaks": peaks}


# ---- d: epochs through CrabBrain, with and without the feature cache ----


def write_corpus(out_dir, count, rng, seconds=AUDIO_SECONDS):
    """``count`` wav files and a manifest ``train.json``, labels cycling over the classes."""
    manifest = {}
    for i, wav in enumerate(make_waveforms(count, rng, seconds)):
        utt = f"utt{i:04d}"
        sf.write(os.path.join(out_dir, f"{utt}.wav"), wav, SAMPLE_RATE)
        manifest[utt] = {
            "wav": f"{{data_root}}/{utt}.wav",
            "duration": len(wav) / SAMPLE_RATE,
            "text": SENTENCES[i % len(SENTENCES)],
            "emo": MELD_CLASSES[i % len(MELD_CLASSES)],
            "spk": f"spk{i % 4}",
        }
    path = os.path.join(out_dir, "train.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
    return path


def _epoch_hparams(setup, output_folder, cache_dir):
    argv = [
        setup["hparams_file"],
        f"--data_root={setup['corpus_dir']}",
        f"--data_folder={setup['corpus_dir']}",
        f"--output_folder={output_folder}",
        f"--classes=[{','.join(MELD_CLASSES)}]",
        f"--speech_encoder_source={setup['speech_dir']}",
        f"--text_encoder_source={setup['text_dir']}",
        f"--tokenizer_source={setup['tokenizer_dir']}",
        "--pretrained_encoders=false",
        "--freeze_speech_encoder=true",
        "--freeze_text_encoder=true",
        f"--batch_size={setup['batch_size']}",
        f"--number_of_epochs={1 + setup['epochs']}",
        f"--feature_cache={cache_dir or 'null'}",
        f"--device={setup['device']}",
        "--noprogressbar",
        f"--precision={setup['precision']}",
    ]
    _, run_opts, _, hparams = parse_and_load(argv)
    return hparams, run_opts


def extraction(setup):
    hparams, _ = _epoch_hparams(setup, os.path.join(setup["tmp"], "exp_extract"), setup["cache_dir"])
    seconds = _timed(
        lambda: extract(
            hparams["model"],
            [setup["manifest"]],
            setup["cache_dir"],
            setup["corpus_dir"],
            hparams["max_duration"],
            setup["batch_size"],
            device=setup["device"],
        ),
        setup["device"],
    )
    return {"times": {"extract": [seconds]}}


def epochs(setup, cached):
    """Seconds of every training epoch after the first (a warm-up)."""

    class TimedBrain(CrabBrain):
        def on_stage_start(self, stage, epoch=None):
            super().on_stage_start(stage, epoch)
            self._epoch_start = time.perf_counter()

        def on_stage_end(self, stage, stage_loss, epoch=None):
            super().on_stage_end(stage, stage_loss, epoch)
            self.epoch_seconds.append(time.perf_counter() - self._epoch_start)

    name = "epoch_cached" if cached else "epoch_end_to_end"
    hparams, run_opts = _epoch_hparams(
        setup, os.path.join(setup["tmp"], f"exp_{name}"), setup["cache_dir"] if cached else None
    )
    os.makedirs(hparams["save_folder"], exist_ok=True)
    encoder = prepare_labels_and_weights(hparams)
    cache = feature_cache(hparams, [setup["manifest"]])
    train_set = dataset(hparams, setup["manifest"], encoder, cache=cache)
    brain = TimedBrain(
        modules=hparams["modules"], hparams=hparams, run_opts=run_opts, checkpointer=hparams["checkpointer"]
    )
    brain.epoch_seconds = []
    brain.fit(hparams["epoch_counter"], train_set, train_loader_kwargs=hparams["train_dataloader_opts"])
    return {"times": {name: brain.epoch_seconds[1:]}}


# ---- processes and memory ----


def _status_kib():
    """``VmRSS``, ``VmHWM``, ``RssAnon``, ``RssFile`` and ``RssShmem`` of /proc/self/status, KiB,
    from one read: in it VmHWM is at least VmRSS, the sum of the other three."""
    fields = ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem")
    with open("/proc/self/status", encoding="ascii") as f:
        found = {k: int(v.split()[0]) for k, _, v in (line.partition(":") for line in f) if k in fields}
    missing = [field for field in fields if field not in found]
    if missing:
        raise RuntimeError(f"no {', '.join(missing)} in /proc/self/status")
    return found


def rss_growth(start, end):
    """The memory of a process between two ``_status_kib`` readings, MiB: ``peak_mib``, the
    peak resident set's growth (VmHWM, reset at ``start``, over the starting VmRSS); ``file_mib``
    and ``anon_mib``, the file pages and the anonymous (and shared) pages added by ``end``. The
    peak holds at least their sum. The file pages are not always within it: a process that frees
    memory it started with (inherited on fork) ends with anonymous pages below their start."""
    anon = (end["RssAnon"] + end["RssShmem"]) - (start["RssAnon"] + start["RssShmem"])
    return {
        "peak_mib": (end["VmHWM"] - start["VmRSS"]) / 1024,
        "file_mib": (end["RssFile"] - start["RssFile"]) / 1024,
        "anon_mib": anon / 1024,
    }


def _child(conn, fn, args, setup, launched):
    try:
        torch.set_num_threads(setup["threads"])
        cuda = setup["device"].startswith("cuda")
        if cuda:
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = setup["tf32"]
            device = torch.device(setup["device"])
            if device.index is not None:
                torch.cuda.set_device(device)
            torch.cuda.init()  # the peak of an explicit device (cuda:N) resets only once initialised
            torch.cuda.reset_peak_memory_stats(setup["device"])
        else:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
                f.write("5")  # resets VmHWM to the current RSS
            start = _status_kib()
        started_s = time.time() - launched  # the interpreter's start, the imports, the device's set-up
        result = fn(*args)
        result["started_s"] = started_s
        if cuda:
            result["peak_mib"] = torch.cuda.max_memory_allocated(setup["device"]) / 2**20
        else:
            # library code first run here (not copied on fork) is file-backed RSS
            result.update(rss_growth(start, _status_kib()))
        conn.send(("ok", result))
    except BaseException:  # noqa: BLE001  (reported by the parent)
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def in_child(name, fn, *args, setup):
    """Run ``fn(*args)`` in a new process (``setup["start_method"]``: spawn, or fork
    on CPU); its result dict with ``peak_mib``, ``wall_s`` (from the start to the end of the
    process) and ``started_s`` (until ``fn`` began). Forking after CUDA is initialised
    fails in the child ("Cannot re-initialize CUDA in forked subprocess"): CUDA runs
    spawn, and this process never touches the device."""
    context = multiprocessing.get_context(setup["start_method"])
    receive, send = context.Pipe(duplex=False)
    launched = time.time()  # wall clock: read again in the child
    process = context.Process(target=_child, args=(send, fn, args, setup, launched))
    process.start()
    send.close()
    try:
        status, result = receive.recv()
    except EOFError:
        status, result = "error", "the process died without a result (out of memory?)"
    process.join()
    if status != "ok":
        raise RuntimeError(f"benchmark '{name}' failed:\n{result}")
    result["wall_s"] = time.time() - launched
    return result


# ---- report ----


def cpu_model():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def ratio_rows(times):
    """``[(label, value, rounds, target, met)]`` of the ratios whose two measurements were
    taken. ``value`` is the ratio of the medians; ``rounds`` the lowest and highest ratio of
    the two runs of one round, for the step configurations (interleaved, so each round's pair
    ran under the same load), None for the epochs (each configuration in its own process).
    ``met`` is None without a target, else ``(value <= target, rounds on the other side,
    rounds)``. Every ratio is rounded to the 3 decimals the report prints (so that no row
    reads "1.100 <= 1.10 NO")."""
    rows = []
    for label, num, den, target in RATIOS:
        if num not in times or den not in times:
            continue
        value = round(statistics.median(times[num]) / statistics.median(times[den]), 3)
        paired = num in STEP_ROWS and den in STEP_ROWS
        per_round = [round(a / b, 3) for a, b in zip(times[num], times[den], strict=True)] if paired else []
        met = None
        if target is not None:
            other_side = sum((r <= target) != (value <= target) for r in per_round)
            met = (value <= target, other_side, len(per_round))
        rows.append((label, value, (min(per_round), max(per_round)) if paired else None, target, met))
    return rows


def met_cell(met):
    """``yes`` or ``NO``, and how many rounds fell on the other side of the target."""
    if met is None:
        return "-"
    ok, other_side, rounds = met
    verdict = "yes" if ok else "NO"
    if other_side:
        verdict += f" ({other_side} of {rounds} rounds {'above' if ok else 'within'})"
    return verdict


ENCODER_NAMES = {
    "tiny": "tiny test configs",
    "base": "WavLM Base + RoBERTa Base configs",
    "large": "WavLM Large + RoBERTa Large configs",
}


CPU_MEMORY_COLUMNS = "peak RSS growth MiB | file pages added MiB | anonymous pages added MiB"


def memory_cells(peak, cuda):
    """The memory cells of a row: the peak, and on CPU the pages added (``rss_growth``)."""
    if cuda:
        return f"{peak['peak_mib']:.0f}"
    return " | ".join(f"{peak[key]:.0f}" for key in ("peak_mib", "file_mib", "anon_mib"))


def report(args, setup, times, peaks, loads, token_counts, started, analysis):
    cuda = args.device.startswith("cuda")
    memory = "peak CUDA allocated MiB" if cuda else CPU_MEMORY_COLUMNS
    medians = {name: statistics.median(values) for name, values in times.items()}
    seconds = setup["audio_seconds"]
    lines = [
        f"# Crab benchmark, {started:%Y-%m-%d %H:%M} UTC: {args.size} size"
        + (" (quick)" if args.quick else "")
        + f", {args.precision}",
        "",
        f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs ({len(os.sched_getaffinity(0))} usable), "
        f"device {args.device} ({analysis['device_name']}); torch {torch.__version__}"
        + (f" (CUDA {torch.version.cuda})" if cuda else "")
        + f", transformers {transformers.__version__}, {args.threads} torch thread(s)",
        f"precision {args.precision}"
        + (
            f" (autocast{', gradient scaler' if args.precision == 'fp16' else ''})"
            if args.precision != "fp32"
            else ""
        )
        + (f"; TF32 {'on' if args.tf32 else 'off'}" if cuda else "")
        + (
            f"; torch.compile of the model, legs and losses (dynamic shapes, mode {args.compile_mode})"
            if args.compile
            else ""
        )
        + f"; child processes: {args.start_method}",
        f"load average (1 min) before {loads[0]:.2f}, after {loads[1]:.2f}",
        f"encoders: {ENCODER_NAMES[args.size]}, random init"
        + (", gradient checkpointing" if args.gradient_checkpointing else "")
        + "; "
        f"head from {os.path.relpath(args.hparams, ROOT)}",
        f"batch {args.batch_size}: audio {seconds[0]}-{seconds[1]} s "
        f"(max {max(len(w) for w in setup['wavs']) / SAMPLE_RATE:.2f} s), text "
        f"{statistics.mean(token_counts):.1f} tokens on average (max {max(token_counts)}; reference: "
        f"{setup['head']['text_max_length']})",
        f"steps: median of {args.repeats} interleaved rounds after {args.warmup} warm-up; epochs: "
        + (
            f"not measured ({'--infer_only' if args.infer_only else '--steps_only'})"
            if args.steps_only
            else f"{args.epoch_utterances} utterances, median of {args.epochs} after 1 warm-up"
        ),
        (
            "memory: the step configurations one after the other in one process, each from what the "
            "previous one left allocated once freed, the epochs each in its own; "
            "torch.cuda.max_memory_allocated"
            if cuda
            else f"memory: each configuration in its own process ({args.start_method}) started before any "
            "model exists; peak RSS growth = VmHWM (reset through /proc/self/clear_refs) minus the starting "
            "VmRSS; file / anonymous pages added = growth of RssFile (mostly library code first run in "
            "that process) / of RssAnon + RssShmem (below 0 where it freed memory it started with) from "
            "start to end; the peak growth is at least their sum"
        ),
        "",
        f"| measurement | median s | min s | max s | {memory} |",
        "|---|---|---|---|---|" + ("" if cuda else "---|---|"),
    ]
    for name, label in {**STEP_ROWS, **EPOCH_ROWS}.items():
        if name not in times:
            continue
        values, peak = times[name], peaks[name]
        lines.append(
            f"| {label} | {medians[name]:.3f} | {min(values):.3f} | {max(values):.3f} | "
            f"{memory_cells(peak, cuda)} |"
        )
    lines += ["", "| ratio | value | rounds min-max | target | met |", "|---|---|---|---|---|"]
    for label, value, rounds, target, met in ratio_rows(times):
        lines.append(
            f"| {label} | {value:.3f} | {'-' if rounds is None else f'{rounds[0]:.3f}-{rounds[1]:.3f}'} | "
            f"{'-' if target is None else f'<= {target:.2f}'} | {met_cell(met)} |"
        )
    lines += [
        "",
        "value: the ratio of the medians; rounds: the two steps' ratio within each round. Where "
        "rounds fall on both sides of a target, one run does not settle it: more --repeats do.",
    ]
    saving = 0 if args.steps_only else medians["epoch_end_to_end"] - medians["epoch_cached"]
    if saving > 0:
        lines += ["", f"the extraction pays for itself after {medians['extract'] / saving:.1f} epoch(s)"]
    lines += ["", *analysis_lines(args, analysis, setup["steps"][0], medians)]
    if "wall" in analysis:
        lines += ["", analysis["wall"]]
    return "\n".join(lines)


def analysis_lines(args, analysis, name, medians):
    """Achieved rate of step configuration ``name`` (the 5-leg training step, or full
    inference) against the device's peak, throughput of inference, host waits, and the
    profile's top operators."""
    peak = peak_tflops(analysis["device_name"], args.precision, args.tf32)
    achieved = analysis["flops"] / medians[name] / 1e12
    profile = analysis["profile"]
    lines = [
        f"## Where the time goes ({STEP_ROWS[name]})",
        "",
        "| quantity | value |",
        "|---|---|",
        "| counted FLOPs per step (matmul, conv, attention; GRU not counted) | "
        f"{analysis['flops'] / 1e12:.3f} T |",
        f"| achieved TFLOP/s (counted FLOPs / median step) | {achieved:.3f} |",
        f"| device dense peak TFLOP/s, {args.precision}"
        + (" (TF32)" if args.precision == "fp32" and args.tf32 else "")
        + f" | {'n/a' if peak is None else f'{peak:.1f}'} |",
        f"| fraction of peak | {'n/a' if peak is None else f'{achieved / peak:.1%}'} |",
    ]
    if "infer_full" in medians:
        lines.append(
            f"| inference, utterances/s (full model) | {args.batch_size / medians['infer_full']:.1f} |"
        )
    if args.compile:
        first = ", ".join(f"{name} {seconds:.1f}" for name, seconds in analysis["first_runs"].items())
        lines.append(f"| first run of each configuration, compiling (s) | {first} |")
        if args.compile_mode == "reduce-overhead":
            skips = analysis["cudagraph_skips"]
            lines.append(f"| compiled graphs without CUDA graphs (TORCH_LOGS=cudagraphs: why) | {skips} |")
    if profile is not None:
        lines.append(f"| operator calls per step (profiler) | {profile['ops_per_step']:.0f} |")
    if analysis["checkpoint_bytes"] is not None:
        weights, optimizer = analysis["checkpoint_bytes"]
        lines.append(
            "| a training checkpoint's tensors: weights and buffers + optimizer state | "
            f"{weights / 1e6:.1f} + {optimizer / 1e6:.1f} = {(weights + optimizer) / 1e6:.1f} MB |"
        )
    if profile is not None and profile["kernels_per_step"] is not None:
        lines.append(f"| device kernels per step (profiler) | {profile['kernels_per_step']:.0f} |")
    syncs = analysis["syncs"]
    if syncs is not None:
        where = ", ".join(syncs["where"]) or "-"
        lines.append(
            f"| host waits for the device in one step (set_sync_debug_mode) | {syncs['count']} ({where}) |"
        )
    if profile is None:
        return [*lines, "", "no profile (--profile_steps 0)"]
    lines += [
        "",
        f"top {PROFILE_ROWS} operators of {profile['steps']} step(s) by {profile['sort_by']} "
        "(torch.profiler):",
        "",
        "```",
        profile["table"].rstrip(),
        "```",
    ]
    return lines


def token_counts(tokenizer_dir, texts):
    """Tokens of each text (special tokens included) under the saved tokenizer."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    return [len(ids) for ids in tokenizer(texts)["input_ids"]]


def run(args):
    """Measure everything ``args`` (``crab.bin.benchmark``'s options) asks for; returns the
    report (markdown). Progress goes to stderr."""
    started, clock = datetime.datetime.now(datetime.UTC), time.perf_counter()
    loads = [os.getloadavg()[0]]
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="crab_benchmark_") as tmp:
        speech_dir, text_dir, tokenizer_dir = write_encoder_configs(tmp, args.size)
        # a snapshot: the epoch runs read the yaml that goes with the code imported now
        hparams_file = shutil.copy(args.hparams, os.path.join(tmp, os.path.basename(args.hparams)))
        texts = [SENTENCES[i % len(SENTENCES)] for i in range(args.batch_size)]
        tokens = token_counts(tokenizer_dir, texts)
        corpus_dir = os.path.join(tmp, "corpus")
        os.makedirs(corpus_dir)
        setup = {
            "tmp": tmp,
            "device": args.device,
            "threads": args.threads,
            "precision": args.precision,
            "tf32": args.tf32,
            "start_method": args.start_method,
            "gradient_checkpointing": args.gradient_checkpointing,
            "compile": args.compile_mode if args.compile else None,
            "audio_seconds": args.audio_seconds,
            "speech_dir": speech_dir,
            "text_dir": text_dir,
            "tokenizer_dir": tokenizer_dir,
            "hparams_file": hparams_file,
            "head": head_settings(hparams_file),
            "wavs": make_waveforms(args.batch_size, rng, args.audio_seconds),
            "texts": texts,
            "labels": rng.integers(0, len(MELD_CLASSES), args.batch_size).tolist(),
            "batch_size": args.batch_size,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "profile_steps": args.profile_steps,
            "epochs": args.epochs,
            "corpus_dir": corpus_dir,
            "manifest": write_corpus(corpus_dir, args.epoch_utterances, rng, args.audio_seconds),
            "cache_dir": os.path.join(tmp, "feature_cache"),
            "steps": list(INFER_ROWS if args.infer_only else COMPILE_ROWS if args.compile else STEP_ROWS),
        }
        times, peaks = {}, {}
        steps = setup["steps"]
        print(f"timing {len(steps)} step configurations, interleaved ...", file=sys.stderr, flush=True)
        analysis = in_child("step timing", time_steps, setup, setup=setup)
        walls = [("step timing", analysis)]  # each measuring process, for where the time went
        times.update(analysis.pop("times"))
        print(
            "median s: " + ", ".join(f"{n} {statistics.median(times[n]):.3f}" for n in steps),
            file=sys.stderr,
            flush=True,
        )
        if args.device.startswith("cuda"):
            print("peak memory of each step configuration ...", file=sys.stderr, flush=True)
            memories = in_child("peak memory", cuda_step_memories, setup, steps, setup=setup)
            walls.append(("peak memory", memories))
            peaks.update(memories["peaks"])
        else:
            for name in steps:
                print(f"peak memory of {name} ...", file=sys.stderr, flush=True)
                peaks[name] = in_child(name, step_memory, setup, name, setup=setup)
                walls.append(("peak memory", peaks[name]))
        print(
            "peak MiB: " + ", ".join(f"{n} {peaks[n]['peak_mib']:.0f}" for n in steps),
            file=sys.stderr,
            flush=True,
        )
        epoch_runs = (
            ("extract", extraction, (setup,)),
            ("epoch_end_to_end", epochs, (setup, False)),
            ("epoch_cached", epochs, (setup, True)),
        )
        for name, fn, fn_args in () if args.steps_only else epoch_runs:
            print(f"{name} ...", file=sys.stderr, flush=True)
            result = in_child(name, fn, *fn_args, setup=setup)
            walls.append((name, result))
            times.update(result.pop("times"))
            peaks[name] = result
            print(
                f"  median {statistics.median(times[name]):.3f} s, {result['peak_mib']:.0f} MiB",
                file=sys.stderr,
                flush=True,
            )
    loads.append(os.getloadavg()[0])
    analysis["wall"] = wall_line(time.perf_counter() - clock, walls, analysis.pop("phases"))
    return report(args, setup, times, peaks, loads, tokens, started, analysis)


def wall_line(total_s, walls, phases):
    """Where the benchmark's own time went: each kind of measuring process (``walls``: what,
    and its ``in_child`` result), its start (interpreter, imports, device set-up) apart, and
    the step timing's ``phases``."""
    groups = {}
    for what, result in walls:
        count, wall, start = groups.get(what, (0, 0.0, 0.0))
        groups[what] = (count + 1, wall + result["wall_s"], start + result["started_s"])
    parts = []
    for what, (count, wall, start) in groups.items():
        inner = [f"start {start:.1f}"]
        if what == "step timing":
            inner += [f"{phase} {seconds:.1f}" for phase, seconds in phases.items()]
        processes = f" ({count} processes)" if count > 1 else ""
        parts.append(f"{what}{processes} {wall:.1f} ({', '.join(inner)})")
    return (
        f"wall time of this benchmark: {total_s:.1f} s; its measuring processes, s (start: the "
        "interpreter, imports and device set-up): " + "; ".join(parts)
    )
