"""DLU's kernel space: the softmax of each low-resolution pixel's k*k logits per group, one small
launch that both the forward and the backward make."""
import torch
import triton
import triton.language as tl

from .launch import acc_dtype, accumulator, cdiv, index_dtype, new_output, pow2, taps_padded
from .tuning import LAUNCH


@triton.jit(do_not_specialize=["HW", "G", "BLOCKS", "COPIES"])
def _kernel_space_kernel(
    l_ptr, p_ptr, z_ptr,  # logits; kernel space out; COPIES copies of a buffer laid out like it, zeroed
    sln, slc, slp,  # logits strides: image, channel, pixel (the H x W plane as one axis)
    spn, spc, spp,  # kernel space strides, each zeroed copy's too
    szr,  # stride between the zeroed copies
    HW, G, BLOCKS, COPIES,  # pixels per image, groups, pixel blocks per (image, group), zeroed copies
    KK: tl.constexpr,  # taps k*k
    KKP: tl.constexpr,  # k*k rounded up to a power of two
    BLOCK: tl.constexpr,  # pixels per program
    ACC: tl.constexpr,  # accumulator dtype
    IDX: tl.constexpr,  # index dtype (int64 only for huge tensors)
):
    pid = tl.program_id(0)
    ng = pid // BLOCKS
    n = (ng // G).to(IDX)
    g = ng % G
    # [BLOCK pixels, KKP taps]: with a pixel stride of 1 (NCHW, specialised to a constant) the
    # compiler sees the pixels contiguous and runs the lanes along them; with channels_last,
    # along the taps. Either way each warp's load is one coalesced run.
    p = ((pid % BLOCKS) * BLOCK + tl.arange(0, BLOCK)).to(IDX)[:, None]
    j = tl.arange(0, KKP)[None, :]
    ch = (g * KK + j).to(IDX)
    ok = (p < HW) & (j < KK)
    v = tl.load(l_ptr + n * sln + ch * slc + p * slp, mask=ok, other=0.0).to(ACC)
    # Padding taps count as -inf, masked pixels as zeros: only a real logit can make a NaN (a NaN
    # or +inf logit, or all -inf, gives a NaN group, as torch.softmax does).
    v = tl.where(j < KK, v, float("-inf"))
    e = tl.where(j < KK, tl.exp(v - tl.max(v, axis=1)[:, None]), 0.0)
    at = n * spn + ch * spc + p * spp
    tl.store(p_ptr + at, e / tl.sum(e, axis=1)[:, None], mask=ok)
    z = z_ptr + at
    for _ in range(COPIES):  # the pointers step a copy on (no int32 copy * stride product)
        tl.store(z, tl.zeros((BLOCK, KKP), ACC), mask=ok)
        z += szr


def plane_stride(t):
    """The stride between consecutive pixels of t's (H, W) planes when they are one evenly
    strided run (contiguous, channels_last, channel slices), else None."""
    _, _, h, w = t.shape
    if w == 1:
        return t.stride(2)
    if h == 1 or t.stride(2) == w * t.stride(3):
        return t.stride(3)
    return None


def new_space(logits, copies=None):
    """A buffer laid out as kernel_space(logits) returns the space: contiguous, in the
    accumulator's dtype; or, given `copies`, that many such buffers stacked on a new first axis
    (the backward's `zeroed` accumulator)."""
    size = logits.shape if copies is None else (copies, *logits.shape)
    return new_output(logits, size, dtype=accumulator(logits), memory_format=torch.contiguous_format)


def kernel_space(logits, group_size, kernel_size, zeroed=None):
    """DLU's kernel space, the softmax of each low-resolution pixel's k*k logits per group, in the
    accumulator's dtype, contiguous [N, G*k*k, H, W] whatever the logits' format (the layout the
    kernels' corner gathers were measured with). One small launch, so the kernels load a
    probability at each sampled corner instead of recomputing a softmax there for every output
    pixel and tap. `zeroed`, copies of a buffer of the same shape, dtype and strides stacked on a
    first axis (the backward's atomic accumulators for the logits' gradient, `new_space(logits,
    copies)`), is zero-filled in the same pass.

    A program holds [BLOCK pixels, k*k padded] of one image and group. torch.softmax over the
    taps, a non-innermost dim of [N, G, k*k, H, W], took 15-18 us a call at the anchor on the
    H100 (docs/results/2026-11-23-h100/h100-profile-modules.txt) for 6.6 MB of traffic."""
    slp = plane_stride(logits)
    if slp is None:  # a spatially strided view: copy the small logits once
        logits = logits.contiguous()
        slp = plane_stride(logits)
    n, _, h, w = logits.shape
    space = new_space(logits)
    if zeroed is None:
        zeroed = space[None][:0]  # no copies (a valid pointer, never written)
    assert zeroed.shape[1:] == space.shape and zeroed.stride()[1:] == space.stride() and zeroed.dtype == space.dtype
    if space.numel() == 0:
        return space
    kkp = taps_padded(kernel_size)
    block = min(pow2(h * w), max(16, 4096 // kkp))
    blocks = cdiv(h * w, block)
    _kernel_space_kernel[(n * group_size * blocks,)](
        logits, space, zeroed,
        logits.stride(0), logits.stride(1), slp,
        space.stride(0), space.stride(1), plane_stride(space), zeroed.stride(0),
        h * w, group_size, blocks, zeroed.shape[0],
        KK=kernel_size * kernel_size, KKP=kkp, BLOCK=block,
        ACC=acc_dtype(logits), IDX=index_dtype(logits, space), num_warps=4, **LAUNCH,
    )
    return space
