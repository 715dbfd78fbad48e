"""The public ops on both dispatch paths: values and every gradient against the float64
reference, dtypes, layouts, empty batches, validation, opcheck, gradcheck and torch.compile."""
import pytest
import torch

import dlu_triton
from dlu_triton import reference

from .conftest import exact_dtype
from .inputs import LOW, carafe_inputs, dlu_inputs
from .test_reference import load_peer, peer  # noqa: F401  (fixture)
from .tolerance import assert_close

# (N, C, H, W, k, G, s): misaligned sizes, H = 1, W = 1, primes, every k, G and s of the contract.
SHAPES = [
    (2, 8, 5, 7, 3, 2, 2),
    (1, 4, 1, 9, 5, 1, 2),
    (2, 6, 4, 1, 3, 2, 3),
    (1, 4, 3, 4, 1, 4, 4),
    (1, 17, 3, 3, 7, 1, 1),
    (2, 8, 3, 4, 5, 4, 2),
    (1, 8, 2, 3, 3, 2, 8),
    (1, 4, 2, 2, 3, 1, 16),
]
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


def run_dlu(inputs, k, g, s):
    inputs = [t.detach().requires_grad_() for t in inputs]
    out = dlu_triton.dlu_upsample(*inputs, k, g, s)
    grad = torch.randn_like(out)
    return out, grad, torch.autograd.grad(out, inputs, grad)


def reference_results(op, inputs, grad, k, g, s, dtype=torch.float64):
    """The reference's output and gradients ("dlu" or "carafe"), on CPU copies in `dtype`."""
    fwd, bwd = dict(dlu=(reference.dlu_upsample, reference.dlu_upsample_backward),
                    carafe=(reference.carafe, reference.carafe_backward))[op]
    ins = [t.detach().cpu().to(dtype) for t in inputs]
    return [fwd(*ins, k, g, s), *bwd(grad.detach().cpu().to(dtype), *ins, k, g, s)]


def check_against_reference(op, inputs, grad, out, grads, k, g, s):
    """Fused results against the float64 reference, and in low precision against PyTorch's own."""
    names = dict(dlu=("features", "kernel_logits", "offsets"), carafe=("features", "masks"))[op]
    expected = reference_results(op, inputs, grad, k, g, s)
    lowp = reference_results(op, inputs, grad, k, g, s, out.dtype) if out.dtype in LOW else [None] * len(expected)
    for name, a, e, lp in zip(("output",) + tuple(f"grad {n}" for n in names), [out, *grads], expected, lowp):
        assert_close(f"{op} {name}", a, e, lp)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_dlu_matches_reference(shape, device, path):
    n, c, h, w, k, g, s = shape
    inputs = dlu_inputs(n, c, h, w, k, g, s, dtype=exact_dtype(device), device=device)
    out, grad, grads = run_dlu(inputs, k, g, s)
    check_against_reference("dlu", inputs, grad, out, grads, k, g, s)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_carafe_matches_reference(shape, device, path):
    n, c, h, w, k, g, s = shape
    inputs = [t.requires_grad_() for t in carafe_inputs(n, c, h, w, k, g, s, dtype=exact_dtype(device), device=device)]
    out = dlu_triton.carafe(*inputs, k, g, s)
    grad = torch.randn_like(out)
    check_against_reference("carafe", inputs, grad, out, torch.autograd.grad(out, inputs, grad), k, g, s)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
# s = 4 and 8 take the tensor-core products (tf32x3 for float32, tf32 for 16-bit values)
@pytest.mark.parametrize("shape", [(1, 8, 3, 5, 5, 2, 2), (1, 4, 2, 3, 3, 1, 4), (1, 4, 2, 2, 3, 1, 8)], ids=str)
def test_dtypes(shape, dtype, device, path):
    n, c, h, w, k, g, s = shape
    inputs = dlu_inputs(n, c, h, w, k, g, s, dtype=dtype, device=device)
    out, grad, grads = run_dlu(inputs, k, g, s)
    assert out.dtype == dtype and all(gr.dtype == dtype for gr in grads)
    check_against_reference("dlu", inputs, grad, out, grads, k, g, s)
    inputs = [t.requires_grad_() for t in carafe_inputs(n, c, h, w, k, g, s, dtype=dtype, device=device)]
    out = dlu_triton.carafe(*inputs, k, g, s)
    check_against_reference("carafe", inputs, grad, out, torch.autograd.grad(out, inputs, grad), k, g, s)


def test_mmcv_vectors_through_carafe(peer, device, path):  # noqa: F811
    feat, mask = (peer[key].to(device).requires_grad_() for key in ("feat", "mask"))
    out = dlu_triton.carafe(feat, mask, 5, 4, 2)
    out.backward(torch.ones_like(out))
    for got, key in ((out, "output"), (feat.grad, "feat_grad"), (mask.grad, "mask_grad")):
        torch.testing.assert_close(got.detach().cpu(), peer[key], rtol=1e-5, atol=1e-5)


def test_channels_last_and_strided_inputs(device, path):
    n, c, h, w, k, g, s = 2, 8, 5, 6, 3, 2, 2
    inputs = dlu_inputs(n, c, h, w, k, g, s, dtype=exact_dtype(device), device=device)
    cl = [t.contiguous(memory_format=torch.channels_last) for t in inputs]
    out, grad, grads = run_dlu(cl, k, g, s)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert all(gr.is_contiguous(memory_format=torch.channels_last) for gr in grads)
    check_against_reference("dlu", cl, grad, out, grads, k, g, s)
    # Every other column of a wider tensor, and a transposed-then-transposed-back view.
    strided = [torch.cat([t, t], dim=3)[..., ::2] for t in inputs]
    strided[0] = inputs[0].transpose(2, 3).contiguous().transpose(2, 3)
    out, grad, grads = run_dlu(strided, k, g, s)
    check_against_reference("dlu", strided, grad, out, grads, k, g, s)
    features, masks = carafe_inputs(n, c, h, w, k, g, s, dtype=exact_dtype(device), device=device)
    masks = torch.cat([masks, masks], dim=2)[:, :, ::2]
    features = features.contiguous(memory_format=torch.channels_last).requires_grad_()
    masks.requires_grad_()
    out = dlu_triton.carafe(features, masks, k, g, s)
    assert out.is_contiguous(memory_format=torch.channels_last)
    grads = torch.autograd.grad(out, [features, masks], grad)
    check_against_reference("carafe", [features, masks], grad, out, grads, k, g, s)


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="on CPU, Triton's interpreter copies every argument to host memory itself")
def test_channels_last_is_read_in_place():
    """No hidden copy of a features- or output-sized tensor in the launchers: they read the layout."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from dlu_triton.kernels import backward, forward

    class Copies(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.shapes = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in (torch.ops.aten.copy_.default, torch.ops.aten.clone.default, torch.ops.aten._to_copy.default):
                self.shapes.append(tuple(args[0].shape))
            return func(*args, **(kwargs or {}))

    n, c, h, w, k, g, s = 2, 16, 9, 11, 5, 2, 2
    inputs = [t.contiguous(memory_format=torch.channels_last)
              for t in dlu_inputs(n, c, h, w, k, g, s, dtype=torch.float32, device="cuda")]
    grad = torch.randn(n, c, s * h, s * w, device="cuda").contiguous(memory_format=torch.channels_last)
    with Copies() as spy:
        out = forward.dlu_forward(*inputs, k, g, s)
        grads = backward.dlu_backward(grad, *inputs, k, g, s)
    big = {tuple(inputs[0].shape), tuple(out.shape)}
    assert not big & set(spy.shapes), f"copies of shapes {spy.shapes}"
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert grads[0].is_contiguous(memory_format=torch.channels_last)


def test_empty_batch(device, path):
    inputs = [t.requires_grad_() for t in dlu_inputs(0, 4, 3, 5, 3, 1, 2, dtype=exact_dtype(device), device=device)]
    out = dlu_triton.dlu_upsample(*inputs, 3, 1, 2)
    assert out.shape == (0, 4, 6, 10)
    out.sum().backward()
    assert all(t.grad.shape == t.shape for t in inputs)
    inputs = carafe_inputs(0, 4, 3, 5, 3, 1, 2, dtype=exact_dtype(device), device=device)
    features, masks = (t.requires_grad_() for t in inputs)
    out = dlu_triton.carafe(features, masks, 3, 1, 2)
    assert out.shape == (0, 4, 6, 10)
    out.sum().backward()
    assert features.grad.shape == features.shape and masks.grad.shape == masks.shape


def test_gradcheck(device, path):
    inputs = [t.requires_grad_() for t in dlu_inputs(1, 2, 2, 3, 3, 1, 2, device=device, offset_scale=1.0)]
    assert torch.autograd.gradcheck(lambda *a: dlu_triton.dlu_upsample(*a, 3, 1, 2), inputs, fast_mode=True)
    inputs = [t.requires_grad_() for t in carafe_inputs(1, 4, 2, 3, 3, 2, 2, device=device)]
    assert torch.autograd.gradcheck(lambda *a: dlu_triton.carafe(*a, 3, 2, 2), inputs, fast_mode=True)


def test_opcheck(device, path):
    shape = dict(dtype=exact_dtype(device), device=device)
    torch.library.opcheck(torch.ops.dlu_triton.dlu_upsample, (*dlu_inputs(2, 4, 3, 5, 3, 2, 2, **shape), 3, 2, 2))
    torch.library.opcheck(torch.ops.dlu_triton.carafe, (*carafe_inputs(2, 4, 3, 5, 3, 2, 2, **shape), 3, 2, 2))


@pytest.mark.parametrize("op", ["dlu", "carafe"])
def test_eager_call_is_the_custom_op_without_its_layers(op, device, path, deterministic, monkeypatch):
    """An eager call on plain tensors goes through ops._Eager, not the custom op's dispatcher
    layers; its values and gradients are bitwise the custom op's (deterministic mode, so the
    logits gradient's summation order is fixed)."""
    from dlu_triton import ops
    eager = []
    real = ops._Eager.apply
    monkeypatch.setattr(ops._Eager, "apply", lambda *a: eager.append(op) or real(*a))
    make, public, custom = dict(dlu=(dlu_inputs, dlu_triton.dlu_upsample, torch.ops.dlu_triton.dlu_upsample),
                                carafe=(carafe_inputs, dlu_triton.carafe, torch.ops.dlu_triton.carafe))[op]
    inputs = make(2, 8, 5, 7, 3, 2, 2, dtype=exact_dtype(device), device=device)
    results = []
    for fn in (public, custom):
        ins = [t.clone().requires_grad_() for t in inputs]
        out = fn(*ins, 3, 2, 2)
        grad = torch.ones_like(out).cumsum(-1)
        results.append([out, *torch.autograd.grad(out, ins, grad)])
    assert eager == [op]
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_jit_trace_records_the_custom_op():
    inputs = dlu_inputs(1, 2, 3, 4, 3, 1, 2, dtype=torch.float32)
    traced = torch.jit.trace(lambda *a: dlu_triton.dlu_upsample(*a, 3, 1, 2), inputs)
    assert "dlu_triton::dlu_upsample" in str(traced.graph)
    assert torch.equal(traced(*inputs), dlu_triton.dlu_upsample(*inputs, 3, 1, 2))


def test_double_backward_is_refused(device, path):
    inputs = [t.requires_grad_() for t in dlu_inputs(1, 2, 3, 4, 3, 1, 2, dtype=exact_dtype(device), device=device)]
    grads = torch.autograd.grad(dlu_triton.dlu_upsample(*inputs, 3, 1, 2).square().sum(), inputs, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        grads[0].sum().backward()


def test_compiled_module_has_no_graph_break(device, path, monkeypatch):
    """fullgraph=True (no graph break), equal to eager, and the fused kernels are what runs: the
    op is not decomposed into slow ones (inductor on CUDA, aot_eager on CPU)."""
    from dlu_triton.kernels import backward, forward
    launches = []
    for module, name in ((forward, "dlu_forward"), (backward, "dlu_backward")):
        real = getattr(module, name)
        monkeypatch.setattr(module, name,
                            lambda *a, _real=real, _name=name, **kw: launches.append(_name) or _real(*a, **kw))
    backend = "inductor" if device == "cuda" else "aot_eager"
    dtype = exact_dtype(device)
    module = dlu_triton.DLU(8, 2, up_kernel=3, compressed_channels=4).to(device, dtype)
    with torch.no_grad():
        module.conv_offset.weight.normal_(std=0.3)
    compiled = torch.compile(module, backend=backend, fullgraph=True)
    x = torch.randn(2, 8, 4, 5, device=device, dtype=dtype, requires_grad=True)
    out = compiled(x)
    out.square().sum().backward()
    assert launches == (["dlu_forward", "dlu_backward"] if path == "triton" else [])
    got = x.grad.clone()
    x.grad = None
    expected = module(x)
    expected.square().sum().backward()
    assert_close("compiled output", out, expected)
    assert_close("compiled grad", got, x.grad)


def good_dlu(device="cpu"):
    features, logits, offsets = dlu_inputs(2, 8, 4, 5, 3, 2, 2, device=device)
    return dict(features=features, kernel_logits=logits, offsets=offsets, kernel_size=3, group_size=2, scale_factor=2)


# The integer arguments, checked alike for both ops (ops._check_common).
BAD_SCALARS = [
    (dict(kernel_size=4), ValueError, "kernel_size must be odd"),
    (dict(kernel_size=-1), ValueError, "kernel_size must be >= 1"),
    (dict(kernel_size=0), ValueError, "kernel_size must be >= 1"),
    (dict(kernel_size=3.0), TypeError, "kernel_size must be an int"),
    (dict(group_size=3), ValueError, "divisible by group_size"),
    (dict(group_size=0), ValueError, "group_size must be >= 1"),
    (dict(scale_factor=0), ValueError, "scale_factor must be >= 1"),
    (dict(scale_factor=2.0), TypeError, "scale_factor must be an int"),
    (dict(scale_factor=1.5), TypeError, "scale_factor must be an int"),
    (dict(scale_factor=True), TypeError, "scale_factor must be an int"),
]


def case_id(v):
    return str(v)[:40] if isinstance(v, str) else None


BAD_DLU = [
    (dict(features=torch.randn(8, 4, 5)), ValueError, "features must be 4-D"),
    (dict(kernel_logits=torch.randn(2, 17, 4, 5, dtype=torch.float64)), ValueError, "kernel_logits must have shape"),
    (dict(offsets=torch.randn(2, 8, 4, 5, dtype=torch.float64)), ValueError, "offsets must have shape"),
    (dict(offsets=torch.randn(2, 16, 4, 6, dtype=torch.float64)), ValueError, "offsets must have shape"),
    (dict(kernel_logits=torch.randn(3, 18, 4, 5, dtype=torch.float64)), ValueError, "batch size"),
    (dict(kernel_logits=torch.randn(2, 18, 4, 5, dtype=torch.float32)), TypeError, "kernel_logits has dtype"),
    (dict(features=torch.randint(0, 9, (2, 8, 4, 5))), TypeError, "features must be float16"),
    (dict(offsets="x"), TypeError, "offsets must be a torch.Tensor"),
    (dict(features=torch.randn(2, 8, 0, 5, dtype=torch.float64)), ValueError, "C, H, W >= 1"),
] + BAD_SCALARS


def assert_rejected(op, args, error, message):
    """The public function and, for what the op's schema accepts, the raw op raise the same error."""
    with pytest.raises(error, match=message):
        getattr(dlu_triton, op)(**args)
    values = list(args.values())
    n_tensors = 3 if op == "dlu_upsample" else 2
    if all(isinstance(v, torch.Tensor) for v in values[:n_tensors]) and all(type(v) is int for v in values[n_tensors:]):
        with pytest.raises(error, match=message):
            getattr(torch.ops.dlu_triton, op)(*values)


@pytest.mark.parametrize("change,error,message", BAD_DLU, ids=case_id)
def test_dlu_rejects_bad_input(change, error, message):
    assert_rejected("dlu_upsample", {**good_dlu(), **change}, error, message)


def good_carafe(device="cpu"):
    f, m = carafe_inputs(2, 8, 4, 5, 3, 2, 2, device=device)
    return dict(features=f, masks=m, kernel_size=3, group_size=2, scale_factor=2)


BAD_CARAFE = [
    (dict(features=torch.randn(8, 4, 5, dtype=torch.float64)), ValueError, "features must be 4-D"),
    (dict(masks=torch.randn(2, 18, 8, 10, 1)), ValueError, "masks must be 4-D"),
    (dict(masks=torch.randn(2, 17, 8, 10, dtype=torch.float64)), ValueError, "masks must have shape"),
    (dict(masks=torch.randn(2, 18, 4, 5, dtype=torch.float64)), ValueError, "masks must have shape"),
    (dict(masks=torch.randn(2, 18, 8, 11, dtype=torch.float64)), ValueError, "masks must have shape"),
    (dict(masks=torch.randn(3, 18, 8, 10, dtype=torch.float64)), ValueError, "batch size"),
    (dict(masks=torch.randn(2, 18, 8, 10, dtype=torch.float16)), TypeError, "masks has dtype"),
    (dict(features=torch.randint(0, 9, (2, 8, 4, 5))), TypeError, "features must be float16"),
    (dict(masks=[[1.0]]), TypeError, "masks must be a torch.Tensor"),
    (dict(features=torch.randn(2, 8, 4, 0, dtype=torch.float64), masks=torch.randn(2, 18, 8, 0, dtype=torch.float64)),
     ValueError, "C, H, W >= 1"),
] + BAD_SCALARS


@pytest.mark.parametrize("change,error,message", BAD_CARAFE, ids=case_id)
def test_carafe_rejects_bad_input(change, error, message):
    assert_rejected("carafe", {**good_carafe(), **change}, error, message)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="mixing devices needs a GPU")
def test_mixed_devices_rejected():
    args = good_dlu()
    args["offsets"] = args["offsets"].cuda()
    assert_rejected("dlu_upsample", args, ValueError, "offsets is on cuda")
    args = good_carafe()
    args["masks"] = args["masks"].cuda()
    assert_rejected("carafe", args, ValueError, "masks is on cuda")


@pytest.fixture
def deterministic():
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(False)


def backward_runs(device, runs):
    """The three DLU gradients, `runs` times over, for inputs where many sampling points share
    corners (large offsets pile them on the border), so atomics collide."""
    inputs = dlu_inputs(1, 4, 4, 5, 3, 1, 2, dtype=exact_dtype(device), device=device, offset_scale=10.0)
    inputs = [t.requires_grad_() for t in inputs]
    out = dlu_triton.dlu_upsample(*inputs, 3, 1, 2)
    grad = torch.randn_like(out)
    return inputs, grad, [torch.autograd.grad(out, inputs, grad, retain_graph=True) for _ in range(runs)]


def test_deterministic_mode_is_bitwise_reproducible(device, path, deterministic, monkeypatch):
    from dlu_triton.kernels import backward
    modes = []
    real = backward.dlu_backward
    monkeypatch.setattr(backward, "dlu_backward", lambda *a, **kw: modes.append(kw["deterministic"]) or real(*a, **kw))
    inputs, grad, runs = backward_runs(device, 2)
    assert modes == ([True] * 2 if path == "triton" else [])
    for again in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(runs[0], again))
    out = dlu_triton.dlu_upsample(*inputs, 3, 1, 2)
    check_against_reference("dlu", inputs, grad, out, runs[0], 3, 1, 2)
    inputs = carafe_inputs(1, 4, 2, 3, 3, 1, 2, dtype=exact_dtype(device), device=device)
    features, masks = (t.requires_grad_() for t in inputs)
    dlu_triton.carafe(features, masks, 3, 1, 2).sum().backward()
    assert features.grad is not None and masks.grad is not None


def test_default_backward_varies_at_most_in_the_last_bits(device, path):
    """The atomic logits gradient may differ run to run (on a GPU), within the dtype's tolerance."""
    _, _, runs = backward_runs(device, 3)
    for again in runs[1:]:
        for name, a, b in zip(("features", "logits", "offsets"), again, runs[0]):
            assert_close(f"run-to-run grad {name}", a, b)


# ---------------------------------------------------------------- GPUs the kernels cannot run on

@pytest.mark.parametrize("backend_name, capability, arch, backends, expected", [
    ("cuda", (7, 5), "", {"nvidia", "amd"}, None),
    ("cuda", (12, 0), "", {"nvidia"}, None),
    ("cuda", (7, 0), "", {"nvidia"}, "compute capability 7.0 is below 7.5"),
    ("cuda", (9, 0), "", {"amd"}, "has no nvidia backend"),
    ("hip", (9, 4), "gfx942:sramecc+:xnack-", {"amd"}, None),
    ("hip", (9, 0), "gfx90a", {"amd", "nvidia"}, None),
    ("hip", (11, 0), "gfx1100", {"amd"}, "architecture gfx1100 is not one the kernels are compiled for"),
    ("hip", (9, 4), "gfx942", {"nvidia"}, "has no amd backend"),
])
def test_which_gpus_run_the_kernels(backend_name, capability, arch, backends, expected):
    problem = dlu_triton.ops.gpu_problem(backend_name, capability, arch, backends)
    assert problem is None if expected is None else expected in problem, problem


@pytest.fixture
def volta(monkeypatch):
    """Every CUDA device looks like a V100 (compute capability 7.0)."""
    props = type("Props", (), dict(name="Tesla V100-SXM2-16GB", major=7, minor=0))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props)
    dlu_triton.ops._gpu_problem.cache_clear()
    yield
    dlu_triton.ops._gpu_problem.cache_clear()


def test_unsupported_gpu_names_itself_and_the_way_out(volta):
    with pytest.raises(RuntimeError, match=r"cuda:0 \(Tesla V100-SXM2-16GB\): its compute capability 7\.0 is below 7\.5"
                                           r".*dlu_triton\.reference\.dlu_upsample.*float64"):
        dlu_triton.ops._check_gpu(torch.device("cuda", 0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU to dispatch to")
def test_unsupported_gpu_raises_before_any_launch(volta, monkeypatch):
    launched = []
    monkeypatch.setattr(dlu_triton.ops.fwd_kernels, "dlu_forward", lambda *a: launched.append(a))
    inputs = dlu_inputs(1, 4, 3, 3, 3, 1, 2, dtype=torch.float32, device="cuda")
    with pytest.raises(RuntimeError, match="cannot run on cuda"):
        dlu_triton.dlu_upsample(*inputs, 3, 1, 2)
    assert not launched
    assert dlu_triton.dlu_upsample(*(t.double() for t in inputs), 3, 1, 2).shape == (1, 4, 6, 6)
