"""`python -m dlu_triton compare` on a CPU: every call of a scale timed in interleaved rounds, the
spread printed beside each time and ratio, and a loaded machine said so in the header."""
import re

import pytest

from dlu_triton import __main__ as cli
from dlu_triton import benchmark as B

TINY = ["compare", "--device", "cpu", "--scales", "2", "--channels", "4", "--output-size", "8", "--rounds", "3"]


@pytest.fixture
def cpu_path(monkeypatch):
    """compare as a user runs it: the CPU path, not Triton's interpreter (which the suite sets)."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")


@pytest.mark.parametrize("load,flagged", [(0.1, False), (3.0, True)])
def test_compare_on_cpu_prints_spreads_and_flags_a_loaded_machine(load, flagged, cpu_path, monkeypatch, capsys):
    monkeypatch.setattr(B, "machine_load", lambda: (load, 2))
    monkeypatch.setattr(cli.torch, "get_num_threads", lambda: 2)
    cli.main(TINY)
    out = capsys.readouterr().out
    assert out.count("LOADED") == (2 if flagged else 0), out  # at the start and at the end
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
