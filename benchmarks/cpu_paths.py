"""The paths that run without the Triton kernels, on this machine's CPU: `dlu_upsample` and
`carafe` forward and forward+backward on the CPU path (dlu_triton.cpu: its compiled kernel, and
for DLU also the gathers it falls back to without a C compiler), the PyTorch reference beside
them, bilinear upsampling for scale, the `DLU` module eager, and the `DLU` module exported to
ONNX (dlu_triton.export) in onnxruntime, beside the export of the reference's composition
(unfold, full mask, einsum: what export wrote before).

    python benchmarks/cpu_paths.py [--reps 5] [--json FILE]

Floor: FLOPs at this machine's sgemm rate, measured in the same run (a 2048^3 float32 matmul,
median of the repeats). FLOPs as the contract counts them (2 x multiply-adds): the reassembly's
2*k*k*C*s*s per input pixel for the op's forward, 3x that for forward+backward (its two
gradient products are the same size), and the module's convolutions added for the module and
ONNX rows. Times are medians of --reps calls after one warm-up; each row's ratio is to its floor.
Peak memory: the largest resident-set growth during one call, in a fresh process, over the
output's size (so 1.0 is the output itself). Prints a markdown table last.
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

import dlu_triton
from dlu_triton import cpu, cpu_native, export, flops, reference

SHAPES = [(1, 256, 100, 152, 5, 1, 2), (2, 128, 48, 40, 3, 2, 4)]  # (N, C, H, W, k, G, s)


def median_ms(fn, reps):
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1e3


def sgemm_flops_per_s(reps):
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    return 2 * 2048**3 / (median_ms(lambda: a @ b, reps) / 1e3)


def gathers(fn):
    """fn on the CPU path's fallback: the compiled kernel switched off, as without a C compiler."""
    def call():
        available, cpu_native.available = cpu_native.available, lambda dtype: False
        try:
            return fn()
        finally:
            cpu_native.available = available
    return call


def inputs(shape):
    n, c, h, w, k, g, s = shape
    torch.manual_seed(0)
    x = torch.randn(n, c, h, w)
    logits, offsets = torch.randn(n, g * k * k, h, w), torch.randn(n, 2 * g * s * s, h, w)
    masks = torch.softmax(torch.randn(n, g, k * k, s * h, s * w), 2).reshape(n, g * k * k, s * h, s * w)
    return x, logits, offsets, masks, torch.randn(n, c, s * h, s * w)


def module(shape):
    n, c, h, w, k, g, s = shape
    torch.manual_seed(0)
    m = dlu_triton.DLU(c, s, up_kernel=k, up_group=g).eval()
    with torch.no_grad():  # trained-looking: offsets off zero
        m.conv_offset.weight.normal_(std=0.01)
    return m


def onnx_session(m, x, decompositions, folder, name):
    import onnxruntime as ort
    program = torch.export.export(m, (x,)).run_decompositions(decompositions)
    path = os.path.join(folder, name + ".onnx")
    torch.onnx.export(program, f=path, dynamo=True, opset_version=18)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x.numpy()}
    return lambda: session.run(None, feed)


def cases(shape, folder):
    """{row: (make, kind)}: make() builds the row's call (an ONNX row exports first); kind picks
    the floor ('op': the op's FLOPs, 'op3': forward+backward, 'module': the module's)."""
    n, c, h, w, k, g, s = shape
    x, logits, offsets, masks, dy = inputs(shape)
    x_cl = x.contiguous(memory_format=torch.channels_last)  # its output is channels_last
    rows = {
        "dlu_upsample fwd, CPU path": (lambda: lambda: cpu.dlu_upsample(x, logits, offsets, k, g, s), "op"),
        "dlu_upsample fwd, CPU path, channels_last": (lambda: lambda: cpu.dlu_upsample(
            x_cl, logits, offsets, k, g, s), "op"),
        "dlu_upsample fwd+bwd, CPU path": (lambda: lambda: (
            cpu.dlu_upsample(x, logits, offsets, k, g, s), cpu.dlu_upsample_backward(dy, x, logits, offsets, k, g, s)),
            "op3"),
        "dlu_upsample fwd, CPU path, gathers (no compiler)": (lambda: gathers(
            lambda: cpu.dlu_upsample(x, logits, offsets, k, g, s)), "op"),
        "dlu_upsample fwd+bwd, CPU path, gathers (no compiler)": (lambda: gathers(lambda: (
            cpu.dlu_upsample(x, logits, offsets, k, g, s), cpu.dlu_upsample_backward(dy, x, logits, offsets, k, g, s))),
            "op3"),
        "dlu_upsample fwd, reference": (lambda: lambda: reference.dlu_upsample(x, logits, offsets, k, g, s), "op"),
        "dlu_upsample fwd+bwd, reference": (lambda: lambda: (
            reference.dlu_upsample(x, logits, offsets, k, g, s),
            reference.dlu_upsample_backward(dy, x, logits, offsets, k, g, s)), "op3"),
        "carafe fwd, CPU path": (lambda: lambda: cpu.carafe(x, masks, k, g, s), "op"),
        "carafe fwd+bwd, CPU path": (lambda: lambda: (
            cpu.carafe(x, masks, k, g, s), cpu.carafe_backward(dy, x, masks, k, g, s)), "op3"),
        "bilinear upsampling fwd": (lambda: lambda: F.interpolate(x, scale_factor=s, mode="bilinear"), None),
        "DLU module fwd, eager (CPU path)": (lambda: module(shape), "module"),
    }
    if folder is not None:
        rows["DLU module, ONNX (dlu_triton.export), onnxruntime"] = (
            lambda: onnx_session(module(shape), x, export.decompositions(), folder, "new"), "module")
        rows["DLU module, ONNX of the reference's composition, onnxruntime"] = (
            lambda: onnx_session(module(shape), x, {torch.ops.dlu_triton.dlu_upsample.default: reference.dlu_upsample},
                                 folder, "old"), "module")
    return rows, x


def peak_memory(shape_index, row):
    """The largest resident-set growth during one call of `row` (sampled every 0.5 ms in a fresh
    process, after its inputs and any ONNX session exist), over the output's size."""
    code = f"""
import sys, tempfile, threading, time, resource
sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
import torch
from cpu_paths import SHAPES, cases
shape = SHAPES[{shape_index}]
rows, x = cases(shape, tempfile.mkdtemp())
make, _ = rows[{row!r}]
call = make()
if isinstance(call, torch.nn.Module):
    module = call
    call = lambda: module(x)
page = resource.getpagesize()
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * page
base, peak, done = rss(), [0], []
def watch():
    while not done:
        peak[0] = max(peak[0], rss())
        time.sleep(0.0005)
t = threading.Thread(target=watch)
t.start()
with torch.no_grad():
    call()
done.append(1)
t.join()
n, c, h, w, k, g, s = shape
print((max(peak[0], rss()) - base) / (4 * n * c * s * s * h * w))
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
    return float(run.stdout.split()[-1]) if run.returncode == 0 else float("nan")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--json")
    p.add_argument("--no-onnx", action="store_true")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    args = p.parse_args()
    info = dict(cpu=platform.processor() or platform.machine(), threads=torch.get_num_threads(),
                torch=torch.__version__, date=datetime.date.today().isoformat(),
                kernel="compiled" if cpu_native.library() is not None else "none (gathers)")
    try:
        import onnxruntime
        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        args.no_onnx = True
    results = []
    folder = None if args.no_onnx else tempfile.mkdtemp()
    for index, shape in enumerate(SHAPES):
        n, c, h, w, k, g, s = shape
        rate = sgemm_flops_per_s(args.reps)
        op_flops = flops.reassembly_flops(c, h, w, k, s, n)
        module_flops = flops.dlu_flops(c, s, h, w, n, up_kernel=k, up_group=g)
        label = f"N{n} C{c} {h}x{w} s{s} k{k} G{g} float32"
        print(f"{label}: sgemm {rate / 1e9:.0f} GFLOP/s, op floor {op_flops / rate * 1e3:.2f} ms", file=sys.stderr)
        rows, x = cases(shape, folder)
        for row, (make, kind) in rows.items():
            call = make()
            if isinstance(call, torch.nn.Module):  # the module, timed without autograd like the others' forward
                call = (lambda mod: lambda: mod(x))(call)
            with torch.no_grad():
                ms = median_ms(call, args.reps)
            floor = dict(op=op_flops, op3=3 * op_flops, module=module_flops).get(kind)
            floor_ms = floor / rate * 1e3 if floor else None
            memory = None if args.no_memory else peak_memory(index, row)
            results.append(dict(shape=label, row=row, ms=ms, floor_ms=floor_ms, sgemm_gflops=rate / 1e9,
                                peak_over_output=memory))
            print(f"  {row}: {ms:.1f} ms", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(env=info, results=results), f, indent=1)
    print(f"# CPU paths: {info['cpu']}, {info['threads']} threads, torch {info['torch']}, "
          f"onnxruntime {info.get('onnxruntime', '-')}, CPU path kernel {info['kernel']}, {info['date']}\n")
    print("| shape | path | median ms | floor ms | x floor | peak extra memory / output |")
    print("|---|---|---|---|---|---|")
    for r in results:
        ratio = f"{r['ms'] / r['floor_ms']:.1f}" if r["floor_ms"] else "-"
        floor = f"{r['floor_ms']:.2f}" if r["floor_ms"] else "-"
        mem = "-" if r["peak_over_output"] is None else f"{r['peak_over_output']:.1f}"
        print(f"| {r['shape']} | {r['row']} | {r['ms']:.1f} | {floor} | {ratio} | {mem} |")


if __name__ == "__main__":
    main()
