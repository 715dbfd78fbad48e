"""Fused reassembly forward, one launch: DLU (kernels sampled from low-resolution logits) and
CARAFE (kernels read from a high-resolution mask) share it.

Maths. Output pixel o = (oy, ox) has source pixel q = (oy // s, ox // s) and sub-pixel
t = (oy % s, ox % s); channel c belongs to group g = c // (C / G). With taps
d_j = (j // k - k//2, j % k - k//2), j in [0, k*k):

    out[c, o] = sum_j K[g, j, o] * x[c, q + d_j]          (x = 0 outside the image)

CARAFE loads K from `masks`. DLU builds it in registers (common.py has the sampling):

    K[g, j, o] = sum_corners w_c * exp(logits[g*k*k + j, c] - lse_c),   lse_c = logsumexp_j logits[., c]

so neither the softmaxed kernel space nor the high-resolution mask ever reaches global memory.

Program: image n, BLOCK_P source pixels, BLOCK_S of their s*s sub-pixels, BLOCK_C channels of
one group. Each tap's features [BLOCK_C, BLOCK_P] are loaded once and reused by all BLOCK_S
sub-pixels; DLU's per-point log-sum-exp (4 corners) is computed once and amortised over BLOCK_C
channels, after which a tap costs 4 gathers and 4 exps per point. Accumulation is in fp32
(fp64 for fp64 inputs); the store casts to the output dtype.
"""
import triton
import triton.language as tl

from .common import (
    acc_dtype, block_config, corner_lse, index_dtype, new_output, sampling_point, taps_padded,
)


@triton.jit
def _reassemble_kernel(
    x_ptr, k_ptr, off_ptr, out_ptr,  # features; logits (DLU) or masks (CARAFE); offsets (DLU); output
    sxn, sxc, sxy, sxx,  # features strides
    skn, skc, sky, skx,  # logits / masks strides
    son, soc, soy, sox,  # offsets strides
    sun, suc, suy, sux,  # output strides
    H, W, CPG, S,  # low-resolution size, channels per group, scale factor
    KS: tl.constexpr,  # kernel size k
    KKP: tl.constexpr,  # k*k rounded up to a power of two
    FROM_LOGITS: tl.constexpr,  # 1: DLU, sample K from logits and offsets; 0: CARAFE, load K
    BLOCK_P: tl.constexpr,  # source pixels per program
    BLOCK_S: tl.constexpr,  # sub-pixels per program
    BLOCK_C: tl.constexpr,  # channels per program (within one group)
    ACC: tl.constexpr,  # accumulator dtype
    IDX: tl.constexpr,  # index dtype (int64 only for huge tensors)
):
    KK: tl.constexpr = KS * KS
    R: tl.constexpr = KS // 2
    n_pblocks = tl.cdiv(H * W, BLOCK_P)
    n_cblocks = tl.cdiv(CPG, BLOCK_C)
    n = (tl.program_id(0) // n_pblocks).to(IDX)
    p = (tl.program_id(0) % n_pblocks) * BLOCK_P + tl.arange(0, BLOCK_P)
    sub = tl.program_id(1) * BLOCK_S + tl.arange(0, BLOCK_S)
    g = tl.program_id(2) // n_cblocks
    cg = (tl.program_id(2) % n_cblocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    c = (g * CPG + cg).to(IDX)
    p_ok = p < H * W
    c_ok = cg < CPG
    ok = p_ok[:, None] & (sub < S * S)[None, :]  # [P, S]
    iy = (p // W).to(IDX)
    ix = (p % W).to(IDX)
    oy = iy[:, None] * S + (sub // S)[None, :]
    ox = ix[:, None] * S + (sub % S)[None, :]
    k_base = k_ptr + n * skn

    if FROM_LOGITS:
        y0, y1, x0, x1, fy, fx, _, _ = sampling_point(
            off_ptr + n * son + (iy * soy + ix * sox)[:, None], g, iy, ix, sub, ok, soc, H, W, S, ACC
        )
        a00 = y0.to(IDX) * sky + x0.to(IDX) * skx
        a01 = y0.to(IDX) * sky + x1.to(IDX) * skx
        a10 = y1.to(IDX) * sky + x0.to(IDX) * skx
        a11 = y1.to(IDX) * sky + x1.to(IDX) * skx
        lse00 = corner_lse(k_base, a00, g, ok, skc, KK, KKP, ACC)
        lse01 = corner_lse(k_base, a01, g, ok, skc, KK, KKP, ACC)
        lse10 = corner_lse(k_base, a10, g, ok, skc, KK, KKP, ACC)
        lse11 = corner_lse(k_base, a11, g, ok, skc, KK, KKP, ACC)
        w00 = (1.0 - fy) * (1.0 - fx)
        w01 = (1.0 - fy) * fx
        w10 = fy * (1.0 - fx)
        w11 = fy * fx
    else:
        a_out = oy * sky + ox * skx

    acc = tl.zeros((BLOCK_C, BLOCK_P, BLOCK_S), dtype=ACC)
    x_base = x_ptr + n * sxn + c[:, None] * sxc
    for j in range(KK):
        t_base = k_base + (g * KK + j) * skc
        if FROM_LOGITS:
            kj = w00 * tl.exp(tl.load(t_base + a00, mask=ok, other=0.0).to(ACC) - lse00)
            kj += w01 * tl.exp(tl.load(t_base + a01, mask=ok, other=0.0).to(ACC) - lse01)
            kj += w10 * tl.exp(tl.load(t_base + a10, mask=ok, other=0.0).to(ACC) - lse10)
            kj += w11 * tl.exp(tl.load(t_base + a11, mask=ok, other=0.0).to(ACC) - lse11)
        else:
            kj = tl.load(t_base + a_out, mask=ok, other=0.0).to(ACC)
        fy_ = iy + (j // KS - R)
        fx_ = ix + (j % KS - R)
        f_ok = p_ok & (fy_ >= 0) & (fy_ < H) & (fx_ >= 0) & (fx_ < W)
        f = tl.load(x_base + (fy_ * sxy + fx_ * sxx)[None, :], mask=c_ok[:, None] & f_ok[None, :], other=0.0)
        acc += f.to(ACC)[:, :, None] * kj[None, :, :]

    out = out_ptr + n * sun + c[:, None, None] * suc + (oy * suy + ox * sux)[None, :, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=c_ok[:, None, None] & ok[None, :, :])


def _launch(features, kernels, offsets, kernel_size, group_size, scale_factor):
    n, c, h, w = features.shape
    s = scale_factor
    out = new_output(features, (n, c, s * h, s * w))
    if out.numel() == 0:
        return out
    from_logits = offsets is not None
    off = offsets if from_logits else kernels  # CARAFE never reads it
    cpg = c // group_size
    block_c, block_p, block_s, warps = block_config(cpg, s)
    grid = (n * triton.cdiv(h * w, block_p), triton.cdiv(s * s, block_s), group_size * triton.cdiv(cpg, block_c))
    _reassemble_kernel[grid](
        features, kernels, off, out,
        *features.stride(), *kernels.stride(), *off.stride(), *out.stride(),
        h, w, cpg, s,
        KS=kernel_size, KKP=taps_padded(kernel_size), FROM_LOGITS=int(from_logits),
        BLOCK_P=block_p, BLOCK_S=block_s, BLOCK_C=block_c,
        ACC=acc_dtype(features), IDX=index_dtype(features, kernels, off, out),
        num_warps=warps,
    )
    return out


def dlu_forward(features, kernel_logits, offsets, kernel_size, group_size, scale_factor):
    return _launch(features, kernel_logits, offsets, kernel_size, group_size, scale_factor)


def carafe_forward(features, masks, kernel_size, group_size, scale_factor):
    return _launch(features, masks, None, kernel_size, group_size, scale_factor)
