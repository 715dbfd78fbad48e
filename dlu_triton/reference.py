"""The slow, obviously-correct PyTorch reference: the oracle of every test and the CPU path.

It computes DLU the way the paper's code does (softmax at low resolution, offsets through
pixel_shuffle, grid_sample with border padding and align_corners=True, CARAFE reassembly by
unfold), so every intermediate (the high-resolution mask included) exists in memory. See
`docs/semantics.md` for the contract.

Non-finite values. A NaN offset makes its output point NaN (every channel of its group) and its
offsets' gradient NaN, and sends nothing into the logits' gradient. grid_sample alone would
segfault on a NaN coordinate on CPU and sample pixel 0 on CUDA (pytorch/pytorch#24823), so the
point is sampled at a harmless position and marked afterwards. Infinite offsets clamp to the
border like any large offset. NaN or +inf logits, and NaN or infinite features, propagate
through the softmax and the sums as PyTorch's own ops propagate them.

The backward functions spell the gradient out with ATen's own backward kernels, because the
custom ops call them where autograd is switched off; tests check them against autograd through
the forward functions.

Shared with the CPU path. dlu_triton.cpu computes DLU's kernel space and its softmax's backward
with `kernel_space` and `softmax_backward`, and its fallback (no C compiler) samples and
differentiates the kernels with `sampling_grid`, `safe_grid`, `grid_sample`,
`grid_sample_backward`, `masks_backward` and `logits_and_offsets_backward`: public, because the
oracle and the code it checks share them. tests/test_reference.py checks them through this
module's forward (against the contract written out as loops) and backward (against autograd).
"""
import torch
import torch.nn.functional as F


def _normalise(pos, size):
    # align_corners=True sends -1 and +1 to the centres of pixels 0 and size-1. The official code
    # divides by size-1, which is zero for a single pixel; there every position, infinite ones
    # included, pins to pixel 0, and the clamp keeps a NaN NaN.
    return pos * (2.0 / (size - 1)) - 1.0 if size > 1 else pos.clamp(0.0, 0.0)


def sampling_grid(offsets, group_size, scale_factor, height, width):
    """grid_sample's normalised grid, (N*G, s*H, s*W, 2), from low-resolution pixel offsets."""
    n, s = offsets.shape[0], scale_factor
    off = F.pixel_shuffle(offsets, s).view(n, group_size, 2, s * height, s * width)
    iy = torch.arange(s * height, device=offsets.device, dtype=offsets.dtype).div(s, rounding_mode="floor")
    ix = torch.arange(s * width, device=offsets.device, dtype=offsets.dtype).div(s, rounding_mode="floor")
    gx = _normalise(ix + off[:, :, 0], width)
    gy = _normalise(iy[:, None] + off[:, :, 1], height)
    return torch.stack((gx, gy), dim=-1).view(n * group_size, s * height, s * width, 2)


def kernel_space(kernel_logits, kernel_size, group_size):
    """The softmax of each group's k*k logits per low-resolution pixel: [N*G, k*k, H, W]."""
    n, _, h, w = kernel_logits.shape
    return F.softmax(kernel_logits.reshape(n * group_size, kernel_size**2, h, w), dim=1)


def safe_grid(grid):
    """The grid's NaN points, and the grid with them moved to a harmless position."""
    nan = grid.isnan().any(-1)
    return nan, grid.masked_fill(nan[..., None], 0.0)


def _sample(space, grid):
    """grid_sample of the kernel space, NaN where the grid is; also the NaN points and the safe grid."""
    nan, safe = safe_grid(grid)
    return grid_sample(space, safe).masked_fill(nan[:, None], float("nan")), nan, safe


def grid_sample(space, grid):
    return F.grid_sample(space, grid, mode="bilinear", padding_mode="border", align_corners=True)


def dlu_masks(kernel_logits, offsets, kernel_size, group_size, scale_factor):
    """The high-resolution reassembly mask (N, G*k*k, s*H, s*W) that DLU samples."""
    n, _, h, w = kernel_logits.shape
    s = scale_factor
    space = kernel_space(kernel_logits, kernel_size, group_size)
    masks = _sample(space, sampling_grid(offsets, group_size, s, h, w))[0]
    return masks.reshape(n, group_size * kernel_size**2, s * h, s * w)


def carafe(features, masks, kernel_size, group_size, scale_factor):
    """mmcv's CARAFE: out[c, o] = sum_j masks[g*k*k + j, o] * features[c, src(o) + tap_j]."""
    n, c, h, w = features.shape
    k, g, s = kernel_size, group_size, scale_factor
    cols = F.unfold(features, k, padding=k // 2).view(n, g, c // g, k * k, h, w)
    m = masks.reshape(n, g, k * k, h, s, w, s)
    out = torch.einsum("ngcjhw,ngjhawb->ngchawb", cols, m)
    return out.reshape(n, c, s * h, s * w)


def dlu_upsample(features, kernel_logits, offsets, kernel_size, group_size, scale_factor):
    masks = dlu_masks(kernel_logits, offsets, kernel_size, group_size, scale_factor)
    return carafe(features, masks, kernel_size, group_size, scale_factor)


def carafe_backward(grad_out, features, masks, kernel_size, group_size, scale_factor):
    """Gradients of `carafe` for features and masks."""
    n, c, h, w = features.shape
    k, g, s = kernel_size, group_size, scale_factor
    cols = F.unfold(features, k, padding=k // 2).view(n, g, c // g, k * k, h, w)
    go = grad_out.reshape(n, g, c // g, h, s, w, s)
    m = masks.reshape(n, g, k * k, h, s, w, s)
    grad_masks = torch.einsum("ngchawb,ngcjhw->ngjhawb", go, cols).reshape(n, g * k * k, s * h, s * w)
    grad_cols = torch.einsum("ngchawb,ngjhawb->ngcjhw", go, m).reshape(n, c * k * k, h * w)
    grad_features = F.fold(grad_cols, (h, w), k, padding=k // 2)
    return grad_features, grad_masks


def masks_backward(grad_masks, space, nan, safe):
    """The sampled masks' gradient ([N*G, k*k, s*H', s*W], H' rows of the output) sent through
    grid_sample: the kernel space's gradient and the grid's (NaN where the grid is)."""
    grad_space, grad_grid = grid_sample_backward(grad_masks.masked_fill(nan[:, None], 0.0), space, safe)
    return grad_space, grad_grid.masked_fill(nan[..., None], float("nan"))


def grid_sample_backward(grad_masks, space, grid):
    """grid_sample's gradients for the kernel space and the grid."""
    # 0: bilinear, 1: border padding, True: align_corners; both gradients
    return torch.ops.aten.grid_sampler_2d_backward(grad_masks, space, grid, 0, 1, True, [True, True])


def softmax_backward(grad_space, space):
    """The kernel space's gradient [N*G, k*k, H, W] back through its softmax over the taps."""
    return space * (grad_space - (space * grad_space).sum(1, keepdim=True))


def logits_and_offsets_backward(grad_space, grad_grid, space, kernel_logits, group_size, scale_factor):
    """The softmax's and the sampling grid's gradients back to the logits and the offsets."""
    n, _, h, w = kernel_logits.shape
    g, s = group_size, scale_factor
    grad_logits = softmax_backward(grad_space, space)
    # d grid / d offset is the normalisation's slope (zero for a single pixel).
    gx = grad_grid[..., 0] * (2.0 / (w - 1) if w > 1 else 0.0)
    gy = grad_grid[..., 1] * (2.0 / (h - 1) if h > 1 else 0.0)
    grad_off = torch.stack((gx, gy), dim=1).reshape(n, 2 * g, h, s, w, s)
    # pixel_unshuffle, spelled out: F.pixel_unshuffle returns an empty batch unreshaped.
    grad_offsets = grad_off.permute(0, 1, 3, 5, 2, 4).reshape(n, 2 * g * s * s, h, w)
    return grad_logits.reshape(kernel_logits.shape), grad_offsets


def dlu_upsample_backward(grad_out, features, kernel_logits, offsets, kernel_size, group_size, scale_factor):
    """Gradients of `dlu_upsample` for features, kernel_logits and offsets."""
    n, _, h, w = features.shape
    k, g, s = kernel_size, group_size, scale_factor
    space = kernel_space(kernel_logits, k, g)
    masks, nan, safe = _sample(space, sampling_grid(offsets, g, s, h, w))
    grad_features, grad_masks = carafe_backward(grad_out, features, masks.reshape(n, g * k * k, s * h, s * w), k, g, s)
    grad_space, grad_grid = masks_backward(grad_masks.reshape(masks.shape), space, nan, safe)
    return (grad_features, *logits_and_offsets_backward(grad_space, grad_grid, space, kernel_logits, g, s))
