"""The resampling benchmark's machinery (``crab.bin.bench_resample`` is its command line):
one case (method, input rate) measured in a forked process: median time, peak memory, SNR.
"""

import math
import multiprocessing
import queue
import statistics
import time
import traceback

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
    err = y[edge : n - edge] - ref[edge : n - edge]
    snr = 10 * np.log10(np.sum(ref[edge : n - edge] ** 2) / max(np.sum(err.astype("float64") ** 2), 1e-30))
    queue.put((statistics.median(times), peak / 1024, snr))


def _run_reporting(method, rate, seconds, repeats, queue):
    try:
        _run(method, rate, seconds, repeats, queue)
    except BaseException:  # noqa: BLE001  (reported by the parent)
        queue.put(traceback.format_exc())


def measure(method, rate, seconds, repeats):
    """``(median seconds, peak MiB, SNR dB)`` of one case, in a forked process; a
    RuntimeError naming the case where that process fails or dies."""
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    proc = ctx.Process(target=_run_reporting, args=(method, rate, seconds, repeats, results))
    proc.start()
    result = None
    while result is None:
        try:
            result = results.get(timeout=1)
        except queue.Empty:
            if not proc.is_alive():
                result = f"the process died without a result (exit status {proc.exitcode}; out of memory?)"
    proc.join()
    if isinstance(result, str):
        raise RuntimeError(f"resampling case {method} at {rate} Hz failed:\n{result}")
    return result
