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

from crab import cli
from crab.benchmarking_resample import FREQ, TARGET, measure, torchaudio_kernel_bytes


@cli.entry_point
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=cli.HelpFormatter)
    parser.add_argument(
        "--rates", default="44100,8000,8009,4001,48000,44101", help="comma-separated rates (Hz)"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of sine resampled")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs, of which the median")
    parser.add_argument(
        "--torchaudio_max_kernel_gb",
        type=float,
        default=1.5,
        help="torchaudio is not run at a rate whose kernel alone is larger (GiB)",
    )
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
