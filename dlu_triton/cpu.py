"""The CPU path: CARAFE's reassembly, and so DLU's, as batched matrix products on blocks of rows.

Maths. Split each image row into segments of B source pixels (B = min(8, W)) and let r = k // 2.
All s*s*B outputs of source row iy, segment x0 .. x0 + B - 1 read one window of the padded
features, k rows of B + 2r pixels, X_win [k(B+2r), C] (channels last), and

    out[c, (sy, b, sx)] = sum over (ky, u) of X_win[(ky, u), c] * Band[(ky, u), (sy, b, sx)],
    Band[(ky, u), (t, b)] = K[ky*k + (u - b), t, x0 + b]  where 0 <= u - b < k, else 0,

one product [C x k(B+2r)] @ [k(B+2r) x s*s*B] per (row, segment), batched over a block of rows
by `torch.bmm`: in a channels-last copy of the segment's columns with their halo, the windows of
consecutive rows are one strided view, k(B+2r)*C values apart by B+2r pixels, so nothing is
unfolded. The band spends k(B+2r)/k**2 of the minimal multiply-adds (2.4x at k = 5, B = 8) to
run at the matrix unit's speed instead of one elementwise pass over the output per tap. With dY
the output gradient in the same layout:

    dBand  = X_win @ dY^T   [k(B+2r), s*s*B]: the masks' gradient is its band,
    dX_win = Band @ dY^T    [k(B+2r), C]: summed back over the overlapping windows (rows and
                            segments overlap by 2r).

A block of rows is computed at a time, so the temporaries are bounded (BLOCK_BYTES of output a
block); no k*k copy of the features and, for DLU, no full-size mask exists: DLU samples the
kernels of a block from the kernel space (the reference's softmax and grid_sample, so the same
numbers) and its backward sends the block's mask gradient through grid_sample's backward.

Non-finite values. The band's zeros meet every feature of a window, and 0 * Inf is NaN, so a
non-finite feature (forward, masks' gradient) or output gradient (features' gradient) would
reach outputs the reference keeps finite: such calls take the reference, whose rules define them.
Half-precision inputs are computed in float32 and rounded once at the end.
"""
import torch
import torch.nn.functional as F

from . import reference
from .kernels.common import new_output

BLOCK_BYTES = 8 << 20  # output bytes a block of rows computes at once


class _Blocks:
    """The geometry of one call: segments of B pixels, windows of W_ = B + 2r columns, blocks of
    `rows` source rows."""

    def __init__(self, features, kernel_size, group_size, scale_factor):
        self.n, self.c, self.h, self.w = features.shape
        self.k, self.g, self.s = kernel_size, group_size, scale_factor
        self.cpg, self.r = self.c // self.g, self.k // 2
        self.B = min(8, self.w)
        self.nseg = -(-self.w // self.B)
        self.W_ = self.B + 2 * self.r
        self.dtype = torch.float32 if features.dtype in (torch.float16, torch.bfloat16) else features.dtype
        row_bytes = self.n * self.c * self.s * self.s * self.w * torch.finfo(self.dtype).bits // 8
        self.rows = max(1, BLOCK_BYTES // max(row_bytes, 1))
        # u = b + kx: where each tap of sub-pixel column b sits in its window row
        kx, b = torch.arange(self.k, device=features.device), torch.arange(self.B, device=features.device)
        self.u = (kx[:, None, None, None] + b[None, None, :, None]).expand(self.k, self.s, self.B, self.s)

    def ranges(self):
        return [(y0, min(self.h, y0 + self.rows)) for y0 in range(0, self.h, self.rows)]

    def padded(self, features):
        """The features padded by r (and to whole segments), channels last: [N, H+2r, Wpad, C]."""
        x = features.to(self.dtype).contiguous(memory_format=torch.channels_last)
        right = self.nseg * self.B - self.w + self.r
        return F.pad(x, (self.r, right, self.r, self.r)).permute(0, 2, 3, 1)

    def tiles(self, xp, y0, y1):
        """Rows y0 .. y1 + 2r of each segment's window columns: [N, G, nseg, rows + 2r, W_, cpg]."""
        block = xp[:, y0:y1 + 2 * self.r].unflatten(3, (self.g, self.cpg)).unfold(2, self.W_, self.B)
        return block.permute(0, 3, 2, 1, 5, 4).contiguous()

    def windows(self, tiles, i, seg):
        """The windows of the block's rows for image-and-group i, segment seg: [rows, k*W_, cpg]."""
        t = tiles[i // self.g, i % self.g, seg]
        return t.as_strided((t.shape[0] - 2 * self.r, self.k * self.W_, self.cpg), (self.W_ * self.cpg, self.cpg, 1))

    def band(self, masks):
        """Masks [N, G*k*k, rows*s, W*s] of a block -> Band [N, G, nseg, rows, k*W_, s*B*s]."""
        n, g, k, s, B = self.n, self.g, self.k, self.s, self.B
        rows = masks.shape[2] // s
        m = masks.to(self.dtype).reshape(n, g, k, k, rows, s, self.w, s)
        m = F.pad(m, (0, 0, 0, self.nseg * B - self.w)).view(n, g, k, k, rows, s, self.nseg, B, s)
        src = m.permute(0, 1, 6, 4, 2, 3, 5, 7, 8)  # [N, G, nseg, rows, ky, kx, sy, b, sx]
        band = src.new_zeros(n, g, self.nseg, rows, k, self.W_, s, B, s)
        band.scatter_(5, self.u.expand(src.shape), src)
        return band.view(n, g, self.nseg, rows, k * self.W_, s * B * s)

    def unband(self, dband):
        """The inverse of band: [N, G, nseg, rows, k*W_, s*B*s] -> [N, G*k*k, rows*s, W*s]."""
        n, g, k, s, B = self.n, self.g, self.k, self.s, self.B
        rows = dband.shape[3]
        d = dband.view(n, g, self.nseg, rows, k, self.W_, s, B, s)
        taps = d.gather(5, self.u.expand(n, g, self.nseg, rows, k, k, s, B, s))
        m = taps.permute(0, 1, 4, 5, 3, 6, 2, 7, 8).reshape(n, g * k * k, rows * s, self.nseg * B * s)
        return m[..., :self.w * s]

    def columns(self, seg):
        """Segment seg's output columns, and how many of its B pixels are in the image."""
        valid = min(self.B, self.w - seg * self.B)
        return slice(seg * self.B * self.s, (seg * self.B + valid) * self.s), valid * self.s


def _finite(*tensors):
    """No NaN or Inf in these tensors: their sums are finite (a sum that overflows only sends the
    call to the reference)."""
    return all(bool(torch.isfinite(t.sum(dtype=torch.float64 if t.dtype == torch.float64 else torch.float32)))
               for t in tensors)


def _reassemble(features, masks_of_block, kernel_size, group_size, scale_factor):
    """out = CARAFE(features, masks), the masks of each block from masks_of_block(y0, y1)."""
    p = _Blocks(features, kernel_size, group_size, scale_factor)
    s, B = p.s, p.B
    out = new_output(features, (p.n, p.c, p.h * s, p.w * s), p.dtype, torch.contiguous_format)
    out = out.view(p.n, p.g, p.cpg, p.h, s, p.w * s)
    whole = p.w // B  # segments inside the image; a last, partial one is copied apart
    xp = p.padded(features)
    for y0, y1 in p.ranges():
        rows = y1 - y0
        tiles, band = p.tiles(xp, y0, y1), p.band(masks_of_block(y0, y1))
        o = xp.new_empty(p.n, p.g, p.nseg, rows, p.cpg, s, B * s)
        for i in range(p.n * p.g):
            ni, gi = divmod(i, p.g)
            for seg in range(p.nseg):
                torch.bmm(p.windows(tiles, i, seg).transpose(1, 2), band[ni, gi, seg],
                          out=o[ni, gi, seg].view(rows, p.cpg, s * B * s))
        o = o.permute(0, 1, 4, 3, 5, 2, 6)  # [N, G, cpg, rows, sy, nseg, B*s]
        dst = out[:, :, :, y0:y1]
        dst[..., :whole * B * s].unflatten(-1, (whole, B * s)).copy_(o[..., :whole, :])
        if whole < p.nseg:
            dst[..., whole * B * s:] = o[..., whole, :(p.w - whole * B) * s]
    return out.view(p.n, p.c, p.h * s, p.w * s).to(features.dtype)


def _reassemble_backward(grad_out, features, masks_of_block, masks_grad_of_block, kernel_size, group_size,
                         scale_factor):
    """The features' gradient; each block's masks' gradient goes to masks_grad_of_block(y0, y1, d)."""
    p = _Blocks(features, kernel_size, group_size, scale_factor)
    s, cpg, r, k, W_ = p.s, p.cpg, p.r, p.k, p.W_
    xp = p.padded(features)
    dxp = xp.new_zeros(xp.shape)  # [N, H+2r, Wpad, C]
    dy = grad_out.to(p.dtype).reshape(p.n, p.c, p.h, s, p.w * s)
    passes = -(-W_ // p.B)  # segments this far apart have disjoint windows
    for y0, y1 in p.ranges():
        rows = y1 - y0
        tiles, band = p.tiles(xp, y0, y1), p.band(masks_of_block(y0, y1))
        dband = torch.empty_like(band)
        dtiles = tiles.new_zeros(tiles.shape)
        dyb = tiles.new_zeros(rows, cpg, s, p.B * s)  # a segment's dY, columns past the image 0
        for i in range(p.n * p.g):
            ni, gi = divmod(i, p.g)
            for seg in range(p.nseg):
                cols, valid = p.columns(seg)
                dyb[..., :valid] = dy[ni, gi * cpg:(gi + 1) * cpg, y0:y1, :, cols].transpose(0, 1)
                dY = dyb.view(rows, cpg, s * p.B * s)
                torch.bmm(p.windows(tiles, i, seg), dY, out=dband[ni, gi, seg])
                grad_win = dtiles[ni, gi, seg]
                for ky in range(k):
                    grad_win[ky:ky + rows].baddbmm_(band[ni, gi, seg, :, ky * W_:(ky + 1) * W_], dY.transpose(1, 2))
        masks_grad_of_block(y0, y1, p.unband(dband))
        target = dxp[:, y0:y1 + 2 * r].unflatten(3, (p.g, cpg)).unfold(2, W_, p.B)  # [N, rows+2r, nseg, G, cpg, W_]
        source = dtiles.permute(0, 3, 2, 1, 5, 4)
        for first in range(passes):
            target[:, :, first::passes].add_(source[:, :, first::passes])
    grad = dxp[:, r:r + p.h, r:r + p.w].permute(0, 3, 1, 2)
    return grad.to(features.dtype).contiguous()


def carafe(features, masks, kernel_size, group_size, scale_factor):
    if not _finite(features) or features.numel() == 0:
        return reference.carafe(features, masks, kernel_size, group_size, scale_factor)
    s = scale_factor
    return _reassemble(features, lambda y0, y1: masks[:, :, y0 * s:y1 * s], kernel_size, group_size, s)


def carafe_backward(grad_out, features, masks, kernel_size, group_size, scale_factor):
    if not _finite(features, grad_out) or features.numel() == 0:
        return reference.carafe_backward(grad_out, features, masks, kernel_size, group_size, scale_factor)
    s = scale_factor
    grad_masks = new_output(masks, masks.shape, memory_format=torch.contiguous_format)

    def store(y0, y1, d):
        grad_masks[:, :, y0 * s:y1 * s] = d

    grad_features = _reassemble_backward(grad_out, features, lambda y0, y1: masks[:, :, y0 * s:y1 * s], store,
                                         kernel_size, group_size, s)
    return grad_features, grad_masks


def _dlu_sampling(features, kernel_logits, offsets, kernel_size, group_size, scale_factor):
    """DLU's kernel space and sampling grid (the reference's functions), and block(y0, y1): the
    kernels sampled for source rows y0 .. y1 as masks [N, G*k*k, rows*s, W*s], with the
    reference's NaN points and safe grid for the backward."""
    n, _, h, w = features.shape
    k, g, s = kernel_size, group_size, scale_factor
    space = reference._kernel_space(kernel_logits, k, g)
    grid = reference._sampling_grid(offsets, g, s, h, w)

    def block(y0, y1):
        masks, nan, safe = reference._sample(space, grid[:, y0 * s:y1 * s])
        return masks.reshape(n, g * k * k, (y1 - y0) * s, w * s), nan, safe

    return space, grid, block


def dlu_upsample(features, kernel_logits, offsets, kernel_size, group_size, scale_factor):
    if not _finite(features) or features.numel() == 0:
        return reference.dlu_upsample(features, kernel_logits, offsets, kernel_size, group_size, scale_factor)
    _, _, block = _dlu_sampling(features, kernel_logits, offsets, kernel_size, group_size, scale_factor)
    return _reassemble(features, lambda y0, y1: block(y0, y1)[0], kernel_size, group_size, scale_factor)


def dlu_upsample_backward(grad_out, features, kernel_logits, offsets, kernel_size, group_size, scale_factor):
    if not _finite(features, grad_out) or features.numel() == 0:
        return reference.dlu_upsample_backward(grad_out, features, kernel_logits, offsets, kernel_size, group_size,
                                               scale_factor)
    k, g, s = kernel_size, group_size, scale_factor
    space, grid, block = _dlu_sampling(features, kernel_logits, offsets, k, g, s)
    grad_space = torch.zeros_like(space)
    grad_grid = new_output(grid, grid.shape, memory_format=torch.contiguous_format)
    sampled = {}  # each block's NaN points and safe grid, from its masks to its masks' gradient

    def masks(y0, y1):
        m, *sampled[y0] = block(y0, y1)
        return m

    def store(y0, y1, d):
        nan, safe = sampled.pop(y0)
        gs, gg = reference._masks_backward(d.reshape(space.shape[0], k * k, *nan.shape[1:]).to(space.dtype),
                                           space, nan, safe)
        grad_space.add_(gs)
        grad_grid[:, y0 * s:y1 * s] = gg

    grad_features = _reassemble_backward(grad_out, features, masks, store, k, g, s)
    grad_logits, grad_offsets = reference._logits_and_offsets_backward(grad_space, grad_grid, space, kernel_logits, g, s)
    return grad_features, grad_logits, grad_offsets
