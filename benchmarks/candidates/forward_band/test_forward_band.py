"""The banded-product forward against the float64 reference: tiles cut by the image's edges,
channel blocks cut by the group, s padded to a power of two, both memory formats and a strided
view, every dtype, 64-bit indices, non-finite inputs, and which kernel each shape takes."""
import pytest
import torch
import triton.language as tl

from dlu_triton import reference
from dlu_triton.kernels import forward as main
from dlu_triton.kernels import launch
from tests.conftest import exact_dtype
from tests.inputs import LOW, carafe_inputs, dlu_inputs
from tests.test_nonfinite import assert_matches_with_nonfinite
from tests.tolerance import assert_close

from . import forward

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter's NaN arithmetic


@pytest.fixture(autouse=True)
def poisoned(monkeypatch):
    """Outputs start as NaN, the candidate's and those of main's forward where it dispatches there
    (the suite's own fixture poisons only in tests/)."""
    def allocate(like, size, dtype=None, memory_format=None):
        return launch.new_output(like, size, dtype, memory_format).fill_(float("nan"))

    for module in (forward, main):
        monkeypatch.setattr(module, "new_output", allocate)


def run_both(shape, dtype, device, layout=None):
    """Both forwards of the candidate against the float64 reference (and, in 16 bits, against the
    reference in that dtype, the tolerance rule's yardstick). `layout`: "channels_last", or
    "strided" (the features a view with a column stride of 2), else contiguous."""
    n, c, h, w, k, g, s = shape

    def shaped(x):
        if layout == "channels_last":
            return x.to(memory_format=torch.channels_last)
        if layout == "strided":
            wide = torch.full((n, c, h, 2 * w), float("nan"), dtype=x.dtype, device=x.device)
            wide[..., ::2] = x
            return wide[..., ::2]
        return x

    x, logits, offsets = dlu_inputs(n, c, h, w, k, g, s, dtype=dtype, device=device)
    x = shaped(x)
    got = forward.dlu_forward(x, logits, offsets, k, g, s)
    ins = (x, logits, offsets)
    lowp = reference.dlu_upsample(*(t.cpu() for t in ins), k, g, s) if dtype in LOW else None
    assert_close("dlu", got, reference.dlu_upsample(*(t.double() for t in ins), k, g, s), lowp)
    if layout == "channels_last":
        assert got.is_contiguous(memory_format=torch.channels_last)
    f, m = carafe_inputs(n, c, h, w, k, g, s, dtype=dtype, device=device)
    f = shaped(f)
    got = forward.carafe_forward(f, m, k, g, s)
    lowp = reference.carafe(f.cpu(), m.cpu(), k, g, s) if dtype in LOW else None
    assert_close("carafe", got, reference.carafe(f.double(), m.double(), k, g, s), lowp)


# (N, C, H, W, k, G, s): rows and columns that are not whole tiles (the tiles are 4 x 4 pixels at
# s = 2, k = 5; 2 x 4 at k = 3; 2 x 2 at k = 7; 1 x 2 at s = 4, k = 5; one pixel at s >= 8), images smaller
# than a window (its loads masked) and not (the window moved into the image at its edges),
# channels per group that are not whole blocks (10, 70) or fewer than a product's 16 (3), two
# groups, s = 3 (padded to 4 sub-pixel columns), and a 7 x 7 kernel
BAND = [(1, 8, 5, 7, 5, 1, 2), (1, 8, 9, 10, 5, 1, 2), (1, 20, 3, 5, 3, 2, 2), (1, 6, 5, 7, 3, 2, 2),
        (1, 70, 2, 3, 3, 1, 2), (1, 4, 3, 9, 7, 1, 2), (2, 6, 3, 5, 5, 1, 3), (1, 8, 6, 7, 5, 1, 4),
        (1, 6, 3, 3, 3, 2, 4), (1, 3, 5, 6, 3, 1, 8), (1, 16, 2, 2, 5, 1, 16)]
# main's forward: k = 1 and s = 1
MAIN = [(1, 4, 3, 4, 1, 1, 2), (1, 4, 3, 4, 3, 1, 1)]


@pytest.mark.parametrize("shape", BAND + MAIN, ids=str)
def test_forward_matches_reference(kernel_device, shape, launches):
    band = launches(forward, "_band_kernel")
    fma = launches(main, "_reassemble_kernel")
    dtype = exact_dtype(kernel_device)
    run_both(shape, dtype, kernel_device)
    assert (len(band), len(fma)) == ((2, 0) if shape in BAND else (0, 2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape", [BAND[1], BAND[7]], ids=str)
def test_forward_dtypes(kernel_device, shape, dtype):
    """float32 (tf32x3 on a GPU), and 16-bit features with DLU's float32 K in two parts."""
    run_both(shape, dtype, kernel_device)


@pytest.mark.parametrize("layout", ["channels_last", "strided"])
@pytest.mark.parametrize("shape", [BAND[1], BAND[2]], ids=str)
def test_forward_layouts(kernel_device, shape, layout):
    run_both(shape, exact_dtype(kernel_device), kernel_device, layout)


def test_forward_index_width(kernel_device, monkeypatch):
    monkeypatch.setattr(forward, "index_dtype", lambda *t: tl.int64)
    run_both(BAND[3], exact_dtype(kernel_device), kernel_device)


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("shape", [(1, 3, 6, 7, 5, 1, 2), (1, 3, 9, 10, 5, 1, 2)], ids=str)
def test_forward_nonfinite(kernel_device, shape):
    """Non-finite features inside a tile's window but outside most of its points' taps (the
    band's zeros must not spread them: those tiles take the exact path), NaN and Inf kernel
    values (CARAFE's masks; at (0, 0) on taps outside the image, which the reference multiplies
    by 0, a NaN, and a moved window drops), a NaN offset and logit (DLU): NaN, +Inf and -Inf
    exactly where the reference has them, the rest as usual. The first image is smaller than a
    window (its loads masked), the second not (the window moved into it)."""
    n, c, h, w, k, g, s = shape
    dtype = exact_dtype(kernel_device)
    x, logits, offsets = dlu_inputs(n, c, h, w, k, g, s, dtype=dtype, device=kernel_device)
    # away from the first tile's window where the window is moved (its taps outside the image are
    # dropped there, and only the check of the masks below makes it exact)
    x[0, 0, h - 1, w - 1], x[0, 1, 0, w - 1], x[0, 2, h - 1, w - 3] = NAN, INF, -INF
    logits[0, 3, h - 1, 0] = NAN
    offsets[0, 0, 1, 0] = NAN
    assert_matches_with_nonfinite("dlu", forward.dlu_forward(x, logits, offsets, k, g, s),
                                  reference.dlu_upsample(*(t.double().cpu() for t in (x, logits, offsets)), k, g, s))
    f, m = carafe_inputs(n, c, h, w, k, g, s, dtype=dtype, device=kernel_device)
    f[0, 0, h - 1, w - 1], f[0, 1, 0, w - 1], f[0, 2, h - 1, w - 3] = NAN, INF, -INF
    m[0, 2, 0, 0], m[0, 5, 1, 1], m[0, 12, 2 * h - 1, 2 * w - 1] = INF, -INF, INF
    m[0, 4, 1, 3] = NAN
    assert_matches_with_nonfinite("carafe", forward.carafe_forward(f, m, k, g, s),
                                  reference.carafe(f.double().cpu(), m.double().cpu(), k, g, s))
