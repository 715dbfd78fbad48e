"""Index and tile helpers the kernels share (@triton.jit device functions, inlined into each
kernel), with the host-side values their constexprs take."""
import triton
import triton.language as tl

from .launch import pow2


@triton.jit
def pixel_tile(pid, H, W, S: tl.constexpr, SXP: tl.constexpr, BLOCK_SY: tl.constexpr, BLOCK_P: tl.constexpr,
               IDX: tl.constexpr):
    """A product program's source pixels and output columns. pid = ((n*H + iy) * ceil(W / BLOCK_P)
    + pixel block) * ceil(s / BLOCK_SY) + block of sub-pixel rows. Returns n, iy, the block's
    first pixel ix0, and for its columns [BLOCK_SY sub-pixel rows, BLOCK_P pixels, SXP sub-pixel
    columns] (flattened; s padded to SXP, so a sub-pixel row's columns are one run of the output
    row when SXP = s) each column's pixel within the block, its pixel, output row and column,
    whether it exists, and its sub-pixel index (oy % s) * s + ox % s."""
    n_yblocks: tl.constexpr = (S + BLOCK_SY - 1) // BLOCK_SY
    sy0 = (pid % n_yblocks) * BLOCK_SY
    pb = pid // n_yblocks
    n_pblocks = tl.cdiv(W, BLOCK_P)
    ix0 = (pb % n_pblocks * BLOCK_P).to(IDX)
    row = pb // n_pblocks
    iy = (row % H).to(IDX)
    n = (row // H).to(IDX)
    m = tl.arange(0, BLOCK_SY * BLOCK_P * SXP)
    ty = sy0 + m // (BLOCK_P * SXP)
    p = m // SXP % BLOCK_P
    tx = m % SXP
    ix = ix0 + p
    return n, iy, ix0, p, ix, iy * S + ty, ix * S + tx, (ty < S) & (tx < S) & (ix < W), ty * S + tx


@triton.jit
def window(iy, ix0, H, W, KS: tl.constexpr, BLOCK_P: tl.constexpr, WTP: tl.constexpr):
    """The k rows of k + BLOCK_P - 1 source pixels that the taps of pixels ix0 .. ix0 + BLOCK_P - 1
    (row iy) read, flattened row-major and padded to WTP: each window tap's row ky and column u
    within the window, its image row and column, and whether it is real and inside the image.
    For BLOCK_P = 1 window tap j is tap j."""
    R: tl.constexpr = KS // 2
    WU: tl.constexpr = BLOCK_P + KS - 1
    wt = tl.arange(0, WTP)
    ky = wt // WU
    u = wt % WU
    jy = iy + (ky - R)
    jx = ix0 + (u - R)
    return ky, u, jy, jx, (wt < KS * WU) & (jy >= 0) & (jy < H) & (jx >= 0) & (jx < W)


def window_taps(kernel_size, block_p):
    """WTP for `window`: k * (k + BLOCK_P - 1) rounded up to a power of two."""
    return pow2(kernel_size * (kernel_size + block_p - 1))


@triton.jit
def subpixel_columns(ix0, W, S: tl.constexpr, SXP: tl.constexpr, M: tl.constexpr):
    """A tile's M = BLOCK_P * SXP output columns from source pixel ix0 on: each column's source
    pixel, sub-pixel column, output column and whether it exists. With s a power of two the
    output columns are written ix0*s + m, which the compiler sees as one contiguous run (from
    ix*s + sx it could not tell), so loads and stores along them are whole sectors, vectorised."""
    m = tl.arange(0, M)
    sx = m % SXP
    ix = ix0 + m // SXP
    if SXP == S:
        ox = ix0 * S + m
    else:
        ox = ix * S + sx
    return ix, sx, ox, (ix < W) & (sx < S)


@triton.jit
def channel_mask(cg, CPG, BLOCK_C: tl.constexpr, EVEN_C: tl.constexpr):
    """cg < CPG for a program's channels cg within the group. With EVEN_C (BLOCK_C divides CPG,
    `even_channels`) it is a constant the compiler folds out of every mask it enters: one
    predicate then serves all of a thread's loads of a pixel, instead of one recomputed per
    channel (the forward's tap loop: 194 -> 161 instructions on sm_90)."""
    if EVEN_C:
        return tl.full((BLOCK_C,), 1, tl.int1)
    return cg < CPG


def even_channels(channels_per_group, block_c):
    """EVEN_C for channel_mask."""
    return int(channels_per_group % block_c == 0)


@triton.jit
def dot_add(a, b, acc, PRECISION: tl.constexpr, ACC: tl.constexpr):
    """acc + a @ b on the tensor cores (PRECISION: dot_precision). In float64, which only Triton's
    interpreter runs (CUDA float64 takes the reference), a broadcast product instead: tl.dot has
    float64 from Triton 3.5 only, and the package supports 3.4."""
    if ACC == tl.float64:
        return acc + tl.sum(a[:, :, None] * b[None, :, :], axis=1)
    return tl.dot(a, b, acc, input_precision=PRECISION)


@triton.jit
def load_lanes_first(ptrs, mask, TIES_LAST: tl.constexpr):
    """A 2-D tile (zero where masked) whose axes are equally contiguous, loaded with the lanes
    along the first axis: the compiler gives a tie to the first axis (TIES_LAST = 0) or to the
    last (1), so the tile is loaded transposed for the latter."""
    if TIES_LAST:
        return tl.permute(tl.load(tl.permute(ptrs, (1, 0)), mask=tl.permute(mask, (1, 0)), other=0.0), (1, 0))
    return tl.load(ptrs, mask=mask, other=0.0)


@triton.jit
def atomic_add_lanes_first(ptrs, values, mask, TIES_LAST: tl.constexpr):
    """Relaxed atomic adds of a 2-D tile whose axes are equally contiguous, with the lanes along
    the first axis (as load_lanes_first)."""
    if TIES_LAST:
        tl.atomic_add(tl.permute(ptrs, (1, 0)), tl.permute(values, (1, 0)), mask=tl.permute(mask, (1, 0)),
                      sem="relaxed")
    else:
        tl.atomic_add(ptrs, values, mask=mask, sem="relaxed")
