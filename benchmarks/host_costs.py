"""Host (CPU) time of each layer of a call: where a call's time goes when the GPU waits on
Python, as it does for both modules and for the fused ops at small shapes (docs/performance.md,
"Host time").

    python benchmarks/host_costs.py [--out FILE] [--stub-launches]

Each row is the median of ROUNDS interleaved rounds, each the median of REPS calls, each timed
from an empty queue until it returns (`dlu_triton.benchmark.host_ms`). Rows, at the anchor
(N2 C256 128x128 k5 s2 float32): a bare Triton launch with 3 and with 28 arguments and a bare
PyTorch launch, each of the package's launchers, the kernel families, the custom ops, the public
functions through autograd, and both modules at 2x. On CPU (with
TRITON_INTERPRET=1, a tiny shape) the times are the interpreter's: only to try the script.

--stub-launches (for a machine without a GPU): every Triton launch returns at once and the ops
take the kernels' path on CPU tensors, so the rows of our launchers, kernel families, ops and
public functions are their own Python, without Triton's launch cost (the bare-launch rows are
then empty calls, and the modules' rows include their convolutions' CPU compute).
"""
import argparse
import statistics

import torch
import triton
import triton.language as tl

from dlu_triton import benchmark as B
from dlu_triton import ops
from dlu_triton.kernels import backward, forward, kernel_space

ROUNDS, REPS = 3, 200


@triton.jit
def _copy3(a, b, n, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(b + i, tl.load(a + i, mask=i < n), mask=i < n)


@triton.jit
def _copy28(a, b, s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11, s12, s13, s14, s15, s16, s17, s18, s19,
            h, w, c, d, n, BLOCK: tl.constexpr, X: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(b + i, tl.load(a + i, mask=i < n), mask=i < n)


def calls(device):
    cuda = device.type == "cuda"
    n, c, h, w = (2, 256, 128, 128) if cuda else (1, 4, 3, 5)
    k, g, s = 5, 1, 2
    x, logits, offsets, masks = B.op_inputs(n, c, h, w, k, g, s, device)
    grad = torch.randn(n, c, s * h, s * w, device=device)
    space = kernel_space.kernel_space(logits, g, k)
    dk, k_out = torch.empty_like(masks), torch.empty_like(masks)
    dlogits, doffsets, dx = torch.zeros_like(logits)[None], torch.empty_like(offsets), torch.empty_like(x)
    zeroed = torch.empty_like(space)[None]
    xg, lg, og, mg = (t.clone().requires_grad_() for t in (x, logits, offsets, masks))
    a = torch.randn(1024, device=device)
    b = torch.empty_like(a)
    rows = {
        "bare Triton launch, 3 arguments": lambda: _copy3[(1,)](a, b, 1024, BLOCK=1024),
        "bare Triton launch, 28 arguments": lambda: _copy28[(1,)](a, b, *range(20), 1, 1, 1, 1, 1024, BLOCK=1024, X=3),
        "bare PyTorch launch (a.add(1))": lambda: a.add(1),
        "kernel space (launcher)": lambda: kernel_space.kernel_space(logits, g, k),
        "kernel space + zero fill (the backward's)": lambda: kernel_space.kernel_space(logits, g, k, zeroed=zeroed),
        "launcher: forward (_reassemble)": lambda: forward._launch(x, space, offsets, k, g, s),
        "launcher: mask gradient": lambda: backward._mask_grad(grad, x, dk, k, g, s),
        "launcher: kernel gradient": lambda: backward._kernel_grad(
            dk, space, offsets, k_out, dlogits, doffsets, None, None, k, g, s),
        "launcher: features gradient": lambda: backward._feature_grad(grad, masks, dx, k, g, s),
        "launcher: logits gradient out": lambda: backward._logit_grad_out(
            dlogits.view(1, n, g, k * k, h, w), space, dlogits[0], k, g),
        "kernels.forward.dlu_forward": lambda: forward.dlu_forward(x, logits, offsets, k, g, s),
        "kernels.backward.dlu_backward": lambda: backward.dlu_backward(grad, x, logits, offsets, k, g, s),
        "torch.ops.dlu_triton.dlu_upsample": lambda: torch.ops.dlu_triton.dlu_upsample(x, logits, offsets, k, g, s),
        "torch.ops.dlu_triton.dlu_upsample_backward": lambda: torch.ops.dlu_triton.dlu_upsample_backward(
            grad, x, logits, offsets, k, g, s),
        "dlu_upsample forward, inputs requiring grad": lambda: ops.dlu_upsample(xg, lg, og, k, g, s),
        "dlu_upsample forward+backward (autograd)": lambda: ops.dlu_upsample(xg, lg, og, k, g, s).backward(grad),
        "carafe forward+backward (autograd)": lambda: ops.carafe(xg, mg, k, g, s).backward(grad),
    }
    for method in ("DLU", "CARAFEPack"):
        fwd, fwd_bwd = B.module_calls(method, s, x)
        rows[f"{method} module forward (2x)"] = fwd
        rows[f"{method} module forward+backward (2x)"] = fwd_bwd
    return rows, (n, c, h, w)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", help="also write the table to this file")
    p.add_argument("--stub-launches", action="store_true", help="time our Python without Triton's launches")
    args = p.parse_args()
    device = torch.device(args.device)
    if args.stub_launches:
        triton.runtime.jit.JITFunction.run = lambda *a, **kw: None
        ops._use_triton = lambda t: True
    rows, shape = calls(device)
    reps = REPS if device.type == "cuda" or args.stub_launches else 3
    for fn in rows.values():
        fn()  # compile, allocate
    rounds = {name: [] for name in rows}
    for _ in range(ROUNDS):
        for name, fn in rows.items():
            rounds[name].append(B.host_ms(fn, device, reps) * 1e3)
    info = B.env_info(device)
    stub = ", Triton launches stubbed out" if args.stub_launches else ""
    lines = [f"# host time per call (us){stub}, {info.get('gpu', info.get('cpu'))}, torch {info['torch']}, "
             f"triton {info['triton']}, {info['date']}; "
             f"shape N{shape[0]} C{shape[1]} {shape[2]}x{shape[3]} k5 s2 float32",
             "", "| call | median of rounds | rounds |", "|---|---|---|"]
    for name, values in rounds.items():
        lines.append(f"| {name} | {statistics.median(values):.1f} | {' / '.join(f'{v:.1f}' for v in values)} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
