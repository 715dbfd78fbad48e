"""Candidate forward: DLU and CARAFE as a banded tile product on the tensor cores.

Maths as in dlu_triton/kernels/forward.py: out[c, o] = sum_j K[g, j, o] * x[c, q(o) + d_j].

A program takes a block of BY x BX source pixels of image n, BSY of their sub-pixel rows and all
their sub-pixel columns (the tile's points, PTS of them), and one group. The taps of all those
points read one window of (BY + k - 1) x (BX + k - 1) source pixels (tiles.window's idea in two
dimensions), so per block of channels the tile is one matrix product

    out[points, channels] = Kband[points, window taps] @ X[window taps, channels]

where Kband holds each point's k*k kernel values at the window positions of its taps and zeros
elsewhere (a band). The program builds Kband once: DLU samples K[points, k*k] from the kernel
space at the offsets (4 corner gathers a point and tap), CARAFE loads it from the masks, and
tl.gather along the tap axis moves it to the window positions (warp shuffles). Then it loops over
the group's channel blocks: load X (the window's rows), one product, one store. Main's forward
samples K again for every 64 channels (its grid's second axis) and loads each feature once per
tap that reads it. The points are the product's rows, so the band is its loop-invariant first
operand and the features' tile, straight from the loads, its second.

Products: float32 takes three tf32 products (tf32x3, about float32's accuracy; AMD plain
float32). For float16 and bfloat16 features the product runs in the features' dtype, whose
values are exact operands: CARAFE's masks are in that dtype too (one product); DLU's K is float32,
so it is split into a high part in the features' dtype and the remainder (two products, K to
about 16 bits, far below the output's rounding). float64 (Triton's interpreter only) a
broadcast product (tiles.dot_add).

Non-finite values: a 0 of the band times an Inf or NaN feature outside a point's taps makes a
NaN where the reference keeps the point finite, and nothing else makes the product differ from
the taps' sum. So a channel block whose product has a NaN is not stored, and after the loop the
program recomputes its tile with main's tap loop (one FMA a point, tap and channel).

Where the band does not pay (k = 1 or k > 7, s = 1, s > 64; band_blocks), main's forward runs.
README.md has the model: bytes, FLOPs, what the compiler made of it and the predicted fraction of
the bandwidth floor.
"""
import os

import torch
import triton
import triton.language as tl

from dlu_triton.kernels import forward as main
from dlu_triton.kernels.kernel_space import kernel_space
from dlu_triton.kernels.launch import acc_dtype, cdiv, index_dtype, new_output, pow2
from dlu_triton.kernels.sampling import corner_probs, sampled_kernel, sampling_point
from dlu_triton.kernels.targets import TIES_LAST, dot_precision
from dlu_triton.kernels.tiles import channel_mask, dot_add, even_channels, load_lanes_first
from dlu_triton.kernels.tuning import LAUNCH


def band_blocks(channels_per_group, scale_factor, kernel_size, element_size):
    """(BY, BX, BSY, BLOCK_C, num_warps) of the banded product, or None where main's forward runs.

    The tile is BY x BX source pixels and BSY of their sub-pixel rows (all s sub-pixel columns,
    s padded to a power of two). Chosen by the model (model.py --tiles; README.md): the product
    costs its window taps (padded to a power of two) over the k*k useful ones, so small windows
    pay; but each tile builds its K once (issue time a program), reloads its halo, and in NCHW
    every row of its window and of its output is a separate L1 wavefront (rows BX + k - 1
    features and BX * s outputs long), so wide tiles pay too. At s = 2: 4 x 4 pixels at k = 5 (an
    8 x 8 window, 64 taps for 25 a point); at k = 3, 2 x 4 in float32 and 2 x 8 in 16 bits (the
    rows' bytes halved); 2 x 2 at k = 7 (8 x 8). At s = 4: 2 x 2 at k = 3 (16 taps, 64 points),
    1 x 2 at k = 5 and 7 (32 and 64 taps). At s >= 8 one pixel and 64 sub-pixels (k*k taps
    padded: 1.28x at k = 5). 64 channels a product, 4 warps."""
    s, k = scale_factor, kernel_size
    sxp = pow2(s)
    if k < 3 or k > 7 or s < 2 or sxp > 64:
        return None
    if sxp >= 8:
        by, bx = 1, 1
    elif sxp == 4:
        by, bx = (2, 2) if k == 3 else (1, 2)
    elif k == 3:
        by, bx = (2, 4) if element_size > 2 else (2, 8)
    else:
        by, bx = (4, 4) if k == 5 else (2, 2)
    bsy = max(1, min(sxp, 64 // (by * bx * sxp)))
    block_c = max(16, min(64, pow2(channels_per_group)))
    return by, bx, bsy, block_c, 4


def window_taps(kernel_size, by, bx):
    """The window's taps (BY + k - 1) x (BX + k - 1), padded to a power of two."""
    return pow2((by + kernel_size - 1) * (bx + kernel_size - 1))


@triton.jit(do_not_specialize=["H", "W", "UNIT"])
def _band_kernel(
    x_ptr, k_ptr, off_ptr, out_ptr,  # features; kernel space (DLU) or masks (CARAFE); offsets (DLU); output
    sxn, sxc, sxy, sxx,  # features strides
    skn, skc, sky, skx,  # kernel space / masks strides
    son, soc, soy, sox,  # offsets strides
    sun, suc, suy, sux,  # output strides
    H, W, CPG,  # low-resolution size, channels per group (specialised: 16 | CPG aligns channels_last blocks)
    UNIT,  # 1, at run time (the window's columns are computed with it: see the feature loads)
    S: tl.constexpr,  # scale factor (constexpr: a tile row's output columns must look contiguous)
    SXP: tl.constexpr,  # s rounded up to a power of two
    KS: tl.constexpr,  # kernel size k
    KKP: tl.constexpr,  # k*k rounded up to a power of two
    SAMPLED: tl.constexpr,  # 1: DLU, sample K from the kernel space at the offsets; 0: CARAFE, load K
    BY: tl.constexpr,  # source rows per program
    BX: tl.constexpr,  # source columns per program
    BSY: tl.constexpr,  # sub-pixel rows per program
    WTP: tl.constexpr,  # window taps (BY + k - 1) * (BX + k - 1), padded to a power of two
    BLOCK_C: tl.constexpr,  # channels a product (within one group)
    EVEN_C: tl.constexpr,  # 1: BLOCK_C divides CPG, so the feature loads need no channel mask
    EVEN_P: tl.constexpr,  # 1: every point of every tile exists (BY | H, BX | W, BSY | s, s a power of two)
    FIT: tl.constexpr,  # 1: the image is at least a window high and wide (the window moved into it)
    PARTS: tl.constexpr,  # 2: K split into the features' 16-bit dtype and its remainder; 1: K as is
    DOT: tl.constexpr,  # the products' operand dtype: the features' (float32 for bfloat16 in the interpreter)
    PRECISION: tl.constexpr,  # tl.dot input precision (targets.dot_precision)
    TIES_LAST: tl.constexpr,  # targets.TIES_LAST: the installed Triton's rule for tied load axes
    ACC: tl.constexpr,  # accumulator dtype
    IDX: tl.constexpr,  # index dtype (int64 only for huge tensors)
):
    KK: tl.constexpr = KS * KS
    R: tl.constexpr = KS // 2
    WU: tl.constexpr = BX + KS - 1  # window columns
    WV: tl.constexpr = BY + KS - 1  # window rows
    ROW: tl.constexpr = BX * SXP  # a tile row's consecutive output columns
    PTS: tl.constexpr = BY * BSY * ROW
    n_sy: tl.constexpr = (S + BSY - 1) // BSY
    pid = tl.program_id(0)  # ((n * ceil(H / BY) + row block) * ceil(W / BX) + column block) * n_sy + sy block
    sy0 = pid % n_sy * BSY
    t = pid // n_sy
    n_bx = tl.cdiv(W, BX)
    ix0 = (t % n_bx * BX).to(IDX)
    t = t // n_bx
    n_by = tl.cdiv(H, BY)
    iy0 = (t % n_by * BY).to(IDX)
    n = (t // n_by).to(IDX)
    g = tl.program_id(1)

    # The points [PTS], (pixel row, sub-pixel row, pixel column, sub-pixel column) row-major: the
    # last two are one run of ROW output columns
    iy, ix, oy, ox, sub, p_ok = _points(iy0, ix0, sy0, H, W, S, SXP, BY, BX, BSY, EVEN_P)
    py = tl.arange(0, PTS) // (ROW * BSY)
    px = tl.arange(0, PTS) % ROW // SXP

    # The window [WTP]: WV rows of WU consecutive pixels from (jy0, jx0), holding the taps of
    # every point of the tile. With FIT it is moved into the image at its edges, so its loads
    # need no per-pixel mask (which would stop the lanes running along its rows); the taps that
    # fall outside the image then have no window position, and drop out of the band.
    wt = tl.arange(0, WTP)
    wy = wt // WU
    wx = wt % WU
    if FIT:
        jy0 = tl.minimum(tl.maximum(iy0 - R, 0), H - WV)
        jx0 = tl.minimum(tl.maximum(ix0 - R, 0), W - WU)
        w_ok = wt < WV * WU
    else:
        jy0 = iy0 - R
        jx0 = ix0 - R
        w_ok = (wt < WV * WU) & (jy0 + wy >= 0) & (jy0 + wy < H) & (jx0 + wx >= 0) & (jx0 + wx < W)
    jy = jy0 + wy
    jx = jx0 + wx * UNIT

    # K [PTS, KKP], once for all the group's channels
    j = tl.arange(0, KKP)
    k_base = k_ptr + n * skn
    if SAMPLED:
        y0, y1, x0, x1, fy, fx, _, _ = sampling_point(
            off_ptr + n * son + iy * soy + ix * sox, g, iy, ix, sub, p_ok, soc, H, W, S, ACC)
        y0s = y0.to(IDX) * sky
        y1s = y1.to(IDX) * sky
        x0s = x0.to(IDX) * skx
        x1s = x1.to(IDX) * skx
        kv = ((1.0 - fy) * (1.0 - fx))[:, None] * corner_probs(k_base, y0s + x0s, g, p_ok, skc, KK, KKP, ACC,
                                                               TIES_LAST)
        kv += ((1.0 - fy) * fx)[:, None] * corner_probs(k_base, y0s + x1s, g, p_ok, skc, KK, KKP, ACC, TIES_LAST)
        kv += (fy * (1.0 - fx))[:, None] * corner_probs(k_base, y1s + x0s, g, p_ok, skc, KK, KKP, ACC, TIES_LAST)
        kv += (fy * fx)[:, None] * corner_probs(k_base, y1s + x1s, g, p_ok, skc, KK, KKP, ACC, TIES_LAST)
    else:
        kv = tl.load(k_base + ((g * KK + j) * skc)[None, :] + (oy * sky + ox * skx)[:, None],
                     mask=p_ok[:, None] & (j < KK)[None, :], other=0.0).to(ACC)

    # Kband [PTS, WTP]: window tap w of point p is its tap (ty, tx) where that lies in the k x k
    # square (a padding tap, wy >= WV, never does)
    ty = wy[None, :] - (py + (iy0 - R - jy0))[:, None]
    tx = wx[None, :] - (px + (ix0 - R - jx0))[:, None]
    band = (ty >= 0) & (ty < KS) & (tx >= 0) & (tx < KS)
    kb = tl.where(band, tl.gather(kv, tl.where(band, ty * KS + tx, 0), axis=1), 0.0)
    kb_hi = kb.to(x_ptr.dtype.element_ty)
    if PARTS == 2:
        kb_lo = (kb - kb_hi.to(ACC)).to(x_ptr.dtype.element_ty).to(DOT)
    kb_hi = kb_hi.to(DOT)

    # A channel block's features [WTP, BLOCK_C] and outputs [PTS, BLOCK_C], as offsets from its
    # first channel's (int32 in the common case: half the registers of pointers)
    cb = tl.arange(0, BLOCK_C)
    x_off = (jy * sxy + jx * sxx)[:, None] + (cb * sxc)[None, :]
    o_off = (oy * suy + ox * sux)[:, None] + (cb * suc)[None, :]
    # The reference multiplies a tap outside the image as K * 0: NaN for a non-finite K. Such a
    # tap dropped from a moved window makes the tile take the exact path.
    bad = 0
    if FIT:
        ty_j = iy[:, None] + (j // KS - R)[None, :]
        tx_j = ix[:, None] + (j % KS - R)[None, :]
        lost = p_ok[:, None] & (j < KK)[None, :] & ((ty_j < 0) | (ty_j >= H) | (tx_j < 0) | (tx_j >= W))
        bad = tl.sum(tl.where(lost & (kv - kv != 0), 1, 0))
    for c0 in range(0, CPG, BLOCK_C):
        c_ok = channel_mask(c0 + cb, CPG, BLOCK_C, EVEN_C)
        c = (g * CPG + c0).to(IDX)
        # NCHW: a window row's features are consecutive, but a row is short and starts anywhere, so
        # vector loads cannot be proved aligned, and a layout of several taps a thread (which the
        # compiler picks for a contiguous axis) would put each lane of an instruction on another
        # row. With the columns computed with UNIT no axis looks contiguous, and the lanes run
        # along the window: 32 consecutive taps an instruction. channels_last: along the channels.
        xw = load_lanes_first(x_ptr + n * sxn + c * sxc + x_off, w_ok[:, None] & c_ok[None, :], TIES_LAST).to(DOT)
        acc = dot_add(kb_hi, xw, tl.zeros((PTS, BLOCK_C), ACC), PRECISION, ACC)
        if PARTS == 2:
            acc = dot_add(kb_lo, xw, acc, PRECISION, ACC)
        # A band's 0 against an Inf or NaN feature makes a NaN (the only way the product differs
        # from the taps' sum): such a block is not stored here but recomputed below
        total = tl.sum(acc)
        bad += tl.where(total == total, 0, 1)
        # where(), not &: the interpreter mistypes a tensor & a scalar bool
        tl.store(out_ptr + n * sun + c * suc + o_off, acc.to(out_ptr.dtype.element_ty),
                 mask=tl.where(total == total, p_ok[:, None] & c_ok[None, :], False))
    if bad > 0:
        tl.debug_barrier()  # the exact stores come after every store of the loop: the last word is theirs
        _exact(x_ptr, k_ptr, off_ptr, out_ptr, sxn, sxc, sxy, sxx, skn, skc, sky, skx, son, soc, soy, sox,
               sun, suc, suy, sux, H, W, CPG, n, g, iy0, ix0, sy0,
               S, SXP, KS, SAMPLED, BY, BX, BSY, EVEN_P, ACC, IDX)


@triton.jit
def _points(iy0, ix0, sy0, H, W, S: tl.constexpr, SXP: tl.constexpr, BY: tl.constexpr, BX: tl.constexpr,
            BSY: tl.constexpr, EVEN_P: tl.constexpr):
    """A tile's points [BY * BSY * BX * SXP], (pixel row, sub-pixel row, pixel column, sub-pixel
    column) row-major: each one's source row and column, output row and column, sub-pixel index
    (oy % s) * s + ox % s, and whether it exists (a constant with EVEN_P, so that the stores along
    the output rows are vectorised)."""
    ROW: tl.constexpr = BX * SXP
    p = tl.arange(0, BY * BSY * ROW)
    col = p % ROW
    sx = col % SXP
    sy = sy0 + p // ROW % BSY
    iy = iy0 + p // (ROW * BSY)
    ix = ix0 + col // SXP
    if SXP == S:
        ox = ix0 * S + col  # seen as contiguous (from ix * S + sx the compiler could not tell)
    else:
        ox = ix * S + sx
    if EVEN_P:
        ok = tl.full((BY * BSY * ROW,), 1, tl.int1)
    else:
        ok = (sy < S) & (sx < S) & (iy < H) & (ix < W)
    return iy, ix, iy * S + sy, ox, sy * S + sx, ok


@triton.jit
def _exact(x_ptr, k_ptr, off_ptr, out_ptr, sxn, sxc, sxy, sxx, skn, skc, sky, skx, son, soc, soy, sox,
           sun, suc, suy, sux, H, W, CPG, n, g, iy0, ix0, sy0,
           S: tl.constexpr, SXP: tl.constexpr, KS: tl.constexpr, SAMPLED: tl.constexpr, BY: tl.constexpr,
           BX: tl.constexpr, BSY: tl.constexpr, EVEN_P: tl.constexpr, ACC: tl.constexpr, IDX: tl.constexpr):
    """The tile's outputs as main's forward computes them (a sum over the taps, one FMA a point,
    tap and channel, 16 channels at a time): for tiles whose window holds an Inf or NaN feature,
    which the band's zeros would spread, or whose moved window dropped a non-finite K's tap."""
    KK: tl.constexpr = KS * KS
    R: tl.constexpr = KS // 2
    C16: tl.constexpr = 16
    iy, ix, oy, ox, sub, p_ok = _points(iy0, ix0, sy0, H, W, S, SXP, BY, BX, BSY, EVEN_P)
    k_base = k_ptr + n * skn
    if SAMPLED:
        y0, y1, x0, x1, fy, fx, _, _ = sampling_point(
            off_ptr + n * son + iy * soy + ix * sox, g, iy, ix, sub, p_ok, soc, H, W, S, ACC)
    cb = tl.arange(0, C16)
    for c0 in range(0, CPG, C16):
        c_ok = c0 + cb < CPG
        c = (g * CPG + c0 + cb).to(IDX)
        acc = tl.zeros((BY * BSY * BX * SXP, C16), ACC)
        for jt in range(KK):
            t_base = k_base + (g * KK + jt) * skc
            if SAMPLED:
                kj = sampled_kernel(t_base, y0, y1, x0, x1, fy, fx, sky, skx, p_ok, IDX, ACC)
            else:
                kj = tl.load(t_base + oy * sky + ox * skx, mask=p_ok, other=0.0).to(ACC)
            ty = iy + (jt // KS - R)
            tx = ix + (jt % KS - R)
            t_ok = p_ok & (ty >= 0) & (ty < H) & (tx >= 0) & (tx < W)
            f = tl.load(x_ptr + n * sxn + (ty * sxy + tx * sxx)[:, None] + (c * sxc)[None, :],
                        mask=t_ok[:, None] & c_ok[None, :], other=0.0)
            acc += f.to(ACC) * kj[:, None]
        tl.store(out_ptr + n * sun + (oy * suy + ox * sux)[:, None] + (c * suc)[None, :],
                 acc.to(out_ptr.dtype.element_ty), mask=p_ok[:, None] & c_ok[None, :])


def dot_dtype(features):
    """The products' operand dtype: the features'. Triton's interpreter multiplies bfloat16
    operands as their bit patterns (numpy has no bfloat16), so under it they are converted to
    float32 first: the same values, and the products are exact either way. (Asked of the
    environment, not of the tensors' device: compile_report.py builds the GPU's launches from CPU
    tensors.)"""
    if features.dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET") == "1":
        return tl.float32
    return {torch.float64: tl.float64, torch.float32: tl.float32, torch.float16: tl.float16,
            torch.bfloat16: tl.bfloat16}[features.dtype]


def _launch(features, kernels, offsets, kernel_size, group_size, scale_factor, blocks):
    """kernels: DLU's kernel space (with offsets) or CARAFE's masks (offsets None)."""
    n, c, h, w = features.shape
    s = scale_factor
    out = new_output(features, (n, c, s * h, s * w))
    if out.numel() == 0:
        return out
    sampled = offsets is not None
    off = offsets if sampled else kernels  # CARAFE never reads it
    cpg = c // group_size
    by, bx, bsy, block_c, warps = blocks
    # 16-bit features against float32 kernel values (DLU's, always): K in two parts
    parts = 2 if features.element_size() == 2 and kernels.element_size() > 2 else 1
    _band_kernel[(n * cdiv(h, by) * cdiv(w, bx) * cdiv(s, bsy), group_size)](
        features, kernels, off, out,
        *features.stride(), *kernels.stride(), *off.stride(), *out.stride(),
        h, w, cpg, 1,
        S=s, SXP=pow2(s), KS=kernel_size, KKP=pow2(kernel_size * kernel_size), SAMPLED=int(sampled),
        BY=by, BX=bx, BSY=bsy, WTP=window_taps(kernel_size, by, bx),
        BLOCK_C=block_c, EVEN_C=even_channels(cpg, block_c),
        EVEN_P=int(h % by == 0 and w % bx == 0 and s % bsy == 0 and s == pow2(s)),
        FIT=int(h >= by + kernel_size - 1 and w >= bx + kernel_size - 1),
        PARTS=parts, DOT=dot_dtype(features),
        PRECISION=dot_precision(features) if parts == 2 else dot_precision(features, kernels),
        TIES_LAST=TIES_LAST, ACC=acc_dtype(features), IDX=index_dtype(features, kernels, off, out),
        num_warps=warps, **LAUNCH,
    )
    return out


def dlu_forward(features, kernel_logits, offsets, kernel_size, group_size, scale_factor):
    blocks = band_blocks(features.shape[1] // group_size, scale_factor, kernel_size, features.element_size())
    if blocks is None:
        return main.dlu_forward(features, kernel_logits, offsets, kernel_size, group_size, scale_factor)
    space = kernel_space(kernel_logits, group_size, kernel_size)
    return _launch(features, space, offsets, kernel_size, group_size, scale_factor, blocks)


def carafe_forward(features, masks, kernel_size, group_size, scale_factor):
    blocks = band_blocks(features.shape[1] // group_size, scale_factor, kernel_size, features.element_size())
    if blocks is None:
        return main.carafe_forward(features, masks, kernel_size, group_size, scale_factor)
    return _launch(features, masks, None, kernel_size, group_size, scale_factor, blocks)
