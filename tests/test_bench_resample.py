"""The resampling benchmark's process handling: a case that fails or dies is an error
naming it, not a parent waiting for ever on a result that never comes."""

import os

import pytest

from crab import benchmarking_resample


def test_a_case_is_measured():
    seconds, peak_mib, snr = benchmarking_resample.measure("soxr", 44100, 0.5, 1)
    assert seconds > 0 and peak_mib >= 0 and snr > 60  # a clean 1 kHz tone


def _raises(*args):
    raise ValueError("no such rate")


def _dies(*args):
    os._exit(9)  # as the kernel's OOM killer leaves it: no exception, no result


@pytest.mark.parametrize(
    ("case", "expected"), [(_raises, "ValueError: no such rate"), (_dies, "exit status 9")]
)
def test_a_failed_case_is_an_error_naming_it(monkeypatch, case, expected):
    monkeypatch.setattr(benchmarking_resample, "_run", case)  # the forked process inherits it
    with pytest.raises(RuntimeError, match="resampling case soxr at 44100 Hz failed") as error:
        benchmarking_resample.measure("soxr", 44100, 0.5, 1)
    assert expected in str(error.value)
