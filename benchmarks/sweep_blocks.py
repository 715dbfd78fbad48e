"""Forward tile sweep through the forward's one block hook (tuning.forward_blocks).

    python benchmarks/sweep_blocks.py            # N2 C256, 256x256 output, k5, float32, on CUDA

[BLOCK_C, BLOCK_SY, BLOCK_P, s] tiles of 4096 and 8192 accumulators at 4 and 8 warps, at
s = 2, 16, 4, 8, both ops; the configuration forward_blocks picks is marked.
"""
import itertools

import triton

from dlu_triton import benchmark as B
from dlu_triton import ops
from dlu_triton.kernels import forward, tuning

n, c, k, out_size = 2, 256, 5, 256
bw = B.copy_bandwidth("cuda")
print(f"copy bandwidth {bw / 1e9:.0f} GB/s, N{n} C{c} k{k}, output {out_size}x{out_size}, float32")
print("| s | BLOCK_C | BLOCK_P | BLOCK_SY | warps | dlu fwd ms | carafe fwd ms | dlu of floor |")
print("|---|---|---|---|---|---|---|---|")
for s in (2, 16, 4, 8):
    h = w = out_size // s
    x, logits, offsets, masks = B.op_inputs(n, c, h, w, k, 1, s, "cuda")
    floor = B.dlu_bytes(n, c, h, w, k, 1, s, 4) / bw * 1e3
    chosen = tuning.forward_blocks(c, w, s)
    sxp = triton.next_power_of_2(s)
    for bc, bp, bsy, warps in itertools.product([32, 64, 128], [1, 2, 4, 8, 16, 32], [1, 2, 4, 8], [4, 8]):
        if bc * bp * bsy * sxp not in (4096, 8192) or bp > w or bsy > sxp or bsy * sxp > 64:
            continue
        forward.forward_blocks = lambda *a: (bc, bp, bsy, warps)  # noqa: E731
        try:
            t_dlu = B.time_ms(lambda: ops.dlu_upsample(x, logits, offsets, k, 1, s), "cuda")[0]
            t_car = B.time_ms(lambda: ops.carafe(x, masks, k, 1, s), "cuda")[0]
        except triton.runtime.errors.OutOfResources as e:
            print(f"| {s} | {bc} | {bp} | {bsy} | {warps} | out of resources: {e} |")
            continue
        mark = " (chosen)" if (bc, bp, bsy, warps) == chosen else ""
        print(f"| {s} | {bc} | {bp} | {bsy} | {warps}{mark} | {t_dlu:.3f} | {t_car:.3f} | {floor / t_dlu:.0%} |",
              flush=True)
forward.forward_blocks = tuning.forward_blocks
