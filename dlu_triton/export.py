"""Export: the fused ops replaced by their compositions of standard ops, for torch.export and ONNX.

The fused ops are opaque custom ops, which no exporter can translate. `decompositions()` maps each
to the reference's composition (softmax, pixel_shuffle, grid_sample with border padding and
align_corners, unfold, einsum), which ONNX expresses with standard operators: Softmax,
DepthToSpace, GridSample, Gather, Einsum, Where. torch.onnx's exporter writes opset 18 or newer
(GridSample itself needs 16); onnxruntime runs the result (tested).

    ep = torch.export.export(model, (x,)).run_decompositions(dlu_triton.export.decompositions())
    torch.onnx.export(ep, f="model.onnx", dynamo=True)

or `dlu_triton.export.to_onnx(model, (x,), "model.onnx")`.
"""
import torch

from . import reference


def decompositions():
    """{fused op: its composition}, for ExportedProgram.run_decompositions. Other ops are left as
    they are; for a core-ATen program, update torch.export.default_decompositions() with it."""
    return {
        torch.ops.dlu_triton.dlu_upsample.default: reference.dlu_upsample,
        torch.ops.dlu_triton.carafe.default: reference.carafe,
    }


def to_onnx(model, args, path, dynamic_shapes=None, opset_version=18):
    """Export `model` called on `args` to an ONNX file at `path` (standard operators only);
    returns torch.onnx's ONNXProgram. dynamic_shapes as torch.export takes it."""
    program = torch.export.export(model, tuple(args), dynamic_shapes=dynamic_shapes)
    return torch.onnx.export(program.run_decompositions(decompositions()), f=str(path), dynamo=True,
                             opset_version=opset_version)
