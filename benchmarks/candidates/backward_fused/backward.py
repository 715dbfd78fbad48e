"""Candidate backward: DLU's chain rule fused into the mask gradient's product, and the features
gradient finishing a band of input rows a program, each source row of dy read once by it.

Notation as in dlu_triton/kernels/backward.py: out[c, o] = sum_j K[g, j, o] x[c, q(o) + d_j], dy the
output's gradient, R = k // 2.

1. DLU: one launch for main's steps 1 and 2 (`_dk_chain_kernel`). A program takes main's mask
   gradient tile (tuning.mask_grad_dot_blocks: BLOCK_SY sub-pixel rows of BLOCK_P consecutive
   source pixels with all their sub-pixel columns, M points) and runs main's product over the
   group's channels, dK[points, window taps] = DY @ X, on the tensor cores. Each point's k*k taps
   are then gathered from its band of the window taps (tl.gather along the taps), and the
   sampling and softmax chain rule runs right there on [M, k*k] tiles, as main's kernel gradient
   does on the dK it reads back from memory: K = sum_c w_c P_c stored for step 2, the offsets'
   gradient stored, the logits' gradient added with atomics into main's accumulator copies (or,
   deterministic, stored as corner shares with their rows for index_add_). dK never reaches
   memory: 2 * G*k*k*s*s*H*W*4 bytes an image and one launch fewer than main.
   CARAFE's mask gradient is main's `_mask_grad` unchanged.
2. Features gradient at s = 2..7 (`_feature_grad_block_kernel`): dx[c, p] = sum over the taps j
   and sub-pixels t of K[j, (p - d_j, t)] dy[c, (p - d_j, t)]. Main's program finishes one input
   row, reading the k source rows whose taps reach it, so every source row of dy crosses L2 k
   times (once for each of the k programs that read it). Here a program finishes BAND
   consecutive input rows (of a window of BLOCK_P source pixels and BLOCK_C channels) from the
   BAND + 2R source rows they need: source row r adds, through its tap row ky, to input row
   r + ky - 2R of the band. The program keeps main's accumulator per tap column kx (shifted
   along the pixels once at the end, tl.gather within a warp), one per input row: [BAND * k
   padded, channels, pixels], both leading axes in each thread's registers. Rows and taps are
   unrolled, so every accumulator index is a compile-time constant and the selects fold away. A
   source row's dy is loaded once per tap row that reaches the band (the first from L2, the
   rest from L1), so dy crosses L2 (BAND + 2R) / BAND times instead of k times.
   Main's features gradient runs at s >= 8 (its products) and for DLU's 16-bit inputs (below); at
   s = 1 or k = 1 main's whole backward.

README.md has the model: bytes per step against the minimal, registers, what the A/B should show.
"""
import torch
import triton
import triton.language as tl

from dlu_triton.kernels import backward as main
from dlu_triton.kernels.backward import _logit_grad_out, _logit_grad_share, _mask_grad
from dlu_triton.kernels.kernel_space import kernel_space, new_space
from dlu_triton.kernels.launch import acc_dtype, accumulator, cdiv, index_dtype, new_output, pow2, taps_padded
from dlu_triton.kernels.sampling import corner_probs, sampling_point
from dlu_triton.kernels.targets import TIES_LAST, dot_precision
from dlu_triton.kernels.tiles import (
    channel_mask,
    dot_add,
    even_channels,
    load_lanes_first,
    pixel_tile,
    window,
    window_taps,
)
from dlu_triton.kernels.tuning import LAUNCH, logit_grad_copies, mask_grad_dot_blocks, pixel_product_blocks


@triton.jit(do_not_specialize=["H", "W", "CPG"])
def _dk_chain_kernel(
    gy_ptr, x_ptr, p_ptr, off_ptr, k_ptr, dl_ptr, doff_ptr,  # dy; features; kernel space; offsets; K out;
    # logits-gradient accumulator copies; offsets gradient
    share_ptr, row_ptr,  # deterministic: corner shares [N, G, sH, sW, 4, k*k], their rows [.., 4]
    sgn, sgc, sgy, sgx,  # dy strides
    sxn, sxc, sxy, sxx,  # features strides
    spn, spc, spy, spx,  # kernel-space strides
    son, soc, soy, sox,  # offsets strides
    skn, skc, sky, skx,  # K strides
    sdr, sdn, sdc, sdy, sdx,  # logits-gradient accumulator strides: copy, image, channel, row, column
    sen, sec, sey, sex,  # offsets-gradient strides
    H, W, CPG,  # low-resolution size, channels per group
    S: tl.constexpr,  # scale factor
    SXP: tl.constexpr,  # s rounded up to a power of two
    KS: tl.constexpr,  # kernel size k
    KKP: tl.constexpr,  # k*k rounded up to a power of two
    WTP: tl.constexpr,  # window taps k * (k + BLOCK_P - 1), padded to a power of two (tiles.window_taps)
    BLOCK_SY: tl.constexpr,  # sub-pixel rows per program
    BLOCK_P: tl.constexpr,  # consecutive source pixels per program (their columns share one window)
    BLOCK_C: tl.constexpr,  # channels per product (its inner dimension)
    EVEN_C: tl.constexpr,  # 1: BLOCK_C divides CPG, so the loads need no channel mask
    PRECISION: tl.constexpr,  # tl.dot input precision (targets.dot_precision)
    ATOMIC: tl.constexpr,  # 1 adds the logits' gradient with atomics, 0 stores corner shares
    COPIES: tl.constexpr,  # accumulator copies (ATOMIC): output row oy adds into copy oy % COPIES
    TIES_LAST: tl.constexpr,  # targets.TIES_LAST: the installed Triton's rule for tied load axes
    ACC: tl.constexpr,  # accumulator dtype
    IDX: tl.constexpr,  # index dtype
):
    KK: tl.constexpr = KS * KS
    WU: tl.constexpr = BLOCK_P + KS - 1
    n, iy, ix0, p, ix, oy, ox, q_ok, sub = pixel_tile(tl.program_id(0), H, W, S, SXP, BLOCK_SY, BLOCK_P, IDX)
    g = tl.program_id(1)

    # The mask gradient, main's banded product: [points, window taps] over the group's channels.
    _, _, jy, jx, w_ok = window(iy, ix0, H, W, KS, BLOCK_P, WTP)
    cb = tl.arange(0, BLOCK_C)
    gy_at = gy_ptr + n * sgn + (oy * sgy + ox * sgx)[:, None]  # [M, 1]
    x_at = x_ptr + n * sxn + (jy * sxy + jx * sxx)[None, :]  # [1, WTP]
    acc = tl.zeros((BLOCK_SY * BLOCK_P * SXP, WTP), dtype=ACC)
    for c0 in range(0, CPG, BLOCK_C):
        cg = c0 + cb
        c_ok = channel_mask(cg, CPG, BLOCK_C, EVEN_C)
        c = (g * CPG + cg).to(IDX)
        dy = tl.load(gy_at + (c * sgc)[None, :], mask=q_ok[:, None] & c_ok[None, :], other=0.0)  # [M, C]
        xw = tl.load(x_at + (c * sxc)[:, None], mask=c_ok[:, None] & w_ok[None, :], other=0.0)  # [C, WTP]
        acc = dot_add(dy.to(ACC), xw.to(ACC), acc, PRECISION, ACC)

    # Each point's k*k taps: tap (ky, kx) of pixel p is window tap (ky, p + kx). Padding taps are
    # zeroed (their products hold dy * 0, NaN where dy is).
    j = tl.arange(0, KKP)
    tap_ok = (j < KK)[None, :]
    if BLOCK_P == 1:  # the window is the pixel's own k x k taps
        dk = acc
    else:
        at = tl.where(tap_ok, (j // KS)[None, :] * WU + p[:, None] + (j % KS)[None, :], 0)
        dk = tl.gather(acc, at, axis=1)
    dk = tl.where(tap_ok, dk, 0.0)
    qj_ok = q_ok[:, None] & tap_ok

    # The chain rule through the sampling and the softmax, as main's kernel gradient.
    y0, y1, x0, x1, fy, fx, in_y, in_x = sampling_point(
        off_ptr + n * son + iy * soy + ix * sox, g, iy, ix, sub, q_ok, soc, H, W, S, ACC)
    p_base = p_ptr + n * spn
    p00 = corner_probs(p_base, y0.to(IDX) * spy + x0.to(IDX) * spx, g, q_ok, spc, KK, KKP, ACC, TIES_LAST)
    p01 = corner_probs(p_base, y0.to(IDX) * spy + x1.to(IDX) * spx, g, q_ok, spc, KK, KKP, ACC, TIES_LAST)
    p10 = corner_probs(p_base, y1.to(IDX) * spy + x0.to(IDX) * spx, g, q_ok, spc, KK, KKP, ACC, TIES_LAST)
    p11 = corner_probs(p_base, y1.to(IDX) * spy + x1.to(IDX) * spx, g, q_ok, spc, KK, KKP, ACC, TIES_LAST)
    w00 = (1.0 - fy) * (1.0 - fx)
    w01 = (1.0 - fy) * fx
    w10 = fy * (1.0 - fx)
    w11 = fy * fx
    kern = w00[:, None] * p00 + w01[:, None] * p01 + w10[:, None] * p10 + w11[:, None] * p11
    k_out = k_ptr + n * skn + (oy * sky + ox * skx)[:, None] + ((g * KK + j) * skc)[None, :]
    tl.store(k_out, kern.to(k_ptr.dtype.element_ty), mask=qj_ok)

    d_px = tl.sum(dk * ((1.0 - fy)[:, None] * (p01 - p00) + fy[:, None] * (p11 - p10)), axis=1)
    d_py = tl.sum(dk * ((1.0 - fx)[:, None] * (p10 - p00) + fx[:, None] * (p11 - p01)), axis=1)
    # Clamped points get no gradient (grid_sample's 0 * gradient, so a NaN stays NaN); the
    # point of a NaN offset gets NaN in both coordinates.
    lost = (fy != fy) | (fx != fx)
    live = (~lost)[:, None]
    d_px = tl.where(lost, float("nan"), d_px * in_x.to(ACC))
    d_py = tl.where(lost, float("nan"), d_py * in_y.to(ACC))
    e_base = doff_ptr + n * sen + iy * sey + ix * sex
    e_ch = 2 * g * S * S + sub
    doff_ty = doff_ptr.dtype.element_ty
    tl.store(e_base + e_ch * sec, d_px.to(doff_ty), mask=q_ok)
    tl.store(e_base + (e_ch + S * S) * sec, d_py.to(doff_ty), mask=q_ok)

    d_base = dl_ptr + ((oy % COPIES) * sdr)[:, None] + n * sdn + ((g * KK + j) * sdc)[None, :]
    ng = n * tl.num_programs(1) + g
    point = (ng * (H * S) + oy) * (W * S) + ox  # [M], in the share buffers
    share = share_ptr + (point * 4 * KK)[:, None] + j[None, :]
    rows = row_ptr + point * 4
    y0r = (ng * H + y0) * W  # rows of the logits' gradient as [N*G*H*W, k*k]
    y1r = (ng * H + y1) * W
    _logit_grad_share(d_base + (y0.to(IDX) * sdy + x0.to(IDX) * sdx)[:, None], share, rows, y0r + x0,
                      p00, w00, dk, q_ok, qj_ok, live, ATOMIC, TIES_LAST)
    _logit_grad_share(d_base + (y0.to(IDX) * sdy + x1.to(IDX) * sdx)[:, None], share + KK, rows + 1, y0r + x1,
                      p01, w01, dk, q_ok, qj_ok, live, ATOMIC, TIES_LAST)
    _logit_grad_share(d_base + (y1.to(IDX) * sdy + x0.to(IDX) * sdx)[:, None], share + 2 * KK, rows + 2, y1r + x0,
                      p10, w10, dk, q_ok, qj_ok, live, ATOMIC, TIES_LAST)
    _logit_grad_share(d_base + (y1.to(IDX) * sdy + x1.to(IDX) * sdx)[:, None], share + 3 * KK, rows + 3, y1r + x1,
                      p11, w11, dk, q_ok, qj_ok, live, ATOMIC, TIES_LAST)


@triton.jit
def _pick(t, index, AT: tl.constexpr):
    """Slice AT of t's first axis (which lies in each thread's registers; index = its aranged
    indices). The other slices enter the sum as -0.0, which x + -0.0 = x folds away (a +0.0
    costs an add each: x + 0.0 is not x when x is -0.0)."""
    return tl.sum(tl.where(index == AT, t, -0.0), axis=0)


@triton.jit(do_not_specialize=["H", "W", "CPG", "STEP"])
def _feature_grad_block_kernel(
    gy_ptr, k_ptr, dx_ptr,  # dy; K (masks); features gradient
    sgn, sgc, sgy, sgx,  # dy strides
    skn, skc, sky, skx,  # K strides
    sdn, sdc, sdy, sdx,  # features-gradient strides
    H, W, CPG,  # low-resolution size, channels per group
    STEP,  # input pixels a program finishes along a row: BLOCK_P - 2*(k//2)
    S: tl.constexpr,  # scale factor (constexpr: output columns q*s + sx must look like aligned runs)
    SXB: tl.constexpr,  # sub-pixel columns a step (1 or 2, dividing s)
    KS: tl.constexpr,  # kernel size k
    KXP: tl.constexpr,  # k rounded up to a power of two
    BAND: tl.constexpr,  # input rows a program finishes (a power of two)
    BLOCK_P: tl.constexpr,  # source pixels (of one row) in a program's window
    BLOCK_C: tl.constexpr,  # channels per program (within one group)
    EVEN_C: tl.constexpr,  # 1: BLOCK_C divides CPG, so the dy loads need no channel mask
    TIES_LAST: tl.constexpr,  # targets.TIES_LAST: the installed Triton's rule for tied load axes
    ACC: tl.constexpr,  # accumulator dtype
    IDX: tl.constexpr,  # index dtype
):
    KK: tl.constexpr = KS * KS
    R: tl.constexpr = KS // 2
    M: tl.constexpr = BLOCK_P * SXB
    n_pblocks = tl.cdiv(W, STEP)
    n_bands = tl.cdiv(H, BAND)
    n_cblocks = tl.cdiv(CPG, BLOCK_C)
    pid = tl.program_id(0)  # (n * n_bands + band) * n_pblocks + pblock
    p0 = ((pid % n_pblocks) * STEP).to(IDX)  # the first input pixel it finishes
    y0 = (pid // n_pblocks % n_bands * BAND).to(IDX)  # its first input row
    n = (pid // n_pblocks // n_bands).to(IDX)
    g = tl.program_id(1) // n_cblocks
    cg = (tl.program_id(1) % n_cblocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    c = (g * CPG + cg).to(IDX)
    c_ok = channel_mask(cg, CPG, BLOCK_C, EVEN_C)
    # The window: source pixels q = p0 - R + i; a step reads SXB sub-pixel columns of each,
    # column m = (i, sub-pixel column) of the tile
    m = tl.arange(0, M)
    q = p0 - R + m // SXB
    q_ok = (q >= 0) & (q < W)
    a_i = tl.arange(0, BAND * KXP)[:, None, None]
    gy_base_t = gy_ptr + n * sgn + (c * sgc)[None, :]
    k_base = k_ptr + n * skn + g * KK * skc

    # [input row b, tap column kx] (flattened), channel, source pixel: both leading axes lie in
    # each thread's registers and every index below is a compile-time constant, so the selects fold
    acc = tl.zeros((BAND * KXP, BLOCK_C, BLOCK_P), dtype=ACC)
    for r in tl.static_range(BAND + 2 * R):  # source row y0 - R + r, read once
        qy = y0 - R + r
        for ky in tl.static_range(KS):  # its taps of row ky reach input row b = r + ky - 2R
            if r + ky >= 2 * R:
                if r + ky < BAND + 2 * R:
                    # rows outside the image take nothing (and their loads are skipped)
                    if (qy >= 0) & (qy < H) & (qy + ky - R < H):
                        for sy in range(S):
                            oy = qy * S + sy
                            for sx0 in range(0, S, SXB):
                                ox = q * S + sx0 + m % SXB
                                # read once for the k tap columns; the k tap rows re-read it from L1.
                                # With s odd no axis is contiguous, and the lanes must go to the columns
                                dy = load_lanes_first(gy_base_t + (oy * sgy + ox * sgx)[:, None],
                                                      q_ok[:, None] & c_ok[None, :], TIES_LAST)
                                dy = tl.permute(dy.to(ACC), (1, 0))
                                if SXB == 2:
                                    dy0, dy1 = tl.split(tl.reshape(dy, (BLOCK_C, BLOCK_P, 2)))
                                for kx in tl.static_range(KS):
                                    kj = tl.load(k_base + (ky * KS + kx) * skc + oy * sky + ox * skx, mask=q_ok,
                                                 other=0.0).to(ACC)
                                    # -0.0 elsewhere: x + -0.0 = x folds away, x + 0.0 costs an add
                                    a = (r + ky - 2 * R) * KXP + kx
                                    if SXB == 2:
                                        k0, k1 = tl.split(tl.reshape(kj, (BLOCK_P, 2)))
                                        acc += tl.where(a_i == a, (dy0 * k0[None, :])[None, :, :], -0.0)
                                        acc += tl.where(a_i == a, (dy1 * k1[None, :])[None, :, :], -0.0)
                                    else:
                                        acc += tl.where(a_i == a, (dy * kj[None, :])[None, :, :], -0.0)

    # Input pixel i of the window takes tap column kx's sums from source pixel i - (kx - R): shift
    # each column along the pixels (within a warp) and add; only the middle BLOCK_P - 2R pixels
    # have all their sources in the window.
    i = tl.arange(0, BLOCK_P)
    keep = c_ok[:, None] & ((i >= R) & (i < BLOCK_P - R) & (p0 - R + i < W))[None, :]
    out = dx_ptr + n * sdn + c[:, None] * sdc + ((p0 - R + i) * sdx)[None, :]
    for b in tl.static_range(BAND):
        dx = tl.zeros((BLOCK_C, BLOCK_P), dtype=ACC)
        for kx in tl.static_range(KS):
            source = tl.minimum(tl.maximum(i - (kx - R), 0), BLOCK_P - 1)
            dx += tl.gather(_pick(acc, a_i, b * KXP + kx), tl.broadcast_to(source[None, :], (BLOCK_C, BLOCK_P)),
                            axis=1)
        tl.store(out + (y0 + b) * sdy, dx.to(dx_ptr.dtype.element_ty), mask=tl.where(y0 + b < H, keep, False))


def feature_block_blocks(channels_per_group, row_length, scale_factor, kernel_size):
    """The block kernel's tiles: (BLOCK_C, BLOCK_P, SXB, BAND, num_warps). The window (BLOCK_P
    source pixels, the middle BLOCK_P - 2R finished) and SXB as main's feature_grad_blocks, and
    up to 32 channels (K is read once per channel block, as in main). BAND = 2 input rows from
    2 + 2R source rows (dy crosses L2 3 times at k = 5, 2 at k = 3, instead of k), or 1 where
    the accumulators [BAND * k padded, BLOCK_C, BLOCK_P] would pass 16384 fp32 (64 registers a
    thread at 8 warps). sm_90 under triton 3.9 at N2 C256 128x128 s2 k5: 128 registers, no
    spills; 4 rows at 16 channels took 106 registers but 1.24x the instructions a multiply-add (a
    K load serves half the channels). 4 and 8 rows spilled on sm_120, gfx90a and gfx942 at small
    shapes (the compile matrix)."""
    halo = 2 * (kernel_size // 2)
    sxb = 2 if scale_factor % 2 == 0 else 1
    block_p = max(pow2(halo + 1), min(32, pow2(row_length + halo)))
    block_c = max(1, min(pow2(channels_per_group), 32))
    accumulators = pow2(kernel_size) * block_c * block_p
    band = 2 if 2 * accumulators <= 16384 else 1
    warps = max(1, min(8, band * accumulators // 2048))
    return block_c, block_p, sxb, band, warps


def _feature_grad(grad_out, masks, dfeatures, kernel_size, group_size, scale_factor):
    """dfeatures receives the features' gradient: the block kernel, except where main's runs: its
    products at s >= 8, and DLU's 16-bit inputs, whose float32 K beside 16-bit dy took the block
    kernel to 164 registers (one 8-warp program an SM; main's 127 at 4 warps, 4 programs), and
    whose dy is half the L2 traffic the block kernel saves."""
    n, c, h, w = dfeatures.shape
    cpg = c // group_size
    s = scale_factor
    if pixel_product_blocks(cpg, s, kernel_size) or grad_out.element_size() < masks.element_size():
        return main._feature_grad(grad_out, masks, dfeatures, kernel_size, group_size, s)
    block_c, block_p, sxb, band, warps = feature_block_blocks(cpg, w, s, kernel_size)
    step = block_p - 2 * (kernel_size // 2)
    grid = (n * cdiv(h, band) * cdiv(w, step), group_size * cdiv(cpg, block_c))
    _feature_grad_block_kernel[grid](
        grad_out, masks, dfeatures, *grad_out.stride(), *masks.stride(), *dfeatures.stride(),
        h, w, cpg, step,
        S=s, SXB=sxb, KS=kernel_size, KXP=pow2(kernel_size), BAND=band,
        BLOCK_P=block_p, BLOCK_C=block_c, EVEN_C=even_channels(cpg, block_c), TIES_LAST=TIES_LAST,
        ACC=acc_dtype(dfeatures), IDX=index_dtype(grad_out, masks, dfeatures),
        num_warps=warps, **LAUNCH,
    )


def _dk_chain(grad_out, features, space, offsets, k_out, dlogits, doffsets, shares, rows, kernel_size, group_size,
              scale_factor):
    """DLU's mask gradient and its chain rule in one launch: k_out receives K, doffsets the
    offsets' gradient, dlogits (zeroed copies) the logits' gradient by atomics, or, given shares
    and rows instead (dlogits None), the corner shares of a deterministic sum."""
    n, c, h, w = features.shape
    s = scale_factor
    cpg = c // group_size
    block_sy, block_p, block_c, warps = mask_grad_dot_blocks(cpg, s, kernel_size)
    atomic = shares is None
    if atomic:
        shares = rows = dlogits  # placeholders: the atomic kernel never reads them
    else:
        dlogits = space[None]  # a placeholder: the deterministic kernel never touches dlogits
    tensors = (grad_out, features, space, offsets, k_out, dlogits, doffsets)
    strides = [st for t in (grad_out, features, space, offsets, k_out) for st in t.stride()]
    _dk_chain_kernel[(n * h * cdiv(w, block_p) * cdiv(s, block_sy), group_size)](
        *tensors, shares, rows, *strides, *dlogits.stride(), *doffsets.stride(),
        h, w, cpg,
        S=s, SXP=pow2(s), KS=kernel_size, KKP=taps_padded(kernel_size), WTP=window_taps(kernel_size, block_p),
        BLOCK_SY=block_sy, BLOCK_P=block_p, BLOCK_C=block_c, EVEN_C=even_channels(cpg, block_c),
        PRECISION=dot_precision(grad_out, features), ATOMIC=int(atomic), COPIES=dlogits.shape[0],
        TIES_LAST=TIES_LAST, ACC=acc_dtype(features), IDX=index_dtype(*tensors, shares),
        num_warps=warps, **LAUNCH,
    )


def _changed(channels_per_group, kernel_size, scale_factor):
    """Whether this candidate's kernels take the shape: where main's mask gradient is a product
    (s >= 2, k >= 3). Elsewhere main's backward runs whole."""
    return mask_grad_dot_blocks(channels_per_group, scale_factor, kernel_size) is not None


def dlu_backward(grad_out, features, kernel_logits, offsets, kernel_size, group_size, scale_factor,
                 deterministic=False):
    """Main's semantics (dlu_triton.kernels.backward.dlu_backward), deterministic variant included."""
    n, c, h, w = features.shape
    g, s, kk = group_size, scale_factor, kernel_size * kernel_size
    if features.numel() == 0 or not _changed(c // g, kernel_size, s):
        return main.dlu_backward(grad_out, features, kernel_logits, offsets, kernel_size, g, s, deterministic)
    acc = accumulator(features)
    dfeatures = new_output(features, features.shape)
    doffsets = new_output(offsets, offsets.shape)
    masks = new_output(features, (n, g * kk, s * h, s * w), dtype=acc)
    shares = rows = dlogits = None
    if deterministic:
        summed = torch.zeros(n * g * h * w, kk, dtype=acc, device=features.device)
        shares = new_output(summed, (n, g, s * h, s * w, 4, kk))
        rows = new_output(summed, (n, g, s * h, s * w, 4), dtype=torch.int64)
    else:
        # the atomics' accumulator copies, zeroed by the kernel-space launch
        dlogits = new_space(kernel_logits, logit_grad_copies(s))
    space = kernel_space(kernel_logits, g, kernel_size, zeroed=dlogits)
    _dk_chain(grad_out, features, space, offsets, masks, dlogits, doffsets, shares, rows, kernel_size, g, s)
    _feature_grad(grad_out, masks, dfeatures, kernel_size, g, s)
    if deterministic:
        summed.index_add_(0, rows.view(-1), shares.view(-1, kk))
        summed = summed.view(1, n, g, h, w, kk).permute(0, 1, 2, 5, 3, 4)
    else:
        summed = dlogits.view(-1, n, g, kk, h, w)
    dlogits_out = new_output(kernel_logits, kernel_logits.shape)
    _logit_grad_out(summed, space, dlogits_out, kernel_size, g)
    return dfeatures, dlogits_out, doffsets


def carafe_backward(grad_out, features, masks, kernel_size, group_size, scale_factor):
    """Main's semantics (dlu_triton.kernels.backward.carafe_backward): main's mask gradient, this
    candidate's features gradient."""
    if features.numel() == 0 or not _changed(features.shape[1] // group_size, kernel_size, scale_factor):
        return main.carafe_backward(grad_out, features, masks, kernel_size, group_size, scale_factor)
    dfeatures = new_output(features, features.shape)
    dmasks = new_output(masks, masks.shape)
    _mask_grad(grad_out, features, dmasks, kernel_size, group_size, scale_factor)
    _feature_grad(grad_out, masks, dfeatures, kernel_size, group_size, scale_factor)
    return dfeatures, dmasks
