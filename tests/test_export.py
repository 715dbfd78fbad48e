"""torch.export and ONNX: models with DLU and CARAFEPack export to standard ONNX operators
(through the fused ops' decompositions), and onnxruntime on CPU matches the float64 reference."""
import pytest
import torch

import dlu_triton
from dlu_triton import export

from .tolerance import assert_close

onnx = pytest.importorskip("onnx", reason="ONNX export is tested with the test extra (pip install -e '.[test]')")
ort = pytest.importorskip("onnxruntime", reason="ONNX export is tested with the test extra (pip install -e '.[test]')")

def trained(module):
    with torch.no_grad():  # offsets off zero, kernels far from uniform
        for p in module.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return module.eval()


def run_onnx(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


# The reassembly is a product per tap row (MatMul) with that row's windows (Gather of pixel rows);
# DLU's kernels are gathered from the kernel space (Gather); neither unfolds the features into
# k*k copies (no Einsum) nor, for DLU, builds a high-resolution mask (no GridSample).
@pytest.mark.parametrize("upsampler,expected_ops", [(dlu_triton.DLU, {"Softmax", "Gather", "MatMul"}),
                                                    (dlu_triton.CARAFEPack, {"Softmax", "Gather", "MatMul"})])
def test_onnx_export_runs_in_onnxruntime(upsampler, expected_ops, tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), trained(upsampler(8, 2, up_kernel=3, compressed_channels=4)))
    path = tmp_path / "model.onnx"
    export.to_onnx(model, (torch.randn(2, 3, 5, 6),), path, dynamic_shapes=({0: torch.export.Dim("batch")},))

    graph = onnx.load(str(path))
    onnx.checker.check_model(graph, full_check=True)
    assert not graph.functions, "every operator is inlined: no custom functions"
    custom = {(node.domain, node.op_type) for node in graph.graph.node if node.domain not in ("", "ai.onnx")}
    assert not custom, f"non-standard operators: {sorted(custom)}"
    ops = {node.op_type for node in graph.graph.node}
    assert expected_ops <= ops and not {"Einsum", "GridSample"} & ops, sorted(ops)
    assert all(o.domain in ("", "ai.onnx") and o.version >= 18 for o in graph.opset_import)

    x = torch.randn(3, 3, 5, 6)  # another batch size than the exported example
    assert_close("onnxruntime output", run_onnx(path, x), model.double()(x.double()))


@pytest.mark.parametrize("upsampler", [dlu_triton.DLU, dlu_triton.CARAFEPack])
def test_onnx_export_with_dynamic_height_and_width(upsampler, tmp_path):
    """One exported model, run at sizes other than its example's (odd, and H = 1), groups and s = 3."""
    model = trained(upsampler(8, 3, up_kernel=5, up_group=2, compressed_channels=4))
    path = tmp_path / "model.onnx"
    dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("h", min=1, max=512), 3: torch.export.Dim("w", min=2, max=512)}
    export.to_onnx(model, (torch.randn(2, 8, 6, 7),), path, dynamic_shapes=(dims,))
    for shape in [(1, 8, 9, 4), (2, 8, 1, 11), (1, 8, 13, 17)]:
        x = torch.randn(shape)
        assert_close(f"onnxruntime output at {shape}", run_onnx(path, x), model.double()(x.double()))


def test_exported_program_without_onnx_keeps_only_standard_ops():
    model = trained(dlu_triton.DLU(8, 2, up_kernel=3, compressed_channels=4))
    x = torch.randn(1, 8, 4, 5)
    program = torch.export.export(model, (x,)).run_decompositions(export.decompositions())
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert not any("dlu_triton" in t for t in targets) and {"aten.index_select.default", "aten.matmul.default"} <= targets
    assert_close("exported program", program.module()(x), model.double()(x.double()))
