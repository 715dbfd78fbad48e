import pytest
import torch

from dlu_triton import benchmark as B

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="session")
def bandwidth():
    """Copy bandwidth (bytes/s) measured once per run; None on CPU, where there is no floor."""
    return B.copy_bandwidth(DEVICE) if DEVICE == "cuda" else None


@pytest.fixture
def bench(benchmark, bandwidth):
    """Time fn the synchronised way and record bytes, GB/s, FLOPs and the fraction of the floor."""
    def run(fn, nbytes, nflops, **info):
        if DEVICE == "cuda":
            median, q20, q80 = B.time_ms(fn, DEVICE)

            def synced():
                fn()
                torch.cuda.synchronize()

            benchmark.pedantic(synced, rounds=20, warmup_rounds=3)
        else:
            benchmark(fn)
            median = q20 = q80 = None
        extra = dict(info, device=B.env_info(DEVICE), bytes=nbytes, flops=nflops,
                     median_ms=median, q20_ms=q20, q80_ms=q80)
        if median:
            extra["GBps"] = nbytes / (median * 1e-3) / 1e9
            if bandwidth:
                extra["floor_ms"] = nbytes / bandwidth * 1e3
                extra["fraction_of_floor"] = extra["floor_ms"] / median
        benchmark.extra_info.update(extra)
    return run
