"""Candidate forward: DLU and CARAFE channel-vectorised over an NHWC view of the features.

PROTOTYPE v2
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


@triton.jit(do_not_specialize=["HW"])
def _to_nhwc_kernel(x_ptr, y_ptr, sxn, sxc, sxp, HW, C, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
                    IDX: tl.constexpr):
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
    """main's kernel-space softmax (kernel_space.py), written [N, H, W, G, KKP] with zero padding taps."""
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
def _k_run(k_tap, b, sy0, sx0, k_sy, k_sx, p_ok, S: tl.constexpr, SXB: tl.constexpr, EVEN_S: tl.constexpr,
           SAMPLED: tl.constexpr, MASKED: tl.constexpr):
    """A tap's kernel values at sub-pixels b of the tile's pixels, [len(b), PIX]: DLU's from its
    scratch slot, where they are stored in sub-pixel order for every point; CARAFE's from the masks at
    the sub-pixels' rows and columns, where they exist (MASKED: a tile at the border)."""
    if SAMPLED:
        k = tl.load(k_tap[None, :] + b[:, None])
    else:
        sy = sy0 + b // SXB
        sx = sx0 + b % SXB
        at = k_tap[None, :] + (sy * k_sy + sx * k_sx)[:, None]
        if EVEN_S:
            ok = tl.full((b.shape[0], 1), 1, tl.int1)
        else:
            ok = ((sy < S) & (sx < S))[:, None]
        if MASKED:
            ok = ok & p_ok[None, :]
        k = tl.load(at, mask=ok, other=0.0)
    return k


@triton.jit
def _k_tap(k_tap, sy0, sx0, k_sy, k_sx, p_ok, SB: tl.constexpr, S: tl.constexpr, SXB: tl.constexpr,
           EVEN_S: tl.constexpr, SAMPLED: tl.constexpr, MASKED: tl.constexpr):
    """A tap's kernel values of the tile, [SB, PIX]: loaded in runs of 4 sub-pixels (each load small
    enough that the compiler loads it straight in the accumulator's layout, a thread's 4 values one
    vector) and joined in registers."""
    if SB <= 4:
        k = _k_run(k_tap, tl.arange(0, SB), sy0, sx0, k_sy, k_sx, p_ok, S, SXB, EVEN_S, SAMPLED, MASKED)
    else:
        r = tl.arange(0, 4)  # SB = 8: two runs, a thread's sub-pixels 0-3 and 4-7
        k0 = _k_run(k_tap, r, sy0, sx0, k_sy, k_sx, p_ok, S, SXB, EVEN_S, SAMPLED, MASKED)
        k1 = _k_run(k_tap, r + 4, sy0, sx0, k_sy, k_sx, p_ok, S, SXB, EVEN_S, SAMPLED, MASKED)
        k = tl.reshape(tl.permute(tl.join(k0, k1), (2, 0, 1)), (8, k0.shape[1]))
    return k


@triton.jit
def _tap_row(acc, ky, x_c, k_tap, k_step, sy0, sx0, k_sy, k_sx, iy, ix, H, W, sxy, sxx, f_ok, p_ok,
             KS: tl.constexpr, SB: tl.constexpr, S: tl.constexpr, SXB: tl.constexpr, EVEN_S: tl.constexpr,
             SAMPLED: tl.constexpr, MASKED: tl.constexpr, FIRST: tl.constexpr, ACC: tl.constexpr):
    """acc plus the products of tap row ky (KS taps) for one channel block, [SB, PIX, CB]; with
    FIRST, the row's products alone (acc is ignored)."""
    ty = iy + (ky - KS // 2)
    x_row = x_c + ((ty * sxy + ix * sxx)[None, :, None])
    k_row = k_tap + ky * KS * k_step
    if MASKED:
        row_ok = f_ok & ((ty >= 0) & (ty < H))[None, :, None]
    for kx in tl.static_range(KS):
        if MASKED:
            tx = ix + (kx - KS // 2)
            f = tl.load(x_row + (kx - KS // 2) * sxx, mask=row_ok & ((tx >= 0) & (tx < W))[None, :, None], other=0.0)
        else:
            f = tl.load(x_row + (kx - KS // 2) * sxx, mask=f_ok, other=0.0)
        kj = _k_tap(k_row + kx * k_step, sy0, sx0, k_sy, k_sx, p_ok, SB, S, SXB, EVEN_S, SAMPLED, MASKED)
        if FIRST and kx == 0:
            acc = kj.to(ACC)[:, :, None] * f.to(ACC)
        else:
            acc += kj.to(ACC)[:, :, None] * f.to(ACC)
    return acc


@triton.jit
def _taps(x_c, k_tap, k_step, sy0, sx0, k_sy, k_sx, iy, ix, H, W, sxy, sxx, f_ok, p_ok,
          KS: tl.constexpr, SB: tl.constexpr, S: tl.constexpr, SXB: tl.constexpr, EVEN_S: tl.constexpr,
          SAMPLED: tl.constexpr, MASKED: tl.constexpr, ACC: tl.constexpr):
    # The first row starts the accumulator: a zeros constant would give it a layout of its own, and
    # the loads would be moved into that layout at every tap. The rows are a loop (taps within a row
    # unrolled), so that the accumulator is a loop result, which the compiler does not move into the
    # store's layout.
    acc = _tap_row(0.0, 0, x_c, k_tap, k_step, sy0, sx0, k_sy, k_sx, iy, ix, H, W, sxy, sxx, f_ok, p_ok,
                   KS, SB, S, SXB, EVEN_S, SAMPLED, MASKED, True, ACC)
    for ky in range(1, KS):
        acc = _tap_row(acc, ky, x_c, k_tap, k_step, sy0, sx0, k_sy, k_sx, iy, ix, H, W, sxy, sxx, f_ok, p_ok,
                       KS, SB, S, SXB, EVEN_S, SAMPLED, MASKED, False, ACC)
    return acc


@triton.jit
def _sample_kernels(slot, k_base, off_base, g, iy0, ix0, sy0, sx0, H, W, sky, skx, soc, soy, sox,
                    S: tl.constexpr, KS: tl.constexpr, RY: tl.constexpr, NX: tl.constexpr, SY: tl.constexpr,
                    SXB: tl.constexpr, ACC: tl.constexpr, IDX: tl.constexpr):
    """DLU's kernels of a tile's points, every tap, stored into `slot` as [taps, PIX, SB]: per point
    the sampling point, then at each of its 4 corners the kernel space's k*k probabilities as vectors
    (taps are contiguous in the space, `space_taps_last`), K = sum_c w_c * P_c over [points, taps]."""
    KK: tl.constexpr = KS * KS
    KKP: tl.constexpr = triton.next_power_of_2(KK)
    PTS: tl.constexpr = RY * NX * SY * SXB
    CHUNK: tl.constexpr = min(PTS, 1024 // KKP)  # points a step: a corner tile is 8 values a thread
    j = tl.arange(0, KKP)[None, :]
    at = k_base + g * KKP + j
    for c0 in range(0, PTS, CHUNK):
        pt = c0 + tl.arange(0, CHUNK)  # p * SB + b: the slot's order within a tap
        pp = pt // (SY * SXB)
        pb = pt % (SY * SXB)
        iy = iy0 + pp // NX
        ix = ix0 + pp % NX
        sy = sy0 + pb // SXB
        sx = sx0 + pb % SXB
        ok = (iy < H) & (ix < W) & (sy < S) & (sx < S)
        y0, y1, x0, x1, fy, fx, in_y, in_x = sampling_point(off_base + iy * soy + ix * sox, g, iy, ix, sy * S + sx,
                                                            ok, soc, H, W, S, ACC)
        # corners are clamped into the image, so every point's loads are in bounds: no masks, whole vectors
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
        tl.store(slot + j * PTS + pt[:, None], k, mask=j < KK)


@triton.jit(do_not_specialize=["H", "W"])
def _nhwc_reassemble_kernel(
    x_ptr, k_ptr, off_ptr, scr_ptr, out_ptr,
    sxn, sxc, sxy,
    skn, skc, sky, skx,
    son, soc, soy, sox,
    sun, suc, suy, sux,
    H, W, CPG,
    S: tl.constexpr, SXP: tl.constexpr, SY: tl.constexpr, SXB: tl.constexpr, EVEN_S: tl.constexpr,
    KS: tl.constexpr, SAMPLED: tl.constexpr,
    RY: tl.constexpr, NX: tl.constexpr, CB: tl.constexpr, EVEN_C: tl.constexpr, NHWC_OUT: tl.constexpr,
    sxx: tl.constexpr, ACC: tl.constexpr, IDX: tl.constexpr,
):
    KK: tl.constexpr = KS * KS
    R: tl.constexpr = KS // 2
    PIX: tl.constexpr = RY * NX
    SB: tl.constexpr = SY * SXB
    n_sx: tl.constexpr = SXP // SXB
    n_s: tl.constexpr = (S + SY - 1) // SY * n_sx
    n_x = tl.cdiv(W, NX)
    n_y = tl.cdiv(H, RY)
    pid = tl.program_id(0)
    g = tl.program_id(1)
    sy0 = pid % n_s // n_sx * SY
    sx0 = pid % n_sx * SXB
    t = pid // n_s
    ix0 = t % n_x * NX
    t = t // n_x
    iy0 = t % n_y * RY
    n = (t // n_y).to(IDX)
    p = tl.arange(0, PIX)
    iy = iy0 + p // NX
    ix = ix0 + p % NX
    p_ok = (iy < H) & (ix < W)
    b = tl.arange(0, SB)
    sy = sy0 + b // SXB
    sx = sx0 + b % SXB
    pt_ok = ((sy < S) & (sx < S))[:, None] & p_ok[None, :]  # [SB, PIX]
    if SAMPLED:
        # DLU: the tile's kernels, every tap, once for all channel blocks, into this program's slot of
        # the scratch buffer, [taps, PIX, SB], so that a thread's sub-pixels of a tap are one vector
        slot = scr_ptr + (pid * tl.num_programs(1) + g).to(IDX) * (KK * PIX * SB)
        _sample_kernels(slot, k_ptr + n * skn, off_ptr + n * son, g, iy0, ix0, sy0, sx0, H, W, sky, skx,
                        soc, soy, sox, S, KS, RY, NX, SY, SXB, ACC, IDX)
        tl.debug_barrier()  # the slot is read by other threads than wrote it
        k_tap = slot + p * SB
        k_step = PIX * SB
        k_sy = SXB
        k_sx = 1
        k_sy0 = 0
        k_sx0 = 0
    else:
        k_tap = k_ptr + n * skn + g * KK * skc + (iy * S) * sky + (ix * S) * skx
        k_step = skc
        k_sy = sky
        k_sx = skx
        k_sy0 = sy0
        k_sx0 = sx0
    interior = (iy0 >= R) & (iy0 + RY + R <= H) & (ix0 >= R) & (ix0 + NX + R <= W)
    x_base = x_ptr + n * sxn
    for c0 in range(0, CPG, CB):
        cg = c0 + tl.arange(0, CB)
        c = (g * CPG + cg).to(IDX)
        c_ok = channel_mask(cg, CPG, CB, EVEN_C)
        x_c = x_base + (c * sxc)[None, None, :]
        f_ok = c_ok[None, None, :]
        if interior:
            acc = _taps(x_c, k_tap, k_step, k_sy0, k_sx0, k_sy, k_sx, iy, ix, H, W, sxy, sxx, f_ok, p_ok,
                        KS, SB, S, SXB, EVEN_S, SAMPLED, False, ACC)
        else:
            acc = _taps(x_c, k_tap, k_step, k_sy0, k_sx0, k_sy, k_sx, iy, ix, H, W, sxy, sxx,
                        f_ok & p_ok[None, :, None], p_ok, KS, SB, S, SXB, EVEN_S, SAMPLED, True, ACC)
        acc = acc.to(out_ptr.dtype.element_ty)
        if NHWC_OUT:
            oy = (iy * S)[None, :] + sy[:, None]
            ox = (ix * S)[None, :] + sx[:, None]
            tl.store(out_ptr + n * sun + (oy * suy + ox * sux)[:, :, None] + (c * suc)[None, None, :], acc,
                     mask=pt_ok[:, :, None] & c_ok[None, None, :])
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
            m_ok = (ix0 + m // SXB < W) & (m_sx < S)
            ry = tl.arange(0, RY)
            sy1 = sy0 + tl.arange(0, SY)
            oy = (iy0 + ry)[None, :] * S + sy1[:, None]  # [SY, RY]
            o_ok = ((sy1 < S)[:, None] & (iy0 + ry < H)[None, :])[:, :, None] & m_ok[None, None, :]
            tl.store(out_ptr + n * sun + (c * suc)[:, None, None, None]
                     + ((oy * suy)[:, :, None] + (ox * sux)[None, None, :])[None, :, :, :], res,
                     mask=c_ok[:, None, None, None] & o_ok[None, :, :, :])


def nhwc(features):
    """features with channel stride 1: as it is when it has one (channels_last), else an NHWC copy."""
    if features.stride(1) == 1 or features.shape[1] == 1:
        return features
    sp = plane_stride(features)
    if sp is None:
        return features.contiguous(memory_format=torch.channels_last)
    n, c, h, w = features.shape
    y = torch.empty((n, c, h, w), dtype=features.dtype, device=features.device, memory_format=torch.channels_last)
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
    """(RY, NX, SY, SXB, CB): a program's RY x NX source pixels, SY x SXB sub-pixels, CB channels a step."""
    vec = 16 // min(4, element_size)  # float64 (the interpreter only) tiled as float32
    sxp = pow2(scale_factor)
    sub = max(1, 32 // vec)  # sub-pixels a thread: 32 accumulators
    sxb = min(sxp, sub)
    return 2, 8, max(1, min(sxp, sub // sxb)), sxb, max(vec, min(8 * vec, pow2(channels_per_group)))


def _launch(features, kernels, offsets, kernel_size, group_size, scale_factor):
    n, c, h, w = features.shape
    s = scale_factor
    out = new_output(features, (n, c, s * h, s * w))
    if out.numel() == 0:
        return out
    x = nhwc(features)
    sampled = offsets is not None
    off = offsets if sampled else kernels
    # DLU's space [N, H, W, G, KKP] as (image, tap, row, column) strides; CARAFE's masks as they are
    k_strides = (kernels.stride(0), 1, kernels.stride(1), kernels.stride(2)) if sampled else kernels.stride()
    cpg = c // group_size
    sxp = pow2(s)
    ry, nx, sy, sxb, cb = nhwc_blocks(cpg, s, features.element_size())
    grid = (n * cdiv(h, ry) * cdiv(w, nx) * cdiv(s, sy) * (sxp // sxb), group_size)
    kk = kernel_size * kernel_size
    scratch = (new_output(x, (grid[0] * grid[1] * kk * ry * nx * sy * sxb,), dtype=accumulator(features),
                          memory_format=torch.contiguous_format)
               if sampled else out)
    _nhwc_reassemble_kernel[grid](
        x, kernels, off, scratch, out,
        *x.stride()[:3], *k_strides, *off.stride(), *out.stride(),
        h, w, cpg,
        S=s, SXP=sxp, SY=sy, SXB=sxb, EVEN_S=int(sxp == s), KS=kernel_size, SAMPLED=int(sampled),
        RY=ry, NX=nx, CB=cb, EVEN_C=even_channels(cpg, cb),
        NHWC_OUT=int(output_format(features) != torch.contiguous_format),
        sxx=x.stride(3), ACC=acc_dtype(features), IDX=index_dtype(x, kernels, off, out, scratch),
        num_warps=4, **LAUNCH,
    )
    return out


def dlu_forward(features, kernel_logits, offsets, kernel_size, group_size, scale_factor):
    space = space_taps_last(kernel_logits, group_size, kernel_size)
    return _launch(features, space, offsets, kernel_size, group_size, scale_factor)


def carafe_forward(features, masks, kernel_size, group_size, scale_factor):
    return _launch(features, masks, None, kernel_size, group_size, scale_factor)
