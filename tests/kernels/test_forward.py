"""The forward launchers directly, on shapes that need several row and channel blocks per
program grid, and with 64-bit indexing forced on."""
import pytest
import triton.language as tl

from dlu_triton import reference
from dlu_triton.kernels import forward

from ..conftest import exact_dtype
from ..inputs import carafe_inputs, dlu_inputs
from ..tolerance import assert_close

# C per group > 256 and a row longer than one block: every kernel tiles in both directions.
WIDE = (1, 260, 2, 37, 3, 1, 2)


def check_forward(shape, device):
    """Both forward launchers against the float64 reference."""
    n, c, h, w, k, g, s = shape
    dt = exact_dtype(device)
    inputs = dlu_inputs(n, c, h, w, k, g, s, dtype=dt, device=device)
    expected = reference.dlu_upsample(*(t.double() for t in inputs), k, g, s)
    assert_close("dlu", forward.dlu_forward(*inputs, k, g, s), expected)
    f, m = carafe_inputs(n, c, h, w, k, g, s, dtype=dt, device=device)
    assert_close("carafe", forward.carafe_forward(f, m, k, g, s), reference.carafe(f.double(), m.double(), k, g, s))


@pytest.mark.parametrize("force_int64", [False, True])
def test_forward_tiles_and_index_width(kernel_device, force_int64, monkeypatch):
    if force_int64:
        monkeypatch.setattr(forward, "index_dtype", lambda *t: tl.int64)
    check_forward(WIDE, kernel_device)


# Scale factors that are not powers of two, on a row that is not a whole number of blocks; and
# s = 33 (64 padded sub-pixel columns), wider than a backward tile, so each program holds one pixel.
SCALES = [(1, 4, 2, 5, 3, 2, s) for s in (3, 5, 6, 7)] + [(1, 2, 1, 2, 3, 1, 33)]


@pytest.mark.parametrize("shape", SCALES, ids=str)
def test_forward_scale_factors(kernel_device, shape):
    """s padded to a power of two in the tile, sub-pixel rows split over programs: the padding
    lanes and the last, partial block of sub-pixel rows must be masked, every real one written."""
    check_forward(shape, kernel_device)


# The matrix products of the backward (tuning.pixel_product_blocks, mask_grad_dot_blocks, tests
# in test_backward.py), here through the forward too: channel blocks with a partial last one (40
# and 20 channels a group) and an exact one (32), several steps of sub-pixel rows (s = 12, 16), s
# padded to a power of two (s = 3, 5, 12), rows that are not a whole number of the banded
# product's pixel blocks (s = 2..5), and k = 1 and s = 1, which take the other kernels. The
# backward tests check which kernel ran: a rule moved must move these shapes with it.
PRODUCTS = [(1, 40, 3, 4, 5, 1, 4), (1, 40, 2, 3, 3, 2, 8), (1, 32, 2, 2, 5, 1, 16),
            (2, 6, 2, 3, 3, 3, 5), (1, 3, 1, 2, 3, 1, 12), (1, 4, 2, 3, 1, 1, 4),
            (1, 20, 3, 11, 3, 2, 2), (1, 8, 2, 9, 5, 1, 3), (1, 8, 3, 5, 3, 1, 1)]


@pytest.mark.parametrize("shape", PRODUCTS, ids=str)
def test_forward_at_product_shapes(kernel_device, shape):
    check_forward(shape, kernel_device)
