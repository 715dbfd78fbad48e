"""Candidate forward: DLU and CARAFE channel-vectorised over an NHWC view of the features.

Maths as in dlu_triton/kernels/forward.py: out[c, o] = sum_j K[g, j, o] * x[c, q(o) + d_j].

Features. The kernel reads the features with channel stride 1 (NHWC): a channels-last input as it
is; any other input goes through one copy first (`nhwc`: `_to_nhwc_kernel`, a tiled transpose
whose loads and stores are both 16-byte vectors along the contiguous axis; a view whose planes are
not one strided run, through torch's copy).

Program: image n, RY x NX source pixels (PIX of them, a block of rows and columns), SY x SXB of
their sub-pixels (SB a pixel; all s x s where they fit), one group; it loops over the group's
channels, CB at a time. A thread holds 16 bytes of channels (4 in float32, 8 in 16 bits) of one
pixel and all SB of its sub-pixels (32 accumulators): each feature vector a tap loads serves SB
outputs per channel from registers, and 32 / SB threads along the channels share a pixel.

Kernels. The prologue writes the tile's kernel values, every tap, once for all channel blocks,
into the program's slot of a scratch buffer, laid out [taps, PIX, SB] so that a thread's SB values
of a tap are one or two 16-byte loads in the loop (L1 or L2 hits): DLU samples them (per point
the sampling point, then at each of its 4 corners the kernel space's k*k probabilities as vectors,
the space laid out taps-last by `space_taps_last`), CARAFE copies them from the masks (zeros where
no point is). Main's forward samples them again for every channel block (its grid's second axis).

Tap loop. The taps of a row are unrolled and the rows are a loop: the features' offsets are
immediates, the accumulator is a loop result, and the compiler leaves its layout alone (a zeros
constant, or a store it could reach, would give the accumulator a layout of its own and move each
tap's loads into it through shared memory). Tiles whose taps all fall inside the image take the
loop without masks, the others the masked one (zero outside the image, as the reference pads).

Stores. Channels-last output: each thread's channels as 16-byte vectors from the accumulator as it
is. Channels-first output: the tile is moved once per channel block into runs of NX * SXB output
columns (through shared memory) and stored as vectors along the rows.

README.md has the model: bytes, FLOPs, what the compiler made of it and the predicted fraction of
the bandwidth floor.
"""
import torch
import triton
import triton.language as tl

from dlu_triton.kernels.kernel_space import plane_stride
from dlu_triton.kernels.launch import (
    acc_dtype,
    accumulator,
    cdiv,
    index_dtype,
    new_output,
    output_format,
    pow2,
    taps_padded,
)
from dlu_triton.kernels.sampling import sampling_point
from dlu_triton.kernels.tiles import channel_mask, even_channels
from dlu_triton.kernels.tuning import LAUNCH


@triton.jit
def _to_nhwc_kernel(x_ptr, y_ptr, sxn, sxc, sxp, HW, C, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
                    IDX: tl.constexpr):
    """[BLOCK_C channels, BLOCK_P pixels] of image n from x (pixel stride sxp) into the contiguous
    NHWC y: loaded with the lanes along the pixels, stored with them along the channels (the
    compiler moves the tile between the two through shared memory)."""
    n_pblocks = tl.cdiv(HW, BLOCK_P)
    pid = tl.program_id(0)
    n = (pid // n_pblocks).to(IDX)
    p = ((pid % n_pblocks) * BLOCK_P + tl.arange(0, BLOCK_P)).to(IDX)
    c = (tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)).to(IDX)
    ok = (c[:, None] < C) & (p[None, :] < HW)
    v = tl.load(x_ptr + n * sxn + c[:, None] * sxc + p[None, :] * sxp, mask=ok)
    tl.store(y_ptr + n * HW * C + p[None, :] * C + c[:, None], v, mask=ok)


@triton.jit(do_not_specialize=["HW", "G", "BLOCKS"])
def _space_taps_last_kernel(l_ptr, p_ptr, sln, slc, slp, HW, G, BLOCKS, KK: tl.constexpr, KKP: tl.constexpr,
                            BLOCK: tl.constexpr, ACC: tl.constexpr, IDX: tl.constexpr):
    """Main's kernel-space softmax (kernel_space.py) for [BLOCK pixels, KKP taps] of one image and
    group, written [N, H, W, G, KKP] with zeros at the padding taps."""
    pid = tl.program_id(0)
    ng = pid // BLOCKS
    n = (ng // G).to(IDX)
    g = ng % G
    p = ((pid % BLOCKS) * BLOCK + tl.arange(0, BLOCK)).to(IDX)[:, None]
    j = tl.arange(0, KKP)[None, :]
    v = tl.load(l_ptr + n * sln + (g * KK + j).to(IDX) * slc + p * slp, mask=(p < HW) & (j < KK), other=0.0).to(ACC)
    # padding taps count as -inf, masked pixels as zeros: only a real logit makes a NaN (as torch.softmax)
    v = tl.where(j < KK, v, float("-inf"))
    e = tl.where(j < KK, tl.exp(v - tl.max(v, axis=1)[:, None]), 0.0)
    tl.store(p_ptr + ((n * HW + p) * G + g) * KKP + j, e / tl.sum(e, axis=1)[:, None], mask=p < HW)


@triton.jit
def _tile_kernels(slot, k_base, off_base, g, iy0, ix0, sy0, sx0, H, W, skc, sky, skx, soc, soy, sox,
                  S: tl.constexpr, KS: tl.constexpr, RY: tl.constexpr, NX: tl.constexpr, SY: tl.constexpr,
                  SXB: tl.constexpr, SAMPLED: tl.constexpr, ACC: tl.constexpr, IDX: tl.constexpr):
    """The kernel values of a tile's points, every tap, into `slot` as [taps, PIX, SB]. DLU
    (SAMPLED): K = sum_c w_c * P_c over the 4 corners of each point's sampling point, each corner's
    k*k probabilities one run of the taps-last space (whole vectors: the corners are clamped into
    the image, so no load needs a mask). CARAFE: the masks' values, zeros where no point is."""
    KK: tl.constexpr = KS * KS
    KKP: tl.constexpr = triton.next_power_of_2(KK)
    PTS: tl.constexpr = RY * NX * SY * SXB
    CHUNK: tl.constexpr = min(PTS, 1024 // KKP)  # points a step: a [CHUNK, KKP] tile is 8 values a thread
    j = tl.arange(0, KKP)[None, :]
    for c0 in range(0, PTS, CHUNK):
        pt = c0 + tl.arange(0, CHUNK)  # p * SB + b, the slot's order within a tap
        pp = pt // (SY * SXB)
        pb = pt % (SY * SXB)
        iy = iy0 + pp // NX
        ix = ix0 + pp % NX
        sy = sy0 + pb // SXB
        sx = sx0 + pb % SXB
        ok = (iy < H) & (ix < W) & (sy < S) & (sx < S)
        if SAMPLED:
            y0, y1, x0, x1, fy, fx, in_y, in_x = sampling_point(off_base + iy * soy + ix * sox, g, iy, ix,
                                                                sy * S + sx, ok, soc, H, W, S, ACC)
            at = k_base + g * KKP + j
            y0 = (y0.to(IDX) * sky)[:, None]
            y1 = (y1.to(IDX) * sky)[:, None]
            x0 = (x0.to(IDX) * skx)[:, None]
            x1 = (x1.to(IDX) * skx)[:, None]
            fy = fy[:, None]
            fx = fx[:, None]
            k = ((1.0 - fy) * (1.0 - fx)) * tl.load(at + y0 + x0).to(ACC)
            k += ((1.0 - fy) * fx) * tl.load(at + y0 + x1).to(ACC)
            k += (fy * (1.0 - fx)) * tl.load(at + y1 + x0).to(ACC)
            k += (fy * fx) * tl.load(at + y1 + x1).to(ACC)
        else:
            at = ((iy * S + sy).to(IDX) * sky + (ix * S + sx).to(IDX) * skx)[:, None] + (g * KK + j).to(IDX) * skc
            k = tl.load(k_base + at, mask=ok[:, None] & (j < KK), other=0.0).to(ACC)
        tl.store(slot + j * PTS + pt[:, None], k, mask=j < KK)


@triton.jit
def _tap_kernels(k_tap, SB: tl.constexpr):
    """A tap's kernel values of the tile from its slot, [SB, PIX] (k_tap: each pixel's run): loaded
    in runs of at most 4 sub-pixels, each a load small enough that the compiler makes it straight in
    the accumulator's layout (a thread's values one vector), and joined in registers."""
    if SB <= 4:
        k = tl.load(k_tap[None, :] + tl.arange(0, SB)[:, None])
    else:  # SB = 8
        r = tl.arange(0, 4)[:, None]
        k = tl.join(tl.load(k_tap[None, :] + r), tl.load(k_tap[None, :] + r + 4))  # [4, PIX, 2]
        k = tl.reshape(tl.permute(k, (2, 0, 1)), (8, k_tap.shape[0]))
    return k


@triton.jit
def _tap_row(acc, ky, x_c, k_tap, iy, ix, H, W, sxy, f_ok, sxx: tl.constexpr, KS: tl.constexpr,
             SB: tl.constexpr, MASKED: tl.constexpr, FIRST: tl.constexpr, ACC: tl.constexpr):
    """acc plus the products of tap row ky (KS taps) for one channel block, [SB, PIX, CB]; with
    FIRST the row's products alone (acc is ignored). x_c: the features' [1, 1, CB] channels;
    k_tap: the slot's runs of tap 0."""
    PIX: tl.constexpr = k_tap.shape[0]
    ty = iy + (ky - KS // 2)
    # [1, PIX, CB]: loaded 3-D so that its layout (a thread's channels one vector, the lanes along
    # the channels and pixels) is the accumulator's, broadcast along the sub-pixels in registers
    x_row = x_c + ((ty * sxy + (ix - KS // 2) * sxx)[None, :, None])
    k_row = k_tap + ky * KS * PIX * SB
    if MASKED:
        row_ok = f_ok & ((ty >= 0) & (ty < H))[None, :, None]
    for kx in tl.static_range(KS):
        if MASKED:
            tx = ix + (kx - KS // 2)
            f = tl.load(x_row + kx * sxx, mask=row_ok & ((tx >= 0) & (tx < W))[None, :, None], other=0.0)
        else:
            f = tl.load(x_row + kx * sxx, mask=f_ok, other=0.0)
        kj = _tap_kernels(k_row + kx * PIX * SB, SB)
        if FIRST and kx == 0:
            acc = kj.to(ACC)[:, :, None] * f.to(ACC)
        else:
            acc += kj.to(ACC)[:, :, None] * f.to(ACC)
    return acc


@triton.jit
def _taps(x_c, k_tap, iy, ix, H, W, sxy, f_ok, sxx: tl.constexpr, KS: tl.constexpr, SB: tl.constexpr,
          MASKED: tl.constexpr, ACC: tl.constexpr):
    """One channel block's accumulator over every tap. The first row starts it (a zeros constant
    would give it a layout of its own); the other rows are a loop, so that it is a loop result,
    which the layout pass does not move into the store's layout."""
    acc = _tap_row(0.0, 0, x_c, k_tap, iy, ix, H, W, sxy, f_ok, sxx, KS, SB, MASKED, True, ACC)
    for ky in range(1, KS):
        acc = _tap_row(acc, ky, x_c, k_tap, iy, ix, H, W, sxy, f_ok, sxx, KS, SB, MASKED, False, ACC)
    return acc


@triton.jit(do_not_specialize=["H", "W"])
def _nhwc_reassemble_kernel(
    x_ptr, k_ptr, off_ptr, scr_ptr, out_ptr,  # NHWC features; kernel space (DLU) or masks; offsets; scratch; output
    sxn, sxc, sxy,  # features strides (the pixel stride is sxx)
    skn, skc, sky, skx,  # kernel space / masks strides: image, tap, row, column
    son, soc, soy, sox,  # offsets strides
    sun, suc, suy, sux,  # output strides
    H, W, CPG,  # low-resolution size, channels per group
    S: tl.constexpr, SY: tl.constexpr, SXB: tl.constexpr,  # scale factor, a program's sub-pixel rows and columns
    KS: tl.constexpr, SAMPLED: tl.constexpr,  # kernel size; 1: DLU, 0: CARAFE
    RY: tl.constexpr, NX: tl.constexpr, EVEN_W: tl.constexpr,  # a program's source rows and columns; NX divides W
    CB: tl.constexpr, EVEN_C: tl.constexpr,  # channels a step; CB divides CPG
    NHWC_OUT: tl.constexpr,  # 1: channels-last output
    sxx: tl.constexpr,  # features pixel stride (a constant, so that the taps' offsets are immediates)
    ACC: tl.constexpr, IDX: tl.constexpr,  # accumulator dtype; index dtype (int64 only for huge tensors)
):
    KK: tl.constexpr = KS * KS
    R: tl.constexpr = KS // 2
    PIX: tl.constexpr = RY * NX
    SB: tl.constexpr = SY * SXB
    n_sx: tl.constexpr = triton.next_power_of_2(S) // SXB
    n_s: tl.constexpr = (S + SY - 1) // SY * n_sx
    n_x = tl.cdiv(W, NX)
    n_y = tl.cdiv(H, RY)
    pid = tl.program_id(0)  # ((n * n_y + row block) * n_x + column block) * n_s + sub-pixel block
    g = tl.program_id(1)
    sy0 = pid % n_s // n_sx * SY
    sx0 = pid % n_sx * SXB
    t = pid // n_s
    ix0 = (t % n_x * NX).to(IDX)
    t = t // n_x
    iy0 = (t % n_y * RY).to(IDX)
    n = (t // n_y).to(IDX)
    p = tl.arange(0, PIX)
    iy = iy0 + p // NX
    ix = ix0 + p % NX
    p_ok = (iy < H) & (ix < W)

    slot = scr_ptr + (pid * tl.num_programs(1) + g).to(IDX) * (KK * PIX * SB)
    _tile_kernels(slot, k_ptr + n * skn, off_ptr + n * son, g, iy0, ix0, sy0, sx0, H, W, skc, sky, skx,
                  soc, soy, sox, S, KS, RY, NX, SY, SXB, SAMPLED, ACC, IDX)
    tl.debug_barrier()  # the slot is read by other threads than wrote it
    k_tap = slot + p * SB

    interior = (iy0 >= R) & (iy0 + RY + R <= H) & (ix0 >= R) & (ix0 + NX + R <= W)
    x_base = x_ptr + n * sxn
    for c0 in range(0, CPG, CB):
        cg = c0 + tl.arange(0, CB)
        c = (g * CPG + cg).to(IDX)
        c_ok = channel_mask(cg, CPG, CB, EVEN_C)
        x_c = x_base + (c * sxc)[None, None, :]
        if interior:
            acc = _taps(x_c, k_tap, iy, ix, H, W, sxy, c_ok[None, None, :], sxx, KS, SB, False, ACC)
        else:
            acc = _taps(x_c, k_tap, iy, ix, H, W, sxy, c_ok[None, None, :] & p_ok[None, :, None], sxx, KS, SB,
                        True, ACC)
        acc = acc.to(out_ptr.dtype.element_ty)
        if NHWC_OUT:
            b = tl.arange(0, SB)
            sy = sy0 + b // SXB
            sx = sx0 + b % SXB
            ok = ((sy < S) & (sx < S))[:, None] & p_ok[None, :]
            o_pix = out_ptr + n * sun + (iy * S * suy + ix * S * sux)[None, :, None] + (c * suc)[None, None, :]
            tl.store(o_pix + (sy * suy + sx * sux)[:, None, None], acc, mask=ok[:, :, None] & c_ok[None, None, :])
        else:
            # channels first: (pixel, sub-pixel column) flattened into runs of NX * SXB output columns
            M: tl.constexpr = NX * SXB
            res = tl.reshape(tl.permute(tl.reshape(acc, (SY, SXB, RY, NX, CB)), (4, 0, 2, 3, 1)), (CB, SY, RY, M))
            m = tl.arange(0, M)
            m_sx = sx0 + m % SXB
            if SXB == S:  # one run the compiler sees contiguous
                ox = ix0 * S + m
            else:
                ox = (ix0 + m // SXB) * S + m_sx
            # a mask along the columns would split a thread's stores at each pixel: only where needed
            m_ok = tl.full((M,), 1, tl.int1)
            if triton.next_power_of_2(S) != S:
                m_ok = m_sx < S
            if not EVEN_W:
                m_ok = m_ok & (ix0 + m // SXB < W)
            ry = tl.arange(0, RY)
            sy = sy0 + tl.arange(0, SY)
            oy = (iy0 + ry)[None, :] * S + sy[:, None]  # [SY, RY]
            ok = ((sy < S)[:, None] & (iy0 + ry < H)[None, :])[:, :, None] & m_ok[None, None, :]
            tl.store(out_ptr + n * sun + (c * suc)[:, None, None, None]
                     + ((oy * suy)[:, :, None] + (ox * sux)[None, None, :])[None, :, :, :], res,
                     mask=c_ok[:, None, None, None] & ok[None, :, :, :])


def nhwc(features):
    """The features with channel stride 1: as they are when they have it (channels_last), else an
    NHWC copy (the candidate's transpose; torch's copy for a view whose planes are not one strided
    run)."""
    if features.stride(1) == 1 or features.shape[1] == 1:
        return features
    sp = plane_stride(features)
    if sp is None:
        return features.contiguous(memory_format=torch.channels_last)
    n, c, h, w = features.shape
    y = new_output(features, (n, c, h, w), memory_format=torch.channels_last)
    if y.numel():
        bc, bp = 64, 64
        _to_nhwc_kernel[(n * cdiv(h * w, bp), cdiv(c, bc))](
            features, y, features.stride(0), features.stride(1), sp, h * w, c,
            BLOCK_C=bc, BLOCK_P=bp, IDX=index_dtype(features, y), num_warps=4, **LAUNCH)
    return y


def space_taps_last(logits, group_size, kernel_size):
    """DLU's kernel space (main's kernel_space: the softmax of each pixel's k*k logits per group, in
    the accumulator's dtype) laid out [N, H, W, G, KKP], k*k padded to a power of two with zeros, so
    that a corner's probabilities of every tap are whole vectors."""
    slp = plane_stride(logits)
    if slp is None:  # a spatially strided view: copy the small logits once
        logits = logits.contiguous()
        slp = plane_stride(logits)
    n, _, h, w = logits.shape
    kkp = taps_padded(kernel_size)
    space = new_output(logits, (n, h, w, group_size, kkp), dtype=accumulator(logits),
                       memory_format=torch.contiguous_format)
    if space.numel():
        block = min(pow2(h * w), max(16, 4096 // kkp))
        blocks = cdiv(h * w, block)
        _space_taps_last_kernel[(n * group_size * blocks,)](
            logits, space, logits.stride(0), logits.stride(1), slp, h * w, group_size, blocks,
            KK=kernel_size * kernel_size, KKP=kkp, BLOCK=block, ACC=acc_dtype(logits),
            IDX=index_dtype(logits, space), num_warps=4, **LAUNCH)
    return space


def nhwc_blocks(channels_per_group, scale_factor, element_size):
    """(RY, NX, SY, SXB, CB): a program's RY x NX source pixels and SY x SXB of their sub-pixels,
    CB channels a step. With 4 warps the lanes of a [PIX, CB] feature tile go 8 along the channels
    (a thread's 16 bytes each) and 4 along the pixels, the warps along the pixels: 2 x 8 pixels
    cover it once. A thread holds 32 accumulators: 16 bytes of channels x SB sub-pixels."""
    vec = 16 // min(4, element_size)  # float64 (the interpreter only) tiled as float32
    sxp = pow2(scale_factor)
    sub = 32 // vec
    sxb = min(sxp, sub)
    return 2, 8, max(1, min(sxp, sub // sxb)), sxb, max(vec, min(8 * vec, pow2(channels_per_group)))


def _launch(features, kernels, offsets, kernel_size, group_size, scale_factor):
    """kernels: DLU's taps-last kernel space (with offsets) or CARAFE's masks (offsets None)."""
    n, c, h, w = features.shape
    s = scale_factor
    out = new_output(features, (n, c, s * h, s * w))
    if out.numel() == 0:
        return out
    x = nhwc(features)
    sampled = offsets is not None
    off = offsets if sampled else kernels  # CARAFE never reads it
    # DLU's space [N, H, W, G, KKP] as (image, tap, row, column) strides; CARAFE's masks as they are
    k_strides = (kernels.stride(0), 1, kernels.stride(1), kernels.stride(2)) if sampled else kernels.stride()
    cpg = c // group_size
    ry, nx, sy, sxb, cb = nhwc_blocks(cpg, s, features.element_size())
    grid = (n * cdiv(h, ry) * cdiv(w, nx) * cdiv(s, sy) * (pow2(s) // sxb), group_size)
    scratch = new_output(x, (grid[0] * grid[1] * kernel_size**2 * ry * nx * sy * sxb,), dtype=accumulator(features),
                         memory_format=torch.contiguous_format)
    _nhwc_reassemble_kernel[grid](
        x, kernels, off, scratch, out,
        *x.stride()[:3], *k_strides, *off.stride(), *out.stride(),
        h, w, cpg,
        S=s, SY=sy, SXB=sxb, KS=kernel_size, SAMPLED=int(sampled),
        RY=ry, NX=nx, EVEN_W=int(w % nx == 0), CB=cb, EVEN_C=even_channels(cpg, cb),
        NHWC_OUT=int(output_format(features) != torch.contiguous_format), sxx=x.stride(3),
        ACC=acc_dtype(features), IDX=index_dtype(x, kernels, off, out, scratch),
        num_warps=4, **LAUNCH,
    )
    return out


def dlu_forward(features, kernel_logits, offsets, kernel_size, group_size, scale_factor):
    space = space_taps_last(kernel_logits, group_size, kernel_size)
    return _launch(features, space, offsets, kernel_size, group_size, scale_factor)


def carafe_forward(features, masks, kernel_size, group_size, scale_factor):
    return _launch(features, masks, None, kernel_size, group_size, scale_factor)
