"""Tile sweep at one shape through the block-size hooks (forward_config, block_config):

    python benchmarks/sweep_blocks.py      # N2 C256 128x128 k5 s2 and N1 C256 16x16 k5 s16, float32, CUDA
"""
import itertools

import torch

from dlu_triton import benchmark as B
from dlu_triton import ops
from dlu_triton.kernels import backward, common, forward

bw = B.copy_bandwidth("cuda")
print(f"copy bandwidth {bw / 1e9:.0f} GB/s")
for n, c, h, w, k, s in [(2, 256, 128, 128, 5, 2), (1, 256, 16, 16, 5, 16)]:
    x = torch.randn(n, c, h, w, device="cuda")
    logits = torch.randn(n, k * k, h, w, device="cuda")
    offsets = torch.randn(n, 2 * s * s, h, w, device="cuda")
    masks = torch.softmax(torch.randn(n, k * k, s * h, s * w, device="cuda"), 1)
    floor = B.dlu_bytes(n, c, h, w, k, 1, s, 4) / bw * 1e3
    print(f"\nN{n} C{c} {h}x{w} k{k} s{s}: dlu forward floor {floor:.4f} ms")
    print("| BLOCK_C | BLOCK_P | T_PER | warps | dlu fwd ms | of floor | carafe fwd ms |")
    print("|---|---|---|---|---|---|---|")
    default = common.forward_config(c, h, w, s, n, x.device)
    for bc, bp, t_per, warps in [default] + list(itertools.product([32, 64, 128], [32, 64], [1, s * s], [4, 8])):
        if t_per > s * s:
            continue
        forward.forward_config = lambda *a: (bc, bp, t_per, warps)  # noqa: E731
        t_dlu = B.time_ms(lambda: ops.dlu_upsample(x, logits, offsets, k, 1, s), "cuda")[0]
        t_car = B.time_ms(lambda: ops.carafe(x, masks, k, 1, s), "cuda")[0]
        print(f"| {bc} | {bp} | {t_per} | {warps} | {t_dlu:.3f} | {floor / t_dlu:.0%} | {t_car:.3f} |", flush=True)
    forward.forward_config = common.forward_config
    grad = torch.randn(n, c, s * h, s * w, device="cuda")
    print(f"dlu backward (default blocks): {B.time_ms(lambda: backward.dlu_backward(grad, x, logits, offsets, k, 1, s), 'cuda')[0]:.3f} ms")
