"""Candidate forward: DLU and CARAFE channel-vectorised over an NHWC view of the features.

PROTOTYPE v2
"""
import torch
import triton
import triton.language as tl

from dlu_triton.kernels.kernel_space import kernel_space, plane_stride
from dlu_triton.kernels.launch import acc_dtype, accumulator, cdiv, index_dtype, new_output, output_format, pow2
from dlu_triton.kernels.sampling import sampled_kernel, sampling_point
from dlu_triton.kernels.tiles import channel_mask, even_channels, subpixel_columns
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


@triton.jit
def _tap_row(acc, ky, x_c, k_tap, k_step, iy, ix, H, W, sxy, sxx, f_ok, k_ok, KS: tl.constexpr,
             MASKED: tl.constexpr, FIRST: tl.constexpr, ACC: tl.constexpr):
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
        kj = tl.load(k_row + kx * k_step, mask=k_ok, other=0.0)
        if FIRST and kx == 0:
            acc = kj.to(ACC)[:, :, None] * f.to(ACC)
        else:
            acc += kj.to(ACC)[:, :, None] * f.to(ACC)
    return acc


@triton.jit
def _taps(x_c, k_tap, k_step, iy, ix, H, W, sxy, sxx, f_ok, k_ok, KS: tl.constexpr, MASKED: tl.constexpr,
          ACC: tl.constexpr):
    # The first row starts the accumulator: a zeros constant would give it a layout of its own, and
    # the loads would be moved into that layout at every tap. The rows are a loop (taps within a row
    # unrolled), so that the accumulator is a loop result, which the compiler does not move into the
    # store's layout.
    acc = _tap_row(0.0, 0, x_c, k_tap, k_step, iy, ix, H, W, sxy, sxx, f_ok, k_ok, KS, MASKED, True, ACC)
    for ky in range(1, KS):
        acc = _tap_row(acc, ky, x_c, k_tap, k_step, iy, ix, H, W, sxy, sxx, f_ok, k_ok, KS, MASKED, False, ACC)
    return acc


@triton.jit(do_not_specialize=["H", "W"])
def _nhwc_reassemble_kernel(
    x_ptr, k_ptr, off_ptr, scr_ptr, out_ptr,
    sxn, sxc, sxy, sxx,
    skn, skc, sky, skx,
    son, soc, soy, sox,
    sun, suc, suy, sux,
    H, W, CPG,
    S: tl.constexpr, SXP: tl.constexpr, SY: tl.constexpr, EVEN_S: tl.constexpr,
    KS: tl.constexpr, SAMPLED: tl.constexpr,
    RY: tl.constexpr, NX: tl.constexpr, CB: tl.constexpr, EVEN_C: tl.constexpr, NHWC_OUT: tl.constexpr,
    ACC: tl.constexpr, IDX: tl.constexpr,
):
    KK: tl.constexpr = KS * KS
    R: tl.constexpr = KS // 2
    PIX: tl.constexpr = RY * NX
    SB: tl.constexpr = SY * SXP
    n_s: tl.constexpr = (S + SY - 1) // SY
    n_x = tl.cdiv(W, NX)
    n_y = tl.cdiv(H, RY)
    pid = tl.program_id(0)
    g = tl.program_id(1)
    sy0 = pid % n_s * SY
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
    sy = sy0 + b // SXP
    sx = b % SXP
    if EVEN_S:
        b_ok = tl.full((SB,), 1, tl.int1)
    else:
        b_ok = (sy < S) & (sx < S)
    pt_ok = b_ok[:, None] & p_ok[None, :]  # [SB, PIX]
    if SAMPLED:
        # DLU: the tile's kernels, every tap, once for all channel blocks, into this program's slot
        # of the scratch buffer ([taps, PIX, SB]: a thread's SB values of a tap are one vector)
        slot = scr_ptr + (pid * tl.num_programs(1) + g).to(IDX) * (KK * PIX * SB) + p[None, :] * SB + b[:, None]
        y0, y1, x0, x1, fy, fx, in_y, in_x = sampling_point(
            off_ptr + n * son + (iy * soy + ix * sox)[None, :], g, iy[None, :], ix[None, :],
            (sy * S + sx)[:, None], pt_ok, soc, H, W, S, ACC)
        k_base = k_ptr + n * skn + g * KK * skc
        for t in range(KK):
            kt = sampled_kernel(k_base + t * skc, y0, y1, x0, x1, fy, fx, sky, skx, pt_ok, IDX, ACC)
            tl.store(slot + t * (PIX * SB), kt)
        tl.debug_barrier()  # the slot is read by other threads than wrote it
        k_tap = slot
        k_step = PIX * SB
        k_ok = tl.full((SB, PIX), 1, tl.int1)  # written everywhere, zeros where no point
    else:
        k_tap = k_ptr + n * skn + g * KK * skc + ((iy * S)[None, :] + sy[:, None]) * sky \
            + ((ix * S)[None, :] + sx[:, None]) * skx
        k_step = skc
        k_ok = pt_ok
    interior = (iy0 >= R) & (iy0 + RY + R <= H) & (ix0 >= R) & (ix0 + NX + R <= W)
    x_base = x_ptr + n * sxn
    for c0 in range(0, CPG, CB):
        cg = c0 + tl.arange(0, CB)
        c = (g * CPG + cg).to(IDX)
        c_ok = channel_mask(cg, CPG, CB, EVEN_C)
        x_c = x_base + (c * sxc)[None, None, :]
        f_ok = c_ok[None, None, :]
        if interior:
            acc = _taps(x_c, k_tap, k_step, iy, ix, H, W, sxy, sxx, f_ok, k_ok, KS, False, ACC)
        else:
            acc = _taps(x_c, k_tap, k_step, iy, ix, H, W, sxy, sxx, f_ok & p_ok[None, :, None], k_ok, KS, True, ACC)
        acc = acc.to(out_ptr.dtype.element_ty)
        if NHWC_OUT:
            oy = (iy * S)[None, :] + sy[:, None]
            ox = (ix * S)[None, :] + sx[:, None]
            tl.store(out_ptr + n * sun + (oy * suy + ox * sux)[:, :, None] + (c * suc)[None, None, :], acc,
                     mask=pt_ok[:, :, None] & c_ok[None, None, :])
        else:
            # channels first: (pixel, sub-pixel column) flattened into runs of NX * SXP output columns
            M: tl.constexpr = NX * SXP
            res = tl.reshape(tl.permute(tl.reshape(acc, (SY, SXP, RY, NX, CB)), (4, 0, 2, 3, 1)), (CB, SY, RY, M))
            m_ix, m_sx, ox, m_ok = subpixel_columns(ix0, W, S, SXP, M)
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


def nhwc_blocks(channels_per_group, scale_factor, element_size):
    """(RY, NX, SY, CB): a program's RY x NX source pixels, SY sub-pixel rows, CB channels a step."""
    vec = max(1, 16 // element_size)
    sxp = pow2(scale_factor)
    sy = max(1, min(sxp, 64 // vec // sxp))
    return 2, 8, sy, max(vec, min(8 * vec, pow2(channels_per_group)))


def _launch(features, kernels, offsets, kernel_size, group_size, scale_factor):
    n, c, h, w = features.shape
    s = scale_factor
    out = new_output(features, (n, c, s * h, s * w))
    if out.numel() == 0:
        return out
    x = nhwc(features)
    sampled = offsets is not None
    off = offsets if sampled else kernels
    cpg = c // group_size
    sxp = pow2(s)
    ry, nx, sy, cb = nhwc_blocks(cpg, s, features.element_size())
    grid = (n * cdiv(h, ry) * cdiv(w, nx) * cdiv(s, sy), group_size)
    kk = kernel_size * kernel_size
    scratch = (new_output(x, (grid[0] * grid[1] * kk * ry * nx * sy * sxp,), dtype=accumulator(features),
                          memory_format=torch.contiguous_format)
               if sampled else out)
    _nhwc_reassemble_kernel[grid](
        x, kernels, off, scratch, out,
        *x.stride(), *kernels.stride(), *off.stride(), *out.stride(),
        h, w, cpg,
        S=s, SXP=sxp, SY=sy, EVEN_S=int(sxp == s), KS=kernel_size, SAMPLED=int(sampled),
        RY=ry, NX=nx, CB=cb, EVEN_C=even_channels(cpg, cb),
        NHWC_OUT=int(output_format(features) != torch.contiguous_format),
        ACC=acc_dtype(features), IDX=index_dtype(x, kernels, off, out, scratch),
        num_warps=4, **LAUNCH,
    )
    return out


def dlu_forward(features, kernel_logits, offsets, kernel_size, group_size, scale_factor):
    space = kernel_space(kernel_logits, group_size, kernel_size)
    return _launch(features, space, offsets, kernel_size, group_size, scale_factor)


def carafe_forward(features, masks, kernel_size, group_size, scale_factor):
    return _launch(features, masks, None, kernel_size, group_size, scale_factor)
