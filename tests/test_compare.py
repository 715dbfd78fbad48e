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


def test_graphed_rows_say_what_bounds_each_step(capsys):
    """On a GPU each module row gains its CUDA-graphed forward+backward (device time) and what
    bounds the eager step: the host where the eager time exceeds the graphed one by more than
    HOST_BOUND. (The graphs need a GPU; the table is checked on a result laid out as
    measure_scale lays one out.)"""
    t = lambda ms: (ms, 0.95 * ms, 1.05 * ms)  # noqa: E731
    methods = {m: dict(params=p, gflops=1.0, fwd_ms=t(0.5), fwd_bwd_ms=t(eager), peak_mib=10.0, graphed_ms=t(dev))
               for m, p, eager, dev in [("nearest", 0, 0.1, 0.1), ("bilinear", 0, 0.2, 0.19),
                                        ("CARAFEPack", 100, 3.0, 1.0), ("DLU", 50, 3.2, 0.8)]}
    ratios = {what: (methods["DLU"][what][0] / methods["CARAFEPack"][what][0],) * 3
              for what in ("fwd_ms", "fwd_bwd_ms", "graphed_ms")}
    res = dict(scale=2, input=(2, 8, 4, 4), methods=methods, ratios=ratios, dlu_op_ms=t(0.1), carafe_op_ms=t(0.1),
               floor=None)
    cli.print_table(res, forward_only=False)
    out = capsys.readouterr().out
    assert "graphed fwd+bwd ms" in out and "bound by" in out, out
    rows = {line.split()[0]: line.split()[-1] for line in out.splitlines() if line.split()[:1] and
            line.split()[0] in methods}
    assert rows == dict(nearest="device", bilinear="device", CARAFEPack="host", DLU="host"), out
    assert "graphed fwd+bwd (device) 0.80 (0.80-0.80)" in out, out
    assert cli.bound(t(1.21), t(1.0)) == "host" and cli.bound(t(1.19), t(1.0)) == "device"
