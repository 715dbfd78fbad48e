"""Block-size sweep of the kernels at one shape, through the single block_config hook.

    python benchmarks/sweep_blocks.py            # N2 C256 128x128 k5 s2, float32, on CUDA
"""
import itertools

import torch
import triton

from dlu_triton import benchmark as B
from dlu_triton import ops
from dlu_triton.kernels import backward, common, forward

n, c, h, w, k, s = 2, 256, 128, 128, 5, 2
x, logits, offsets, masks = B.op_inputs(n, c, h, w, k, 1, s, "cuda")
grad = torch.randn(n, c, s * h, s * w, device="cuda")
bw = B.copy_bandwidth("cuda")
floor = B.dlu_bytes(n, c, h, w, k, 1, s, 4) / bw * 1e3
print(f"copy bandwidth {bw / 1e9:.0f} GB/s; dlu forward floor {floor:.4f} ms")
print("| BLOCK_C | BLOCK_P | BLOCK_QK | warps | dlu fwd ms | carafe fwd ms | dlu bwd ms |")
print("|---|---|---|---|---|---|---|")
for bc, bp, bqk, warps in itertools.product([32, 64, 128, 256], [16, 32, 64, 128], [16, 32, 64], [4, 8]):
    if bc * bp > 16384 or (bqk != 32 and (bc, bp) != (64, 64)):
        continue
    cfg = lambda *a: (bc, bp, bqk, warps)  # noqa: E731
    forward.block_config = backward.block_config = cfg
    try:
        t_dlu = B.time_ms(lambda: ops.dlu_upsample(x, logits, offsets, k, 1, s), "cuda")[0]
        t_car = B.time_ms(lambda: ops.carafe(x, masks, k, 1, s), "cuda")[0]
        t_bwd = B.time_ms(lambda: backward.dlu_backward(grad, x, logits, offsets, k, 1, s), "cuda")[0]
    except triton.runtime.errors.OutOfResources as e:
        print(f"| {bc} | {bp} | {bqk} | {warps} | out of resources: {e} |")
        continue
    print(f"| {bc} | {bp} | {bqk} | {warps} | {t_dlu:.3f} | {t_car:.3f} | {t_bwd:.3f} |", flush=True)
forward.block_config = backward.block_config = common.block_config
