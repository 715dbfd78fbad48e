"""DLU's kernel sampling as @triton.jit device functions, shared by the forward and the backward.

Contract step 2. For source pixel q = (iy, ix), sub-pixel t and group g, the offsets give
(dx, dy); the sampling point (py, px) = (iy + dy, ix + dx) is clamped to [0, H-1] x [0, W-1]
(grid_sample's border padding with align_corners=True). Its four corners (y0|y1, x0|x1) carry the
bilinear weights w00 = (1-fy)(1-fx), w01 = (1-fy)fx, w10 = fy(1-fx), w11 = fy fx, and the
sampled kernel is K = sum_c w_c P_c over the kernel space's probabilities P_c at the corners. A
coordinate counts as inside only when strictly between the borders: grid_sample gives a clamped
coordinate, and one exactly on the border, a zero gradient.
"""
import triton
import triton.language as tl

from .tiles import load_lanes_first


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
def corner_probs(p_base, corner, g, ok, spc, KK: tl.constexpr, KKP: tl.constexpr, ACC: tl.constexpr,
                 TIES_LAST: tl.constexpr):
    """The kernel space's k*k probabilities of group g at each point's corner, [points, KKP]
    (zero on padding taps). Neither axis is contiguous, so the lanes go to the points by the
    axis order that TIES_LAST names."""
    j = tl.arange(0, KKP)
    v = load_lanes_first(p_base + corner[:, None] + ((g * KK + j) * spc)[None, :], ok[:, None] & (j < KK)[None, :],
                         TIES_LAST)
    return v.to(ACC)
