"""`python -m dlu_triton compare` on a CPU: every call of a scale timed in interleaved rounds, the
spread printed beside each time and ratio, and a loaded machine said so in the header."""
import functools
import re

import pytest

from dlu_triton import __main__ as cli
from dlu_triton import benchmark as B

TINY = ["compare", "--device", "cpu", "--scales", "2", "--channels", "4", "--output-size", "8", "--rounds", "2"]


@pytest.fixture
def cpu_path(monkeypatch):
    """compare as a user runs it: the CPU path, not Triton's interpreter (which the suite sets);
    samples of 1 ms rather than 20, to keep the test short."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(B, "interleaved_ms", functools.partial(B.interleaved_ms, min_sample_ms=1.0))


@pytest.mark.parametrize("load,threads,timed", [(0.1, [], 2), (3.0, [], 1), (3.0, ["--threads", "2"], 2)],
                         ids=["idle", "loaded", "loaded, --threads 2"])
def test_compare_on_cpu_prints_spreads_and_flags_a_loaded_machine(load, threads, timed, cpu_path, monkeypatch,
                                                                   capsys):
    """Every time and ratio with its spread; a loaded machine (the load average faked here) said
    so at the start and the end, and timed with one thread unless told otherwise (torch's thread
    count, 2, faked too)."""
    counts = [2]
    monkeypatch.setattr(B, "machine_load", lambda: (load, 2))
    monkeypatch.setattr(cli.torch, "get_num_threads", lambda: counts[-1])
    monkeypatch.setattr(cli.torch, "set_num_threads", counts.append)
    cli.main(TINY + threads)
    out = capsys.readouterr().out
    assert counts[-1] == timed and f"cores, {timed} thread{'s' * (timed != 1)} timed" in out, out
    assert out.count("LOADED") == (2 if load > 1 else 0), out  # at the start and at the end
    assert ("so one thread is timed" in out) == (load > 1 and not threads), out
    assert re.search(r"^DLU +[\d,]+ +[\d.]+ +[\d.]+ ±\d+% +[\d.]+ ±\d+%", out, re.M), out
    assert re.search(r"fwd \d+\.\d\d \(\d+\.\d\d-\d+\.\d\d\), fwd\+bwd \d+\.\d\d \(\d+\.\d\d-\d+\.\d\d\)", out), out


@pytest.mark.parametrize("load,cores,threads,loaded", [
    (0.2, 2, 2, False), (1.0, 2, 2, True), (1.0, 8, 2, False), (6.9, 8, 2, True), (0.6, 8, 8, True),
])
def test_looks_loaded(load, cores, threads, loaded):
    """Loaded: more than half a core's worth of other demand beyond the cores the timed threads
    leave free."""
    assert B.looks_loaded(load, cores, threads) == loaded


def test_interleaved_ms_times_every_call_in_each_round_for_at_least_the_sample_time():
    ran = []
    calls = {"a": lambda: ran.append("a"), "b": lambda: ran.append("b")}
    samples = B.interleaved_ms(calls, rounds=4, min_sample_ms=2.0)
    assert [len(samples["a"]), len(samples["b"])] == [4, 4]
    timed = ran[4:]  # after each call's warm-up and calibration
    repeats = timed.index("b")
    assert repeats > 1 and timed == (["a"] * repeats + ["b"] * (len(timed) // 4 - repeats)) * 4
