"""What the forward and backward kernel families share: DLU's kernel space (the softmax, one small
kernel), its sampling as @triton.jit helpers, and the host-side rules for layouts, index width,
accumulator dtype and block sizes.

Sampling (contract step 2). For source pixel q = (iy, ix), sub-pixel t and group g, the offsets
give (dx, dy); the sampling point (py, px) = (iy + dy, ix + dx) is clamped to [0, H-1] x [0, W-1]
(grid_sample's border padding with align_corners=True). Its four corners (y0|y1, x0|x1) carry the
bilinear weights w00 = (1-fy)(1-fx), w01 = (1-fy)fx, w10 = fy(1-fx), w11 = fy fx. A coordinate
counts as inside only when strictly between the borders: grid_sample gives a clamped coordinate,
and one exactly on the border, a zero gradient.
"""
import torch
import triton
import triton.language as tl


@triton.jit
def sampling_point(off_base, g, iy, ix, sub, ok, soc, H, W, S, ACC: tl.constexpr):
    """Corner indices, fractions and strictly-inside flags of sampling points, each shaped like
    the broadcast of ix (source pixels) and sub (sub-pixel index oy % s * s + ox % s)."""
    ch = 2 * g * S * S + sub
    dx = tl.load(off_base + ch * soc, mask=ok, other=0.0).to(ACC)
    dy = tl.load(off_base + (ch + S * S) * soc, mask=ok, other=0.0).to(ACC)
    py = iy + dy
    px = ix + dx
    in_y = (py > 0) & (py < H - 1)
    in_x = (px > 0) & (px < W - 1)
    # NaN must survive the clamp (it is the reference's answer); indices are clamped again
    # after the conversion so a NaN point never reads outside the image.
    py = tl.minimum(tl.maximum(py, 0.0, propagate_nan=tl.PropagateNan.ALL), H - 1.0, propagate_nan=tl.PropagateNan.ALL)
    px = tl.minimum(tl.maximum(px, 0.0, propagate_nan=tl.PropagateNan.ALL), W - 1.0, propagate_nan=tl.PropagateNan.ALL)
    y0f = tl.floor(py)
    x0f = tl.floor(px)
    y0 = tl.minimum(tl.maximum(y0f.to(tl.int32), 0), H - 1)
    x0 = tl.minimum(tl.maximum(x0f.to(tl.int32), 0), W - 1)
    y1 = tl.minimum(y0 + 1, H - 1)
    x1 = tl.minimum(x0 + 1, W - 1)
    return y0, y1, x0, x1, py - y0f, px - x0f, in_y, in_x


@triton.jit
def sampled_kernel(base, y0, y1, x0, x1, fy, fx, sky, skx, mask, IDX: tl.constexpr, ACC: tl.constexpr):
    """DLU's kernel values K = sum_c w_c P_c, bilinear over the 4 corners that sampling_point
    gives: `base` points at each value's tap plane of the kernel space (with the corners' and
    fractions' shapes it broadcasts to the result's)."""
    k = ((1.0 - fy) * (1.0 - fx)) * tl.load(base + (y0.to(IDX) * sky + x0.to(IDX) * skx), mask=mask, other=0.0).to(ACC)
    k += ((1.0 - fy) * fx) * tl.load(base + (y0.to(IDX) * sky + x1.to(IDX) * skx), mask=mask, other=0.0).to(ACC)
    k += (fy * (1.0 - fx)) * tl.load(base + (y1.to(IDX) * sky + x0.to(IDX) * skx), mask=mask, other=0.0).to(ACC)
    k += (fy * fx) * tl.load(base + (y1.to(IDX) * sky + x1.to(IDX) * skx), mask=mask, other=0.0).to(ACC)
    return k


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
    channel (the forward's tap loop: 194 -> 161 instructions; docs/performance.md, v15)."""
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
        logits.stride(0), logits.stride(1), slp, space.stride(0), space.stride(1), plane_stride(space), zeroed.stride(0),
        h * w, group_size, blocks, zeroed.shape[0],
        KK=kernel_size * kernel_size, KKP=kkp, BLOCK=block,
        ACC=acc_dtype(logits), IDX=index_dtype(logits, space), num_warps=4, **LAUNCH,
    )
    return space


@triton.jit
def corner_probs(p_base, corner, g, ok, spc, KK: tl.constexpr, KKP: tl.constexpr, ACC: tl.constexpr,
                 TIES_LAST: tl.constexpr):
    """The kernel space's k*k probabilities of group g at each point's corner, [points, KKP]
    (zero on padding taps). Neither axis is contiguous, so the lanes go to the points by the
    axis order that TIES_LAST names."""
    j = tl.arange(0, KKP)
    v = load_lanes_first(p_base + corner[:, None] + ((g * KK + j) * spc)[None, :], ok[:, None] & (j < KK)[None, :],
                         TIES_LAST)
    return v.to(ACC)


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


# Between two axes of a load that are equally contiguous, Triton 3.6 gives the lanes to the
# first, 3.7 and later to the last (docs/performance.md, "the tie rule"): load_lanes_first's and
# atomic_add_lanes_first's flag.
TIES_LAST = int(tuple(int(v) for v in triton.__version__.split(".")[:2]) >= (3, 7))


# Launch options of every kernel. FMA contraction is asked for explicitly: Triton 3.9 warns that
# its default turns it off in 3.10, which would split each multiply-add in two (slower, and a
# different rounding from the one the tolerances were set on).
LAUNCH = dict(enable_fp_fusion=True)


def output_format(like):
    """channels_last when `like` is (unambiguously) channels_last, as convolutions do."""
    if like.is_contiguous(memory_format=torch.channels_last) and not like.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def new_output(like, size, dtype=None, memory_format=None):
    """An output for `like`'s kernels: same device, dtype and memory format unless given."""
    return torch.empty(
        size, dtype=dtype or like.dtype, device=like.device, memory_format=memory_format or output_format(like)
    )


def accumulator(t):
    """The dtype `t`'s values are accumulated in: float64 for float64, float32 otherwise."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def acc_dtype(t):
    """accumulator(t) as the kernels' ACC."""
    return {torch.float64: tl.float64, torch.float32: tl.float32}[accumulator(t)]


def index_dtype(*tensors):
    """int64 addressing only when some element lies past int32's reach. No element lies further
    from a tensor's start than its storage is long, so a storage of at most 2**31 elements settles
    it with one call; only a larger one gets the exact sum (which cost ~1 us a tensor per launch)."""
    for t in tensors:
        if (t.untyped_storage().nbytes() > 2**31 * t.element_size() and t.numel()
                and sum((n - 1) * abs(st) for n, st in zip(t.shape, t.stride())) >= 2**31):
            return tl.int64
    return tl.int32


# Host-side arithmetic for the launchers. triton.next_power_of_2 and triton.cdiv are constexpr
# functions that cost ~3.5 us a call from Python (triton 3.6 and 3.9), and a launcher made up to
# ten such calls: on a GPU machine's slower host that was a large share of each launch.
def pow2(n):
    """The smallest power of two >= n (n >= 1)."""
    return 1 << (n - 1).bit_length()


def cdiv(a, b):
    return -(-a // b)


def taps_padded(kernel_size):
    return pow2(kernel_size * kernel_size)


def forward_blocks(channels_per_group, row_length, scale_factor):
    """The forward's tiles: (BLOCK_C, BLOCK_P, BLOCK_SY, num_warps).

    A program holds [BLOCK_SY sub-pixel rows, s sub-pixel columns (padded to a power of two),
    BLOCK_C channels, BLOCK_P source pixels], 8192 accumulators at 4 warps. The compiler spreads
    the lanes along the pixels (up to 32 of one row) and then the channels, the warps along the
    channels, so a thread holds every sub-pixel of the tile for its pixel and channels: each
    feature it loads serves BLOCK_SY * s outputs from registers. In the H100 sweep
    (docs/results/2026-11-23-h100/h100-forward-v10.md) 16 sub-pixels a thread and 64 channels ran fastest at
    s >= 4. At s = 2, 32 channels beat 64 by 5% at N2 128x128 but lost 10% at N8 100x152.
    """
    sxp = pow2(scale_factor)
    block_sy = max(1, min(sxp, 16 // sxp))
    block_c = max(1, min(pow2(channels_per_group), 64, 8192 // (block_sy * sxp)))
    block_p = max(1, min(32, pow2(row_length), 8192 // (block_sy * sxp * block_c)))
    return block_c, block_p, block_sy, 4


def kernel_grad_pixels(row_length, scale_factor):
    """BLOCK_P of DLU's kernel-gradient step: a program's source pixels, each with its s
    sub-pixel columns (s padded to a power of two), about 32 output columns of [columns, k*k]
    tiles (dK, the corners' probabilities and their products), at least one pixel."""
    return max(1, min(32 // pow2(scale_factor), pow2(row_length)))


def logit_grad_copies(scale_factor):
    """How many copies of the logits gradient's atomic accumulator DLU's backward spreads its
    atomics over (summed in the final pass). Each kernel-space value receives about 4*s*s atomic
    adds, one per sampled corner; in the H100 module profile (v11, N2 C256, output 256x256, the
    same atomics in each case) the kernel gradient took 49, 61, 122 and 342 us at s = 2, 4, 8 and
    16 (docs/results/2026-11-23-h100/h100-profile-modules.txt): same-address atomics serialise. Output row oy
    adds to copy oy % copies, so no copy takes more than about 64 adds a value (s = 4's count);
    the extra memory is at most 1/16 of the backward's K buffer."""
    return min(scale_factor, max(1, scale_factor * scale_factor // 16))


def mask_grad_dot_blocks(channels_per_group, scale_factor, kernel_size):
    """Where the mask gradient is a matrix product on the tensor cores (backward.py, step 1):
    (BLOCK_SY, BLOCK_P, BLOCK_C, num_warps), the product's BLOCK_SY * pow2(s) sub-pixel rows of
    BLOCK_P consecutive source pixels and BLOCK_C channels an inner step. At s = 2..7: 32 rows,
    pixels sharing one window (the kept taps a band of it), 4 warps. At s >= 8: one pixel, 64
    rows (one Hopper warpgroup product), 32 channels (within 128 registers under triton 3.6, no
    spills). None at s = 1 and k = 1 (mask_grad_blocks then). On an H200 (2026-12-04, N2 C256
    k5 float32, DLU's backward): the banded product 1.97x faster than the per-channel kernel at
    s = 2 and 1.14x at s = 4, where the one-pixel product of 16 rows was 1.22x slower than it;
    the one-pixel product at s = 8 and 16 1.5x and 2.6x faster (docs/performance.md)."""
    if kernel_size < 3 or scale_factor < 2:
        return None
    if scale_factor < 8:
        block_sy = max(1, 4 // pow2(scale_factor))
        return block_sy, 32 // (block_sy * pow2(scale_factor)), 32, 4
    return max(1, 64 // pow2(scale_factor)), 1, max(16, min(32, pow2(channels_per_group))), 4


def pixel_product_blocks(channels_per_group, scale_factor, kernel_size):
    """At s >= 8 (k >= 3) the features gradient's tap sums (backward.py, step 3) are matrix
    products per source pixel on the tensor cores: (BLOCK_SY, BLOCK_C), BLOCK_SY * pow2(s) = 64
    of the pixel's sub-pixels (the product's inner dimension) and 64 channels a program. sm_90
    compile under triton 3.6: 106-154 registers, no spills. None below s = 8: the tap sums Z
    (k*k values a channel and source pixel, written and read again) would cost more traffic
    than dy itself."""
    if scale_factor < 8 or kernel_size < 3:
        return None
    return max(1, 64 // pow2(scale_factor)), max(16, min(64, pow2(channels_per_group)))


# The GPU targets every kernel is compiled for in CI (`benchmarks/compile_report.py --matrix`,
# docs/testing.md), with each one's shared memory a block may use (bytes, opt-in maximum): the
# GPUs `ops` lets launch the kernels. NVIDIA from Turing (sm_75) on; AMD's CDNA 2-4 data-centre
# GPUs (MI200, MI300, MI350).
TARGETS = {
    "sm_75": 65536, "sm_80": 167936, "sm_86": 101376, "sm_89": 101376, "sm_90": 232448, "sm_100": 232448,
    "sm_120": 101376, "gfx90a": 65536, "gfx942": 65536, "gfx950": 163840,
}


def backend(device):
    """The Triton backend that compiles for `device`'s kernels: "hip" on a ROCm build of PyTorch
    (whose GPUs are device type "cuda" too), else "cuda" (the interpreter's CPU tensors included)."""
    return "hip" if device.type == "cuda" and torch.version.hip else "cuda"


def dot_precision(*operands):
    """tl.dot's input precision for a product of these tensors' values, converted to the
    accumulator dtype first: plain float64 if any is float64. On NVIDIA, three tf32 products
    (about float32's accuracy) if any is float32 (DLU's kernel space and K buffer are, whatever
    the inputs' dtype), and one tf32 product when all are float16 or bfloat16, whose values are
    exact in tf32. On AMD, plain float32 ("ieee"): CDNA's matrix cores multiply float32
    directly, and tf32x3 is NVIDIA's alone."""
    dtypes = {t.dtype for t in operands}
    if torch.float64 in dtypes or backend(operands[0].device) == "hip":
        return "ieee"
    return "tf32x3" if torch.float32 in dtypes else "tf32"


def mask_grad_blocks(row_length, scale_factor):
    """The mask gradient's tiles: (BLOCK_P, SXB), a one-warp program's BLOCK_P source pixels (one
    a lane, up to 32) x SXB sub-pixel columns (up to 2) of one output row, the channels looped
    one at a time. A thread holds its pixel's dK [k*k, SXB] (50 fp32 registers at k = 5,
    SXB = 2) and the channel's dy [SXB]."""
    sxb = min(pow2(scale_factor), 2)
    block_p = min(32, pow2(row_length))
    return block_p, sxb


def feature_grad_blocks(channels_per_group, row_length, scale_factor, kernel_size):
    """The features gradient's tiles: (BLOCK_C, BLOCK_P, SXB), a program's BLOCK_C channels and
    a window of BLOCK_P source pixels, of which it finishes the BLOCK_P - 2*(k//2) in the middle,
    read SXB sub-pixel columns at a time (2 when s is even: aligned pairs, else 1). A step's
    BLOCK_P * SXB columns then stay within the tile's lanes twice over, so each tap's K run is
    laid out as a slice of the dy tile's layout [BLOCK_C, columns] (lanes along the columns,
    warps along the channels; a longer run the compiler spreads over all 128 threads and moves
    through shared memory at every tap), and the accumulators [k padded to a power of two,
    BLOCK_C, BLOCK_P] stay within 8192 (64 fp32 registers a thread at 4 warps). The window
    shrinks to the row and its halo when the row is short."""
    halo = 2 * (kernel_size // 2)
    sxb = 2 if scale_factor % 2 == 0 else 1
    block_p = max(pow2(halo + 1), min(32, pow2(row_length + halo)))
    block_c = max(1, min(pow2(channels_per_group), 32,
                         8192 // (pow2(kernel_size) * block_p)))
    return block_c, block_p, sxb
