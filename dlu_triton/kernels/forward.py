"""Fused reassembly forward: DLU (kernels sampled from the low-resolution kernel space) and CARAFE
(kernels read from a high-resolution mask) share one kernel.

Maths. Output pixel o = (oy, ox) has source pixel q = (oy // s, ox // s) and sub-pixel
t = (oy % s, ox % s); channel c belongs to group g = c // (C / G). With taps
d_j = (j // k - k//2, j % k - k//2), j in [0, k*k):

    out[c, o] = sum_j K[g, j, o] * x[c, q + d_j]          (x = 0 outside the image)

CARAFE loads K from `masks`. DLU first takes the kernel space P = softmax over each low-resolution
pixel's k*k logits (kernel_space.py, one small launch, G*k*k*H*W values), then builds K in
registers (sampling.py):

    K[g, j, o] = sum_corners w_c * P[g*k*k + j, c]

so the high-resolution mask never reaches global memory.

Program: image n, source row iy, BLOCK_P consecutive source pixels ix of that row, BLOCK_SY
sub-pixel rows and all s sub-pixel columns, BLOCK_C channels of one group (tuning.forward_blocks):
an output tile [BLOCK_SY, s, BLOCK_C, BLOCK_P], pixels last so that the compiler's default layout
puts the lanes along the pixels and the warps along the channels, and a thread holds every
sub-pixel of its pixel. Each tap's features [BLOCK_C, BLOCK_P] are then one contiguous gather
loaded straight into that layout, each value serving the thread's BLOCK_SY * s outputs from
registers, with no shared-memory exchange of the features. The sampling and the kernel gathers
run one point a thread in a flat [points] layout, and each tap's kernel values are reshaped to
[BLOCK_SY, s, BLOCK_P] for the accumulators (one small exchange a tap, which the compiler does
with stmatrix/ldmatrix). The store flattens (pixel, sub-pixel column) into one run of BLOCK_P*s
consecutive output columns; s is a compile-time constant so that the compiler sees contiguous
rows and writes whole sectors. For DLU a tap costs 4 gathers and 4 multiply-adds per point.
Accumulation is in fp32 (fp64 for fp64 inputs); the store casts to the output dtype.

There is no tensor-core form: one at s >= 8 (out_q = X_q @ K_q per source pixel) ran 1.1-1.2x
slower than this kernel for DLU on an H200 (docs/performance.md, 2026-12-04).
"""
import triton
import triton.language as tl

from .kernel_space import kernel_space
from .launch import acc_dtype, cdiv, index_dtype, new_output, pow2
from .sampling import sampled_kernel, sampling_point
from .tiles import channel_mask, even_channels, subpixel_columns
from .tuning import LAUNCH, forward_blocks


@triton.jit(do_not_specialize=["H", "W", "CPG"])
def _reassemble_kernel(
    x_ptr, k_ptr, off_ptr, out_ptr,  # features; kernel space (DLU) or masks (CARAFE); offsets (DLU); output
    sxn, sxc, sxy, sxx,  # features strides
    skn, skc, sky, skx,  # kernel space / masks strides
    son, soc, soy, sox,  # offsets strides
    sun, suc, suy, sux,  # output strides
    H, W, CPG,  # low-resolution size, channels per group
    S: tl.constexpr,  # scale factor (constexpr: output columns ix*s + sx must look contiguous)
    SXP: tl.constexpr,  # s rounded up to a power of two
    KS: tl.constexpr,  # kernel size k
    SAMPLED: tl.constexpr,  # 1: DLU, sample K from the kernel space at the offsets; 0: CARAFE, load K
    BLOCK_P: tl.constexpr,  # source pixels (of one row) per program
    BLOCK_SY: tl.constexpr,  # sub-pixel rows per program
    BLOCK_C: tl.constexpr,  # channels per program (within one group)
    EVEN_C: tl.constexpr,  # 1: BLOCK_C divides CPG, so the feature loads need no channel mask
    ACC: tl.constexpr,  # accumulator dtype
    IDX: tl.constexpr,  # index dtype (int64 only for huge tensors)
):
    KK: tl.constexpr = KS * KS
    R: tl.constexpr = KS // 2
    n_pblocks = tl.cdiv(W, BLOCK_P)
    n_yblocks: tl.constexpr = (S + BLOCK_SY - 1) // BLOCK_SY
    n_cblocks = tl.cdiv(CPG, BLOCK_C)
    pid = tl.program_id(0)  # ((n * H + iy) * n_pblocks + pblock) * n_yblocks + yblock
    sy0 = (pid % n_yblocks) * BLOCK_SY
    sy = sy0 + tl.arange(0, BLOCK_SY)  # [SY]
    row = pid // n_yblocks // n_pblocks
    iy = (row % H).to(IDX)
    n = (row // H).to(IDX)
    ix0 = ((pid // n_yblocks % n_pblocks) * BLOCK_P).to(IDX)
    ix = ix0 + tl.arange(0, BLOCK_P)  # [P]
    g = tl.program_id(1) // n_cblocks
    cg = (tl.program_id(1) % n_cblocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    c = (g * CPG + cg).to(IDX)
    p_ok = ix < W
    c_ok = channel_mask(cg, CPG, BLOCK_C, EVEN_C)
    sy_ok = sy < S
    # The tile's points, one a thread: [BLOCK_SY * SXP * BLOCK_P], sub-pixel-major. The
    # sampling and the kernel gathers run in this flat layout; each tap's kernel values are then
    # reshaped to [SY, X, P] for the accumulators' layout (one small exchange a tap).
    pt = tl.arange(0, BLOCK_SY * SXP * BLOCK_P)
    pt_sy = sy0 + pt // (SXP * BLOCK_P)
    pt_sx = pt // BLOCK_P % SXP
    pt_ix = ix0 + pt % BLOCK_P
    ok = (pt_sy < S) & (pt_sx < S) & (pt_ix < W)
    k_base = k_ptr + n * skn

    if SAMPLED:
        y0, y1, x0, x1, fy, fx, _, _ = sampling_point(
            off_ptr + n * son + iy * soy + pt_ix * sox, g, iy, pt_ix, pt_sy * S + pt_sx, ok, soc, H, W, S, ACC)
    else:
        a_out = (iy * S + pt_sy) * sky + (pt_ix * S + pt_sx) * skx

    acc = tl.zeros((BLOCK_SY, SXP, BLOCK_C, BLOCK_P), dtype=ACC)
    x_base = x_ptr + n * sxn + c[:, None] * sxc
    for j in range(KK):
        t_base = k_base + (g * KK + j) * skc
        if SAMPLED:
            kj = sampled_kernel(t_base, y0, y1, x0, x1, fy, fx, sky, skx, ok, IDX, ACC)
        else:
            kj = tl.load(t_base + a_out, mask=ok, other=0.0).to(ACC)
        ty = iy + (j // KS - R)
        tx = ix + (j % KS - R)
        # where(), not &: the interpreter mistypes a tensor & a scalar bool
        t_ok = tl.where((ty >= 0) & (ty < H), p_ok & (tx >= 0) & (tx < W), False)
        f = tl.load(x_base + (ty * sxy + tx * sxx)[None, :], mask=c_ok[:, None] & t_ok[None, :], other=0.0)
        kj = tl.reshape(kj, (BLOCK_SY, SXP, BLOCK_P))
        acc += f.to(ACC)[None, None, :, :] * kj[:, :, None, :]

    # (pixel, sub-pixel column) flattened into the output row's columns
    M: tl.constexpr = BLOCK_P * SXP
    res = tl.reshape(tl.permute(acc, (2, 0, 3, 1)), (BLOCK_C, BLOCK_SY, M)).to(out_ptr.dtype.element_ty)
    oy = iy * S + sy
    _, _, ox, m_ok = subpixel_columns(ix0, W, S, SXP, M)
    out = out_ptr + n * sun + c[:, None, None] * suc + (oy * suy)[None, :, None] + (ox * sux)[None, None, :]
    tl.store(out, res, mask=c_ok[:, None, None] & sy_ok[None, :, None] & m_ok[None, None, :])


def _launch(features, kernels, offsets, kernel_size, group_size, scale_factor):
    """kernels: DLU's kernel space (with offsets) or CARAFE's masks (offsets None)."""
    n, c, h, w = features.shape
    s = scale_factor
    out = new_output(features, (n, c, s * h, s * w))
    if out.numel() == 0:
        return out
    sampled = offsets is not None
    off = offsets if sampled else kernels  # CARAFE never reads it
    cpg = c // group_size
    block_c, block_p, block_sy, warps = forward_blocks(cpg, w, s)
    grid = (n * h * cdiv(w, block_p) * cdiv(s, block_sy), group_size * cdiv(cpg, block_c))
    _reassemble_kernel[grid](
        features, kernels, off, out,
        *features.stride(), *kernels.stride(), *off.stride(), *out.stride(),
        h, w, cpg,
        S=s, SXP=pow2(s), KS=kernel_size,
        SAMPLED=int(sampled), BLOCK_P=block_p, BLOCK_SY=block_sy, BLOCK_C=block_c, EVEN_C=even_channels(cpg, block_c),
        ACC=acc_dtype(features), IDX=index_dtype(features, kernels, off, out),
        num_warps=warps, **LAUNCH,
    )
    return out


def dlu_forward(features, kernel_logits, offsets, kernel_size, group_size, scale_factor):
    space = kernel_space(kernel_logits, group_size, kernel_size)
    return _launch(features, space, offsets, kernel_size, group_size, scale_factor)


def carafe_forward(features, masks, kernel_size, group_size, scale_factor):
    return _launch(features, masks, None, kernel_size, group_size, scale_factor)
