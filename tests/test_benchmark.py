"""The benchmark script (crab/bin/benchmark.py): its reference emulation and a
``--quick`` run. No timing is asserted: the numbers belong to the machine."""

import math
import os
import re
import subprocess
import sys
import time
import types

import numpy as np
import pytest
import torch

from crab.benchmarking import EPOCH_ROWS, RATIOS, STEP_ROWS, BenchSpeechEncoder, BenchTextEncoder
from tests.conftest import MINI_CONF, ROOT, TEXTS


def test_reference_mode_pads_text_to_max_length_and_masks_nothing(tokenizer_dir):
    text = BenchTextEncoder(
        os.path.join(MINI_CONF, "roberta_tiny"), tokenizer=tokenizer_dir, pretrained=False, max_length=40
    ).eval()
    ours_states, ours_mask = text(TEXTS[:2])
    counts = [len(ids) for ids in text.tokenizer(TEXTS[:2])["input_ids"]]
    assert ours_mask.sum(dim=1).tolist() == counts and ours_states.shape[1] == max(counts) < 40
    text.reference = True
    ref_states, ref_mask = text(TEXTS[:2])
    assert ref_states.shape[:2] == ref_mask.shape == (2, 40) and ref_mask.all()

    speech = BenchSpeechEncoder(os.path.join(MINI_CONF, "wavlm_tiny"), pretrained=False).eval()
    wavs, lens = torch.randn(2, 16000), torch.tensor([1.0, 0.5])
    _, ours_mask = speech(wavs, lens)
    assert not ours_mask[1].all() and ours_mask[0].all()
    speech.reference = True
    _, ref_mask = speech(wavs, lens)
    assert ref_mask.shape == ours_mask.shape and ref_mask.all()


def _cells(stdout, label):
    """The cells after ``label`` of the table row that starts with it."""
    rows = [line for line in stdout.splitlines() if line.startswith(f"| {label} |")]
    assert len(rows) == 1, f"no single row '{label}' in:\n{stdout}"
    return [cell.strip() for cell in rows[0].strip("|").split("|")[1:]]


def benchmark(*options):
    """The report of ``crab.bin.benchmark`` run with ``options`` (one thread, offline)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-m", "crab.bin.benchmark", *options],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_quick_run_prints_every_row_and_finite_ratios():
    """``--size tiny`` (``--quick``) end to end, each measurement in a forked process (a
    spawned one, which CUDA needs: below), with the FLOP rate and the profile's top operators."""
    out = benchmark("--quick", "--start_method", "fork", "--threads", "1", "--repeats", "2")  # --size tiny
    assert re.search(r"^machine: .+, \d+ logical CPUs", out, re.MULTILINE), out
    assert "load average (1 min) before" in out and "torch " + torch.__version__ in out
    for label in {**STEP_ROWS, **EPOCH_ROWS}.values():
        median, low, high, peak, file_pages, anon_pages = (float(c) for c in _cells(out, label))
        assert 0 < low <= median <= high and math.isfinite(high)
        # VmHWM >= VmRSS: the peak growth holds the pages added by the end (each cell rounded)
        assert peak > 0 and file_pages + anon_pages <= peak + 1.5
    for label, num, _, target in RATIOS:
        value, rounds, shown_target, met = _cells(out, label)
        assert math.isfinite(float(value)) and float(value) > 0
        if num in STEP_ROWS:  # two rounds, each pair measured side by side
            low, high = (float(r) for r in rounds.split("-"))
            assert 0 < low <= high
        else:
            assert rounds == "-"
        if target is None:
            assert (shown_target, met) == ("-", "-")
        else:
            assert shown_target == f"<= {target:.2f}"
            assert met.split(" (")[0] == ("yes" if float(value) <= target else "NO")

    assert "child processes: fork" in out and "tiny size (quick), fp32" in out
    flops = float(
        _cells(out, "counted FLOPs per step (matmul, conv, attention; GRU not counted)")[0].rstrip(" T")
    )
    assert flops > 0 and float(_cells(out, "achieved TFLOP/s (counted FLOPs / median step)")[0]) > 0
    assert _cells(out, "device dense peak TFLOP/s, fp32")[0] == "n/a"  # a CPU
    weights, optimizer, total = map(
        float,
        re.findall(
            r"[\d.]+",
            _cells(out, "a training checkpoint's tensors: weights and buffers + optimizer state")[0],
        ),
    )
    assert weights > 0 and optimizer > 0 and total == pytest.approx(weights + optimizer, abs=0.11)
    assert re.search(r"top 15 operators of 1 step\(s\) by self_cpu_time_total", out)  # --quick: 1
    assert "aten::" in out.split("torch.profiler):", 1)[1]


def test_memory_of_a_child_that_frees_what_it_inherited_is_told_as_measured(tmp_path):
    """A forked child that frees anonymous memory it inherited and then maps a file: its file
    pages grow by more than its peak, so they cannot be printed as a part of the peak; the
    report gives the pages each kind added, whose sum the peak holds."""
    import mmap

    from crab.benchmarking import in_child, memory_cells

    size = 16 * 2**20
    path = tmp_path / "pages"
    path.write_bytes(b"x" * size)
    inherited = [b"y" * (4 * size)]  # written pages: resident, and the child's too after the fork

    def free_then_map(held):
        held.clear()
        with open(path, "rb") as f:
            held.append(mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ))  # mapped until the end
        sum(held[0][i] for i in range(0, size, mmap.PAGESIZE))  # faults every page in
        return {}

    setup = {"start_method": "fork", "device": "cpu", "threads": 1}
    peak = in_child("frees", free_then_map, inherited, setup=setup)
    assert peak["file_mib"] > 15 > peak["peak_mib"] and peak["anon_mib"] < -60
    assert peak["peak_mib"] >= peak["file_mib"] + peak["anon_mib"]
    cells = [float(cell) for cell in memory_cells(peak, cuda=False).split("|")]
    assert cells == [round(peak[key]) for key in ("peak_mib", "file_mib", "anon_mib")]
    assert memory_cells(peak, cuda=True) == f"{peak['peak_mib']:.0f}"


def test_a_ratio_is_judged_against_its_target_as_printed():
    from crab.benchmarking import RATIOS, ratio_rows

    label, num, den, target = RATIOS[1]  # b. inference, full model / encoders only: <= 1.10
    rows = {row[0]: row for row in ratio_rows({num: [1.1004 * 0.25], den: [0.25]})}
    assert rows[label][1:] == (1.1, (1.1, 1.1), target, (True, 0, 1))  # printed 1.100: met
    rows = {row[0]: row for row in ratio_rows({num: [1.1006 * 0.25], den: [0.25]})}
    assert rows[label][1:] == (1.101, (1.101, 1.101), target, (False, 0, 1))


def test_a_ratio_shows_its_rounds_and_those_on_the_other_side_of_the_target():
    """The ratio of the medians, and the ratio within each round: a target that rounds fall
    on both sides of is not settled by the median alone."""
    from crab.benchmarking import RATIOS, met_cell, ratio_rows

    label, num, den, target = RATIOS[1]  # <= 1.10
    # rounds 1.05, 1.20, 1.08; medians 3.78 / 3.5 = 1.08, under the target with one round above
    times = {num: [4.2, 3.6, 3.78], den: [4.0, 3.0, 3.5]}
    (row,) = [r for r in ratio_rows(times) if r[0] == label]
    assert row[1:] == (1.08, (1.05, 1.2), target, (True, 1, 3))
    assert met_cell(row[4]) == "yes (1 of 3 rounds above)"
    times = {num: [4.4, 4.2, 3.78], den: [4.0, 3.0, 3.5]}  # rounds 1.10, 1.40, 1.08; medians 4.2 / 3.5
    (row,) = [r for r in ratio_rows(times) if r[0] == label]
    assert row[1:] == (1.2, (1.08, 1.4), target, (False, 2, 3))
    assert met_cell(row[4]) == "NO (2 of 3 rounds within)"
    assert met_cell((True, 0, 3)) == "yes" and met_cell(None) == "-"


def test_the_epoch_ratio_has_no_rounds():
    """The epochs run each configuration in its own process: no round pairs them."""
    from crab.benchmarking import RATIOS, ratio_rows

    label, num, den, _ = RATIOS[3]  # d. epoch, cached / end to end
    (row,) = ratio_rows({num: [1.0, 2.0, 3.0], den: [4.0, 4.0, 4.0]})
    assert row == (label, 0.5, None, None, None)


def test_checkpoint_bytes_are_the_weights_buffers_and_adamw_state():
    from crab.benchmarking import checkpoint_bytes

    bench = types.SimpleNamespace(model=torch.nn.BatchNorm1d(3), legs=torch.nn.Linear(3, 2))
    bench.optimizers = [torch.optim.AdamW(bench.legs.parameters())]
    # BatchNorm1d(3): weight, bias, running mean and var (4 x 3 floats), num_batches_tracked
    # (one int64); Linear(3, 2): 6 + 2 floats
    assert checkpoint_bytes(bench) == (4 * 3 * 4 + 8 + 8 * 4, 0)
    bench.legs(torch.ones(1, 3)).sum().backward()
    bench.optimizers[0].step()
    # per weight tensor: exp_avg and exp_avg_sq of its shape and a float32 step count
    assert checkpoint_bytes(bench)[1] == 2 * 8 * 4 + 2 * 4


@pytest.mark.slow
def test_steps_only_measures_the_steps_and_no_epoch():
    out = benchmark(
        "--quick",
        "--steps_only",
        "--start_method",
        "fork",
        "--threads",
        "1",
        "--repeats",
        "1",
        "--profile_steps",
        "0",
    )
    for label in STEP_ROWS.values():
        assert float(_cells(out, label)[3]) > 0  # its peak memory
    for label in EPOCH_ROWS.values():
        assert f"| {label} |" not in out
    assert [label for label, *_ in RATIOS if f"| {label} |" in out] == [label for label, *_ in RATIOS[:3]]
    assert "epochs: not measured (--steps_only)" in out and "pays for itself" not in out
    *_, no_profile, _, wall = out.rstrip().split("\n")
    assert no_profile.endswith("no profile (--profile_steps 0)") and "operator calls per step" not in out
    # the processes: the step timing, one per step configuration for its memory (on CPU)
    assert wall.startswith("wall time of this benchmark: ") and "; peak memory (5 processes) " in wall


@pytest.mark.slow
def test_infer_only_measures_inference_and_analyses_it():
    """Each measurement in a spawned process, the start method CUDA needs."""
    out = benchmark("--quick", "--infer_only", "--start_method", "spawn", "--threads", "1", "--repeats", "1")
    assert "child processes: spawn" in out
    measured = [label for label in {**STEP_ROWS, **EPOCH_ROWS}.values() if f"| {label} |" in out]
    assert measured == [STEP_ROWS["infer_full"], STEP_ROWS["infer_encoders"]]
    assert float(_cells(out, STEP_ROWS["infer_full"])[3]) > 0  # its peak memory
    assert [label for label, *_ in RATIOS if f"| {label} |" in out] == [RATIOS[1][0]]
    assert f"## Where the time goes ({STEP_ROWS['infer_full']})" in out
    assert float(_cells(out, "counted FLOPs per step (matmul, conv, attention; GRU not counted)")[0][:-2]) > 0
    assert "epochs: not measured (--infer_only)" in out


def test_cuda_memory_of_each_step_is_counted_from_what_the_previous_left(monkeypatch):
    """All step configurations in one CUDA process: each peak over the memory still
    allocated when it starts, reset before it (faked counters: 100 MiB left over, peaks
    of 50, 40, ...)."""
    from crab import benchmarking

    mib, state = 2**20, {"allocated": 100 * 2**20, "peak": 0}
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    reset = lambda d: state.update(peak=state["allocated"])  # noqa: E731
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", reset)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda d: state["allocated"])
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda d: state["peak"])
    names = list(STEP_ROWS)

    def step(setup, name):
        state["peak"] = max(state["peak"], state["allocated"] + (50 - 10 * names.index(name)) * mib)

    monkeypatch.setattr(benchmarking, "step_memory", step)
    peaks = benchmarking.cuda_step_memories({"device": "cuda:1"}, names)["peaks"]
    assert {n: p["peak_mib"] for n, p in peaks.items()} == {n: 50.0 - 10 * i for i, n in enumerate(names)}


def test_peak_table_and_options():
    from crab.benchmarking import LARGE, peak_tflops
    from crab.bin.benchmark import parse_args

    assert peak_tflops("NVIDIA H200", "bf16", False) == 989.5
    assert peak_tflops("NVIDIA H100 PCIe", "fp16", False) == 756.0
    assert peak_tflops("NVIDIA A100-SXM4-80GB", "fp32", True) == 156.0
    assert peak_tflops("NVIDIA A100-SXM4-80GB", "fp32", False) is None  # no TF32: no tensor-core peak
    assert peak_tflops("AMD EPYC", "bf16", False) is None
    assert LARGE["speech"]["hidden_size"] == LARGE["text"]["hidden_size"] == 1024
    args = parse_args(["--size", "large", "--precision", "bf16", "--audio_seconds", "12"])
    assert args.audio_seconds == (12.0, 12.0) and args.hparams.endswith("crab.yaml")
    assert (
        args.start_method == "spawn"
        and args.profile_steps == 3
        and parse_args(["--quick"]).profile_steps == 1
    )
    defaults = parse_args([])
    assert (defaults.size, os.path.basename(defaults.hparams), defaults.tf32) == (
        "base",
        "crab_base.yaml",
        False,
    )
    assert parse_args(["--infer_only"]).steps_only and parse_args(["--tf32", "true"]).tf32
    # --compile's own options: tests/test_compilers.py
    for bad in (
        ["--compile_mode", "max-autotune"],  # without --compile
        ["--compile", "--warmup", "0"],  # the compiling run would be timed
        ["--precision", "fp16"],
        ["--audio_seconds", "x"],
        ["--quick", "--size", "large"],
        ["--profile_steps", "-1"],
    ):
        with pytest.raises(SystemExit):
            parse_args(bad)


def test_large_configs_have_the_papers_dimensions(tmp_path):
    """WavLM Large and RoBERTa Large from the config classes: 24 layers of 1024, 16 heads."""
    from transformers import AutoConfig

    from crab.benchmarking import write_encoder_configs

    speech_dir, text_dir, _ = write_encoder_configs(str(tmp_path), "large")
    speech, text = AutoConfig.from_pretrained(speech_dir), AutoConfig.from_pretrained(text_dir)
    for config in (speech, text):
        assert (
            config.hidden_size,
            config.num_hidden_layers,
            config.num_attention_heads,
            config.intermediate_size,
        ) == (1024, 24, 16, 4096)
    assert speech.feat_extract_norm == "layer" and speech.do_stable_layer_norm and speech.layerdrop == 0.0
    assert text.max_position_embeddings == 514 and text.type_vocab_size == 1
    base_dirs = write_encoder_configs(str(tmp_path / "base"), "base")[:2]
    for config in map(AutoConfig.from_pretrained, base_dirs):
        assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (768, 12, 12)


def test_rates_are_counted_flops_over_seconds_and_utterances_over_seconds():
    """Made-up measurements: 2 TFLOPs in a 0.5 s median step on an H200 in bf16 (peak 989.5),
    full inference of 8 utterances in 0.25 s."""
    from crab.benchmarking import analysis_lines

    args = types.SimpleNamespace(
        precision="bf16", tf32=False, batch_size=8, compile=False, compile_mode="default"
    )
    analysis = {"device_name": "NVIDIA H200", "flops": 2e12, "profile": None, "checkpoint_bytes": None}
    medians = {"train_legs": 0.5, "infer_full": 0.25}
    text = "\n".join(analysis_lines(args, {**analysis, "syncs": None}, "train_legs", medians))
    assert _cells(text, "counted FLOPs per step (matmul, conv, attention; GRU not counted)") == ["2.000 T"]
    assert _cells(text, "achieved TFLOP/s (counted FLOPs / median step)") == ["4.000"]
    assert _cells(text, "device dense peak TFLOP/s, bf16") == ["989.5"]
    assert _cells(text, "fraction of peak") == ["0.4%"]
    assert _cells(text, "inference, utterances/s (full model)") == ["32.0"]
    assert "compiling" not in text
    # --compile: the training steps only, and the seconds of each one's first (compiling) run
    args.compile, medians = True, {"train_legs": 0.5, "train_ce": 0.4}
    analysis.update(syncs=None, first_runs={"train_legs": 61.2, "train_ce": 20.0})
    text = "\n".join(analysis_lines(args, analysis, "train_legs", medians))
    first = "train_legs 61.2, train_ce 20.0"
    assert _cells(text, "first run of each configuration, compiling (s)") == [first]
    assert "inference, utterances/s" not in text and "CUDA graphs" not in text
    # reduce-overhead: the compiled graphs inductor could not run as CUDA graphs
    args.compile_mode, analysis["cudagraph_skips"] = "reduce-overhead", 2
    text = "\n".join(analysis_lines(args, analysis, "train_legs", medians))
    assert _cells(text, "compiled graphs without CUDA graphs (TORCH_LOGS=cudagraphs: why)") == ["2"]


def test_a_cuda_step_is_timed_to_the_end_of_its_work(monkeypatch):
    """CUDA runs the step's kernels after the call returns: the clock stops after a
    synchronize, not at the return."""
    from crab.benchmarking import _timed

    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device: calls.append(("synchronize", device)))
    _timed(lambda: calls.append("step"), "cuda:1")
    assert calls == [("synchronize", "cuda:1"), "step", ("synchronize", "cuda:1")]


def test_a_cuda_child_applies_tf32_and_reports_the_peak_allocated(monkeypatch):
    """The measuring process sets TF32 as asked and reports torch.cuda.max_memory_allocated
    (faked counters: 300 MiB peak, 100 MiB still allocated at the end)."""
    from crab import benchmarking

    mib = 2**20
    for name in ("set_device", "init", "reset_peak_memory_stats"):
        monkeypatch.setattr(torch.cuda, name, lambda *args: None)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: 300 * mib)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 100 * mib)
    sent = []
    conn = types.SimpleNamespace(send=sent.append, close=lambda: None)
    setup = {"device": "cuda:1", "threads": torch.get_num_threads(), "tf32": True}
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:  # a flag of torch's backends: not monkeypatch's to restore
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        benchmarking._child(conn, lambda: {}, (), setup, time.time())
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    [(status, result)] = sent
    assert status == "ok" and result["peak_mib"] == 300.0 and 0 <= result["started_s"] < 60


def bench_setup(tokenizer_dir, **overrides):
    """A ``crab.benchmarking`` setup of the tiny encoders on CPU: two utterances, fp32."""
    from crab.benchmarking import head_settings

    setup = {
        "head": head_settings(os.path.join(MINI_CONF, "crab_tiny.yaml")),
        "speech_dir": os.path.join(MINI_CONF, "wavlm_tiny"),
        "text_dir": os.path.join(MINI_CONF, "roberta_tiny"),
        "tokenizer_dir": tokenizer_dir,
        "gradient_checkpointing": False,
        "device": "cpu",
        "wavs": [np.zeros(1600, dtype="float32")] * 2,
        "texts": TEXTS[:2],
        "labels": [0, 1],
        "precision": "fp32",
    }
    return {**setup, **overrides}


@pytest.mark.parametrize(
    "precision, half", [("fp32", None), ("bf16", torch.bfloat16), ("fp16", torch.float16)]
)
def test_the_steps_run_in_the_precision_asked(precision, half, tokenizer_dir):
    """Under autocast to bf16 or fp16, nothing for fp32; fp16 with a gradient scaler."""
    from crab.benchmarking import Bench

    setup = bench_setup(tokenizer_dir, precision=precision)
    bench = Bench(setup)
    with bench.autocast():
        assert torch.is_autocast_enabled("cpu") == (half is not None)
        if half is not None:
            assert torch.get_autocast_dtype("cpu") == half
    assert bench.scaler.is_enabled() == (precision == "fp16")


def test_the_bench_draws_its_weights_on_its_device(tokenizer_dir):
    """The random weights are made where they run (here "meta", as CUDA: shapes, no data),
    not drawn on the CPU and copied."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from crab.benchmarking import Bench

    class HostElements(TorchDispatchMode):
        made = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor) and out.device.type == "cpu":
                HostElements.made += out.numel()
            return out

    setup = bench_setup(tokenizer_dir, device="meta")
    with HostElements():
        bench = Bench(setup)
    tensors = [*bench.model.parameters(), *bench.model.buffers(), *bench.legs.parameters()]
    assert tensors and all(t.is_meta for t in tensors)
    assert bench.wav_lens.device.type == "cpu"  # lengths stay on the host, as CrabBrain's
    # on the host: the waveforms, their padded batch and its lengths, a few times each
    # (copies, views), far fewer elements than the weights
    waveforms = sum(len(w) for w in setup["wavs"])
    assert HostElements.made <= 8 * waveforms < sum(t.numel() for t in tensors)


def test_report_rows_are_median_min_max_and_the_payback_is_extraction_over_the_epoch_saving():
    import datetime

    from crab.benchmarking import report

    args = types.SimpleNamespace(
        device="cuda:0",
        size="base",
        quick=False,
        precision="bf16",
        tf32=False,
        start_method="spawn",
        threads=4,
        gradient_checkpointing=False,
        compile=False,
        hparams=os.path.join(ROOT, "crab_base.yaml"),
        batch_size=8,
        repeats=3,
        warmup=1,
        steps_only=False,
        infer_only=False,
        epoch_utterances=32,
        epochs=3,
    )
    setup = {"audio_seconds": (3.0, 3.0), "wavs": [np.zeros(48000)], "head": {"text_max_length": 128}}
    times = {name: [1.0, 2.0, 6.0] for name in STEP_ROWS}  # median 2, mean 3
    times.update(extract=[4.0], epoch_end_to_end=[3.0, 3.0, 3.0], epoch_cached=[1.0, 1.0, 1.0])
    peaks = {name: {"peak_mib": 500.0} for name in times}
    analysis = {"device_name": "GPU", "flops": 1e12, "profile": None, "checkpoint_bytes": None, "syncs": None}
    out = report(
        args,
        {**setup, "steps": list(STEP_ROWS)},
        times,
        peaks,
        [0.0, 0.0],
        [10],
        datetime.datetime.now(),
        analysis,
    )
    assert _cells(out, STEP_ROWS["train_legs"]) == ["2.000", "1.000", "6.000", "500"]
    assert _cells(out, EPOCH_ROWS["epoch_cached"]) == ["1.000", "1.000", "1.000", "500"]
    assert "the extraction pays for itself after 2.0 epoch(s)" in out


def test_steps_are_timed_in_rotated_rounds_and_the_first_is_analysed(monkeypatch, tokenizer_dir):
    """One warm-up round, then each round starts one configuration further on; the FLOPs
    and the profile are of the first configuration (full inference with --infer_only)."""
    from crab import benchmarking

    ran = []
    monkeypatch.setattr(benchmarking, "_run_config", lambda bench, name: ran.append(name))
    monkeypatch.setattr(benchmarking, "step_flops", lambda bench, name: f"flops of {name}")
    monkeypatch.setattr(benchmarking, "profile_table", lambda bench, setup, name: f"profile of {name}")
    steps = list(benchmarking.INFER_ROWS)
    setup = bench_setup(tokenizer_dir, steps=steps, warmup=1, repeats=2, profile_steps=1)
    result = benchmarking.time_steps(setup)
    assert ran == [*steps, *steps, *reversed(steps)]
    assert {name: len(times) for name, times in result["times"].items()} == dict.fromkeys(steps, 2)
    assert (result["flops"], result["profile"]) == ("flops of infer_full", "profile of infer_full")
    phases = ["model build", "warm-up", "timed rounds", "FLOP count, profile, host waits"]
    assert list(result["phases"]) == phases and min(result["phases"].values()) >= 0


def test_memory_of_a_step_is_its_peak_not_what_it_holds_at_the_end():
    """A child that fills 64 MiB and frees it before it returns: its peak holds them."""
    from crab.benchmarking import in_child

    def fill_and_free():
        block = bytearray(64 * 2**20)
        block[::4096] = b"x" * len(block[::4096])  # every page written: resident
        del block
        return {}

    setup = {"start_method": "fork", "device": "cpu", "threads": 1}
    result = in_child("fills", fill_and_free, setup=setup)
    assert result["peak_mib"] > 60
    assert 0 < result["started_s"] < result["wall_s"]  # the process's start, within its whole time


def test_the_wall_line_says_where_the_benchmarks_own_time_went():
    """Made-up processes: the step timing (its phases listed), two memory processes added up."""
    from crab.benchmarking import wall_line

    walls = [
        ("step timing", {"wall_s": 40.04, "started_s": 6.2}),
        ("peak memory", {"wall_s": 20.0, "started_s": 5.0}),
        ("peak memory", {"wall_s": 22.5, "started_s": 5.5}),
    ]
    line = wall_line(95.26, walls, {"model build": 8.0, "warm-up": 5.04})
    assert line.startswith("wall time of this benchmark: 95.3 s; its measuring processes, s (start: ")
    timing = "step timing 40.0 (start 6.2, model build 8.0, warm-up 5.0)"
    assert line.endswith(f"{timing}; peak memory (2 processes) 42.5 (start 10.5)")


def test_a_step_memory_builds_legs_only_for_the_steps_that_train_them_and_runs_twice(monkeypatch):
    """Twice: the optimizer state exists from the first step on."""
    from crab import benchmarking

    built, ran = [], []

    class FakeBench:
        def __init__(self, setup, with_legs):
            built.append(with_legs)

        def make_optimizers(self, lr, weight_decay):
            pass

    monkeypatch.setattr(benchmarking, "Bench", FakeBench)
    monkeypatch.setattr(benchmarking, "_run_config", lambda bench, name: ran.append(name))
    setup = {"head": {"lr": 1e-4, "weight_decay": 0.0}}
    for name in STEP_ROWS:
        benchmarking.step_memory(setup, name)
    assert built == [name in ("train_legs", "train_reference") for name in STEP_ROWS]
    assert ran == [name for name in STEP_ROWS for _ in range(2)]


def test_the_first_epoch_is_a_warm_up_left_out_of_the_times(monkeypatch, tmp_path):
    """Three epochs, the first slow (0.2 s): the times are of the two after it."""
    import time

    from crab import benchmarking

    class FakeBrain:
        def __init__(self, **kwargs):
            pass

        def on_stage_start(self, stage, epoch=None):
            pass

        def on_stage_end(self, stage, stage_loss, epoch=None):
            pass

        def fit(self, epoch_counter, train_set, train_loader_kwargs):
            for seconds in (0.2, 0.0, 0.0):
                self.on_stage_start("train")
                time.sleep(seconds)
                self.on_stage_end("train", 0.0)

    hparams = dict.fromkeys(("modules", "checkpointer", "epoch_counter", "train_dataloader_opts"))
    monkeypatch.setattr(benchmarking, "CrabBrain", FakeBrain)
    monkeypatch.setattr(
        benchmarking, "_epoch_hparams", lambda *args: ({**hparams, "save_folder": str(tmp_path)}, {})
    )
    for name in ("prepare_labels_and_weights", "feature_cache", "dataset"):
        monkeypatch.setattr(benchmarking, name, lambda *args, **kwargs: None)
    setup = {"tmp": str(tmp_path), "manifest": None, "cache_dir": None}
    [times] = benchmarking.epochs(setup, cached=False)["times"].values()
    assert len(times) == 2 and max(times) < 0.15


def test_cuda_measures_in_spawned_processes_only(monkeypatch, capsys):
    from crab.bin.benchmark import parse_args

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert parse_args(["--device", "cuda"]).start_method == "spawn"
    with pytest.raises(SystemExit):
        parse_args(["--device", "cuda", "--start_method", "fork"])
    assert "CUDA cannot be used in a forked process" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(SystemExit):
        parse_args(["--device", "cuda:1"])  # measured in a child, it failed there with a traceback
    assert "--device cuda:1: there are 1 CUDA GPU(s) here (cuda:0 to cuda:0)" in capsys.readouterr().err


def test_a_failed_measurement_is_an_error_with_its_traceback():
    from crab.benchmarking import in_child

    def fail():
        raise ValueError("no such configuration")

    setup = {"start_method": "fork", "device": "cpu", "threads": 1}
    with pytest.raises(RuntimeError, match="benchmark 'broken' failed:(.|\\n)*no such configuration"):
        in_child("broken", fail, setup=setup)


def test_operator_calls_are_counted_per_profiled_step(monkeypatch):
    from crab import benchmarking

    monkeypatch.setattr(benchmarking, "_run_config", lambda bench, name: torch.ones(3).add(1).sum())
    per_step = [
        benchmarking.profile_table(None, {"device": "cpu", "profile_steps": steps}, "train_legs")[
            "ops_per_step"
        ]
        for steps in (1, 3)
    ]
    assert per_step[0] == per_step[1] > 0


def test_the_bench_optimizers_take_crabbrains_update_kernel(monkeypatch, tokenizer_dir):
    """fast_optimizer_options: fused on CUDA, as CrabBrain's (here faked: foreach off)."""
    from crab import benchmarking

    monkeypatch.setattr(benchmarking, "fast_optimizer_options", lambda opt_class, device: {"foreach": False})
    bench = benchmarking.Bench(bench_setup(tokenizer_dir))
    bench.make_optimizers(1e-4, 0.0)
    assert bench.optimizers and all(opt.defaults["foreach"] is False for opt in bench.optimizers)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Dynamo detected a call to a `functools.lru_cache`")  # in transformers
def test_compiled_steps_run_compiled_code_and_count_the_eager_flops(monkeypatch, tokenizer_dir):
    """``--compile``: every module of the step goes through torch.compile as SpeechBrain's
    ``--compile --compile_using_dynamic_shape_tracing`` (dynamic shapes, the mode asked),
    the timed steps run what it made (here dynamo with the eager backend: inductor's C++
    build would take a minute), the FLOPs are those of the eager step, and the first run
    of each configuration, where it compiles, is kept apart."""
    from torch._dynamo.utils import counters

    from crab import benchmarking

    setup = bench_setup(tokenizer_dir, steps=["train_legs"], warmup=1, repeats=1, profile_steps=0)
    bench = benchmarking.Bench(setup)
    bench.make_optimizers(1e-3, 0.0)
    eager = benchmarking.step_flops(bench, "train_legs")
    calls, compile_ = [], torch.compile

    def eager_backend(module, **options):
        calls.append(options)
        return compile_(module, backend="eager", dynamic=options["dynamic"])

    monkeypatch.setattr(torch, "compile", eager_backend)
    torch._dynamo.reset()
    counters.clear()
    result = benchmarking.time_steps({**setup, "compile": "max-autotune"})
    # the model, the legs, the two losses, and each encoder on its own
    assert calls == [{"mode": "max-autotune", "dynamic": True}] * 6
    assert counters["stats"]["unique_graphs"] > 0
    assert eager > 0 and result["flops"] == eager
    assert list(result["first_runs"]) == ["train_legs"] and len(result["times"]["train_legs"]) == 1
    assert result["cudagraph_skips"] == 0  # inductor's count: no inductor here
