"""Tile rules and launch settings of every launcher, in one place.

Each rule maps a shape to a kernel's constexpr tile sizes (and, for the backward's matrix
products, whether the product form runs at all). What chose each rule (files under
docs/results/ and its 2026-11-23-h100/), and the script that measures it again:

| rule | decides | chosen by | measured again by |
|---|---|---|---|
| forward_blocks | the forward's tile | H100 sweep, 2026-11-23 (h100-forward-v10.md) | sweep_blocks.py |
| mask_grad_dot_blocks | the mask gradient's product and tile | H200 A/B, 2026-12-04 (h200-ab-v23.md) | ab.py |
| mask_grad_blocks | the per-channel mask gradient (s = 1, k = 1) | H200 A/B (h200-ab-candidates.md) | ab.py |
| kernel_grad_pixels | DLU's kernel-gradient pixels a program | sm_90 compile (registers) | compile_report.py |
| logit_grad_copies | the logits gradient's atomic copies | H100 (h100-profile-modules.txt) | profile_modules.py |
| feature_grad_blocks | the features gradient's window (s < 8) | H200 A/B (h200-ab-candidates.md) | ab.py |
| pixel_product_blocks | the features gradient's product (s >= 8) | H200 A/B, 2026-12-04 (h200-ab-v23.md) | ab.py |
| LAUNCH | compile options of every launch | Triton 3.9's change of default (below) | |

The scripts are in benchmarks/. docs/performance.md has the current measurements,
docs/performance-log.md every change's.
"""
from .launch import pow2

# Launch options of every kernel. FMA contraction is asked for explicitly: Triton 3.9 warns that
# its default turns it off in 3.10, which would split each multiply-add in two (slower, and a
# different rounding from the one the tolerances were set on).
LAUNCH = dict(enable_fp_fusion=True)


def forward_blocks(channels_per_group, row_length, scale_factor):
    """The forward's tiles: (BLOCK_C, BLOCK_P, BLOCK_SY, num_warps).

    A program holds [BLOCK_SY sub-pixel rows, s sub-pixel columns (padded to a power of two),
    BLOCK_C channels, BLOCK_P source pixels], 8192 accumulators at 4 warps. The compiler spreads
    the lanes along the pixels (up to 32 of one row) and then the channels, the warps along the
    channels, so a thread holds every sub-pixel of the tile for its pixel and channels: each
    feature it loads serves BLOCK_SY * s outputs from registers. In the H100 sweep 16 sub-pixels
    a thread and 64 channels ran fastest at s >= 4; at s = 2, 32 channels beat 64 by 5% at N2
    128x128 but lost 10% at N8 100x152.
    """
    sxp = pow2(scale_factor)
    block_sy = max(1, min(sxp, 16 // sxp))
    block_c = max(1, min(pow2(channels_per_group), 64, 8192 // (block_sy * sxp)))
    block_p = max(1, min(32, pow2(row_length), 8192 // (block_sy * sxp * block_c)))
    return block_c, block_p, block_sy, 4


def mask_grad_dot_blocks(channels_per_group, scale_factor, kernel_size):
    """Where the mask gradient is a matrix product on the tensor cores (backward.py, step 1):
    (BLOCK_SY, BLOCK_P, BLOCK_C, num_warps), the product's BLOCK_SY * pow2(s) sub-pixel rows of
    BLOCK_P consecutive source pixels and BLOCK_C channels an inner step. At s = 2..7: 32 rows,
    pixels sharing one window (the kept taps a band of it), 4 warps. At s >= 8: one pixel, 64
    rows (one Hopper warpgroup product), 32 channels (within 128 registers under triton 3.6, no
    spills). None at s = 1 and k = 1 (mask_grad_blocks then). In the H200 A/B (N2 C256 k5
    float32, DLU's backward) the banded product was 1.97x faster than the per-channel kernel at
    s = 2 and 1.14x at s = 4, where the one-pixel product of 16 rows was 1.22x slower than it;
    the one-pixel product at s = 8 and 16 1.5x and 2.6x faster."""
    if kernel_size < 3 or scale_factor < 2:
        return None
    if scale_factor < 8:
        block_sy = max(1, 4 // pow2(scale_factor))
        return block_sy, 32 // (block_sy * pow2(scale_factor)), 32, 4
    return max(1, 64 // pow2(scale_factor)), 1, max(16, min(32, pow2(channels_per_group))), 4


def mask_grad_blocks(row_length, scale_factor):
    """The mask gradient's tiles: (BLOCK_P, SXB), a one-warp program's BLOCK_P source pixels (one
    a lane, up to 32) x SXB sub-pixel columns (up to 2) of one output row, the channels looped
    one at a time. A thread holds its pixel's dK [k*k, SXB] (50 fp32 registers at k = 5,
    SXB = 2) and the channel's dy [SXB]."""
    sxb = min(pow2(scale_factor), 2)
    block_p = min(32, pow2(row_length))
    return block_p, sxb


def kernel_grad_pixels(row_length, scale_factor):
    """BLOCK_P of DLU's kernel-gradient step: a program's source pixels, each with its s
    sub-pixel columns (s padded to a power of two), about 32 output columns of [columns, k*k]
    tiles (dK, the corners' probabilities and their products), at least one pixel."""
    return max(1, min(32 // pow2(scale_factor), pow2(row_length)))


def logit_grad_copies(scale_factor):
    """How many copies of the logits gradient's atomic accumulator DLU's backward spreads its
    atomics over (summed in the final pass). Each kernel-space value receives about 4*s*s atomic
    adds, one per sampled corner; in the H100 module profile (N2 C256, output 256x256, one
    accumulator) the kernel gradient took 49, 61, 122 and 342 us at s = 2, 4, 8 and 16:
    same-address atomics serialise. Output row oy adds to copy oy % copies, so no copy takes
    more than about 64 adds a value (s = 4's count);
    the extra memory is at most 1/16 of the backward's K buffer."""
    return min(scale_factor, max(1, scale_factor * scale_factor // 16))


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
