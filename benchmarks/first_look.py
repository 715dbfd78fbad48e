"""First GPU look: correctness of every kernel against the float64 reference on a few shapes and
dtypes, then one forward timing at the foundation issue's shape. Prints a short table last.

    python benchmarks/first_look.py
"""
import datetime
import json
import os
import sys

import torch
import triton
from triton.testing import do_bench

import dlu_triton
from dlu_triton import reference

dev = "cuda"
torch.manual_seed(0)
rows = []


def rel(a, b):
    return ((a.double() - b).norm() / b.norm().clamp_min(1e-30)).item()


for (n, c, h, w, k, g, s) in [(2, 64, 17, 23, 5, 1, 2), (1, 32, 9, 7, 3, 2, 4), (1, 16, 5, 6, 7, 4, 8), (2, 48, 1, 13, 5, 2, 3), (1, 32, 4, 4, 5, 1, 16)]:
    for dt in (torch.float32, torch.bfloat16, torch.float16):
        f = torch.randn(n, c, h, w, device=dev, dtype=dt, requires_grad=True)
        l = torch.randn(n, g * k * k, h, w, device=dev, dtype=dt, requires_grad=True)
        o = (2 * torch.randn(n, 2 * g * s * s, h, w, device=dev)).to(dt).requires_grad_()
        y = dlu_triton.dlu_upsample(f, l, o, k, g, s)
        go = torch.randn_like(y)
        grads = torch.autograd.grad(y, (f, l, o), go)
        d = [t.detach().double() for t in (go, f, l, o)]
        yr = reference.dlu_upsample(*d[1:], k, g, s)
        gr = reference.dlu_upsample_backward(*d, k, g, s)
        m = torch.softmax(torch.randn(n, g, k * k, s * h, s * w, device=dev), 2).view(n, -1, s * h, s * w).to(dt).requires_grad_()
        y2 = dlu_triton.carafe(f, m, k, g, s)
        g2 = torch.autograd.grad(y2, (f, m), go)
        y2r = reference.carafe(d[1], m.detach().double(), k, g, s)
        g2r = reference.carafe_backward(d[0], d[1], m.detach().double(), k, g, s)
        errs = [rel(y, yr)] + [rel(a, b) for a, b in zip(grads, gr)] + [rel(y2, y2r)] + [rel(a, b) for a, b in zip(g2, g2r)]
        rows.append(dict(shape=(n, c, h, w, k, g, s), dtype=str(dt), errs=errs))
        print(rows[-1], flush=True)

n, c, h, w, k, g, s = 2, 256, 128, 128, 5, 1, 2
f = torch.randn(n, c, h, w, device=dev)
l = torch.randn(n, g * k * k, h, w, device=dev)
o = torch.randn(n, 2 * g * s * s, h, w, device=dev)
fused = do_bench(lambda: dlu_triton.dlu_upsample(f, l, o, k, g, s), quantiles=[0.5, 0.2, 0.8])
ref = do_bench(lambda: reference.dlu_upsample(f, l, o, k, g, s), quantiles=[0.5, 0.2, 0.8])
go = torch.randn(n, c, s * h, s * w, device=dev)
bwd = do_bench(lambda: torch.ops.dlu_triton.dlu_upsample_backward(go, f, l, o, k, g, s), quantiles=[0.5, 0.2, 0.8])
x = torch.empty(2**28 // 4, device=dev)
copy = do_bench(lambda: x.clone(), quantiles=[0.5, 0.2, 0.8])
bw = 2 * x.numel() * 4 / (copy[0] * 1e-3)
nbytes = 4 * n * h * w * (c + g * k * k + 2 * g * s * s + c * s * s)
info = dict(
    device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
    date=datetime.date.today().isoformat(), copy_GBps=bw / 1e9,
    fused_fwd_ms=fused, reference_fwd_ms=ref, fused_bwd_ms=bwd, floor_ms=nbytes / bw * 1e3,
)
out = os.environ.get("OUT")
if out:
    json.dump(dict(info=info, rows=rows), open(os.path.join(out, "first_look.json"), "w"), indent=1, default=str)
worst = max(max(r["errs"]) for r in rows if r["dtype"] == "torch.float32")
worst_lp = max(max(r["errs"]) for r in rows if r["dtype"] != "torch.float32")
print(f"\nworst rel err fp32 {worst:.2e}  bf16/fp16 {worst_lp:.2e}")
for key, v in info.items():
    print(f"{key:>18}: {v}")
sys.exit(0 if worst < 1e-5 else 1)
