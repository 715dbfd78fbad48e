"""The CPU path (dlu_triton/cpu.py) directly, both its forwards (the compiled kernel of
cpu_native and the gathers it falls back to): blocks of rows, threads, every dtype, non-finite
values, and which calls it hands to the reference. The ops' tests (test_ops.py and others, `path`
"cpu") run it through dispatch on the suite's shapes, layouts, empty batches, gradcheck and
opcheck."""
import pytest
import torch

from dlu_triton import cpu, cpu_native, reference

from .inputs import carafe_inputs, dlu_inputs
from .tolerance import assert_close

# (N, C, H, W, k, G, s): odd and prime sizes, W = 1, images narrower than the kernel, every k,
# G and s = 1 .. 16, and an output plane of 32 x 32 (a channel stride of 8 KiB in float64: the
# output gradient is copied 8 channels at a time).
SHAPES = [(2, 8, 5, 13, 3, 2, 2), (1, 4, 7, 21, 5, 1, 3), (1, 6, 3, 3, 7, 3, 2), (1, 4, 4, 1, 1, 4, 4),
          (2, 5, 6, 8, 5, 1, 1), (1, 8, 3, 7, 3, 2, 8), (1, 4, 2, 2, 3, 1, 16), (1, 20, 16, 16, 3, 2, 2)]


@pytest.fixture(autouse=True, params=["compiled", "gathers"])
def forward(request, monkeypatch):
    """The forward under test: the compiled kernel, or the gathers (no C compiler)."""
    if request.param == "compiled" and cpu_native.library() is None:
        pytest.skip("no C compiler built dlu_triton/cpu_reassemble.c (test_the_kernel_builds says whether one should)")
    if request.param == "gathers":
        monkeypatch.setattr(cpu_native, "available", lambda dtype: False)
    return request.param


@pytest.fixture(params=[1 << 30, 1], ids=["one-block", "row-blocks"])
def blocks(request, monkeypatch):
    """All rows in one block, or one source row a block (the backward's halo rows handed on
    from block to block)."""
    monkeypatch.setattr(cpu, "BLOCK_BYTES", request.param)


def grads(n, c, h, w, s, dtype=torch.float64):
    return torch.randn(n, c, s * h, s * w, dtype=dtype)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_carafe(shape, blocks):
    n, c, h, w, k, g, s = shape
    features, masks = carafe_inputs(n, c, h, w, k, g, s)
    dy = grads(n, c, h, w, s)
    assert_close("carafe", cpu.carafe(features, masks, k, g, s), reference.carafe(features, masks, k, g, s))
    for name, got, want in zip(("grad features", "grad masks"), cpu.carafe_backward(dy, features, masks, k, g, s),
                               reference.carafe_backward(dy, features, masks, k, g, s)):
        assert_close(name, got, want)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_dlu(shape, blocks):
    n, c, h, w, k, g, s = shape
    inputs = dlu_inputs(n, c, h, w, k, g, s)
    dy = grads(n, c, h, w, s)
    assert_close("dlu", cpu.dlu_upsample(*inputs, k, g, s), reference.dlu_upsample(*inputs, k, g, s))
    for name, got, want in zip(("grad features", "grad logits", "grad offsets"),
                               cpu.dlu_upsample_backward(dy, *inputs, k, g, s),
                               reference.dlu_upsample_backward(dy, *inputs, k, g, s)):
        assert_close(name, got, want)


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("shape", [(1, 16, 2, 9, 3, 2, 2), (1, 24, 37, 5, 5, 3, 2)], ids=str)
def test_threads(shape, threads):
    """Fewer rows than threads, and a band count that must round up to a multiple of them (the
    backward's two waves, and its per-thread shares of the kernel space's gradient, summed in
    thread order: bitwise the same twice)."""
    n, c, h, w, k, g, s = shape
    inputs = dlu_inputs(n, c, h, w, k, g, s)
    dy = grads(n, c, h, w, s)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = cpu.dlu_upsample(*inputs, k, g, s)
        got = cpu.dlu_upsample_backward(dy, *inputs, k, g, s)
        again = cpu.dlu_upsample_backward(dy, *inputs, k, g, s)
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) for a, b in zip(got, again)), "not deterministic for a given thread count"
    assert_close("dlu", out, reference.dlu_upsample(*inputs, k, g, s))
    for name, a, b in zip(("grad features", "grad logits", "grad offsets"), got,
                          reference.dlu_upsample_backward(dy, *inputs, k, g, s)):
        assert_close(name, a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_dtypes(dtype):
    """Every CPU dtype against the float64 reference (16-bit: computed in float32, rounded once;
    held to the suite's rule of twice PyTorch's own error in that dtype)."""
    n, c, h, w, k, g, s = 1, 8, 5, 11, 5, 2, 2
    inputs = dlu_inputs(n, c, h, w, k, g, s, dtype=dtype)
    exact = reference.dlu_upsample(*(t.double() for t in inputs), k, g, s)
    lowp = reference.dlu_upsample(*inputs, k, g, s)
    out = cpu.dlu_upsample(*inputs, k, g, s)
    assert out.dtype == dtype
    assert_close("dlu", out, exact, lowp)


@pytest.fixture
def refuse_reference(monkeypatch):
    """Calls made after this fixture fail if they hand the op to the reference."""
    for name in ("carafe", "carafe_backward", "dlu_upsample", "dlu_upsample_backward"):
        monkeypatch.setattr(reference, name, lambda *args: pytest.fail("the reference ran"))


def test_finite_calls_do_not_take_the_reference(refuse_reference):
    n, c, h, w, k, g, s = SHAPES[0]
    inputs = dlu_inputs(n, c, h, w, k, g, s)
    features, masks = carafe_inputs(n, c, h, w, k, g, s)
    dy = grads(n, c, h, w, s)
    cpu.dlu_upsample(*inputs, k, g, s)
    cpu.dlu_upsample_backward(dy, *inputs, k, g, s)
    cpu.carafe(features, masks, k, g, s)
    cpu.carafe_backward(dy, features, masks, k, g, s)


@pytest.mark.parametrize("where", ["features", "grad", "masks"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nonfinite_values_come_out_where_the_reference_puts_them(where, value, request):
    """The CPU path multiplies what the reference multiplies (padding rows are unfold's zeros),
    so a non-finite feature, output gradient or mask gives NaN and Inf where the reference
    does, without handing the call to it."""
    n, c, h, w, k, g, s = SHAPES[1]
    features, masks = carafe_inputs(n, c, h, w, k, g, s)
    dy = grads(n, c, h, w, s)
    {"features": features, "grad": dy, "masks": masks}[where][0, 1, 2, 0] = value
    want = (reference.carafe(features, masks, k, g, s), *reference.carafe_backward(dy, features, masks, k, g, s))
    request.getfixturevalue("refuse_reference")
    got = (cpu.carafe(features, masks, k, g, s), *cpu.carafe_backward(dy, features, masks, k, g, s))
    assert not want[0 if where != "grad" else 1].isfinite().all()
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, equal_nan=True)

