"""`python -m dlu_triton compare`: DLU against CARAFE (and the zero-parameter baselines).

For each scale: parameters, FLOPs, forward and forward+backward latency, peak memory of the
modules (convolutions included), the DLU/CARAFE ratios, and the fused ops' time against the
bandwidth floor (minimal bytes / copy bandwidth measured in the same run). Times are medians,
with half their 20%-80% quantile range as a spread; ratios come with their range.

On a GPU each module's forward+backward is also replayed from CUDA graphs: its device time,
without Python's and the launches' costs. Where the eager step takes clearly longer (by
HOST_BOUND), the host bounds it, and a faster kernel would not show in its latency.

On a CPU, which the scheduler shares with every other process, the default shape gives every
row milliseconds of work, all of a scale's calls are timed in interleaved rounds (each sample
at least 20 ms of calls), the DLU/CARAFE ratios are taken round by round, and the header says
when the machine's load average leaves the timed threads less than their cores.
"""
import argparse
import json
import os
import sys

import torch

from . import benchmark as B
from . import cpu_native, ops

HOST_BOUND = 1.2  # eager over graphed time above which a row is bound by the host


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m dlu_triton", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compare", help="DLU vs CARAFEPack vs bilinear/nearest, per scale")
    c.add_argument("--scales", type=int, nargs="+", default=[2, 4, 8, 16])
    c.add_argument("--channels", type=int, default=None, help="default 256 on CUDA, 64 on CPU")
    c.add_argument("--batch", type=int, default=None, help="default 2 on CUDA, 1 on CPU")
    c.add_argument("--output-size", type=int, default=None,
                   help="side of the upsampled output; the input is output-size/scale (default 256)")
    c.add_argument("--rounds", type=int, default=15,
                   help="CPU: interleaved timing rounds (default 15); CUDA times with do_bench")
    c.add_argument("--threads", type=int, default=None,
                   help="CPU: threads to time (default torch's; 1 where the load average says other processes "
                        "compete for the cores)")
    c.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    c.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    c.add_argument("--forward-only", action="store_true", help="skip forward+backward timings")
    c.add_argument("--json", metavar="PATH", help="write every number to PATH")
    c.add_argument("--plot", metavar="PATH.png", help="draw latency and FLOPs against scale (needs matplotlib)")
    return p.parse_args(argv)


def measure_scale(args, scale, bandwidth, log):
    dev, dtype = args.device, getattr(torch, args.dtype)
    gpu = torch.device(dev).type == "cuda"
    n, c = args.batch, args.channels
    h = w = max(1, args.output_size // scale)
    x = torch.randn(n, c, h, w, device=dev, dtype=dtype)
    rows, calls = {}, {}
    for method in B.METHODS:
        fwd, fwd_bwd = B.module_calls(method, scale, x)
        rows[method] = dict(params=B.method_params(method, c, scale),
                            gflops=B.method_flops(method, c, scale, h, w, n) / 1e9)
        calls[method, "fwd_ms"] = fwd
        if not args.forward_only:
            calls[method, "fwd_bwd_ms"] = fwd_bwd
    # The ops alone, against the bandwidth floor.
    k, g = 5, 1
    _, logits, offsets, masks = B.op_inputs(n, c, h, w, k, g, scale, dev, dtype)
    calls["ops", "dlu_op_ms"] = lambda: ops.dlu_upsample(x, logits, offsets, k, g, scale)
    calls["ops", "carafe_op_ms"] = lambda: ops.carafe(x, masks, k, g, scale)
    passes = [what for what in ("fwd_ms", "fwd_bwd_ms") if ("DLU", what) in calls]
    if gpu:
        if not args.forward_only:  # the same steps replayed from CUDA graphs: their device time
            for method in B.METHODS:
                calls[method, "graphed_ms"] = B.module_calls(method, scale, x, graphed=True)[1]
            passes.append("graphed_ms")
        times = {}
        for key, fn in calls.items():
            log(f"  s={scale} {' '.join(key)} ...")
            times[key] = B.time_ms(fn, dev)
        # the quantiles' ratios: the slowest DLU against the fastest CARAFE and the reverse
        ratios = {what: (times["DLU", what][0] / times["CARAFEPack", what][0],
                         times["DLU", what][1] / times["CARAFEPack", what][2],
                         times["DLU", what][2] / times["CARAFEPack", what][1]) for what in passes}
    else:
        log(f"  s={scale}: {len(calls)} calls, {args.rounds} interleaved rounds ...")
        samples = B.interleaved_ms(calls, args.rounds)
        times = {key: B.quantiles(t) for key, t in samples.items()}
        ratios = {what: B.quantiles([d / cp for d, cp in zip(samples["DLU", what], samples["CARAFEPack", what])])
                  for what in passes}
    for (method, what), t in times.items():
        if method != "ops":
            rows[method][what] = t
    for method in B.METHODS if not args.forward_only else ():
        rows[method]["peak_mib"] = B.peak_memory_mib(calls[method, "fwd_bwd_ms"], dev)  # after timing: warm
    size = x.element_size()
    floor = None
    if bandwidth:
        floor = dict(dlu_floor_ms=B.dlu_bytes(n, c, h, w, k, g, scale, size) / bandwidth * 1e3,
                     carafe_floor_ms=B.carafe_bytes(n, c, h, w, k, g, scale, size) / bandwidth * 1e3)
    return dict(scale=scale, input=(n, c, h, w), methods=rows, ratios=ratios, dlu_op_ms=times["ops", "dlu_op_ms"],
                carafe_op_ms=times["ops", "carafe_op_ms"], floor=floor)


def fmt_ms(t):
    """A median and, after it, half its q20-q80 range in percent of it."""
    return "-" if t is None else f"{t[0]:.3f} ±{50 * (t[2] - t[1]) / t[0]:.0f}%"


def fmt_ratio(r):
    return f"{r[0]:.2f} ({r[1]:.2f}-{r[2]:.2f})"


def bound(eager, graphed):
    """What bounds a step: "host" where its eager time exceeds its graphed (device) time by more
    than HOST_BOUND, else "device"."""
    return "host" if eager[0] > HOST_BOUND * graphed[0] else "device"


def print_table(res, forward_only):
    n, c, h, w = res["input"]
    s = res["scale"]
    graphed = "graphed_ms" in res["ratios"]
    print(f"\nscale {s}x: input {n}x{c}x{h}x{w} -> output {s * h}x{s * w}")
    head = f"{'method':<11} {'params':>10} {'GFLOPs':>8} {'fwd ms':>14}"
    if not forward_only:
        head += f" {'fwd+bwd ms':>14} {'peak MiB':>9}"
    if graphed:
        head += f" {'graphed fwd+bwd ms':>19} {'bound by':>8}"
    print(head)
    for method, r in res["methods"].items():
        line = f"{method:<11} {r['params']:>10,} {r['gflops']:>8.2f} {fmt_ms(r['fwd_ms']):>14}"
        if not forward_only:
            peak = "-" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
            line += f" {fmt_ms(r['fwd_bwd_ms']):>14} {peak:>9}"
        if graphed:
            line += f" {fmt_ms(r['graphed_ms']):>19} {bound(r['fwd_bwd_ms'], r['graphed_ms']):>8}"
        print(line)
    d, cp, ratios = res["methods"]["DLU"], res["methods"]["CARAFEPack"], res["ratios"]
    ratio = (f"DLU/CARAFE: params {d['params'] / cp['params']:.2f}, FLOPs {d['gflops'] / cp['gflops']:.2f}, "
             f"fwd {fmt_ratio(ratios['fwd_ms'])}")
    if not forward_only:
        ratio += f", fwd+bwd {fmt_ratio(ratios['fwd_bwd_ms'])}"
    if graphed:
        ratio += f", graphed fwd+bwd (device) {fmt_ratio(ratios['graphed_ms'])}"
    print(ratio)
    f, dlu, carafe = res["floor"], res["dlu_op_ms"], res["carafe_op_ms"]
    ops_line = f"ops alone (k=5): dlu_upsample {fmt_ms(dlu)} ms, carafe {fmt_ms(carafe)} ms"
    if f:
        ops_line += (f"; floor {f['dlu_floor_ms']:.3f} / {f['carafe_floor_ms']:.3f} ms"
                     f" = {f['dlu_floor_ms'] / dlu[0]:.0%} / {f['carafe_floor_ms'] / carafe[0]:.0%} of bandwidth")
    print(ops_line)


def threads_text(n):
    return f"{n} thread" + "s" * (n != 1)


def load_line(when, load, threads):
    """The machine's load (machine_load()), flagged where it leaves `threads` less than their cores."""
    if load is None:
        return f"load average {when}: unknown on this OS"
    line = f"load average {when}: {load[0]:.2f} (1 min) on {load[1]} cores, {threads_text(threads)} timed"
    if B.looks_loaded(*load, threads):
        line += (" -- LOADED: other processes compete for these cores, so times are slower and noisier than on an "
                 "idle machine; trust the ratios only within their printed ranges")
    return line


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scales = [r["scale"] for r in results]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for method in results[0]["methods"]:
        a.plot(scales, [r["methods"][method]["fwd_ms"][0] for r in results], "o-", label=method)
        b.plot(scales, [r["methods"][method]["gflops"] for r in results], "o-", label=method)
    for ax, title in ((a, "forward latency (ms)"), (b, "GFLOPs")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("scale factor")
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def compare(args):
    gpu = torch.device(args.device).type == "cuda"
    batch, channels, size = B.compare_shape(args.device)
    args.batch = args.batch or batch
    args.channels = args.channels or channels
    args.output_size = args.output_size or size
    info = B.env_info(args.device)
    if gpu:
        print(f"dlu-triton compare on {info['gpu']}, {args.dtype}, torch {info['torch']}, triton {info['triton']}, "
              f"{info['date']}")
        bandwidth = B.copy_bandwidth(args.device)
        print(f"copy bandwidth {bandwidth / 1e9:.0f} GB/s (read + write)")
    else:
        form = ("its compiled kernel" if cpu_native.library() is not None
                else "blocked weighted gathers: no C compiler built its kernel")
        path = ("Triton's interpreter (TRITON_INTERPRET=1), which is slow" if os.environ.get("TRITON_INTERPRET") == "1"
                else f"the CPU path (dlu_triton.cpu, {form}), not the Triton kernels")
        info["load_start"] = load = B.machine_load()
        # OpenMP's threads wait for each other at every parallel region: with more of them than
        # the cores the load leaves free, a call's time is mostly the waits for descheduled ones.
        loaded = load is not None and B.looks_loaded(*load, torch.get_num_threads())
        torch.set_num_threads(args.threads or (1 if loaded else torch.get_num_threads()))
        print(f"dlu-triton compare on CPU ({info['cpu']}, {threads_text(torch.get_num_threads())}): NO GPU, so this "
              f"times {path}; params and FLOPs are exact. {args.dtype}, torch {info['torch']}, {info['date']}")
        print(f"times: medians of {args.rounds} rounds, each timing every call of a scale in turn, ±half the "
              "q20-q80 range; DLU/CARAFE: the median (q20-q80) of the rounds' ratios")
        print(load_line("at the start", load, torch.get_num_threads()))
        if loaded and not args.threads:
            print("so one thread is timed: OpenMP's threads wait for each other, and with more of them than free "
                  "cores a time measures those waits more than the work (--threads N to time N)")
        bandwidth = None
    results = []
    for scale in args.scales:
        results.append(measure_scale(args, scale, bandwidth, lambda m: print(m, file=sys.stderr, flush=True)))
        print_table(results[-1], args.forward_only)
    if not gpu:
        info["load_end"] = B.machine_load()
        print("\n" + load_line("at the end", info["load_end"], torch.get_num_threads()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(env=info, args=vars(args), bandwidth_GBps=bandwidth and bandwidth / 1e9, results=results), f,
                      indent=1)
    if args.plot:
        plot(results, args.plot)


def main(argv=None):
    args = parse(argv if argv is not None else sys.argv[1:])
    if args.command == "compare":
        compare(args)


if __name__ == "__main__":
    main()
