"""Resampling to 16 kHz: soxr against torchaudio, for speed, peak memory and quality.

    python -m crab.bin.bench_resample [--rates 44100,8000,8009,4001,48000,44101]
        [--seconds 10] [--repeats 3] [--torchaudio_max_kernel_gb 1.5]

For each input rate, a 1 kHz sine (amplitude 0.5) of ``--seconds`` at that rate is
resampled to 16 kHz by ``soxr.resample`` (quality HQ, what ``crab.data.resample``
uses) and by ``torchaudio.functional.resample`` (its defaults), each case in its own
forked process on one thread: the median time of ``--repeats`` runs, the growth of
the process's peak resident set (VmHWM, reset through /proc/self/clear_refs) over its
resident set before the call, and the SNR against the ideal 1 kHz sine at 16 kHz
(0.1 s left out at each end). torchaudio builds a sinc kernel of
``new x (orig + 2 * width)`` samples over the rates divided by their gcd, so an odd
rate (4001, 8009, 44101 Hz) costs gigabytes; cases whose kernel alone would pass
``--torchaudio_max_kernel_gb`` are not run, their kernel size is printed instead.
"""

import argparse
import math
import multiprocessing
import os
import statistics
import time

import numpy as np

TARGET = 16000
FREQ = 1000.0


def _rss_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def torchaudio_kernel_bytes(rate, target=TARGET):
    """Bytes of torchaudio's float32 sinc kernel for ``rate`` -> ``target`` (its formula)."""
    g = math.gcd(rate, target)
    orig, new = rate // g, target // g
    width = math.ceil(6 * orig / (min(orig, new) * 0.99))
    return 4 * new * (orig + 2 * width)


def _run(method, rate, seconds, repeats, queue):
    import torch

    torch.set_num_threads(1)
    t = np.arange(int(seconds * rate)) / rate
    x = (0.5 * np.sin(2 * np.pi * FREQ * t)).astype("float32")
    if method == "soxr":
        import soxr

        def fn():
            return soxr.resample(x, rate, TARGET, quality="HQ")
    else:
        import torchaudio

        xt = torch.from_numpy(x)

        def fn():
            return torchaudio.functional.resample(xt, rate, TARGET).numpy()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
    except OSError:
        pass
    before = _rss_kib("VmRSS")
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        y = fn()
        times.append(time.perf_counter() - start)
    peak = _rss_kib("VmHWM") - before
    n = min(len(y), int(seconds * TARGET))
    ref = 0.5 * np.sin(2 * np.pi * FREQ * np.arange(n) / TARGET)
    edge = int(0.1 * TARGET)
    err = y[edge:n - edge] - ref[edge:n - edge]
    snr = 10 * np.log10(np.sum(ref[edge:n - edge] ** 2) / max(np.sum(err.astype("float64") ** 2), 1e-30))
    queue.put((statistics.median(times), peak / 1024, snr))


def measure(method, rate, seconds, repeats):
    """``(median seconds, peak MiB, SNR dB)`` of one case, in a forked process."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_run, args=(method, rate, seconds, repeats, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rates", default="44100,8000,8009,4001,48000,44101")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--torchaudio_max_kernel_gb", type=float, default=1.5)
    args = parser.parse_args(argv)
    print(f"{args.seconds:g} s of a {FREQ:g} Hz sine to {TARGET} Hz, one thread, median of {args.repeats}")
    print(f"{'rate':>7} {'method':>11} {'time ms':>9} {'peak MiB':>9} {'SNR dB':>7}")
    for rate in (int(r) for r in args.rates.split(",")):
        for method in ("soxr", "torchaudio"):
            kernel = torchaudio_kernel_bytes(rate)
            if method == "torchaudio" and kernel > args.torchaudio_max_kernel_gb * 2**30:
                print(f"{rate:>7} {method:>11}   not run: its kernel alone is {kernel / 2**30:.1f} GiB")
                continue
            seconds, peak, snr = measure(method, rate, args.seconds, args.repeats)
            print(f"{rate:>7} {method:>11} {seconds * 1000:>9.1f} {peak:>9.0f} {snr:>7.1f}")


if __name__ == "__main__":
    main()
