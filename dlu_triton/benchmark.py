"""Measurement helpers shared by `python -m dlu_triton compare` and `benchmarks/`.

Timings are medians (with 20%/80% quantiles) of synchronised runs: `triton.testing.do_bench`
on CUDA, wall-clock around whole calls on CPU. On a CPU, which other processes share, several
calls are timed in interleaved rounds (`interleaved_ms`), so a change of load falls on all of
them alike and their ratios can be taken round by round. Bytes are the minimal traffic: every
input read once, every output written once.
"""
import datetime
import math
import os
import platform
import statistics
import time

import torch
import triton

from . import flops
from .modules import DLU, CARAFEPack

METHODS = ("nearest", "bilinear", "CARAFEPack", "DLU")


def compare_shape(device):
    """(batch, channels, output size) that `compare` times by default on `device`: N2 C256 on a
    GPU; on a CPU one image of 64 channels, still an output of 256x256 so that every row is
    milliseconds of work."""
    return (2, 256, 256) if torch.device(device).type == "cuda" else (1, 64, 256)


def quantiles(samples):
    """(median, q20, q80) of samples, within their range (interpolated, never extrapolated)."""
    q = statistics.quantiles(samples, n=5, method="inclusive") if len(samples) > 1 else samples * 4
    return statistics.median(samples), q[0], q[3]


def time_ms(fn, device, reps=None):
    """(median, q20, q80) in milliseconds."""
    if torch.device(device).type == "cuda":
        return tuple(triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8]))
    fn()
    samples = []
    for _ in range(reps or 5):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return quantiles(samples)


def interleaved_ms(calls, rounds, min_sample_ms=20.0):
    """CPU times of several calls ({key: fn}) in milliseconds per call, {key: [one per round]}.
    Each round times every call once, in turn, so a change in the machine's load falls on all of
    them alike and a ratio of two calls can be taken round by round. A sample repeats its call
    enough times to last min_sample_ms (the count set by a timed call after a warm-up one), so
    that even a call of microseconds is timed over many of the scheduler's ticks."""
    repeats = {}
    for key, fn in calls.items():
        fn()  # warm-up: first-call costs (the CPU kernel's build, allocations)
        t0 = time.perf_counter()
        fn()
        repeats[key] = max(1, math.ceil(min_sample_ms / max((time.perf_counter() - t0) * 1e3, 1e-3)))
    samples = {key: [] for key in calls}
    for _ in range(rounds):
        for key, fn in calls.items():
            t0 = time.perf_counter()
            for _ in range(repeats[key]):
                fn()
            samples[key].append((time.perf_counter() - t0) * 1e3 / repeats[key])
    return samples


def machine_load():
    """(1-minute load average, CPU cores this process may use), or None where the OS has no load
    average: other processes' demand for the cores the CPU timings run on."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return load, cores


def looks_loaded(load, cores, threads):
    """Whether a 1-minute load average of `load` on `cores` cores leaves `threads` threads less
    than their cores: more than half a core's worth of demand beyond what the cores free of them
    hold. (OpenMP's threads wait for each other, so one of them descheduled holds up all.)"""
    return load > max(0, cores - threads) + 0.5


def sync(device):
    """Wait for `device`'s queue (CUDA); nothing elsewhere."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def host_ms(fn, device, reps):
    """Median host (CPU) time of `fn` in milliseconds: each call from an empty queue until it
    returns, not synchronised after. Where it equals time_ms, the device waits on the host."""
    samples = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    sync(device)
    return statistics.median(samples)


def peak_memory_mib(fn, device):
    """Peak memory allocated during `fn` beyond what was allocated before it (CUDA only)."""
    if torch.device(device).type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def copy_bandwidth(device, nbytes=2**30):
    """Device-to-device copy bandwidth in bytes/s, counting bytes read plus bytes written."""
    x = torch.empty(nbytes // 4, device=device)
    y = torch.empty_like(x)
    ms = time_ms(lambda: y.copy_(x), device)[0]
    return 2 * nbytes / (ms * 1e-3)


def dlu_bytes(n, c, h, w, k, g, s, element_size, backward=False):
    """Forward: features, logits, offsets in; output out. Backward: grad_out and the three
    inputs in; their three gradients out."""
    low = n * h * w * (c + g * k * k + 2 * g * s * s)
    high = n * c * s * s * h * w
    return element_size * ((2 * low + high) if backward else (low + high))


def carafe_bytes(n, c, h, w, k, g, s, element_size, backward=False):
    low = n * c * h * w
    high = n * (g * k * k + c) * s * s * h * w
    mask = n * g * k * k * s * s * h * w
    return element_size * ((2 * low + high + mask) if backward else (low + high))


def op_inputs(n, c, h, w, k, g, s, device, dtype=torch.float32):
    """Random features, kernel logits, offsets and (normalised) CARAFE masks for one shape."""
    features = torch.randn(n, c, h, w, device=device, dtype=dtype)
    logits = torch.randn(n, g * k * k, h, w, device=device, dtype=dtype)
    offsets = torch.randn(n, 2 * g * s * s, h, w, device=device, dtype=dtype)
    masks = torch.softmax(torch.randn(n, g, k * k, s * h, s * w, device=device), 2)
    return features, logits, offsets, masks.reshape(n, g * k * k, s * h, s * w).to(dtype)


def env_info(device):
    info = dict(date=datetime.date.today().isoformat(), torch=torch.__version__, triton=triton.__version__,
                python=platform.python_version(), device=str(device))
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    else:
        info["cpu"] = _cpu_model()
    return info


def _cpu_model():
    """The CPU's model name where the OS lists it (Linux), else its architecture."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def upsampler(method, channels, scale):
    if method == "DLU":
        return DLU(channels, scale)
    if method == "CARAFEPack":
        return CARAFEPack(channels, scale)
    mode = dict(nearest="nearest", bilinear="bilinear")[method]
    kwargs = dict(align_corners=False) if mode == "bilinear" else {}
    return torch.nn.Upsample(scale_factor=scale, mode=mode, **kwargs)


def module_calls(method, scale, x, graphed=False):
    """`method`'s module for x's channels and scale, on x's device and dtype, and its two timed
    calls: the forward without autograd, and forward+backward of a random gradient (out.sum()'s
    is a stride-0 tensor of ones, which flatters every kernel) as a training step after
    `optimizer.zero_grad()` runs it: the gradients are stored, not added to earlier ones (which
    took a launch per parameter and for x, 7 for DLU and 5 for CARAFEPack).

    graphed (CUDA): the forward+backward runs the module captured in CUDA graphs
    (torch.cuda.make_graphed_callables) and replayed, the step without the host's Python and
    launch costs, which both modules otherwise wait on (docs/performance.md, target 4)."""
    n, c, h, w = x.shape
    module = upsampler(method, c, scale).to(x.device, x.dtype)
    xg = x.clone().requires_grad_()
    grad = torch.randn(n, c, scale * h, scale * w, device=x.device, dtype=x.dtype)
    step = torch.cuda.make_graphed_callables(module, (xg,)) if graphed else module

    def fwd():
        with torch.no_grad():
            module(x)

    def fwd_bwd():
        module.zero_grad(set_to_none=True)
        xg.grad = None
        step(xg).backward(grad)

    return fwd, fwd_bwd


def method_flops(method, channels, scale, height, width, batch):
    return dict(DLU=flops.dlu_flops, CARAFEPack=flops.carafe_flops, bilinear=flops.bilinear_flops,
                nearest=flops.nearest_flops)[method](channels, scale, height, width, batch)


def method_params(method, channels, scale):
    return dict(DLU=flops.dlu_params, CARAFEPack=flops.carafe_params).get(method, lambda *a: 0)(channels, scale)
