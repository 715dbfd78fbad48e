"""The backward launchers directly, on shapes that need several row and channel blocks, and with
64-bit indexing forced on."""
import pytest
import torch
import triton.language as tl

from dlu_triton import reference
from dlu_triton.kernels import backward, launch

from ..conftest import exact_dtype
from ..inputs import carafe_inputs, dlu_inputs
from ..tolerance import assert_close
from .test_forward import PRODUCTS, SCALES, WIDE


def check_backward(shape, device, offsets=None):
    """Both backward launchers against the float64 reference's gradients (DLU's with `offsets`,
    a function of the random ones, if given)."""
    n, c, h, w, k, g, s = shape
    dt = exact_dtype(device)
    inputs = dlu_inputs(n, c, h, w, k, g, s, dtype=dt, device=device)
    if offsets:
        inputs = (*inputs[:2], offsets(inputs[2]))
    grad = torch.randn(n, c, s * h, s * w, dtype=dt, device=device)
    got = backward.dlu_backward(grad, *inputs, k, g, s)
    expected = reference.dlu_upsample_backward(grad.double(), *(t.double() for t in inputs), k, g, s)
    for name, a, e in zip(("features", "logits", "offsets"), got, expected):
        assert_close(f"grad {name}", a, e)
    f, m = carafe_inputs(n, c, h, w, k, g, s, dtype=dt, device=device)
    got = backward.carafe_backward(grad, f, m, k, g, s)
    expected = reference.carafe_backward(grad.double(), f.double(), m.double(), k, g, s)
    for name, a, e in zip(("features", "masks"), got, expected):
        assert_close(f"grad {name}", a, e)


@pytest.mark.parametrize("force_int64", [False, True])
def test_backward_tiles_and_index_width(kernel_device, force_int64, monkeypatch):
    if force_int64:
        monkeypatch.setattr(backward, "index_dtype", lambda *t: tl.int64)
    check_backward(WIDE, kernel_device)


@pytest.mark.parametrize("shape", SCALES, ids=str)
def test_backward_scale_factors(kernel_device, shape):
    check_backward(shape, kernel_device)


@pytest.mark.parametrize("ties_last", [0, 1])
def test_backward_both_tie_rules(kernel_device, ties_last, monkeypatch):
    """Both load orders that targets.TIES_LAST picks between (the installed Triton takes one): the
    kernel gradient's corner gathers and, at an odd s, the features gradient's dy tile."""
    monkeypatch.setattr(backward, "TIES_LAST", ties_last)
    check_backward(SCALES[0], kernel_device)


@pytest.mark.parametrize("copies", [1, 3])
def test_logits_gradient_accumulator_copies(kernel_device, copies, monkeypatch):
    """The logits gradient's atomics spread over copies of the accumulator (output row oy into
    copy oy % copies), added up in the final pass: at s = 8 the rule's 4 copies, and 1 and 3
    forced at s = 2 (5 rows a copy, some copies a row more than others)."""
    summed = []
    add_up = backward._logit_grad_out
    monkeypatch.setattr(backward, "_logit_grad_out", lambda sm, *a: summed.append(sm.clone()) or add_up(sm, *a))
    check_backward((1, 2, 2, 3, 3, 1, 8), kernel_device)
    monkeypatch.setattr(backward, "logit_grad_copies", lambda s: copies)
    check_backward((2, 3, 5, 4, 3, 1, 2), kernel_device)
    # every copy took some of the atomics
    assert [len(sm) for sm in summed] == [4, copies]
    assert all((sm.flatten(1) != 0).any(1).all() for sm in summed)


@pytest.mark.parametrize("shape", [(1, 3, 3, 5, 3, 1, 2), (1, 3, 3, 5, 3, 1, 8), (1, 2, 2, 2, 3, 1, 16)], ids=str)
def test_backward_offsets_within_a_pixel(kernel_device, shape):
    """Offsets of a third of a pixel or so, mostly positive, as a DLU early in training has them:
    then most of a source pixel's s*s sampling points share their corners, so runs of
    consecutive output columns add to the same logits-gradient addresses, broken where an
    offset is negative (random offsets give each column corners of its own)."""
    check_backward(shape, kernel_device, offsets=lambda o: 0.3 + 0.2 * o / 3)


def test_backward_does_not_write_into_the_incoming_gradient(kernel_device):
    inputs = dlu_inputs(1, 4, 3, 4, 3, 1, 2, dtype=exact_dtype(kernel_device), device=kernel_device)
    grad = torch.randn(1, 4, 6, 8, dtype=inputs[0].dtype, device=kernel_device)
    before = grad.clone()
    grads = backward.dlu_backward(grad, *inputs, 3, 1, 2)
    assert torch.equal(grad, before)
    assert all(gr.data_ptr() != grad.data_ptr() for gr in grads)


# Rows spanning several overlapping windows of the features gradient (a window of 32 source
# pixels finishes the 32 - 2*(k//2) in its middle), the last window partly past the row.
WINDOWS = [(1, 3, 1, 61, 7, 1, 2), (1, 2, 2, 29, 5, 1, 1), (1, 2, 1, 57, 3, 1, 3)]


def check_step(which, shape, device):
    """One step of CARAFE's backward alone, into a buffer poisoned with NaN, against the float64
    reference: the features' gradient (which = 0) or the masks' (1)."""
    n, c, h, w, k, g, s = shape
    dt = exact_dtype(device)
    features, masks = carafe_inputs(n, c, h, w, k, g, s, dtype=dt, device=device)
    grad = torch.randn(n, c, s * h, s * w, dtype=dt, device=device)
    got = torch.full_like((features, masks)[which], float("nan"))
    if which == 0:
        backward._feature_grad(grad, masks, got, k, g, s)
    else:
        backward._mask_grad(grad, features, got, k, g, s)
    expected = reference.carafe_backward(grad.double(), features.double(), masks.double(), k, g, s)[which]
    assert_close(("grad features", "grad masks")[which], got, expected)


@pytest.mark.parametrize("shape", WINDOWS, ids=str)
def test_features_gradient_windows(kernel_device, shape):
    check_step(0, shape, kernel_device)


@pytest.mark.parametrize("shape", PRODUCTS, ids=str)
def test_features_gradient_products(kernel_device, shape, launches):
    sums, gathers = launches(backward, "_feature_grad_sums_kernel"), launches(backward, "_feature_grad_gather_kernel")
    check_step(0, shape, kernel_device)
    *_, k, _, s = shape
    assert len(sums) == len(gathers) == (s >= 8 and k >= 3)  # where the rule takes the product


@pytest.mark.parametrize("shape", PRODUCTS, ids=str)
def test_mask_gradient_products(kernel_device, shape, launches):
    products = launches(backward, "_mask_grad_dot_kernel")
    check_step(1, shape, kernel_device)
    *_, k, _, s = shape
    assert len(products) == (s >= 2 and k >= 3)  # where the rule takes the product


@pytest.mark.parametrize("which", [0, 1])
def test_products_index_width(kernel_device, which, monkeypatch, launches):
    monkeypatch.setattr(backward, "index_dtype", lambda *t: tl.int64)
    products = launches(backward, ("_feature_grad_sums_kernel", "_mask_grad_dot_kernel")[which])
    check_step(which, PRODUCTS[1], kernel_device)
    assert products


# The mask gradient's programs of 8 consecutive source pixels, whose taps share one window of k
# rows of k + 7 pixels (the product keeps a band of it), with a tile the rule does not choose
# (16 rows, 16 channels, 2 warps). Rows that are not a whole number of blocks, every k and s = 1..4.
BANDED = [(1, 20, 3, 11, 3, 2, 2), (1, 8, 2, 9, 5, 1, 3), (2, 6, 3, 5, 5, 1, 1), (1, 16, 2, 17, 7, 1, 2),
          (1, 40, 2, 7, 5, 1, 4)]


def banded_rows(s):
    """BLOCK_SY for 8-pixel programs: at least 16 columns (8 pixels x padded s) a product."""
    return max(1, 16 // (8 * launch.pow2(s)))


@pytest.mark.parametrize("shape", BANDED, ids=str)
def test_mask_gradient_banded_products(kernel_device, shape, monkeypatch, launches):
    monkeypatch.setattr(backward, "mask_grad_dot_blocks", lambda cpg, s, k: (banded_rows(s), 8, 16, 2))
    products = launches(backward, "_mask_grad_dot_kernel")
    check_step(1, shape, kernel_device)
    assert products


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter's NaN arithmetic
def test_mask_gradient_banded_products_nonfinite(kernel_device, monkeypatch):
    """The banded product keeps only its band, so a non-finite feature or output gradient makes
    non-finite exactly the reference's entries of dK."""
    monkeypatch.setattr(backward, "mask_grad_dot_blocks", lambda cpg, s, k: (banded_rows(s), 8, 16, 2))
    n, c, h, w, k, g, s = BANDED[0]
    dt = exact_dtype(kernel_device)
    features, masks = carafe_inputs(n, c, h, w, k, g, s, dtype=dt, device=kernel_device)
    grad = torch.randn(n, c, s * h, s * w, dtype=dt, device=kernel_device)
    features[0, 3, 1, 5] = float("inf")
    grad[0, 12, 2, 9] = float("nan")
    got = torch.full_like(masks, float("nan"))
    backward._mask_grad(grad, features, got, k, g, s)
    expected = reference.carafe_backward(grad.double(), features.double(), masks.double(), k, g, s)[1]
    assert torch.equal(~torch.isfinite(got.cpu()), ~torch.isfinite(expected.cpu()))
    finite = torch.isfinite(expected)
    assert_close("finite entries", got[finite], expected[finite])
