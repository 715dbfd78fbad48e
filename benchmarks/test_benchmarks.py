"""The benchmark suite: `pytest benchmarks --benchmark-enable --benchmark-only` on a GPU.

Each case records in extra_info the minimal bytes (inputs read once, outputs written once), the
achieved GB/s and the fraction of the bandwidth floor (bytes / copy bandwidth measured in the same
run), the FLOPs, and triton.testing.do_bench's median and 20/80% quantiles. On CPU the cases
shrink to tiny shapes so CI can smoke-run them with --benchmark-disable.
"""
import pytest
import torch

from dlu_triton import benchmark as B
from dlu_triton import flops, ops, reference

from .conftest import DEVICE

GPU = DEVICE == "cuda"
# (N, C, H, W, k, s): the anchors, an FPN top-down path, s = 4/8/16 near 384x384, and k = 3.
ANCHORS = [(2, 256, 128, 128, 5, 2), (8, 256, 100, 152, 5, 2), (1, 256, 16, 16, 5, 16)]
FPN = [(2, 256, 25, 38, 5, 2), (2, 256, 50, 76, 5, 2), (2, 256, 100, 152, 5, 2), (2, 256, 200, 304, 5, 2)]
SCALES = [(2, 256, 96, 96, 5, 4), (2, 256, 48, 48, 5, 8), (2, 256, 24, 24, 5, 16)]
K3 = [(2, 256, 100, 152, 3, 2)]
SHAPES = ANCHORS + FPN + SCALES + K3 if GPU else [(1, 4, 2, 3, 3, 2)]
LOW_SHAPES = ([(2, 256, 128, 128, 5, 2), (2, 256, 24, 24, 5, 16)] if GPU else SHAPES[:1])
MODULE_SCALES = [2, 4, 8, 16] if GPU else [2, 4]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CASES = [(shape, "float32") for shape in SHAPES] + [(shape, d) for shape in LOW_SHAPES for d in ("bfloat16", "float16")]


def op_args(op, shape, dtype, requires_grad=False):
    n, c, h, w, k, s = shape
    features, logits, offsets, masks = B.op_inputs(n, c, h, w, k, 1, s, DEVICE, DTYPES[dtype])
    args = (features, logits, offsets) if op == "dlu" else (features, masks)
    return [t.requires_grad_(requires_grad) for t in args]


def forward_backward(fn, args):
    out = fn(*args)
    grad = torch.randn_like(out)
    return lambda: torch.autograd.grad(fn(*args), args, grad)


def minimal_bytes(formula, shape, element_size, direction):
    """The forward's minimal bytes, plus the backward's for forward+backward."""
    n, c, h, w, k, s = shape
    nbytes = formula(n, c, h, w, k, 1, s, element_size)
    return nbytes + (formula(n, c, h, w, k, 1, s, element_size, backward=True) if direction != "fwd" else 0)


def case_info(shape, dtype, direction, impl):
    n, c, h, w, k, s = shape
    return dict(shape=f"N{n} C{c} {h}x{w} k{k} s{s}", dtype=dtype, direction=direction, impl=impl)


OPS = {"dlu": (ops.dlu_upsample, B.dlu_bytes), "carafe": (ops.carafe, B.carafe_bytes)}


@pytest.mark.parametrize("direction", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("shape,dtype", CASES, ids=str)
@pytest.mark.parametrize("op", OPS)
def test_fused(bench, op, shape, dtype, direction):
    n, c, h, w, k, s = shape
    fused, formula = OPS[op]
    fn = lambda *a: fused(*a, k, 1, s)  # noqa: E731
    args = op_args(op, shape, dtype, direction != "fwd")
    run = (lambda: fn(*args)) if direction == "fwd" else forward_backward(fn, args)
    nflops = flops.reassembly_flops(c, h, w, k, s, n) * (1 if direction == "fwd" else 3)
    nbytes = minimal_bytes(formula, shape, args[0].element_size(), direction)
    bench(run, nbytes, nflops, **case_info(shape, dtype, direction, f"{op} fused"))


REFERENCE_SHAPES = ANCHORS[:1] + ANCHORS[2:] if GPU else SHAPES[:1]


REFERENCES = {"dlu": reference.dlu_upsample, "carafe": reference.carafe}


@pytest.mark.parametrize("impl", ["reference", "torch.compile(reference)"])
@pytest.mark.parametrize("direction", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("shape", REFERENCE_SHAPES, ids=str)
@pytest.mark.parametrize("op", OPS)
def test_reference(bench, op, shape, direction, impl):
    """What a user without this package runs: the PyTorch composition, eager or compiled."""
    if impl != "reference" and (not GPU or direction != "fwd"):
        pytest.skip("torch.compile is timed on the GPU, forward only (its compile time is the cost elsewhere)")
    n, c, h, w, k, s = shape
    composed = REFERENCES[op]
    fn = lambda *a: composed(*a, k, 1, s)  # noqa: E731
    if impl != "reference":
        fn = torch.compile(fn)
    args = op_args(op, shape, "float32", direction != "fwd")
    run = (lambda: fn(*args)) if direction == "fwd" else forward_backward(fn, args)
    nflops = flops.reassembly_flops(c, h, w, k, s, n) * (1 if direction == "fwd" else 3)
    nbytes = minimal_bytes(OPS[op][1], shape, 4, direction)
    bench(run, nbytes, nflops, **case_info(shape, "float32", direction, f"{op} {impl}"))


@pytest.mark.parametrize("direction", ["fwd", "fwd+bwd"] + (["fwd+bwd graphed"] if GPU else []))
@pytest.mark.parametrize("method", ["DLU", "CARAFEPack"])
@pytest.mark.parametrize("scale", MODULE_SCALES)
def test_modules(bench, scale, method, direction):
    """Whole upsamplers, convolutions included: N2 C256, output 256x256 (CPU: tiny). On a GPU
    also the training step replayed from CUDA graphs, without the host's costs."""
    n, c, out = (2, 256, 256) if GPU else (1, 4, 16)
    h = w = out // scale
    x = torch.randn(n, c, h, w, device=DEVICE)
    fwd, fwd_bwd = B.module_calls(method, scale, x, graphed=direction.endswith("graphed"))
    run = fwd if direction == "fwd" else fwd_bwd
    nbytes = n * c * h * w * 4 * (1 + scale * scale)
    nflops = B.method_flops(method, c, scale, h, w, n) * (1 if direction == "fwd" else 3)
    bench(run, nbytes, nflops, shape=f"N{n} C{c} {h}x{w} s{scale}", dtype="float32", direction=direction, impl=method)


@pytest.mark.skipif(GPU, reason="the CPU paths' script (benchmarks/cpu_paths.py) times the CPU")
def test_cpu_paths_script_rows_run(tmp_path):
    """Every row of benchmarks/cpu_paths.py runs at a tiny shape (ONNX export included), so the
    script cannot rot between the runs that time it; its table is docs/results/cpu-paths.md."""
    pytest.importorskip("onnxruntime")
    from . import cpu_paths

    rows, x = cpu_paths.cases((1, 4, 3, 5, 3, 2, 2), str(tmp_path))
    for make, _ in rows.values():
        call = make()
        if isinstance(call, torch.nn.Module):
            call(x)
        else:
            call()


def test_gpu_targets_bytes_and_plumbing(tmp_path, monkeypatch):
    """benchmarks/gpu_targets.py: its per-operator byte count gives the ops' minimal-bytes formulas
    exactly, the modules' floors favour DLU more as the scale grows, and a run's figures (timings
    stubbed: the script's GPU timings are not the test's) reach the JSON's fields and the table it
    writes between docs/performance.md's markers."""
    from . import gpu_targets as T

    n, c, h, w, k, g, s = 2, 8, 5, 6, 3, 2, 2
    x, logits, offsets = (t.to("meta").requires_grad_() for t in B.op_inputs(n, c, h, w, k, g, s, "cpu")[:3])
    with T._Bytes() as fwd:
        y = ops.dlu_upsample(x, logits, offsets, k, g, s)
    grad = torch.empty_like(y)
    with T._Bytes() as bwd:
        y.backward(grad)
    assert (fwd.total, bwd.total) == (B.dlu_bytes(n, c, h, w, k, g, s, 4), B.dlu_bytes(n, c, h, w, k, g, s, 4, True))
    ratios = [T.module_bytes("DLU", s, 2, 256, 256) / T.module_bytes("CARAFEPack", s, 2, 256, 256) for s in (2, 16)]
    assert 0.5 < ratios[1] < ratios[0] < 1

    monkeypatch.setattr(B, "copy_bandwidth", lambda device, nbytes=None: 1e9)
    monkeypatch.setattr(B, "time_ms", lambda fn, device, reps=None: (2.0, 1.9, 2.1))
    monkeypatch.setattr(B, "host_ms", lambda fn, device, reps: 3.0)
    monkeypatch.setattr(T, "kernels_per_call", lambda fn, device: ({"a": (1, 0.5), "b": (2, 1.0)}, None))
    shape = (1, 4, 2, 3, 3, 1, 2, torch.float32)
    result = T.measure(torch.device("cpu"), "abc1234", anchors=[shape], others=[shape], scales=(2,),
                       module_input=(1, 4, 8), fpn=(1, 4, 2, 3))
    floor_ms = B.dlu_bytes(*shape[:7], 4) / 1e9 * 1e3
    assert result["targets"]["forward_floor_fraction"] == round(floor_ms / 2.0, 3)
    assert result["targets"]["module_graphed_dlu_over_carafe"] == {"2": 1.0}
    assert result["targets"]["eager_host_over_kernels_fpn"] == 2.0
    assert result["commit"] == "abc1234" and len(result["dlu_triton_sha256"]) == 64
    doc = tmp_path / "performance.md"
    doc.write_text("before\n" + T.MARKERS[0] + "\nold table\n" + T.MARKERS[1] + "\nafter\n")
    T.write_table(doc, result)
    text = doc.read_text()
    assert "old table" not in text and T.table(result) in text
    assert text.startswith("before\n" + T.MARKERS[0]) and text.endswith(T.MARKERS[1] + "\nafter\n")
