"""Speed and memory of Crab's training and inference, measured side by side.

    python -m crab.bin.benchmark [--device cpu|cuda[:N]] [--size tiny|base|large]
        [--precision fp32|bf16|fp16] [--audio_seconds 2.5-3.5] [--batch_size 8]
        [--repeats 5] [--threads N] [--epoch_utterances 32] [--epochs 3]
        [--steps_only | --infer_only] [--compile [--compile_mode default]]
        [--profile_steps 3] [--quick]

Encoders with random weights built from configs, no download: ``--size base``
(default) WavLM Base and RoBERTa Base (transformers' WavLMConfig and RobertaConfig
defaults), ``--size large`` WavLM Large and RoBERTa Large (the paper's encoders: 24
layers of 1024, written here from the same config classes), ``--size tiny`` the test
encoders. The head comes from ``--hparams`` (the recipe config of that size), the
inputs are MELD-like: ``--audio_seconds`` of audio (default 2.5-3.5 s) and a short
transcript per utterance. ``--quick`` is ``--size tiny`` with fewer rounds, a smoke
check that runs in seconds. ``--precision bf16|fp16`` runs the steps under autocast
(fp16 with a gradient scaler; CUDA only), as SpeechBrain's ``--precision`` does.

Measured, on the same inputs:

a. a training step (forward, backward, optimizer step) with the five contrastive
   legs against one with cross-entropy only;
b. inference of the full model against the two encoders alone;
c. our step (padding masked everywhere, text padded to the batch's longest
   transcript) against the reference code's: every transcript padded to 128 tokens
   and nothing masked after the encoders (``reference`` mode of the encoders below);
d. a training epoch with frozen encoders read from the feature cache against one
   that runs them (CrabBrain on a small corpus of wav files), and the extraction
   (not with ``--steps_only``).

``--infer_only`` measures b. alone (no optimizer, no legs), and analyses full
inference instead of the training step. ``--compile`` measures a. alone (b. too with
``--infer_only``, the encoders then also compiled on their own) through torch.compile,
as SpeechBrain's ``--compile --compile_using_dynamic_shape_tracing`` does
(``--compile_mode`` as its own); the first (warm-up) run of each configuration
compiles it, and the report gives its seconds. The FLOPs are counted on an eager run
of the same step.

Step times are interleaved (round-robin, order rotated every round) in one
process, so load from other processes hits every configuration alike; the median
of ``--repeats`` rounds after ``--warmup`` is reported. Peak memory is measured
separately, in processes started before any model exists (spawned: a fresh
interpreter, which CUDA needs; ``--start_method fork`` on CPU saves the imports): on
CPU each configuration in its own, the growth of its peak resident set (VmHWM, reset
at the start through /proc/self/clear_refs) over its starting RSS, and the file and the
anonymous pages it added by its end (the peak holds at least their sum; the file pages
alone may exceed it where it freed memory it started with); on CUDA the step
configurations one after the other in one process, torch.cuda.max_memory_allocated
over what the previous one left allocated once freed (CUDA counts it exactly), and
each epoch run in its own.

Where the time goes, for the 5-leg training step (full inference with
``--infer_only``): its matmul, convolution and attention FLOPs
(torch.utils.flop_counter; the GRU is not counted, so the rate is a lower bound)
over its median time, next to the device's dense peak for the precision
(``PEAK_TFLOPS``; n/a for an unknown device or a CPU), and the top operators of a
short torch.profiler run. On CUDA also the number of operations
that made the host wait for the device in one step (torch.cuda.set_sync_debug_mode).
"""

import argparse
import os
import sys

from crab import cli
from crab.benchmarking import AUDIO_SECONDS, CONF, MELD_CLASSES, PRECISIONS, SIZES, run
from crab.compilers import compiler_missing
from crab.devices import device_problem


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=cli.HelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu (the target) or cuda[:N]")
    parser.add_argument("--batch_size", type=int, default=8, help="utterances per step")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5; --quick 2)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument(
        "--threads",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="torch threads (default: the cores this process may use)",
    )
    parser.add_argument(
        "--epoch_utterances",
        type=int,
        default=None,
        help="utterances of the epoch corpus (default 32; --quick 8)",
    )
    parser.add_argument("--epochs", type=int, default=None, help="timed epochs (default 3; --quick 1)")
    parser.add_argument(
        "--hparams",
        default=None,
        help="recipe config for the head and the epochs (default by --size: crab_tiny.yaml, "
        "crab_base.yaml, crab.yaml)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="--size tiny with 2 rounds, 1 epoch of 8 utterances, 1 profiled step: a smoke check",
    )
    parser.add_argument(
        "--size",
        choices=SIZES,
        default=None,
        help="encoders: tiny (test configs), base (default), large (the paper's)",
    )
    parser.add_argument(
        "--precision",
        choices=list(PRECISIONS),
        default="fp32",
        help="fp32, or autocast to bf16 or fp16 (fp16 with a gradient scaler; CUDA only)",
    )
    parser.add_argument(
        "--tf32",
        choices=("true", "false"),
        default="false",
        help="CUDA fp32: TF32 tensor cores for matmuls and convolutions (torch's default: false)",
    )
    parser.add_argument(
        "--audio_seconds",
        default=None,
        help="audio per utterance: MIN-MAX or one length in seconds (default 2.5-3.5)",
    )
    parser.add_argument(
        "--gradient_checkpointing",
        action="store_true",
        help="the encoders recompute their activations in the backward pass (less memory)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="the training steps, 5 legs and CE only (or with --infer_only inference), through "
        "torch.compile as SpeechBrain's --compile --compile_using_dynamic_shape_tracing (implies "
        "--steps_only)",
    )
    parser.add_argument(
        "--compile_mode",
        choices=("default", "reduce-overhead", "max-autotune"),
        default="default",
        help="with --compile: torch.compile's mode (SpeechBrain's --compile_mode; reduce-overhead: "
        "CUDA graphs)",
    )
    parser.add_argument(
        "--steps_only",
        action="store_true",
        help="the train and inference steps only: no feature extraction or epochs "
        "(each rebuilds the models in a process of its own)",
    )
    parser.add_argument(
        "--infer_only",
        action="store_true",
        help="the two inference steps only (implies --steps_only); the analysis is of full inference",
    )
    parser.add_argument(
        "--profile_steps",
        type=int,
        default=None,
        help="runs of the analysed step under torch.profiler, for its top operators (default 3; --quick "
        "1; 0: no profile); reading the trace back takes seconds per step on a CPU",
    )
    parser.add_argument(
        "--start_method",
        choices=("spawn", "fork"),
        default=None,
        help="how the measuring processes start (default spawn; fork only on CPU)",
    )
    args = parser.parse_args(argv)
    args.steps_only = args.steps_only or args.infer_only or args.compile
    quick = args.quick
    if quick and args.size not in (None, "tiny"):
        parser.error("--quick is --size tiny")
    args.size = "tiny" if quick else (args.size or "base")
    args.tf32 = args.tf32 == "true"
    args.repeats = args.repeats or (2 if quick else 5)
    args.epochs = args.epochs or (1 if quick else 3)
    if args.profile_steps is None:
        args.profile_steps = 1 if quick else 3
    args.epoch_utterances = args.epoch_utterances or (8 if quick else 32)
    default_hparams = {"tiny": "crab_tiny.yaml", "base": "crab_base.yaml", "large": "crab.yaml"}[args.size]
    args.hparams = args.hparams or os.path.join(CONF, default_hparams)
    try:
        parts = [float(x) for x in (args.audio_seconds or "-".join(map(str, AUDIO_SECONDS))).split("-")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or not 0.1 <= parts[0] <= parts[-1] <= 60:
        parser.error(f"--audio_seconds: MIN-MAX or one length, 0.1-60 s, got '{args.audio_seconds}'")
    args.audio_seconds = (parts[0], parts[-1])
    cuda = args.device.startswith("cuda")
    args.start_method = args.start_method or "spawn"
    if cuda and args.start_method == "fork":
        parser.error("--start_method fork: CUDA cannot be used in a forked process; use spawn")
    if args.compile_mode != "default" and not args.compile:
        parser.error("--compile_mode needs --compile")
    if args.compile and args.warmup < 1:
        parser.error("--compile needs --warmup 1 or more: the first run of each step compiles it")
    if problem := device_problem(args.device):
        parser.error(f"--device {args.device}: {problem}")
    if args.compile and (missing := compiler_missing(args.device)):
        parser.error(f"--compile: {missing}")
    if args.precision == "fp16" and not cuda:
        parser.error("--precision fp16 needs CUDA (SpeechBrain refuses it on CPU); use bf16")
    if (
        min(args.batch_size, args.repeats, args.epochs, args.threads) < 1
        or min(args.warmup, args.profile_steps) < 0
    ):
        parser.error(
            "--batch_size, --repeats, --epochs, --threads must be positive; --warmup, --profile_steps >= 0"
        )
    if args.epoch_utterances < len(MELD_CLASSES):
        parser.error(f"--epoch_utterances must be at least {len(MELD_CLASSES)} (one per class)")
    return args


@cli.entry_point
def main(argv=None):
    print(run(parse_args(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    main()
