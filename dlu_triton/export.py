"""Export: the fused ops replaced by compositions of standard ops, for torch.export and ONNX.

The fused ops are opaque custom ops, which no ONNX exporter can translate. `dlu_upsample` and
`carafe` here are compositions that ONNX expresses with standard operators and that keep the
fused ops' memory: no k*k copy of the features (unfold) and, for DLU, no high-resolution mask.
A plain `torch.onnx.export(model, ...)`, either exporter, records them in place of the ops (the
public functions route here while an ONNX export runs: ops._call); `decompositions()` maps the
ops to them for a program from torch.export, which keeps the ops.

The reassembly is k matrix products, one per row ky of taps, batched over the low-resolution
pixels p = (y, x) of each group:

    out[p, sy] += K_ky[p, sy] [s, k] @ windows_ky[p] [k, C/G],   windows_ky[p][kx] = Xp[y + ky, x + kx],

Xp the zero-padded features, channels last. A row's windows are one Gather of Xp's pixel rows
(k copies of the features, not k*k), and its product writes the output once, so onnxruntime
makes k passes over the output instead of the 4*k*k of a product and a sum per tap (measured:
docs/benchmarks.md, "CPU"). A product's batch is (y, sub-pixel row, x), so its output
[N, G, H, s, W, s, C/G] needs one Transpose, of the channel axis alone, at the end. Each row's
windows are gathered after the sum so far, so that onnxruntime holds one row's temporaries at
a time.

CARAFE's K_ky is its masks' row-ky taps, rearranged once (Reshape, Transpose). DLU's is sampled
from the low-resolution kernel space: its 4 corners' indices and bilinear weights are computed
once per output point (Floor, Clip), then each row gathers its k taps at the 4 corners from
that row's columns of the kernel space (Gather), so no more than one row's kernels
(G*s*s*H*W*k values) exist at a time. The numbers are the reference's (same softmax, same
clamping to the border, a NaN offset gives NaN outputs); the tests compare onnxruntime with the
float64 reference. Sampling positions are float32 at least (float16 would put a position past 64
up to 1/32 of a pixel off, and ONNX's Range has no float16). H, W and the batch can be dynamic.

    torch.onnx.export(model, (x,), "model.onnx")   # or dynamo=False: the public functions route here
    ep = torch.export.export(model, (x,)).run_decompositions(dlu_triton.export.decompositions())
    torch.onnx.export(ep, f="model.onnx")          # a program from torch.export, raw ops included

or `dlu_triton.export.to_onnx(model, (x,), "model.onnx")`, which does the latter.
"""
import torch
import torch.nn.functional as F


def _reassemble(features, kernels_of_row, kernel_size, group_size, scale_factor):
    """The sum over tap rows ky of kernels_of_row(ky) [N, G, H, s, W, s, k] @ the row's windows."""
    n, c, h, w = features.shape
    k, g, s = kernel_size, group_size, scale_factor
    r = k // 2
    wp = w + 2 * r
    table = F.pad(features, (r, r, r, r)).reshape(n, g, c // g, -1).transpose(2, 3)  # [N, G, Hp*Wp, C/G]
    ys = torch.arange(h, device=features.device).reshape(h, 1, 1)
    xs = torch.arange(w, device=features.device).reshape(w, 1)
    first_pixel = (ys * wp + xs + torch.arange(k, device=features.device)).reshape(-1)  # [H*W*k]: row 0's windows
    out = None
    for ky in range(k):
        kernels, where = kernels_of_row(ky), first_pixel + ky * wp
        if out is not None:
            # The same values, made to wait for the sum so far: onnxruntime runs ready nodes in
            # breadth-first order, and would otherwise gather every row's windows and form every
            # product before adding any (28x the output's memory at k = 5, measured).
            wait = torch.isnan(out.reshape(-1)[:1])
            kernels, where = torch.where(wait, kernels, kernels), torch.where(wait, where, where)
        windows = table.index_select(2, where).reshape(n, g, h, 1, w, k, c // g)
        term = torch.matmul(kernels, windows)  # [N, G, H, s, W, s, C/G]
        out = term if out is None else out + term
    return out.permute(0, 1, 6, 2, 3, 4, 5).reshape(n, c, h * s, w * s)


def carafe(features, masks, kernel_size, group_size, scale_factor):
    """CARAFE with each tap row's kernels taken from the masks [N, G*k*k, s*H, s*W]."""
    n, _, h, w = features.shape
    k, g, s = kernel_size, group_size, scale_factor
    rows = masks.reshape(n, g, k, k, h, s, w, s).permute(0, 1, 2, 4, 5, 6, 7, 3)  # [N, G, ky, H, s, W, s, kx]
    return _reassemble(features, lambda ky: rows[:, :, ky], k, g, s)


def _corner(position):
    """A clamped sampling position's lower corner (as an index; a NaN position counts as 0, its
    weights stay NaN) and the fraction towards the upper one."""
    low = torch.floor(torch.where(torch.isnan(position), torch.zeros_like(position), position))
    return low, position - low


def dlu_upsample(features, kernel_logits, offsets, kernel_size, group_size, scale_factor):
    """DLU with each tap row's kernels gathered from the kernel space at the 4 corners of each
    output point: the reference's numbers without its high-resolution mask."""
    n, _, h, w = features.shape
    k, g, s = kernel_size, group_size, scale_factor
    space = torch.softmax(kernel_logits.reshape(n, g, k * k, h * w), dim=2)
    space = space.transpose(2, 3).reshape(n * g * h * w, k * k)
    position = torch.promote_types(offsets.dtype, torch.float32)
    off = offsets.to(position).reshape(n, g, 2, s, s, h, w).permute(0, 1, 2, 5, 3, 6, 4)  # [N, G, 2, H, s, W, s]
    ys = torch.arange(h, dtype=position, device=offsets.device).reshape(h, 1, 1, 1)
    xs = torch.arange(w, dtype=position, device=offsets.device).reshape(w, 1)
    # the border clamp of grid_sample(padding_mode="border", align_corners=True); NaN stays NaN
    y0, fy = _corner(torch.clamp(off[:, :, 1] + ys, min=0, max=h - 1))
    x0, fx = _corner(torch.clamp(off[:, :, 0] + xs, min=0, max=w - 1))
    y1 = torch.clamp(y0 + 1, max=h - 1)
    x1 = torch.clamp(x0 + 1, max=w - 1)
    image = (torch.arange(n * g, device=offsets.device) * (h * w)).reshape(n, g, 1, 1, 1, 1)  # space's rows of (n, g)
    corners = [((image + yy.long() * w + xx.long()).reshape(-1), wt.to(space.dtype).unsqueeze(-1))
               for yy, xx, wt in ((y0, x0, (1 - fy) * (1 - fx)), (y0, x1, (1 - fy) * fx),
                                  (y1, x0, fy * (1 - fx)), (y1, x1, fy * fx))]

    def kernels_of_row(ky):
        taps = space[:, ky * k:(ky + 1) * k]  # [N*G*H*W, k]
        return sum(wt * taps.index_select(0, idx).reshape(n, g, h, s, w, s, k) for idx, wt in corners)

    return _reassemble(features, kernels_of_row, k, g, s)


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
