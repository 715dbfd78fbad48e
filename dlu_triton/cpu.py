"""The CPU path: CARAFE's reassembly, and so DLU's, off the GPU, in one of two forms.

- The compiled kernel (cpu_native: dlu_triton/cpu_reassemble.c, built at first use with the
  machine's C compiler), forward and backward, reading and writing the tensors' own layouts
  and sampling DLU's kernels itself (and sending their gradient back through the sampling), so
  no full-size mask and no transposed copy exist; float32 and float64. The softmax of DLU's
  kernel space, and its backward, are PyTorch's.
- Where no compiler builds it: weighted sums of gathered channel rows, in PyTorch ops (below).

Both multiply exactly the reference's products, so NaN and Inf come out where the reference
puts them. Half-precision inputs are computed in float32 and rounded once at the end.

Gathers. Keep the features channels last and zero-padded by r = k // 2, a table of rows Xp[row]
(a row: one pixel's cpg channels of one group). Output pixel p of group g is a weighted sum of
the k*k rows its taps read,

    out[p, g, :] = sum over taps t of K[p, g, t] * Xp[src(p) + t, g, :],   src(p) = (py // s, px // s),

which is `embedding_bag(mode="sum", per_sample_weights=K)`, the k*k row numbers of (p, g) its
bag: exactly the k*k*C multiply-adds of the contract per output pixel, in PyTorch's vectorised
and threaded gather-sum (FBGEMM's for float32). With dY the output gradient, channels last,
the backward is two sums of the same size:

    dK[p, g, t] = < Xp[src(p) + t, g, :], dY[p, g, :] >    embedding_bag's per-sample-weights
                                                           gradient: one dot product per tap;
    dX[q, g, :] = sum over (t, sy, sx) of K[p, g, t] * dY[p, g, :], p the output pixel of
                  sub-pixel (sy, sx) whose tap t reads q: a bag of k*k*s*s rows of dY, the
                  taps from outside the image pointing at a zero row.

These are the reference's products (unfold's zeros are the table's padding rows), summed in
another order, so NaN and Inf come out where the reference puts them.

Blocks. One image's block of source rows is computed at a time (BLOCK_BYTES of output), so
no k*k copy of the features and, for DLU, no full-size mask exists: DLU samples the kernels of
CHUNK_BLOCKS blocks at a time from the kernel space (the reference's softmax and grid_sample,
so the same numbers) and sends a block's kernel gradient through grid_sample's backward. The
backward's block also holds the dY rows and kernels of the r source rows on either side, which
its dX reads, handed on from one block to the next. A channels-first output is written block
by block through a transposing copy.
"""
import functools

import torch
import torch.nn.functional as F

from . import cpu_native, reference
from .kernels.launch import accumulator, new_output

BLOCK_BYTES = 1 << 20  # output bytes a forward block computes at once (a cache's worth)
CHUNK_BLOCKS = 8  # forward blocks in a backward block and in a forward fetch of kernels: fewer, larger calls


@functools.lru_cache(maxsize=4)
def _forward_bags(k, g, s, w, rows, device):
    """The bags of image 0's first block of `rows` source rows: [rows*s, W*s, G, k*k] rows of the
    padded table. Cached: a training loop asks for the same few geometries again and again."""
    ar = functools.partial(torch.arange, device=device)
    wp = w + 2 * (k // 2)
    tap = (ar(k)[:, None] * wp + ar(k)) * g  # a tap's row offset in the table
    oy, ox = ar(rows * s) // s, ar(w * s) // s
    pixel = (oy[:, None] * wp + ox) * g
    return pixel[:, :, None, None] + ar(g)[:, None] + tap.view(-1)


@functools.lru_cache(maxsize=4)
def _gradient_bags(k, g, s, w, rows, device):
    """The backward's bags for a block of `rows` source rows. dX's: the rows of the block's dY
    buffer (source rows y0 - r .. y0 + rows + r, channels last, then one zero row) that each
    (q, g) sums, and the same rows' k*k-wide kernel entries ([rows*W*G, k*k*s*s] each); dK's:
    each output bag's first tap and each tap's bag ([rows*s*W*s*G], [that * k*k]), as
    embedding_bag's per-sample-weights gradient takes them. Cached like _forward_bags."""
    r, wo, kk = k // 2, w * s, k * k
    ar = functools.partial(torch.arange, device=device)
    q, t, sub = ar(rows), ar(k), ar(s)
    # dims (qy, qx, g, ky, kx, sy, sx); p's source row in the buffer is qy + 2r - ky
    py = ((q[:, None] + 2 * r - t) * s)[:, None, None, :, None, None, None] + sub[:, None]
    src_x = ar(w)[:, None] + r - t  # [qx, kx]
    px = (src_x * s)[None, :, None, None, :, None, None] + sub
    inside = ((src_x >= 0) & (src_x < w))[None, :, None, None, :, None, None]
    row = (py * wo + px) * g + ar(g)[:, None, None, None, None]
    zero = (rows + 2 * r) * s * wo * g  # the buffer's zero row
    row = torch.where(inside, row, zero).expand(rows, w, g, k, k, s, s)
    kernel = row * kk + (t[:, None] * k + t)[:, :, None, None]
    bags = ar(rows * s * wo * g)
    return row.reshape(-1, kk * s * s), kernel.reshape(-1, kk * s * s), bags * kk, bags.repeat_interleave(kk)


class _Plan:
    """One call's geometry: the padded table's row numbers, and blocks of `rows` source rows."""

    def __init__(self, features, kernel_size, group_size, scale_factor, block_bytes):
        self.n, self.c, self.h, self.w = features.shape
        k, g, s = self.k, self.g, self.s = kernel_size, group_size, scale_factor
        self.cpg, self.r, self.kk, self.wo = self.c // g, k // 2, k * k, self.w * s
        self.hp, self.wp = self.h + 2 * self.r, self.w + 2 * self.r
        self.dtype = accumulator(features)
        row_bytes = s * self.wo * self.c * torch.finfo(self.dtype).bits // 8
        self.rows = max(1, min(self.h, block_bytes // max(row_bytes, 1)))
        self._index = _forward_bags(k, g, s, self.w, self.rows, features.device)

    def blocks(self):
        return [(i, y0, min(self.h, y0 + self.rows)) for i in range(self.n) for y0 in range(0, self.h, self.rows)]

    def table(self, features):
        """The features zero-padded by r, channels last, as rows: [N*Hp*Wp*G, cpg]."""
        r, h, w = self.r, self.h, self.w
        xp = features.new_empty(self.n, self.hp, self.wp, self.c, dtype=self.dtype)
        for pad in (xp[:, :r], xp[:, r + h:], xp[:, r:r + h, :r], xp[:, r:r + h, r + w:]):
            pad.zero_()
        _copy_to_channels_last(xp[:, r:r + h, r:r + w], features.permute(0, 2, 3, 1))
        return xp.view(-1, self.cpg)

    def index(self, i, y0, y1):
        """The bags of image i's source rows y0 .. y1: [(y1-y0)*s*Wo*G, k*k] table rows."""
        return (self._index[:(y1 - y0) * self.s] + (i * self.hp + y0) * self.wp * self.g).view(-1, self.kk)


def _copy_to_channels_last(dst, src):
    """dst.copy_(src) for a channels-last dst and a permuted channels-first src (the features,
    the output gradient). When a channel's stride is a multiple of 4 KiB, all of a pixel's
    channels fall in one set of the L1 cache and a whole-pixel copy thrashes it; 8 channels at a
    time fit its ways (30 MB of output gradient: 11 ms -> 5 ms on a 2-core x86_64 CPU with
    AVX-512; at other strides the whole copy is faster)."""
    step = 8 if src.stride(-1) * src.element_size() % 4096 == 0 else src.shape[-1]
    for c0 in range(0, src.shape[-1], step):
        dst[..., c0:c0 + step].copy_(src[..., c0:c0 + step])


def _reassemble(features, kernels_of_block, kernel_size, group_size, scale_factor):
    """out = CARAFE(features, K), kernels_of_block(i, y0, y1) giving image i's kernels of source
    rows y0 .. y1 as [(y1-y0)*s, W*s, G, k*k]."""
    p = _Plan(features, kernel_size, group_size, scale_factor, BLOCK_BYTES)
    table = p.table(features)
    out = new_output(features, (p.n, p.c, p.h * p.s, p.wo), p.dtype)
    out_rows = out.permute(0, 2, 3, 1)
    chunk = CHUNK_BLOCKS * p.rows  # source rows of kernels fetched at a time
    for i, y0, y1 in p.blocks():
        if y0 % chunk == 0:
            start, fetched = y0, kernels_of_block(i, y0, min(p.h, y0 + chunk))
        index = p.index(i, y0, y1)
        kernels = fetched[(y0 - start) * p.s:(y1 - start) * p.s].to(p.dtype).reshape(index.shape)
        block = F.embedding_bag(index, table, per_sample_weights=kernels, mode="sum")
        out_rows[i, y0 * p.s:y1 * p.s].copy_(block.view(-1, p.wo, p.c))
    return out.to(features.dtype)


def _native(features, kernels, offsets, kernel_size, scale_factor):
    """The forward through cpu_native, written in the output's layout: kernels [N, G, k*k, ...]
    and offsets as cpu_native.reassemble takes them per image."""
    n, c, h, w = features.shape
    s, dtype = scale_factor, accumulator(features)
    x, kernels = features.to(dtype), kernels.to(dtype)
    cpu_native.check_sizes(x, kernel_size, kernels.shape[1], s)
    offsets = offsets.to(dtype) if offsets is not None else None
    out = new_output(features, (n, c, h * s, w * s), dtype)
    for i in range(n):
        cpu_native.reassemble(x[i], kernels[i], offsets[i] if offsets is not None else None, out[i], kernel_size, s)
    return out.to(features.dtype)


def _native_backward(grad_out, features, kernels, offsets, kernel_size, scale_factor):
    """The backward through cpu_native (kernels, offsets as _native takes them), in the
    accumulator's dtype: the features' gradient, and CARAFE's masks' gradient [N, G, k*k, H*s,
    W*s] or DLU's pair (the kernel space's gradient [N, G, k*k, H, W], the offsets')."""
    n, c, h, w = features.shape
    k, s, g, dtype = kernel_size, scale_factor, kernels.shape[1], accumulator(features)
    x, kernels, dy = features.to(dtype), kernels.to(dtype), grad_out.to(dtype)
    cpu_native.check_sizes(x, k, g, s, backward=True, dlu=offsets is not None)
    grad = new_output(features, features.shape, dtype).zero_()  # the kernel adds to it
    if offsets is None:
        grad_kernels = new_output(x, (n, g, k * k, h * s, w * s), memory_format=torch.contiguous_format)
        for i in range(n):
            cpu_native.reassemble_backward(dy[i], x[i], kernels[i], None, grad[i], grad_kernels[i], k, s)
    else:
        offsets = offsets.to(dtype)
        grad_kernels = (torch.zeros(kernels.shape, dtype=dtype),  # added to
                        new_output(offsets, offsets.shape, dtype, memory_format=torch.contiguous_format))
        for i in range(n):
            cpu_native.reassemble_backward(dy[i], x[i], kernels[i], offsets[i], grad[i],
                                           (grad_kernels[0][i], grad_kernels[1][i]), k, s)
    return grad.to(features.dtype), grad_kernels


def _reassemble_backward(grad_out, features, kernels_of_block, kernels_grad_of_block, kernel_size, group_size,
                         scale_factor):
    """The features' gradient; image i's kernel gradient of source rows y0 .. y1 goes to
    kernels_grad_of_block(i, y0, y1, [(y1-y0)*s, W*s, G, k*k])."""
    p = _Plan(features, kernel_size, group_size, scale_factor, CHUNK_BLOCKS * BLOCK_BYTES)
    s, r, wo, g, kk = p.s, p.r, p.wo, p.g, p.kk
    table = p.table(features)
    grad = new_output(features, features.shape, p.dtype)
    grad_rows, dy = grad.permute(0, 2, 3, 1), grad_out.permute(0, 2, 3, 1)
    row_size = s * wo * g  # buffer rows of one source row
    # every row is written (or zeroed) below before it is read
    dy_buffer = table.new_empty((p.rows + 2 * r) * row_size + 1, p.cpg)
    kernel_buffer = table.new_empty(dy_buffer.shape[0], kk)
    rows_of_q, kernel_of_q, first_tap, bag_of_tap = _gradient_bags(p.k, g, s, p.w, p.rows, table.device)
    halo = 2 * r * row_size
    for i, y0, y1 in p.blocks():
        # The buffers hold source rows y0 - r .. y1 + r (zeros outside the image): those whose
        # outputs read rows y0 .. y1. The previous block's last 2r rows are this block's first.
        if y0 == 0:
            a = 0
            dy_buffer[:r * row_size].zero_()
            kernel_buffer[:r * row_size].zero_()
        else:
            a = y0 + r
            for buffer in (dy_buffer, kernel_buffer):
                buffer[:halo] = buffer[p.rows * row_size:p.rows * row_size + halo].clone()
        b = max(a, min(p.h, y1 + r))
        lo, hi = (a - y0 + r) * row_size, (b - y0 + r) * row_size
        dy_buffer[hi:].zero_()
        kernel_buffer[hi:].zero_()
        if b > a:
            _copy_to_channels_last(dy_buffer[lo:hi].view(-1, wo, p.c), dy[i, a * s:b * s])
            kernel_buffer[lo:hi].view(-1, wo, g, kk).copy_(kernels_of_block(i, a, b))
        index, n_bags = p.index(i, y0, y1).view(-1), (y1 - y0) * row_size
        grad_kernels = torch.ops.aten._embedding_bag_per_sample_weights_backward(
            dy_buffer[r * row_size:r * row_size + n_bags], table, index, first_tap[:n_bags], bag_of_tap[:index.numel()],
            0, -1)  # 0: mode "sum"
        kernels_grad_of_block(i, y0, y1, grad_kernels.view(-1, wo, g, kk))
        n_q = (y1 - y0) * p.w * g
        weights = kernel_buffer.view(-1).index_select(0, kernel_of_q[:n_q].view(-1)).view(n_q, -1)
        grad_q = F.embedding_bag(rows_of_q[:n_q], dy_buffer, mode="sum", per_sample_weights=weights)
        grad_rows[i, y0:y1].copy_(grad_q.view(-1, p.w, p.c))
    return grad.to(features.dtype)


def _carafe_kernels(masks, kernel_size, group_size, scale_factor):
    """kernels_of_block for CARAFE's masks [N, G*k*k, H*s, W*s]."""
    s = scale_factor
    m = masks.unflatten(1, (group_size, kernel_size**2))
    return lambda i, y0, y1: m[i, :, :, y0 * s:y1 * s].permute(2, 3, 0, 1)


def carafe(features, masks, kernel_size, group_size, scale_factor):
    if features.numel() == 0:
        return reference.carafe(features, masks, kernel_size, group_size, scale_factor)
    if cpu_native.available(accumulator(features)):
        return _native(features, masks.unflatten(1, (group_size, kernel_size**2)), None, kernel_size, scale_factor)
    return _reassemble(features, _carafe_kernels(masks, kernel_size, group_size, scale_factor), kernel_size,
                       group_size, scale_factor)


def carafe_backward(grad_out, features, masks, kernel_size, group_size, scale_factor):
    if features.numel() == 0:
        return reference.carafe_backward(grad_out, features, masks, kernel_size, group_size, scale_factor)
    k, g, s = kernel_size, group_size, scale_factor
    if cpu_native.available(accumulator(features)):
        grad_features, grad_masks = _native_backward(grad_out, features, masks.unflatten(1, (g, k * k)), None, k, s)
        return grad_features, grad_masks.view(masks.shape).to(masks.dtype)
    grad_masks = new_output(masks, masks.shape, memory_format=torch.contiguous_format)
    grad_blocks = grad_masks.unflatten(1, (g, k * k))

    def store(i, y0, y1, d):
        grad_blocks[i, :, :, y0 * s:y1 * s] = d.permute(2, 3, 0, 1)

    grad_features = _reassemble_backward(grad_out, features, _carafe_kernels(masks, k, g, s), store, k, g, s)
    return grad_features, grad_masks


def _dlu_sampling(features, kernel_logits, offsets, kernel_size, group_size, scale_factor):
    """DLU's kernel space [N*G, k*k, H, W], its sampling grid's NaN points (None when it has
    none) and safe grid [N*G, H*s, W*s, 2] (the reference's functions), and kernels_of_block:
    image i's kernels sampled for source rows y0 .. y1 (the reference's _sample, its NaN
    masking skipped when there is none)."""
    _, _, h, w = features.shape
    g, s = group_size, scale_factor
    space = reference.kernel_space(kernel_logits, kernel_size, g)
    nan, safe = reference.safe_grid(reference.sampling_grid(offsets, g, s, h, w))
    nan = nan if bool(nan.any()) else None

    def block(i, y0, y1):
        images, rows = slice(i * g, (i + 1) * g), slice(y0 * s, y1 * s)
        masks = reference.grid_sample(space[images], safe[images, rows])
        if nan is not None:
            masks = masks.masked_fill(nan[images, None, rows], float("nan"))
        return masks.permute(2, 3, 0, 1)

    return space, nan, safe, block


def dlu_upsample(features, kernel_logits, offsets, kernel_size, group_size, scale_factor):
    if features.numel() == 0:
        return reference.dlu_upsample(features, kernel_logits, offsets, kernel_size, group_size, scale_factor)
    if cpu_native.available(accumulator(features)):
        space = reference.kernel_space(kernel_logits, kernel_size, group_size)
        return _native(features, space.unflatten(0, (-1, group_size)), offsets, kernel_size, scale_factor)
    *_, block = _dlu_sampling(features, kernel_logits, offsets, kernel_size, group_size, scale_factor)
    return _reassemble(features, block, kernel_size, group_size, scale_factor)


def dlu_upsample_backward(grad_out, features, kernel_logits, offsets, kernel_size, group_size, scale_factor):
    if features.numel() == 0:
        return reference.dlu_upsample_backward(grad_out, features, kernel_logits, offsets, kernel_size, group_size,
                                               scale_factor)
    k, g, s = kernel_size, group_size, scale_factor
    if cpu_native.available(accumulator(features)):
        space = reference.kernel_space(kernel_logits, k, g)
        grad_features, (grad_space, grad_offsets) = _native_backward(
            grad_out, features, space.unflatten(0, (-1, g)), offsets, k, s)
        grad_logits = reference.softmax_backward(grad_space.view(space.shape), space.to(grad_space.dtype))
        grad_logits = grad_logits.reshape(kernel_logits.shape).to(kernel_logits.dtype)
        return grad_features, grad_logits, grad_offsets.to(offsets.dtype)
    space, nan, safe, block = _dlu_sampling(features, kernel_logits, offsets, k, g, s)
    grad_space = torch.zeros_like(space)
    grad_grid = new_output(safe, safe.shape, memory_format=torch.contiguous_format)

    def store(i, y0, y1, d):
        images, rows = slice(i * g, (i + 1) * g), slice(y0 * s, y1 * s)
        d = d.permute(2, 3, 0, 1).to(space.dtype)
        if nan is not None:
            gs, gg = reference.masks_backward(d, space[images], nan[images, rows], safe[images, rows])
        else:
            gs, gg = reference.grid_sample_backward(d, space[images], safe[images, rows])
        grad_space[images] += gs
        grad_grid[images, rows] = gg

    grad_features = _reassemble_backward(grad_out, features, block, store, k, g, s)
    grad_logits, grad_offsets = reference.logits_and_offsets_backward(grad_space, grad_grid, space, kernel_logits, g, s)
    return grad_features, grad_logits, grad_offsets
