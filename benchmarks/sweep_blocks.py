"""Tile sweeps through the kernels' block hooks (common.forward_blocks, common.mask_grad_blocks).

    python benchmarks/sweep_blocks.py [forward] [mask_grad]   # N2 C256, 256x256 output, k5, float32, CUDA

forward: [BLOCK_C, BLOCK_SY, BLOCK_P, s] tiles of 4096 and 8192 accumulators at 4 and 8 warps,
both ops. mask_grad: [BLOCK_C channels a step, BLOCK_P pixels x s columns] at 4 and 8 warps, the
CARAFE mask gradient alone (its floor: dy and features read, the mask gradient written) and
DLU's whole backward. Each at s = 2, 16, 4, 8; the configuration the hook picks is marked.
"""
import itertools
import sys

import torch
import triton

from dlu_triton import benchmark as B
from dlu_triton import ops
from dlu_triton.kernels import backward, common, forward

n, c, k, out_size = 2, 256, 5, 256
bw = B.copy_bandwidth("cuda")
print(f"copy bandwidth {bw / 1e9:.0f} GB/s, N{n} C{c} k{k}, output {out_size}x{out_size}, float32")


def sweep(configs, header, run):
    """Time `run(s, x, logits, offsets, masks)` for each (s, config) with the config patched in."""
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for s in (2, 16, 4, 8):
        h = w = out_size // s
        inputs = B.op_inputs(n, c, h, w, k, 1, s, "cuda")
        for config, chosen in configs(s, w):
            try:
                times = run(s, config, *inputs)
            except triton.runtime.errors.OutOfResources as e:
                print(f"| {s} | {' | '.join(map(str, config))} | out of resources: {e} |")
                continue
            mark = " (chosen)" if chosen else ""
            print(f"| {s} | {' | '.join(map(str, config))}{mark} | {' | '.join(times)} |", flush=True)


def forward_configs(s, w):
    sxp = triton.next_power_of_2(s)
    picked = common.forward_blocks(c, w, s)
    for bc, bp, bsy, warps in itertools.product([32, 64, 128], [1, 2, 4, 8, 16, 32], [1, 2, 4, 8], [4, 8]):
        if bc * bp * bsy * sxp in (4096, 8192) and bp <= w and bsy <= sxp and bsy * sxp <= 64:
            yield (bc, bp, bsy, warps), (bc, bp, bsy, warps) == picked


def forward_run(s, config, x, logits, offsets, masks):
    forward.forward_blocks = lambda *a: config  # noqa: E731
    h = x.shape[-1]  # square
    t_dlu = B.time_ms(lambda: ops.dlu_upsample(x, logits, offsets, k, 1, s), "cuda")[0]
    t_car = B.time_ms(lambda: ops.carafe(x, masks, k, 1, s), "cuda")[0]
    floor = B.dlu_bytes(n, c, h, h, k, 1, s, 4) / bw * 1e3
    return f"{t_dlu:.3f}", f"{t_car:.3f}", f"{floor / t_dlu:.0%}"


def mask_grad_configs(s, w):
    sxp = triton.next_power_of_2(s)
    picked = common.mask_grad_blocks(c, w, s)
    for bc, bp, warps in itertools.product([16, 32, 64], [1, 2, 4, 8, 16, 32], [4, 8]):
        if bp * sxp in (16, 32, 64) and bp <= w:
            yield (bc, bp, warps), (bc, bp, warps) == picked


def mask_grad_run(s, config, x, logits, offsets, masks):
    backward.mask_grad_blocks = lambda *a: config  # noqa: E731
    h = x.shape[-1]  # square
    dy = torch.randn(n, c, s * h, s * h, device="cuda")
    dmasks = torch.empty_like(masks)
    t_mask = B.time_ms(lambda: backward._mask_grad(dy, x, dmasks, k, 1, s), "cuda")[0]
    t_dlu = B.time_ms(lambda: backward.dlu_backward(dy, x, logits, offsets, k, 1, s), "cuda")[0]
    floor = 4 * (dy.numel() + x.numel() + masks.numel()) / bw * 1e3
    return f"{t_mask:.3f}", f"{floor / t_mask:.0%}", f"{t_dlu:.3f}"


which = sys.argv[1:] or ["forward"]
if "forward" in which:
    sweep(forward_configs, "| s | BLOCK_C | BLOCK_P | BLOCK_SY | warps | dlu fwd ms | carafe fwd ms | dlu of floor |",
          forward_run)
    forward.forward_blocks = common.forward_blocks
if "mask_grad" in which:
    sweep(mask_grad_configs, "| s | BLOCK_C | BLOCK_P | warps | carafe mask grad ms | of floor | dlu bwd ms |",
          mask_grad_run)
    backward.mask_grad_blocks = common.mask_grad_blocks
