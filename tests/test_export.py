"""Export: a plain torch.onnx.export of a model holding DLU and CARAFEPack (either exporter, any
batch, height and width) and dlu_triton.export.to_onnx write standard ONNX operators that
TensorRT's parser and onnxruntime take, with no k*k copy of the features and no full-size DLU
mask; onnxruntime on CPU matches the float64 reference. torch.export keeps the fused op."""
import pytest
import torch

import dlu_triton
from dlu_triton import cpu, export, reference

from .tolerance import assert_close

onnx = pytest.importorskip("onnx", reason="ONNX export is tested with the test extra (pip install -e '.[test]')")
ort = pytest.importorskip("onnxruntime", reason="ONNX export is tested with the test extra (pip install -e '.[test]')")

# Every operator the exporters write for the composition (and the neck's Conv and Relu), each
# checked in TensorRT's ONNX parser table (onnx-tensorrt docs/operators.md, TensorRT 10: opsets 9
# to 20) and onnxruntime's CPU kernels for the opset and dtypes written: docs/api.md.
SUPPORTED = {"Add", "Cast", "Clip", "Concat", "Constant", "ConstantOfShape", "Conv", "DepthToSpace", "Div", "Expand",
             "Floor", "Gather", "Identity", "IsNaN", "MatMul", "Max", "Min", "Mul", "Pad", "Range", "Relu",
             "Reshape", "Shape", "Slice", "Softmax", "Squeeze", "Sub", "Transpose", "Unsqueeze", "Where"}
# TensorRT takes these operators' axes only as constants: {operator: index of its axes input}.
CONSTANT_AXES = {"Slice": 3, "Squeeze": 1, "Unsqueeze": 1, "Pad": 3}
DYNAMIC = {"x": {0: "batch", 2: "height", 3: "width"}}


@pytest.fixture(autouse=True)
def reference_ops(monkeypatch):
    """The expected values are the model run with the PyTorch reference in its ops (on CPU
    without Triton's interpreter the ops call dlu_triton.cpu, here made the reference)."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(cpu, "dlu_upsample", reference.dlu_upsample)
    monkeypatch.setattr(cpu, "carafe", reference.carafe)


def trained(module):
    with torch.no_grad():  # offsets off zero, kernels far from uniform
        for p in module.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return module.eval()


def run_onnx(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


def check_operators(graph, others=frozenset()):
    """Standard operators only, each one in SUPPORTED or the rest of the model's `others`, axes
    constant where TensorRT needs them."""
    onnx.checker.check_model(graph, full_check=True)
    assert not graph.functions, "every operator is inlined: no custom functions"
    custom = {(node.domain, node.op_type) for node in graph.graph.node if node.domain not in ("", "ai.onnx")}
    assert not custom, f"non-standard operators: {sorted(custom)}"
    ops = {node.op_type for node in graph.graph.node}
    assert ops <= SUPPORTED | others, f"operators outside the checked list: {sorted(ops - SUPPORTED - others)}"
    constants = {i.name for i in graph.graph.initializer}
    constants.update(o for node in graph.graph.node if node.op_type == "Constant" for o in node.output)
    for node in graph.graph.node:
        axes = CONSTANT_AXES.get(node.op_type)
        if axes is not None and len(node.input) > axes and node.input[axes]:
            assert node.input[axes] in constants, f"{node.op_type} {node.name}: axes computed at run time"


def largest_intermediate(path, x):
    """The element count of the largest value the graph computes, run on x by onnxruntime."""
    graph = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    outputs = {o.name for o in graph.graph.output}
    typed = {v.name: v for v in graph.graph.value_info}
    computed = [o for node in graph.graph.node if node.op_type != "Constant" for o in node.output if o]
    untyped = [o for o in computed if o not in typed and o not in outputs]
    assert not untyped, f"values shape inference did not type (their size would go unchecked): {untyped[:5]}"
    graph.graph.output.extend(typed[o] for o in computed if o not in outputs)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return max(v.size for v in session.run(None, {session.get_inputs()[0].name: x.numpy()}))


@pytest.mark.parametrize("upsampler", [dlu_triton.DLU, dlu_triton.CARAFEPack])
def test_to_onnx_with_dynamic_batch_height_and_width(upsampler, tmp_path):
    """to_onnx: one exported model, run at sizes other than its example's (odd, and H = 1),
    groups and s = 3."""
    model = trained(upsampler(8, 3, up_kernel=5, up_group=2, compressed_channels=4))
    path = tmp_path / "model.onnx"
    dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("h", min=1, max=512),
            3: torch.export.Dim("w", min=2, max=512)}
    export.to_onnx(model, (torch.randn(2, 8, 6, 7),), path, dynamic_shapes=(dims,))
    check_operators(onnx.load(str(path)))
    for shape in [(1, 8, 9, 4), (2, 8, 1, 11), (1, 8, 13, 17)]:
        x = torch.randn(shape)
        assert_close(f"onnxruntime output at {shape}", run_onnx(path, x), model.double()(x.double()))


def test_exported_program_without_onnx_keeps_only_standard_ops():
    model = trained(dlu_triton.DLU(8, 2, up_kernel=3, compressed_channels=4))
    x = torch.randn(1, 8, 4, 5)
    program = torch.export.export(model, (x,)).run_decompositions(export.decompositions())
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert not any("dlu_triton" in t for t in targets)
    assert {"aten.index_select.default", "aten.matmul.default"} <= targets
    assert_close("exported program", program.module()(x), model.double()(x.double()))


class Neck(torch.nn.Module):
    """CARAFEPack and DLU among other layers: a convolution, 2x CARAFE, a ReLU, 2x DLU with two
    groups, a convolution. Channels above G*s*s make a k*k copy of either upsampler's features,
    or DLU's full-size mask, larger than anything the composition computes."""

    def __init__(self, channels=16, k=5):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, channels, 3, padding=1)
        self.carafe = trained(dlu_triton.CARAFEPack(channels, 2, up_kernel=k, compressed_channels=4))
        self.dlu = trained(dlu_triton.DLU(channels, 2, up_kernel=k, up_group=2, compressed_channels=4))
        self.head = torch.nn.Conv2d(channels, 4, 1)

    def forward(self, x):
        return self.head(self.dlu(torch.relu(self.carafe(self.stem(x)))))


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_plain_torch_onnx_export(dynamo, tmp_path):
    """torch.onnx.export as frameworks call it, with nothing from dlu_triton: standard operators,
    dynamic batch, height and width, onnxruntime at another shape than the example's, and no
    intermediate larger than k copies of DLU's features (CARAFE's would be k*k copies, 1.25x
    that; DLU's full-size mask 2.5x; a k*k copy of DLU's features 5x)."""
    model = Neck().eval()
    path = tmp_path / "neck.onnx"
    torch.onnx.export(model, (torch.randn(2, 3, 5, 6),), str(path), input_names=["x"], output_names=["y"],
                      dynamic_axes=DYNAMIC, dynamo=dynamo)

    check_operators(onnx.load(str(path)))
    x = torch.randn(1, 3, 7, 4)
    assert_close("onnxruntime output", run_onnx(path, x), model.double()(x.double()))
    dlu_features = x.shape[0] * 16 * (2 * x.shape[2]) * (2 * x.shape[3])
    assert largest_intermediate(path, x) <= 5 * dlu_features


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_plain_torch_onnx_export_in_float16(dynamo, tmp_path):
    """model.half() exports; onnxruntime's result is as close to the float64 reference as
    PyTorch's own float16 forward (the tolerance rule: within twice its error). Static shapes:
    the float32 test covers dynamic ones, which double the default exporter's time."""
    model = Neck(k=3).eval()
    path = tmp_path / "neck.onnx"
    x = torch.randn(2, 3, 9, 7, dtype=torch.float16)
    torch.onnx.export(model.half(), (x,), str(path), dynamo=dynamo)
    check_operators(onnx.load(str(path)))
    got = run_onnx(path, x)
    expected = model.double()(x.double())
    assert_close("onnxruntime float16 output", got, expected, lowp=model.half()(x))


def test_openmmlab_neck_exports_as_mmdeploy_exports_it(tmp_path):
    """The neck of docs/openmmlab.md, through the TorchScript exporter at opset 11 (mmdeploy's
    default), runs in onnxruntime at another batch and pyramid size than the example's."""
    pytest.importorskip("mmengine")
    pytest.importorskip("mmcv.cnn")
    from dlu_triton.openmmlab import UpsamplerFPN

    neck = UpsamplerFPN([4, 8, 16, 32], 8, num_outs=5, upsample_cfg=dict(type="dlu", compressed_channels=4))
    neck.init_weights()
    neck = trained(neck)

    def pyramid(n, size):
        return [torch.randn(n, c, size >> i | (i == 3), size >> i | (i == 3)) for i, c in enumerate((4, 8, 16, 32))]

    names = [f"level{i}" for i in range(4)]
    path = tmp_path / "neck.onnx"
    torch.onnx.export(neck, (pyramid(2, 16),), str(path), input_names=names, opset_version=11, dynamo=False,
                      dynamic_axes={name: {0: "batch", 2: "height", 3: "width"} for name in names})
    check_operators(onnx.load(str(path)))
    inputs = pyramid(1, 24)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outs = session.run(None, {name: x.numpy() for name, x in zip(names, inputs)})
    expected = neck.double()([x.double() for x in inputs])
    assert len(outs) == len(expected) == 5
    for i, (got, want) in enumerate(zip(outs, expected)):
        assert_close(f"level {i}", torch.from_numpy(got), want)


def test_torch_export_keeps_the_fused_op(tmp_path):
    """Only torch.onnx.export sees the composition: after an ONNX export, torch.export's program
    (AOTInductor's input) holds the custom op, also after its default decompositions."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), dlu_triton.DLU(8, 2, up_kernel=3, compressed_channels=4))
    x = torch.randn(1, 3, 4, 5)
    torch.onnx.export(model, (x,), str(tmp_path / "model.onnx"), dynamo=False)
    program = torch.export.export(model, (x,)).run_decompositions()
    assert "dlu_triton.dlu_upsample.default" in {str(n.target) for n in program.graph.nodes}



def test_ultralytics_exporter(tmp_path, monkeypatch):
    """ultralytics' own exporter (model.export(format="onnx"), which calls the TorchScript
    exporter) on a YOLOv8n whose neck upsamples with DLU and CARAFEPack in place of
    nearest-neighbour; the file runs in onnxruntime at another batch and image size. ultralytics
    is no test dependency (it pulls torchvision and OpenCV, and may move torch): install it to
    run this."""
    ultralytics = pytest.importorskip("ultralytics")
    monkeypatch.chdir(tmp_path)  # the exporter writes next to the model's name
    yolo = ultralytics.YOLO("yolov8n.yaml")  # the packaged config: random weights, nothing downloaded
    layers = yolo.model.model.eval()
    ups = [i for i, m in enumerate(layers) if isinstance(m, torch.nn.Upsample)]
    inputs = {}

    def record(module, args, output):
        inputs[module] = args[0]

    hooks = [layers[i].register_forward_hook(record) for i in ups]
    yolo.model(torch.zeros(1, 3, 64, 64))
    for hook in hooks:
        hook.remove()
    for i, upsampler in zip(ups, (dlu_triton.DLU, dlu_triton.CARAFEPack)):
        new = trained(upsampler(inputs[layers[i]].shape[1], 2, compressed_channels=16))
        new.f, new.i, new.type, new.np = layers[i].f, i, upsampler.__name__, 0  # ultralytics' layer attributes
        layers[i] = new

    path = yolo.export(format="onnx", imgsz=(96, 64), dynamic=True, device="cpu")
    check_operators(onnx.load(path), others={"MaxPool", "Sigmoid", "Split"})  # YOLO's own
    x = torch.rand(2, 3, 64, 128)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    assert_close("onnxruntime output", got, yolo.model.double()(x.double())[0])
