"""Reassembly backward: gradients of DLU (features, logits, offsets) and CARAFE (features, masks).

Notation as in forward.py: out[c, o] = sum_j K[g, j, o] x[c, q(o) + d_j], gradient dy = d loss / d out.

1. Mask gradient, a channel reduction per output pixel (no scatter):
       dK[g, j, o] = sum_{c in g} dy[c, o] * x[c, q(o) + d_j]
   CARAFE stores it as the masks' gradient; DLU into a temporary [N, G*k*k, sH, sW] (no C).
   All s*s output pixels o of one source pixel q read the same k*k neighbourhood, so per q it
   is a matrix product over the channels: dK_q[t, j] = sum_c DY_q[t, c] X_q[c, j], with
   DY_q[t, c] = dy[c, (q, t)] (t the sub-pixel) and X_q[c, j] = x[c, q + d_j].
2. DLU only, the kernel gradient through the sampling and the softmax, from dK: with the kernel
   space's probabilities P_c at the corners (the softmax, computed once per low-resolution pixel
   before the launch, as in the forward) and bilinear weights w_c, K = sum_c w_c P_c, so
       d px = [0 < px < W-1] * sum_j dK_j ((1-fy)(P01 - P00) + fy(P11 - P10))_j     (dy likewise)
       d logits[., corner c] += w_c * P_c * (dK - <P_c, dK>)                         (softmax backward)
   The offsets' gradient belongs to one output pixel and is stored directly; the logits' gradient
   lands on corners that the offsets choose, so it is scattered with fp32 atomics (fp64 for fp64
   inputs), whose order, and so whose last bits, vary run to run. Each kernel-space value takes
   about 4*s*s of them, and same-address atomics serialise, so at s >= 8 output row oy adds into
   copy oy % copies of the accumulator (tuning.logit_grad_copies), summed in step 4. The
   deterministic variant (under torch.use_deterministic_algorithms) stores each point's four corner shares
   with their target rows, and torch's index_add_, deterministic in that mode, sums them in a
   fixed order. This step also writes K, which step 3 needs; it lives only during backward.
3. Features gradient, a gather over the output pixels whose taps read each input pixel:
       dx[c, p] = sum_j sum_{t in s*s} K[g, j, (p - d_j, t)] * dy[c, (p - d_j, t)]
   so every input pixel is written once, without atomics. The inner sum is, per source pixel q,
   a matrix product Z_q[c, j] = sum_t DY_q[c, t] K_q[t, j]; at s >= 8 it is computed so and
   stored (Z [N, H, W, k*k, C], k*k/(s*s) of dy's size), then dx[c, p] = sum_j Z_{p - d_j}[c, j].
4. DLU only: the logits' gradient from either summation's buffer (the atomics' copies summed)
   into its own dtype and memory format, NaN where the kernel space is NaN (the softmax backward
   is dense), in one pass.

Tiles. The kernels take s as a compile-time constant.
Step 1 at s >= 2 (k >= 3): the mask gradient is a matrix product on the tensor cores,
[sub-pixels, taps] = DY @ X, BLOCK_C channels a step (tuning.mask_grad_dot_blocks). At s >= 8 a
program takes one source pixel and BLOCK_SY sub-pixel rows (64 sub-pixels a product); at
s = 2..7 it takes BLOCK_P = 32 / (BLOCK_SY * pow2(s)) consecutive source pixels, whose taps share
a window of k rows of BLOCK_P + k - 1 features: the product is [their sub-pixels, window taps],
and each row stores the band of taps that are its own. A float32 operand takes three tf32
products (tf32x3, about float32's accuracy); float16 and bfloat16 values are exact in tf32, so a
product of those alone takes one (targets.dot_precision).
Step 1 otherwise (s = 1 or k = 1): a one-warp program per (output row, BLOCK_P source pixels,
SXB sub-pixel columns, group), a pixel a lane. It loops over the group's channels one at a time:
loads the channel's dy [SXB, BLOCK_P] once, then for each tap (unrolled) the features [BLOCK_P],
and adds each product to dK[j] in the thread's registers. So dy is read once, not once per
tap, and no sum crosses a thread. One channel a step, not a [BLOCK_C, SXB, BLOCK_P] block
summed over its channels: in that 3-D tile the pixels and the channels are equally strided, and
the supported Triton versions break such a tie differently (targets.TIES_LAST), so no axis
order keeps the channel sums within a thread for all of them; 2-D tiles have no tie. The tap
column's offset is added to the pointer as a constant, the load's immediate offset, and each
step moves the two pointers on by a channel, so no load costs a 64-bit address add of its own.
Layout note: the features' column is computed from the block size passed at run time
(P_STEP), so no tap's address looks 16-byte aligned and every tap's load gets the same layout
(otherwise the aligned middle tap is vectorised into another layout, converted through shared
memory at every tap).
Step 2: one program per (output row, BLOCK_P source pixels x s sub-pixel columns, group), the
columns as one contiguous run.
Step 3 at s >= 8 (k >= 3): a program per (source pixel, BLOCK_C channels) computes Z_q on the
tensor cores, 64 sub-pixels a step (tuning.pixel_product_blocks); a second launch gathers
each pixel's k*k tap sums [BLOCK_C, BLOCK_P] and writes dx. Below s = 8, Z would cost more
traffic than dy, and:
Step 3: one program per (input row, window of BLOCK_P source pixels, BLOCK_C channels). For
each tap row and sub-pixel row, SXB sub-pixel columns at a time, it loads the window's dy run
once (consecutive columns) and K of each of the k tap columns, and adds dy * K, summed over the
sub-pixel columns, into that tap column's accumulator [BLOCK_C, BLOCK_P]. Input pixel p takes
tap column kx's sums at source pixel p - (kx - R), so at the end each column's sums are shifted
along the pixels (tl.gather, within a warp) and added: a window finishes the BLOCK_P - 2R pixels
in its middle, and the next window starts BLOCK_P - 2R pixels on. Layout note: a step's K run is at most 64
columns, no more than the tile's lanes hold twice over, and the compiler then lays it out as a
slice of the dy tile's layout; a longer run it spreads over all the threads and moves through
shared memory at every tap.
"""
import torch
import triton
import triton.language as tl

from .kernel_space import kernel_space, new_space
from .launch import acc_dtype, accumulator, cdiv, index_dtype, new_output, pow2, taps_padded
from .sampling import corner_probs, sampling_point
from .targets import TIES_LAST, dot_precision
from .tiles import (
    atomic_add_lanes_first,
    channel_mask,
    dot_add,
    even_channels,
    load_lanes_first,
    pixel_tile,
    subpixel_columns,
    window,
    window_taps,
)
from .tuning import (
    LAUNCH,
    feature_grad_blocks,
    kernel_grad_pixels,
    logit_grad_copies,
    mask_grad_blocks,
    mask_grad_dot_blocks,
    pixel_product_blocks,
)


@triton.jit
def _logit_grad_share(d_at, share_at, row_at, row, pc, wc, dk, q_ok, ok, live, ATOMIC: tl.constexpr,
                      TIES_LAST: tl.constexpr):
    """Softmax backward of one corner's share, w_c * P_c * (dK - <P_c, dK>): added to the logits'
    gradient at d_at with atomics, or stored at share_at with its row for a deterministic sum.
    Only live points (not those of NaN offsets) contribute; zero-weight corners do, since
    grid_sample adds 0 * a NaN gradient as NaN. The atomics' lanes run along the columns, whose
    corners are neighbouring addresses (along the taps each lane would hit another plane)."""
    dl = wc[:, None] * pc * (dk - tl.sum(pc * dk, axis=1)[:, None])
    if ATOMIC:
        atomic_add_lanes_first(d_at, dl, ok & live, TIES_LAST)
    else:
        tl.store(share_at, tl.where(live, dl, 0.0), mask=ok)
        tl.store(row_at, row.to(tl.int64), mask=q_ok)


@triton.jit(do_not_specialize=["H", "W", "CPG", "P_STEP"])
def _mask_grad_kernel(
    gy_ptr, x_ptr, dk_ptr,  # dy; features; mask gradient dK out
    sgn, sgc, sgy, sgx,  # dy strides
    sxn, sxc, sxy, sxx,  # features strides
    skn, skc, sky, skx,  # dK strides
    H, W, CPG,  # low-resolution size, channels per group
    P_STEP,  # = BLOCK_P, at run time (the layout note in the module docstring)
    S: tl.constexpr,  # scale factor
    SXB: tl.constexpr,  # sub-pixel columns per program (a power of two)
    KS: tl.constexpr,  # kernel size k
    KKP: tl.constexpr,  # k*k rounded up to a power of two
    BLOCK_P: tl.constexpr,  # source pixels per program, one a lane
    ACC: tl.constexpr,  # accumulator dtype
    IDX: tl.constexpr,  # index dtype
):
    KK: tl.constexpr = KS * KS
    R: tl.constexpr = KS // 2
    n_pblocks = tl.cdiv(W, BLOCK_P)
    n_xblocks: tl.constexpr = (S + SXB - 1) // SXB
    pid = tl.program_id(0)  # ((n * s*H + oy) * n_pblocks + pblock) * n_xblocks + xblock
    sx = (pid % n_xblocks) * SXB + tl.arange(0, SXB)  # [X]
    pblock = pid // n_xblocks % n_pblocks
    ix = (pblock * BLOCK_P + tl.arange(0, BLOCK_P)).to(IDX)  # [P]
    ix_rt = (pblock * P_STEP + tl.arange(0, BLOCK_P)).to(IDX)  # the same values, alignment unknown
    row = pid // n_xblocks // n_pblocks
    oy = (row % (H * S)).to(IDX)
    n = (row // (H * S)).to(IDX)
    iy = oy // S
    g = tl.program_id(1)
    p_ok = ix < W
    q_ok = (sx < S)[:, None] & p_ok[None, :]  # [X, P]
    ox = ix[None, :] * S + sx[:, None]
    j = tl.arange(0, KKP)[:, None, None]

    # Every tensor here is [..., P], a pixel a lane (at BLOCK_P = 32; a shorter row puts the
    # sub-pixel columns on the spare lanes) and the rest in the thread's registers, so each
    # multiply-add is one FMA into dK[j], a register of the thread (the taps are unrolled, so
    # `j == jt` is known at compile time and the select folds away).
    dk = tl.zeros((KKP, SXB, BLOCK_P), dtype=ACC)
    gy_row = gy_ptr + n * sgn + (g * CPG).to(IDX) * sgc + oy * sgy + ox * sgx  # [X, P]
    x_row = x_ptr + n * sxn + (g * CPG).to(IDX) * sxc + ix_rt * sxx  # [P]
    for _ in range(CPG):  # the pointers step one channel on
        dy = tl.load(gy_row, mask=q_ok, other=0.0).to(ACC)  # [X, P], for all k*k taps
        for jt in tl.static_range(KK):
            ty = iy + (jt // KS - R)
            tx = ix_rt + (jt % KS - R)
            # where(), not &: the interpreter mistypes a tensor & a scalar bool
            t_ok = tl.where((ty >= 0) & (ty < H), p_ok & (tx >= 0) & (tx < W), False)
            # the tap column's offset is a constant added to the pointer (an immediate offset of
            # the load when sxx = 1), not folded into an int32 index, which cost each load its
            # own 64-bit address add
            xc = tl.load(x_row + ty * sxy + (jt % KS - R) * sxx, mask=t_ok, other=0.0)
            dk += tl.where(j == jt, (dy * xc.to(ACC)[None, :])[None, :, :], 0.0)
        gy_row += sgc
        x_row += sxc

    dk_at = dk_ptr + n * skn + ((g * KK + j) * skc) + (oy * sky + ox * skx)[None, :, :]
    # Stored as computed: permuted so that triton 3.6 put its lanes along the pixels, this store
    # made DLU's backward at s = 2 1.8x slower on an H200, though it compiled to fewer
    # instructions and registers (docs/performance.md, 2026-12-04).
    tl.store(dk_at, dk.to(dk_ptr.dtype.element_ty), mask=(j < KK) & q_ok[None, :, :])


@triton.jit(do_not_specialize=["H", "W", "CPG"])
def _mask_grad_dot_kernel(
    gy_ptr, x_ptr, dk_ptr,  # dy; features; mask gradient dK out
    sgn, sgc, sgy, sgx,  # dy strides
    sxn, sxc, sxy, sxx,  # features strides
    skn, skc, sky, skx,  # dK strides
    H, W, CPG,  # low-resolution size, channels per group
    S: tl.constexpr,  # scale factor
    SXP: tl.constexpr,  # s rounded up to a power of two
    KS: tl.constexpr,  # kernel size k
    WTP: tl.constexpr,  # window taps k * (k + BLOCK_P - 1), padded to a power of two (tiles.window_taps)
    BLOCK_SY: tl.constexpr,  # sub-pixel rows per program
    BLOCK_P: tl.constexpr,  # consecutive source pixels per program (their columns share one window)
    BLOCK_C: tl.constexpr,  # channels per product (its inner dimension)
    EVEN_C: tl.constexpr,  # 1: BLOCK_C divides CPG, so the loads need no channel mask
    PRECISION: tl.constexpr,  # tl.dot input precision (targets.dot_precision)
    ACC: tl.constexpr,  # accumulator dtype
    IDX: tl.constexpr,  # index dtype
):
    KK: tl.constexpr = KS * KS
    M: tl.constexpr = BLOCK_SY * BLOCK_P * SXP
    n, iy, ix0, p, _, oy, ox, t_ok, _ = pixel_tile(tl.program_id(0), H, W, S, SXP, BLOCK_SY, BLOCK_P, IDX)
    g = tl.program_id(1)
    ky, u, jy, jx, w_ok = window(iy, ix0, H, W, KS, BLOCK_P, WTP)
    cb = tl.arange(0, BLOCK_C)
    gy_at = gy_ptr + n * sgn + (oy * sgy + ox * sgx)[:, None]  # [M, 1]
    x_at = x_ptr + n * sxn + (jy * sxy + jx * sxx)[None, :]  # [1, WTP]
    acc = tl.zeros((M, WTP), dtype=ACC)
    for c0 in range(0, CPG, BLOCK_C):
        cg = c0 + cb
        c_ok = channel_mask(cg, CPG, BLOCK_C, EVEN_C)
        c = (g * CPG + cg).to(IDX)
        dy = tl.load(gy_at + (c * sgc)[None, :], mask=t_ok[:, None] & c_ok[None, :], other=0.0)  # [M, C]
        xw = tl.load(x_at + (c * sxc)[:, None], mask=c_ok[:, None] & w_ok[None, :], other=0.0)  # [C, WTP]
        acc = dot_add(dy.to(ACC), xw.to(ACC), acc, PRECISION, ACC)
    # column (pixel p, sub-pixel) keeps the window taps (ky, u) with u - p a tap column: a band
    kx = u[None, :] - p[:, None]
    band = (kx >= 0) & (kx < KS) & (ky < KS)[None, :] & t_ok[:, None]
    dk_at = dk_ptr + n * skn + (g * KK + ky[None, :] * KS + kx) * skc + (oy * sky + ox * skx)[:, None]
    tl.store(dk_at, acc.to(dk_ptr.dtype.element_ty), mask=band)


@triton.jit(do_not_specialize=["H", "W"])
def _kernel_grad_kernel(
    dk_ptr, p_ptr, off_ptr, k_ptr, dl_ptr, doff_ptr,  # dK; kernel space; offsets; K out;
    # logits-gradient accumulator copies; offsets gradient
    share_ptr, row_ptr,  # deterministic: corner shares [N, G, sH, sW, 4, k*k], their rows [.., 4]
    sdkn, sdkc, sdky, sdkx,  # dK strides
    spn, spc, spy, spx,  # kernel-space strides
    son, soc, soy, sox,  # offsets strides
    skn, skc, sky, skx,  # K strides
    sdr, sdn, sdc, sdy, sdx,  # logits-gradient accumulator strides: copy, image, channel, row, column
    sen, sec, sey, sex,  # offsets-gradient strides
    H, W,  # low-resolution size
    S: tl.constexpr,  # scale factor (constexpr: output columns ix*s + sx must look contiguous)
    SXP: tl.constexpr,  # s rounded up to a power of two
    KS: tl.constexpr,  # kernel size k
    KKP: tl.constexpr,  # k*k rounded up to a power of two
    ATOMIC: tl.constexpr,  # 1 adds the logits' gradient with atomics, 0 stores corner shares
    COPIES: tl.constexpr,  # accumulator copies (ATOMIC): output row oy adds into copy oy % COPIES
    BLOCK_P: tl.constexpr,  # source pixels per program (each with its s sub-pixel columns)
    TIES_LAST: tl.constexpr,  # targets.TIES_LAST: the installed Triton's rule for tied load axes
    ACC: tl.constexpr,  # accumulator dtype
    IDX: tl.constexpr,  # index dtype
):
    KK: tl.constexpr = KS * KS
    M: tl.constexpr = BLOCK_P * SXP
    n_pblocks = tl.cdiv(W, BLOCK_P)
    row = tl.program_id(0) // n_pblocks  # n * s*H + oy
    oy = (row % (H * S)).to(IDX)
    n = (row // (H * S)).to(IDX)
    ix0 = ((tl.program_id(0) % n_pblocks) * BLOCK_P).to(IDX)
    g = tl.program_id(1)
    ix, sx, ox, q_ok = subpixel_columns(ix0, W, S, SXP, M)
    iy = oy // S
    j = tl.arange(0, KKP)
    qj_ok = q_ok[:, None] & (j < KK)[None, :]
    dk_at = dk_ptr + n * sdkn + (oy * sdky + ox * sdkx)[:, None] + ((g * KK + j) * sdkc)[None, :]
    dk = tl.load(dk_at, mask=qj_ok, other=0.0)
    dk = dk.to(ACC)

    sub = (oy % S) * S + sx
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

    d_base = dl_ptr + (oy % COPIES) * sdr + n * sdn + ((g * KK + j) * sdc)[None, :]
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


@triton.jit(do_not_specialize=["H", "W", "CPG", "STEP"])
def _feature_grad_kernel(
    gy_ptr, k_ptr, dx_ptr,  # dy; K (masks); features gradient
    sgn, sgc, sgy, sgx,  # dy strides
    skn, skc, sky, skx,  # K strides
    sdn, sdc, sdy, sdx,  # features-gradient strides
    H, W, CPG,  # low-resolution size, channels per group
    STEP,  # input pixels a program finishes: BLOCK_P - 2*(k//2)
    S: tl.constexpr,  # scale factor (constexpr: output columns q*s + sx must look like aligned runs)
    SXB: tl.constexpr,  # sub-pixel columns a step (1 or 2, dividing s)
    KS: tl.constexpr,  # kernel size k
    KXP: tl.constexpr,  # k rounded up to a power of two
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
    n_cblocks = tl.cdiv(CPG, BLOCK_C)
    row = tl.program_id(0) // n_pblocks  # n * H + iy
    iy = (row % H).to(IDX)
    n = (row // H).to(IDX)
    p0 = ((tl.program_id(0) % n_pblocks) * STEP).to(IDX)  # the first input pixel it finishes
    g = tl.program_id(1) // n_cblocks
    cg = (tl.program_id(1) % n_cblocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    c = (g * CPG + cg).to(IDX)
    c_ok = channel_mask(cg, CPG, BLOCK_C, EVEN_C)
    # The window: source pixels q = p0 - R + i; a step reads SXB sub-pixel columns of each,
    # column m = (i, sub-pixel column) of the tile
    m = tl.arange(0, M)
    q = p0 - R + m // SXB
    q_ok = (q >= 0) & (q < W)

    kx_i = tl.arange(0, KXP)[:, None, None]
    acc = tl.zeros((KXP, BLOCK_C, BLOCK_P), dtype=ACC)  # [tap column, channel, source pixel]
    gy_base_t = gy_ptr + n * sgn + (c * sgc)[None, :]
    k_base = k_ptr + n * skn + g * KK * skc
    for ky in range(KS):
        # The output pixels whose tap (ky, kx) reads pixel p have source pixel p - d.
        qy = iy - (ky - R)
        ok = tl.where((qy >= 0) & (qy < H), q_ok, False)
        for sy in range(S):
            oy = qy * S + sy
            for sx0 in range(0, S, SXB):
                ox = q * S + sx0 + m % SXB
                # read once for the k tap columns; with s odd no axis is contiguous, and the
                # lanes must go to the columns
                dy = load_lanes_first(gy_base_t + (oy * sgy + ox * sgx)[:, None], ok[:, None] & c_ok[None, :],
                                      TIES_LAST)
                dy = tl.permute(dy.to(ACC), (1, 0))
                if SXB == 2:
                    dy0, dy1 = tl.split(tl.reshape(dy, (BLOCK_C, BLOCK_P, 2)))
                for kx in tl.static_range(KS):
                    kj = tl.load(k_base + (ky * KS + kx) * skc + oy * sky + ox * skx, mask=ok, other=0.0)
                    kj = kj.to(ACC)
                    # kx is a compile-time constant and the tap axis lies in each thread's
                    # registers, so the selects fold away: one FMA a multiply-add
                    if SXB == 2:
                        k0, k1 = tl.split(tl.reshape(kj, (BLOCK_P, 2)))
                        acc += tl.where(kx_i == kx, (dy0 * k0[None, :])[None, :, :], 0.0)
                        acc += tl.where(kx_i == kx, (dy1 * k1[None, :])[None, :, :], 0.0)
                    else:
                        acc += tl.where(kx_i == kx, (dy * kj[None, :])[None, :, :], 0.0)

    # Input pixel i of the window receives tap column kx from source pixel i - (kx - R): shift
    # each column's sums along the pixels (within a warp) and add them; only the middle
    # BLOCK_P - 2R pixels have all their sources in the window.
    i = tl.arange(0, BLOCK_P)
    dx = tl.zeros((BLOCK_C, BLOCK_P), dtype=ACC)
    for kx in tl.static_range(KS):
        column = tl.sum(tl.where(kx_i == kx, acc, 0.0), axis=0)
        source = tl.minimum(tl.maximum(i - (kx - R), 0), BLOCK_P - 1)
        dx += tl.gather(column, tl.broadcast_to(source[None, :], (BLOCK_C, BLOCK_P)), axis=1)
    ix = p0 - R + i
    keep = (i >= R) & (i < BLOCK_P - R) & (ix < W)
    out = dx_ptr + n * sdn + c[:, None] * sdc + (iy * sdy + ix * sdx)[None, :]
    tl.store(out, dx.to(dx_ptr.dtype.element_ty), mask=c_ok[:, None] & keep[None, :])


@triton.jit(do_not_specialize=["H", "W", "CPG"])
def _feature_grad_sums_kernel(
    gy_ptr, k_ptr, z_ptr,  # dy; K (masks); tap sums Z out
    sgn, sgc, sgy, sgx,  # dy strides
    skn, skc, sky, skx,  # K strides
    szn, szy, szx, szj, szc,  # Z strides: image, row, column, tap, channel
    H, W, CPG,  # low-resolution size, channels per group
    S: tl.constexpr,  # scale factor
    SXP: tl.constexpr,  # s rounded up to a power of two
    KS: tl.constexpr,  # kernel size k
    KKP: tl.constexpr,  # k*k rounded up to a power of two
    BLOCK_SY: tl.constexpr,  # sub-pixel rows a step (BLOCK_SY * SXP sub-pixels, the product's inner dimension)
    BLOCK_C: tl.constexpr,  # channels per program (the product's rows)
    EVEN_C: tl.constexpr,  # 1: BLOCK_C divides CPG, so the loads need no channel mask
    PRECISION: tl.constexpr,  # tl.dot input precision (targets.dot_precision)
    ACC: tl.constexpr,  # accumulator dtype
    IDX: tl.constexpr,  # index dtype
):
    KK: tl.constexpr = KS * KS
    T: tl.constexpr = BLOCK_SY * SXP
    pix = tl.program_id(0)  # (n * H + iy) * W + ix
    ix = (pix % W).to(IDX)
    iy = (pix // W % H).to(IDX)
    n = (pix // W // H).to(IDX)
    n_cblocks = tl.cdiv(CPG, BLOCK_C)
    g = tl.program_id(1) // n_cblocks
    cg = (tl.program_id(1) % n_cblocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = channel_mask(cg, CPG, BLOCK_C, EVEN_C)
    c = (g * CPG + cg).to(IDX)
    t = tl.arange(0, T)
    tx = t % SXP
    j = tl.arange(0, KKP)
    gy_at = gy_ptr + n * sgn + (c * sgc)[:, None]  # [C, 1]
    k_at = k_ptr + n * skn + ((g * KK + j) * skc)[None, :]  # [1, KKP]
    acc = tl.zeros((BLOCK_C, KKP), dtype=ACC)
    for sy0 in range(0, S, BLOCK_SY):
        ty = sy0 + t // SXP
        t_ok = (ty < S) & (tx < S)
        oy = iy * S + ty
        ox = ix * S + tx
        dy = tl.load(gy_at + (oy * sgy + ox * sgx)[None, :], mask=c_ok[:, None] & t_ok[None, :], other=0.0)  # [C, T]
        kt = tl.load(k_at + (oy * sky + ox * skx)[:, None], mask=t_ok[:, None] & (j < KK)[None, :], other=0.0)
        acc = dot_add(dy.to(ACC), kt.to(ACC), acc, PRECISION, ACC)
    z_at = z_ptr + n * szn + iy * szy + ix * szx + (j * szj)[None, :] + (c * szc)[:, None]
    tl.store(z_at, acc, mask=c_ok[:, None] & (j < KK)[None, :])


@triton.jit(do_not_specialize=["H", "W", "C"])
def _feature_grad_gather_kernel(
    z_ptr, dx_ptr,  # tap sums Z; features gradient out
    szn, szy, szx, szj, szc,  # Z strides: image, row, column, tap, channel
    sdn, sdc, sdy, sdx,  # features-gradient strides
    H, W, C,  # low-resolution size, channels
    KS: tl.constexpr,  # kernel size k
    BLOCK_P: tl.constexpr,  # pixels (of one row) per program
    BLOCK_C: tl.constexpr,  # channels per program
    ACC: tl.constexpr,  # accumulator dtype
    IDX: tl.constexpr,  # index dtype
):
    KK: tl.constexpr = KS * KS
    R: tl.constexpr = KS // 2
    n_pblocks = tl.cdiv(W, BLOCK_P)
    row = tl.program_id(0) // n_pblocks  # n * H + iy
    iy = (row % H).to(IDX)
    n = (row // H).to(IDX)
    ix = ((tl.program_id(0) % n_pblocks) * BLOCK_P + tl.arange(0, BLOCK_P)).to(IDX)
    c = (tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)).to(IDX)
    c_ok = c < C
    p_ok = ix < W
    dx = tl.zeros((BLOCK_C, BLOCK_P), dtype=ACC)
    for jt in tl.static_range(KK):
        # pixel p takes tap j's sum at source pixel p - d_j
        qy = iy - (jt // KS - R)
        qx = ix - (jt % KS - R)
        # where(), not &: the interpreter mistypes a tensor & a scalar bool
        ok = tl.where((qy >= 0) & (qy < H), p_ok & (qx >= 0) & (qx < W), False)
        z_at = z_ptr + n * szn + qy * szy + jt * szj + (qx * szx)[None, :] + (c * szc)[:, None]
        dx += tl.load(z_at, mask=c_ok[:, None] & ok[None, :], other=0.0)
    out = dx_ptr + n * sdn + (c * sdc)[:, None] + (iy * sdy + ix * sdx)[None, :]
    tl.store(out, dx.to(dx_ptr.dtype.element_ty), mask=c_ok[:, None] & p_ok[None, :])


@triton.jit(do_not_specialize=["TOTAL", "H", "W", "G", "COPIES"])
def _logit_grad_out_kernel(
    sum_ptr, p_ptr, out_ptr,  # summed logits gradient's copies (accumulator dtype); kernel space; logits gradient out
    ssr, ssn, ssg, ssj, ssy, ssx,  # summed-gradient strides, by copy, image, group, tap, row, column
    spn, spc, spy, spx,  # kernel-space strides
    sun, suc, suy, sux,  # output strides
    TOTAL, H, W, G, COPIES,  # output elements, low-resolution size, groups, copies to add up
    KK: tl.constexpr,  # taps k*k
    BLOCK: tl.constexpr,  # output elements per program
    IDX: tl.constexpr,  # index dtype
):
    e = tl.program_id(0).to(IDX) * BLOCK + tl.arange(0, BLOCK)  # (n, channel, y, x), row-major
    ok = e < TOTAL
    x = e % W
    y = e // W % H
    ch = e // (W * H) % (G * KK)
    n = e // (W * H * G * KK)
    at = sum_ptr + n * ssn + ch // KK * ssg + ch % KK * ssj + y * ssy + x * ssx
    d = tl.load(at, mask=ok, other=0.0)
    for _ in range(1, COPIES):  # the pointers step a copy on (no int32 copy * stride product)
        at += ssr
        d += tl.load(at, mask=ok, other=0.0)
    p = tl.load(p_ptr + n * spn + ch * spc + y * spy + x * spx, mask=ok, other=0.0)
    d = tl.where(p != p, float("nan"), d)
    tl.store(out_ptr + n * sun + ch * suc + y * suy + x * sux, d.to(out_ptr.dtype.element_ty), mask=ok)


def _mask_grad(grad_out, features, dk, kernel_size, group_size, scale_factor):
    """dk receives the kernel (mask) gradient [N, G*k*k, s*H, s*W]."""
    n, c, h, w = features.shape
    s = scale_factor
    cpg = c // group_size
    dot = mask_grad_dot_blocks(cpg, s, kernel_size)
    if dot:
        block_sy, block_p, block_c, warps = dot
        _mask_grad_dot_kernel[(n * h * cdiv(w, block_p) * cdiv(s, block_sy), group_size)](
            grad_out, features, dk, *grad_out.stride(), *features.stride(), *dk.stride(),
            h, w, cpg,
            S=s, SXP=pow2(s), KS=kernel_size, WTP=window_taps(kernel_size, block_p),
            BLOCK_SY=block_sy, BLOCK_P=block_p, BLOCK_C=block_c, EVEN_C=even_channels(cpg, block_c),
            PRECISION=dot_precision(grad_out, features), ACC=acc_dtype(features),
            IDX=index_dtype(grad_out, features, dk),
            num_warps=warps, **LAUNCH,
        )
        return
    block_p, sxb = mask_grad_blocks(w, s)
    grid = (n * s * h * cdiv(w, block_p) * cdiv(s, sxb), group_size)
    _mask_grad_kernel[grid](
        grad_out, features, dk, *grad_out.stride(), *features.stride(), *dk.stride(),
        h, w, c // group_size, block_p,
        S=s, SXB=sxb, KS=kernel_size, KKP=taps_padded(kernel_size), BLOCK_P=block_p,
        ACC=acc_dtype(features), IDX=index_dtype(grad_out, features, dk),
        num_warps=1, **LAUNCH,
    )


def _kernel_grad(dk, space, offsets, k_out, dlogits, doffsets, shares, rows, kernel_size, group_size, scale_factor):
    """DLU's chain rule from dK through the sampling and the softmax: k_out receives K, doffsets
    the offsets' gradient, and the logits' gradient is added to dlogits (zeroed) with atomics,
    or, given shares and rows instead (dlogits None), stored there as corner shares for a
    deterministic sum. dlogits holds copies of the accumulator on its first axis (output row oy
    adds into copy oy % copies)."""
    n, _, h, w = offsets.shape
    s = scale_factor
    atomic = shares is None
    if atomic:
        shares = rows = dlogits  # placeholders: the atomic kernel never reads them
    else:
        dlogits = space[None]  # a placeholder: the deterministic kernel never touches dlogits
    block_p = kernel_grad_pixels(w, s)
    grid = (n * s * h * cdiv(w, block_p), group_size)
    tensors = (dk, space, offsets, k_out, dlogits, doffsets)
    _kernel_grad_kernel[grid](
        *tensors, shares, rows, *(st for t in tensors for st in t.stride()),
        h, w,
        S=s, SXP=pow2(s), KS=kernel_size, KKP=taps_padded(kernel_size),
        ATOMIC=int(atomic), COPIES=dlogits.shape[0], BLOCK_P=block_p, TIES_LAST=TIES_LAST,
        ACC=acc_dtype(dk), IDX=index_dtype(*tensors, shares),
        num_warps=4, **LAUNCH,
    )


def _feature_grad(grad_out, masks, dfeatures, kernel_size, group_size, scale_factor):
    n, c, h, w = dfeatures.shape
    cpg = c // group_size
    s = scale_factor
    dot = pixel_product_blocks(cpg, s, kernel_size)
    if dot:
        block_sy, block_c = dot
        kk = kernel_size * kernel_size
        sums = new_output(dfeatures, (n, h, w, kk, c), dtype=accumulator(dfeatures),
                          memory_format=torch.contiguous_format)
        acc, idx = acc_dtype(dfeatures), index_dtype(grad_out, masks, sums, dfeatures)
        _feature_grad_sums_kernel[(n * h * w, group_size * cdiv(cpg, block_c))](
            grad_out, masks, sums, *grad_out.stride(), *masks.stride(), *sums.stride(),
            h, w, cpg,
            S=s, SXP=pow2(s), KS=kernel_size, KKP=taps_padded(kernel_size),
            BLOCK_SY=block_sy, BLOCK_C=block_c, EVEN_C=even_channels(cpg, block_c),
            PRECISION=dot_precision(grad_out, masks), ACC=acc, IDX=idx, num_warps=4, **LAUNCH,
        )
        block_p, block_c = min(32, pow2(w)), min(32, pow2(c))
        _feature_grad_gather_kernel[(n * h * cdiv(w, block_p), cdiv(c, block_c))](
            sums, dfeatures, *sums.stride(), *dfeatures.stride(), h, w, c,
            KS=kernel_size, BLOCK_P=block_p, BLOCK_C=block_c, ACC=acc, IDX=idx, num_warps=4, **LAUNCH,
        )
        return
    block_c, block_p, sxb = feature_grad_blocks(cpg, w, s, kernel_size)
    step = block_p - 2 * (kernel_size // 2)
    grid = (n * h * cdiv(w, step), group_size * cdiv(cpg, block_c))
    _feature_grad_kernel[grid](
        grad_out, masks, dfeatures, *grad_out.stride(), *masks.stride(), *dfeatures.stride(),
        h, w, cpg, step,
        S=s, SXB=sxb, KS=kernel_size, KXP=pow2(kernel_size),
        BLOCK_P=block_p, BLOCK_C=block_c, EVEN_C=even_channels(cpg, block_c), TIES_LAST=TIES_LAST,
        ACC=acc_dtype(dfeatures), IDX=index_dtype(grad_out, masks, dfeatures),
        num_warps=4, **LAUNCH,
    )


def _logit_grad_out(summed, space, out, kernel_size, group_size):
    """out receives the logits' gradient from `summed`, viewed [copies, N, G, k*k, H, W] (either
    summation's buffer, any strides; the copies are added up), NaN where the kernel space is NaN:
    one pass instead of isnan, masked_fill and a dtype copy."""
    _, _, h, w = out.shape
    block = 1024
    _logit_grad_out_kernel[(cdiv(out.numel(), block),)](
        summed, space, out, *summed.stride(), *space.stride(), *out.stride(),
        out.numel(), h, w, group_size, summed.shape[0],
        KK=kernel_size * kernel_size, BLOCK=block, IDX=index_dtype(summed, space, out), **LAUNCH,
    )


def dlu_backward(grad_out, features, kernel_logits, offsets, kernel_size, group_size, scale_factor,
                 deterministic=False):
    """deterministic: sum the logits' gradient with index_add_ (deterministic under
    torch.use_deterministic_algorithms) instead of atomics, at 4*G*k*k*s*s*H*W*N extra floats."""
    n, _, h, w = features.shape
    g, s, kk = group_size, scale_factor, kernel_size * kernel_size
    acc = accumulator(features)
    dfeatures = new_output(features, features.shape)
    doffsets = new_output(offsets, offsets.shape)
    if features.numel() == 0:
        return dfeatures, new_output(kernel_logits, kernel_logits.shape), doffsets
    masks = new_output(features, (n, g * kk, s * h, s * w), dtype=acc)
    dk = torch.empty_like(masks)
    shares = rows = dlogits = None
    if deterministic:
        summed = torch.zeros(n * g * h * w, kk, dtype=acc, device=features.device)
        shares = new_output(summed, (n, g, s * h, s * w, 4, kk))
        rows = new_output(summed, (n, g, s * h, s * w, 4), dtype=torch.int64)
    else:
        # the atomics' accumulator copies, zeroed by the kernel-space launch
        dlogits = new_space(kernel_logits, logit_grad_copies(s))
    space = kernel_space(kernel_logits, g, kernel_size, zeroed=dlogits)
    _mask_grad(grad_out, features, dk, kernel_size, g, s)
    _kernel_grad(dk, space, offsets, masks, dlogits, doffsets, shares, rows, kernel_size, g, s)
    _feature_grad(grad_out, masks, dfeatures, kernel_size, g, s)
    if deterministic:
        summed.index_add_(0, rows.view(-1), shares.view(-1, kk))
        summed = summed.view(1, n, g, h, w, kk).permute(0, 1, 2, 5, 3, 4)
    else:
        summed = dlogits.view(-1, n, g, kk, h, w)
    dlogits_out = new_output(kernel_logits, kernel_logits.shape)
    # The softmax backward is dense in the reference: a group whose kernel space is NaN (a NaN or
    # +inf logit, or all -inf) has a NaN gradient even where no output samples it.
    _logit_grad_out(summed, space, dlogits_out, kernel_size, g)
    return dfeatures, dlogits_out, doffsets


def carafe_backward(grad_out, features, masks, kernel_size, group_size, scale_factor):
    dfeatures = new_output(features, features.shape)
    dmasks = new_output(masks, masks.shape)
    if features.numel() == 0:
        return dfeatures, dmasks
    _mask_grad(grad_out, features, dmasks, kernel_size, group_size, scale_factor)
    _feature_grad(grad_out, masks, dfeatures, kernel_size, group_size, scale_factor)
    return dfeatures, dmasks
