"""The candidate's backward launchers against the float64 reference: every gradient (DLU's
features, logits and offsets; CARAFE's features and masks), on shapes that are not whole numbers
of its tiles, in every dtype, layout and on a strided view, with non-finite inputs, offsets of a
third of a pixel (the logits gradient's atomics at their most contended) and the deterministic
variant. Buffers start as NaN (conftest.py)."""
import pytest
import torch

from dlu_triton import reference
from dlu_triton.kernels.launch import output_format
from tests.conftest import exact_dtype
from tests.inputs import LOW, carafe_inputs, dlu_inputs
from tests.test_nonfinite import assert_matches_with_nonfinite
from tests.test_ops import reference_results
from tests.tolerance import assert_close

from . import backward

NAN, INF = float("nan"), float("inf")


def grad_like(n, c, h, w, s, inputs):
    return torch.randn(n, c, s * h, s * w, dtype=inputs[0].dtype, device=inputs[0].device)


def check_dlu(inputs, grad, k, g, s, deterministic=False):
    got = backward.dlu_backward(grad, *inputs, k, g, s, deterministic=deterministic)
    expected = reference_results("dlu", inputs, grad, k, g, s)[1:]
    lowp = reference_results("dlu", inputs, grad, k, g, s, grad.dtype)[1:] if grad.dtype in LOW else [None] * 3
    for name, a, e, lp in zip(("features", "logits", "offsets"), got, expected, lowp):
        assert_close(f"dlu grad {name}", a, e, lp)
    return got


def check_carafe(inputs, grad, k, g, s):
    got = backward.carafe_backward(grad, *inputs, k, g, s)
    expected = reference_results("carafe", inputs, grad, k, g, s)[1:]
    lowp = reference_results("carafe", inputs, grad, k, g, s, grad.dtype)[1:] if grad.dtype in LOW else [None] * 2
    for name, a, e, lp in zip(("features", "masks"), got, expected, lowp):
        assert_close(f"carafe grad {name}", a, e, lp)
    return got


def check_both(shape, device, dtype=None, carafe=True, offsets=None):
    """DLU's launcher (its offsets a function of the random ones, if given) and CARAFE's against the
    reference."""
    n, c, h, w, k, g, s = shape
    dt = dtype or exact_dtype(device)
    inputs = dlu_inputs(n, c, h, w, k, g, s, dtype=dt, device=device)
    if offsets:
        inputs = (*inputs[:2], offsets(inputs[2]))
    grad = grad_like(n, c, h, w, s, inputs)
    check_dlu(inputs, grad, k, g, s)
    if carafe:
        check_carafe(carafe_inputs(n, c, h, w, k, g, s, dtype=dt, device=device), grad, k, g, s)


# (N, C, H, W, k, G, s): channels per group not a whole channel block (3, 5), primes, rows and
# columns not whole bands and windows, k = 5, odd s, s = 4 and s = 8 (the fused kernel's
# one-pixel products beside main's features products), and k = 1, s = 1 (main's backward whole).
SHAPES = [(1, 6, 3, 7, 3, 2, 2), (1, 3, 3, 4, 5, 1, 2), (1, 3, 4, 3, 3, 1, 3), (1, 3, 2, 5, 3, 1, 4),
          (1, 4, 3, 2, 3, 1, 8), (1, 2, 3, 5, 1, 1, 2), (1, 3, 3, 4, 3, 1, 1)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_gradients_match_reference(kernel_device, shape, launches):
    chain = launches(backward, "_dk_chain_kernel")
    rows = launches(backward, "_feature_grad_block_kernel")
    check_both(shape, kernel_device)
    *_, k, _, s = shape
    assert len(chain) == (k >= 3 and s >= 2)  # DLU's fused kernel wherever main's mask gradient is a product
    assert len(rows) == 2 * (k >= 3 and 2 <= s < 8)  # the block kernel for both ops below s = 8


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_dtypes(kernel_device, dtype, launches):
    rows = launches(backward, "_feature_grad_block_kernel")
    check_both((1, 4, 3, 5, 3, 1, 2), kernel_device, dtype)
    assert len(rows) == (2 if dtype == torch.float32 else 1)  # DLU's 16-bit features gradient is main's


# Tiles the rule does not choose, on rows of several bands and windows, the last of each partial:
# 2 channels a block of 3 (the last block partial), windows of 8 source pixels (k = 3: 6 finished
# a window, 13 columns; k = 5: 4, 7 columns), 2 or 4 input rows a band (5 rows).
FORCED = [((1, 3, 5, 13, 3, 1, 2), (2, 8, 2, 2, 1)), ((1, 2, 5, 7, 5, 1, 2), (2, 8, 2, 4, 1)),
          ((1, 2, 3, 7, 3, 1, 3), (2, 8, 1, 2, 2))]


@pytest.mark.parametrize("shape,tiles", FORCED, ids=str)
def test_features_gradient_blocks(kernel_device, shape, tiles, monkeypatch, launches):
    monkeypatch.setattr(backward, "feature_block_blocks", lambda *a: tiles)
    rows = launches(backward, "_feature_grad_block_kernel")
    n, c, h, w, k, g, s = shape
    features, masks = carafe_inputs(n, c, h, w, k, g, s, dtype=exact_dtype(kernel_device), device=kernel_device)
    check_carafe((features, masks), grad_like(n, c, h, w, s, (features,)), k, g, s)
    assert rows


def test_fused_kernel_banded_tiles(kernel_device, monkeypatch, launches):
    """The fused kernel's band gather at a tile the rule does not choose (8 pixels, 2 warps), on a
    row of several blocks, the last partial."""
    monkeypatch.setattr(backward, "mask_grad_dot_blocks", lambda cpg, s, k: (1, 8, 16, 2))
    chain = launches(backward, "_dk_chain_kernel")
    n, c, h, w, k, g, s = 1, 3, 2, 11, 5, 1, 2
    inputs = dlu_inputs(n, c, h, w, k, g, s, dtype=exact_dtype(kernel_device), device=kernel_device)
    check_dlu(inputs, grad_like(n, c, h, w, s, inputs), k, g, s)
    assert chain


def same_format(got, inputs):
    """Each gradient in its input's memory format, as main allocates it (launch.output_format)."""
    for a, t in zip(got, inputs):
        assert a.stride() == torch.empty(t.shape, memory_format=output_format(t)).stride()


def test_layouts_and_strided_views(kernel_device):
    """channels_last inputs, and features that are a strided view; outputs in main's formats."""
    n, c, h, w, k, g, s = 1, 4, 3, 5, 3, 2, 2
    dt = exact_dtype(kernel_device)
    x, logits, offsets = dlu_inputs(n, c, h, w, k, g, s, dtype=dt, device=kernel_device)
    f, m = carafe_inputs(n, c, h, w, k, g, s, dtype=dt, device=kernel_device)
    cl = torch.channels_last
    grad = grad_like(n, c, h, w, s, (x,))
    for inputs, gr in [((x.to(memory_format=cl), logits.to(memory_format=cl), offsets.to(memory_format=cl)),
                        grad.to(memory_format=cl)),
                       ((torch.cat([x, x], 1)[:, ::2], logits, offsets), grad)]:
        same_format(check_dlu(inputs, gr, k, g, s), inputs)
    for inputs, gr in [((f.to(memory_format=cl), m.to(memory_format=cl)), grad.to(memory_format=cl)),
                       ((torch.cat([f, f], 3)[..., ::2], m), grad)]:
        same_format(check_carafe(inputs, gr, k, g, s), inputs)


@pytest.mark.parametrize("shape", [(1, 3, 3, 5, 3, 1, 2), (1, 3, 3, 5, 3, 1, 3), (1, 2, 2, 3, 3, 1, 8)], ids=str)
def test_offsets_within_a_pixel(kernel_device, shape):
    """Offsets of a third of a pixel or so, mostly positive: most of a source pixel's s*s points
    then share their corners, so neighbouring columns add to the same logits-gradient addresses."""
    check_both(shape, kernel_device, carafe=False, offsets=lambda o: 0.3 + 0.2 * o / 3)


@pytest.mark.parametrize("copies", [1, 3])
def test_logits_gradient_accumulator_copies(kernel_device, copies, monkeypatch):
    """Rows oy of one fused program add into copies oy % copies (2 sub-pixel rows a program)."""
    monkeypatch.setattr(backward, "logit_grad_copies", lambda s: copies)
    check_both((1, 2, 5, 4, 3, 1, 2), kernel_device, carafe=False)


def test_deterministic_variant(kernel_device, launches):
    """Under torch.use_deterministic_algorithms the fused kernel stores corner shares that
    index_add_ sums: the reference's gradients, bitwise the same on every run."""
    chain = launches(backward, "_dk_chain_kernel")
    n, c, h, w, k, g, s = 1, 4, 3, 5, 3, 2, 2
    inputs = dlu_inputs(n, c, h, w, k, g, s, dtype=exact_dtype(kernel_device), device=kernel_device)
    grad = grad_like(n, c, h, w, s, inputs)
    first = check_dlu(inputs, grad, k, g, s, deterministic=True)
    second = backward.dlu_backward(grad, *inputs, k, g, s, deterministic=True)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert len(chain) == 2


def test_empty_and_untouched_gradient(kernel_device):
    inputs = dlu_inputs(1, 4, 3, 4, 3, 1, 2, dtype=exact_dtype(kernel_device), device=kernel_device)
    grad = grad_like(1, 4, 3, 4, 2, inputs)
    before = grad.clone()
    grads = backward.dlu_backward(grad, *inputs, 3, 1, 2)
    assert torch.equal(grad, before) and all(gr.data_ptr() != grad.data_ptr() for gr in grads)
    empty = dlu_inputs(0, 4, 3, 4, 3, 1, 2, dtype=exact_dtype(kernel_device), device=kernel_device)
    assert [t.shape for t in backward.dlu_backward(grad[:0], *empty, 3, 1, 2)] == [t.shape for t in empty]


# (what, which input: 0 features, 1 logits, 2 offsets, 3 the output gradient; index; value), as
# tests/test_nonfinite.py, with the output gradient besides
DLU_CASES = [("feature NaN", 0, (0, 1, 1, 2), NAN), ("feature +Inf", 0, (0, 0, 0, 3), INF),
             ("logit NaN", 1, (0, 4, 1, 2), NAN), ("logit +Inf", 1, (0, 11, 2, 0), INF),
             ("logits of a pixel all -Inf", 1, (0, slice(0, 9), 1, 1), -INF),
             ("offset x NaN", 2, (0, 1, 1, 2), NAN), ("offset y NaN", 2, (0, 13, 2, 3), NAN),
             ("offset -Inf", 2, (0, 5, 0, 0), -INF), ("output gradient NaN", 3, (0, 1, 2, 5), NAN),
             ("output gradient -Inf", 3, (0, 0, 4, 1), -INF)]
# s = 2, and at s = 8 (the fused kernel's one-pixel products) a NaN logit and offset, which its
# chain rule handles (CARAFE at s = 8 is main's backward whole)
S2, S8 = (1, 2, 3, 4, 3, 2, 2), (1, 2, 3, 4, 3, 2, 8)
DLU_NONFINITE = [(case, S2) for case in DLU_CASES] + [(DLU_CASES[i], S8) for i in (2, 5)]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter's NaN arithmetic
@pytest.mark.parametrize("case,shape", DLU_NONFINITE, ids=lambda v: v[0] if isinstance(v[0], str) else f"s{v[-1]}")
def test_dlu_nonfinite(kernel_device, case, shape):
    name, which, index, value = case
    n, c, h, w, k, g, s = shape
    tensors = [*dlu_inputs(n, c, h, w, k, g, s, dtype=exact_dtype(kernel_device), device=kernel_device)]
    tensors.append(grad_like(n, c, h, w, s, tensors))
    tensors[which] = tensors[which].clone()
    tensors[which][index] = value
    *inputs, grad = tensors
    got = backward.dlu_backward(grad, *inputs, k, g, s)
    expected = reference.dlu_upsample_backward(grad.cpu().double(), *(t.cpu().double() for t in inputs), k, g, s)
    for what, a, e in zip(("grad features", "grad logits", "grad offsets"), got, expected):
        assert_matches_with_nonfinite(f"{name}: {what}", a, e)


CARAFE_CASES = [("feature NaN", 0, (0, 1, 2, 0), NAN), ("feature -Inf", 0, (0, 1, 2, 3), -INF),
                ("mask NaN", 1, (0, 7, 5, 5), NAN), ("mask +Inf", 1, (0, 10, 0, 7), INF),
                ("output gradient NaN", 2, (0, 1, 2, 5), NAN)]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("case", CARAFE_CASES, ids=lambda c: c[0])
def test_carafe_nonfinite(kernel_device, case):
    name, which, index, value = case
    n, c, h, w, k, g, s = S2
    tensors = [*carafe_inputs(n, c, h, w, k, g, s, dtype=exact_dtype(kernel_device), device=kernel_device)]
    tensors.append(grad_like(n, c, h, w, s, tensors))
    tensors[which] = tensors[which].clone()
    tensors[which][index] = value
    *inputs, grad = tensors
    got = backward.carafe_backward(grad, *inputs, k, g, s)
    expected = reference.carafe_backward(grad.cpu().double(), *(t.cpu().double() for t in inputs), k, g, s)
    for what, a, e in zip(("grad features", "grad masks"), got, expected):
        assert_matches_with_nonfinite(f"{name}: {what}", a, e)



@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_inf_in_a_window_that_a_point_does_not_read(kernel_device):
    """The fused kernel's programs at s = 2 take 8 pixels, whose taps share one window; an infinite
    feature at the window's first column (x = 7 for the block from x = 8) is a tap of pixel 8's
    points only. The other points' padding taps (the [points, k*k padded] tiles' columns past k*k)
    must not read it: Inf * 0 would make their offsets' and logits' gradients NaN where the
    reference keeps them finite. The logits' gradient is compared with main's: main's differs from
    the reference where an infinite dK reaches it (NaN where the reference has +Inf, here 36
    places), and the fused kernel's chain rule is main's."""
    from dlu_triton.kernels import backward as main
    n, c, h, w, k, g, s = 1, 2, 3, 12, 3, 1, 2
    inputs = [*dlu_inputs(n, c, h, w, k, g, s, dtype=exact_dtype(kernel_device), device=kernel_device)]
    inputs[0] = inputs[0].clone()
    inputs[0][0, 0, 0, 7] = INF
    grad = grad_like(n, c, h, w, s, inputs)
    got = backward.dlu_backward(grad, *inputs, k, g, s)
    expected = reference.dlu_upsample_backward(grad.cpu().double(), *(t.cpu().double() for t in inputs), k, g, s)
    assert_matches_with_nonfinite("grad features", got[0], expected[0])
    assert_matches_with_nonfinite("grad offsets", got[2], expected[2])
    assert_matches_with_nonfinite("grad logits", got[1], main.dlu_backward(grad, *inputs, k, g, s)[1].cpu())
