"""Export: the fused ops replaced by compositions of standard ops, for torch.export and ONNX.

The fused ops are opaque custom ops, which no exporter can translate. `decompositions()` maps each
to a composition that ONNX expresses with standard operators and that keeps the fused ops'
memory: no k*k copy of the features (unfold) and, for DLU, no high-resolution mask. Per tap j of
the k*k, with the output accumulated sub-pixel-major as [N, G, C/G, s*s, H, W] and rearranged by
one DepthToSpace (pixel_shuffle) at the end:

    out[.., t, y, x] += K_j[.., t, y, x] * features_padded[.., y + j // k, x + j % k]

(each tap's rows of the padded features gathered after the sum so far, so that onnxruntime
holds one tap's temporaries at a time).

CARAFE's K_j is its masks' tap-j plane, rearranged by pixel_unshuffle (Reshape, Transpose). DLU's is
sampled from the low-resolution kernel space: its 4 corners' indices and bilinear weights are
computed once per output point (Floor, Clip, Gather), then each tap gathers its 4 values from
that tap's plane of the kernel space, so no more than one tap's kernels (G*s*s*H*W values) exist
at a time. The numbers are the reference's (same softmax, same clamping to the border, a NaN
offset gives NaN outputs); the tests compare onnxruntime with the float64 reference. torch.onnx's
exporter writes opset 18 or newer; H, W and the batch can be dynamic.

    ep = torch.export.export(model, (x,)).run_decompositions(dlu_triton.export.decompositions())
    torch.onnx.export(ep, f="model.onnx", dynamo=True)

or `dlu_triton.export.to_onnx(model, (x,), "model.onnx")`.
"""
import torch
import torch.nn.functional as F


def _reassemble(features, kernel_of_tap, kernel_size, group_size, scale_factor):
    """sum over taps of kernel_of_tap(j) [N, G, 1, s*s, H, W] times the tap's shifted features."""
    n, c, h, w = features.shape
    k, g, s = kernel_size, group_size, scale_factor
    r = k // 2
    padded = F.pad(features, (r, r, r, r)).reshape(n, g, c // g, 1, h + 2 * r, w + 2 * r)
    rows = torch.arange(h, device=features.device)
    out = None
    for j in range(k * k):
        kernel, where = kernel_of_tap(j), rows + j // k
        if out is not None:
            # The same values, made to wait for the sum so far: onnxruntime runs ready nodes in
            # breadth-first order, and would otherwise shift the features for every tap and form
            # every product before adding any (28x the output's memory at k = 5, measured).
            wait = torch.isnan(out.reshape(-1)[:1])
            kernel, where = torch.where(wait, kernel, kernel), torch.where(wait, where, where)
        shifted = padded.index_select(4, where)[..., j % k:j % k + w]
        term = shifted * kernel
        out = term if out is None else out + term
    return F.pixel_shuffle(out.reshape(n, c * s * s, h, w), s)


def carafe(features, masks, kernel_size, group_size, scale_factor):
    """CARAFE as per-tap products with the masks' planes (masks [N, G*k*k, s*H, s*W])."""
    n, _, h, w = features.shape
    k, g, s = kernel_size, group_size, scale_factor
    planes = F.pixel_unshuffle(masks, s).reshape(n, g, k * k, 1, s * s, h, w)
    return _reassemble(features, lambda j: planes[:, :, j], k, g, s)


def _corner(position):
    """A clamped sampling position's lower corner (as an index; a NaN position counts as 0, its
    weights stay NaN) and the fraction towards the upper one."""
    low = torch.floor(torch.where(torch.isnan(position), torch.zeros_like(position), position))
    return low, position - low


def dlu_upsample(features, kernel_logits, offsets, kernel_size, group_size, scale_factor):
    """DLU with each tap's kernels gathered from the kernel space at the 4 corners of each output
    point: the reference's numbers without its high-resolution mask."""
    n, _, h, w = features.shape
    k, g, s = kernel_size, group_size, scale_factor
    space = torch.softmax(kernel_logits.reshape(n, g, k * k, h * w), dim=2)
    off = offsets.reshape(n, g, 2, s * s, h, w)
    ys = torch.arange(h, dtype=offsets.dtype, device=offsets.device).reshape(h, 1)
    xs = torch.arange(w, dtype=offsets.dtype, device=offsets.device)
    # the border clamp of grid_sample(padding_mode="border", align_corners=True); NaN stays NaN
    y0, fy = _corner(torch.clamp(off[:, :, 1] + ys, min=0, max=h - 1))
    x0, fx = _corner(torch.clamp(off[:, :, 0] + xs, min=0, max=w - 1))
    y1 = torch.clamp(y0 + 1, max=h - 1)
    x1 = torch.clamp(x0 + 1, max=w - 1)
    corners = [((yy * w + xx).long().reshape(n, g, -1), wt)
               for yy, xx, wt in ((y0, x0, (1 - fy) * (1 - fx)), (y0, x1, (1 - fy) * fx),
                                  (y1, x0, fy * (1 - fx)), (y1, x1, fy * fx))]

    def kernel_of_tap(j):
        plane = space[:, :, j]  # [N, G, H*W]
        kj = sum(wt * torch.gather(plane, 2, idx).reshape(wt.shape) for idx, wt in corners)
        return kj.reshape(n, g, 1, s * s, h, w)

    return _reassemble(features, kernel_of_tap, k, g, s)


def decompositions():
    """{fused op: its composition}, for ExportedProgram.run_decompositions. Other ops are left as
    they are; for a core-ATen program, update torch.export.default_decompositions() with it."""
    return {
        torch.ops.dlu_triton.dlu_upsample.default: dlu_upsample,
        torch.ops.dlu_triton.carafe.default: carafe,
    }


def to_onnx(model, args, path, dynamic_shapes=None, opset_version=18):
    """Export `model` called on `args` to an ONNX file at `path` (standard operators only);
    returns torch.onnx's ONNXProgram. dynamic_shapes as torch.export takes it."""
    program = torch.export.export(model, tuple(args), dynamic_shapes=dynamic_shapes)
    return torch.onnx.export(program.run_decompositions(decompositions()), f=str(path), dynamo=True,
                             opset_version=opset_version)
