"""Where a module's time goes (target 4 in docs/performance.md): for each scale, `DLU` and
`CARAFEPack` built and fed as `python -m dlu_triton compare` does, forward and forward+backward:

- median: the call's time as `compare` measures it (do_bench on CUDA, wall clock on CPU);
- host: the Python call alone, from an empty queue until it returns (no synchronisation);
- kernels: the device time of the call's kernels (torch.profiler, averaged over the runs), how
  many launches, and idle = median - kernels, the time the device waits on the host;
- on CUDA a third pass, "graphed": forward+backward captured in CUDA graphs and replayed
  (`benchmark.module_calls(..., graphed=True)`), the step's time without the host's costs.

    python benchmarks/profile_modules.py [--scales 2 16] [--out DIR]

Prints a short table last; with --out, also each call's kernels by name (on CPU, where there are
no kernels, the profiler's top operators by CPU time).
"""
import argparse
import collections
import os

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from dlu_triton import benchmark as B

RUNS = 20


def kernels_per_call(fn, device):
    """{kernel name: (launches, device ms)} per call, and the profile (for its operator table
    where there are no kernels)."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(RUNS):
            fn()
        B.sync(device)
    launches, ms = collections.Counter(), collections.Counter()
    for e in prof.events():
        if e.device_type == DeviceType.CUDA:
            launches[e.name] += 1
            ms[e.name] += e.time_range.elapsed_us() / 1e3
    return {name: (launches[name] / RUNS, ms[name] / RUNS) for name in launches}, prof


def profile_call(label, fn, device, log):
    fn()  # compile, autotune the convolutions, allocate
    median = B.time_ms(fn, device, reps=RUNS)[0]
    host = B.host_ms(fn, device, RUNS)
    kernels, prof = kernels_per_call(fn, device)
    total = sum(t for _, t in kernels.values())
    log(f"## {label}: median {median:.3f} ms, host {host:.3f} ms, kernels {total:.3f} ms "
        f"in {sum(n for n, _ in kernels.values()):.0f} launches")
    for name, (n, t) in sorted(kernels.items(), key=lambda kv: -kv[1][1]):
        log(f"  {t * 1e3:8.1f} us  x{n:4.1f}  {name[:110]}")
    if not kernels:
        log(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    return dict(median=median, host=host, kernels=total if kernels else None,
                launches=sum(n for n, _ in kernels.values()))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scales", type=int, nargs="+", default=[2, 4, 8, 16])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", help="directory for the per-kernel breakdown")
    args = p.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    n, c, size = B.compare_shape(device)
    lines = []
    log = lines.append
    info = B.env_info(device)
    device_name = info.get("gpu", info.get("cpu"))
    log(f"# profile_modules, {device_name}, torch {info['torch']}, triton {info['triton']}, {info['date']}")
    rows = []
    for s in args.scales:
        h = max(1, size // s)
        x = torch.randn(n, c, h, h, device=device)
        for method in ("CARAFEPack", "DLU"):
            fwd, fwd_bwd = B.module_calls(method, s, x)
            passes = [("fwd", fwd), ("fwd+bwd", fwd_bwd)]
            if cuda:  # the same step replayed from CUDA graphs: what is left without the host
                passes.append(("graphed", B.module_calls(method, s, x, graphed=True)[1]))
            for pass_, fn in passes:
                r = profile_call(f"{method} {s}x {pass_} (input {n}x{c}x{h}x{h})", fn, device, log)
                rows.append((s, method, pass_, r))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "profile-modules.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
    print(lines[0])
    columns = ("median", "host", "kernels", "launches", "idle")
    print(f"{'scale':>5} {'module':10} {'pass':8} " + " ".join(f"{c:>8}" for c in columns) + "  (ms)")
    for s, method, pass_, r in rows:
        k = r["kernels"]
        idle = "-" if k is None else f"{r['median'] - k:8.3f}"
        k = "-" if k is None else f"{k:8.3f}"
        print(f"{s:5d} {method:10} {pass_:8} {r['median']:8.3f} {r['host']:8.3f} {k:>8} {r['launches']:8.0f} {idle:>8}")


if __name__ == "__main__":
    main()
