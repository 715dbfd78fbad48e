"""The NHWC forward against the float64 reference: tiles cut by the image's edges (border tiles
take the masked tap loop, the others the unmasked one), channel blocks cut by the group, sub-pixel
blocks cut by s (s padded to a power of two, s = 16 split into two column blocks), both memory
formats and strided views (the NHWC copy, torch's copy, a channels-last view used as it is),
every dtype, 64-bit indices, non-finite inputs, and which kernels each input launches."""
import pytest
import torch
import triton.language as tl

from dlu_triton import reference
from dlu_triton.kernels import launch
from tests.conftest import exact_dtype
from tests.inputs import LOW, carafe_inputs, dlu_inputs
from tests.test_nonfinite import assert_matches_with_nonfinite
from tests.tolerance import assert_close

from . import forward

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter's NaN arithmetic

NAN, INF = float("nan"), float("inf")


@pytest.fixture(autouse=True)
def poisoned(monkeypatch):
    """Every buffer the candidate allocates starts as NaN: the output, the NHWC copy, DLU's kernel
    space and scratch slots (an element read before it is written shows in the output)."""
    def allocate(like, size, dtype=None, memory_format=None):
        return launch.new_output(like, size, dtype, memory_format).fill_(NAN)

    monkeypatch.setattr(forward, "new_output", allocate)


def shaped(x, layout):
    """x as `layout`: "channels_last"; "strided" (every other column of a wider tensor: evenly
    strided planes, copied by the candidate's kernel); "rows" (every other row: planes that are not
    one strided run, copied by torch); "channel_slice" (channels 1.. of a channels-last tensor: channel
    stride 1 with a pixel stride of C + 1, used as it is); else contiguous."""
    n, c, h, w = x.shape
    if layout == "channels_last":
        return x.to(memory_format=torch.channels_last)
    if layout in ("strided", "rows"):
        wide = torch.full((n, c, 2 * h, 2 * w), NAN, dtype=x.dtype, device=x.device)
        if layout == "strided":
            wide[:, :, :h, ::2] = x
            return wide[:, :, :h, ::2]
        wide[:, :, ::2, :w] = x
        return wide[:, :, ::2, :w]
    if layout == "channel_slice":
        wide = torch.full((n, c + 1, h, w), NAN, dtype=x.dtype, device=x.device).to(memory_format=torch.channels_last)
        wide[:, 1:] = x
        return wide[:, 1:]
    return x


def run_both(shape, dtype, device, layout=None):
    """Both forwards against the float64 reference (in 16 bits also against the reference in that
    dtype, the tolerance rule's yardstick), in the output format main writes."""
    n, c, h, w, k, g, s = shape
    x, logits, offsets = dlu_inputs(n, c, h, w, k, g, s, dtype=dtype, device=device)
    x = shaped(x, layout)
    got = forward.dlu_forward(x, logits, offsets, k, g, s)
    assert got.is_contiguous(memory_format=launch.output_format(x))
    ins = (x, logits, offsets)
    lowp = reference.dlu_upsample(*(t.cpu() for t in ins), k, g, s) if dtype in LOW else None
    assert_close("dlu", got, reference.dlu_upsample(*(t.double() for t in ins), k, g, s), lowp)
    f, m = carafe_inputs(n, c, h, w, k, g, s, dtype=dtype, device=device)
    f = shaped(f, layout)
    got = forward.carafe_forward(f, m, k, g, s)
    assert got.is_contiguous(memory_format=launch.output_format(f))
    lowp = reference.carafe(f.cpu(), m.cpu(), k, g, s) if dtype in LOW else None
    assert_close("carafe", got, reference.carafe(f.double(), m.double(), k, g, s), lowp)


# (N, C, H, W, k, G, s). Tiles are 2 x 8 source pixels: the first shape has tiles inside the image
# (unmasked taps) and tiles cut by its bottom edge; rows of 24 and 8 pixels are whole tiles (the
# channels-first stores unmasked along the columns), the others not; 3 or 40 channels a group are not
# whole blocks (32 channels in float32); s = 3 and 5 are padded (4 and 8 sub-pixel columns), s = 4
# takes two programs' sub-pixel blocks (8 sub-pixels a thread, their kernels in two loads), s = 16
# two sub-pixel column blocks; k = 1, s = 1.
SHAPES = [(1, 8, 7, 24, 5, 1, 2), (2, 6, 3, 9, 3, 2, 3), (1, 40, 3, 9, 5, 1, 4), (1, 4, 3, 4, 1, 1, 1),
          (1, 4, 2, 3, 3, 1, 8), (1, 2, 2, 8, 3, 1, 5), (1, 3, 2, 2, 3, 1, 16)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_matches_reference(kernel_device, shape):
    run_both(shape, exact_dtype(kernel_device), kernel_device)


@pytest.mark.parametrize(("shape", "dtype"), [(SHAPES[0], torch.float32), (SHAPES[0], torch.float16),
                                              (SHAPES[0], torch.bfloat16), (SHAPES[2], torch.bfloat16)], ids=str)
def test_forward_dtypes(kernel_device, shape, dtype):
    """16-bit features: 8 channels a thread (one 16-byte load), float32 kernels and accumulators."""
    run_both(shape, dtype, kernel_device)


@pytest.mark.parametrize("layout", ["channels_last", "strided", "rows", "channel_slice"])
def test_forward_layouts(kernel_device, layout, launches):
    """Features with channel stride 1 are read as they are (no NHWC copy); evenly strided planes
    go through the candidate's copy kernel, other views through torch's copy."""
    copies = launches(forward, "_to_nhwc_kernel")
    run_both(SHAPES[1], exact_dtype(kernel_device), kernel_device, layout)
    assert len(copies) == (2 if layout == "strided" else 0)


def test_forward_copies_channels_first(kernel_device, launches):
    copies = launches(forward, "_to_nhwc_kernel")
    run_both(SHAPES[3], exact_dtype(kernel_device), kernel_device)
    assert len(copies) == 2


def test_forward_index_width(kernel_device, monkeypatch):
    monkeypatch.setattr(forward, "index_dtype", lambda *t: tl.int64)
    run_both(SHAPES[0], exact_dtype(kernel_device), kernel_device)


@pytest.mark.parametrize("layout", [None, "channels_last"])
def test_forward_nonfinite(kernel_device, layout):
    """Non-finite features inside the image and at its corners (taps outside the image read 0, as
    the reference's padding does: 0 times an infinite kernel value is NaN in both), infinite and NaN
    masks, a NaN offset and logit (DLU): NaN, +Inf and -Inf exactly where the reference has them.
    The image has tiles inside it and at its edges."""
    n, c, h, w, k, g, s = 1, 3, 7, 21, 5, 1, 2
    dtype = exact_dtype(kernel_device)
    x, logits, offsets = dlu_inputs(n, c, h, w, k, g, s, dtype=dtype, device=kernel_device)
    x[0, 0, h - 1, w - 1], x[0, 1, 3, 10], x[0, 2, 0, 0] = NAN, INF, -INF
    logits[0, 3, h - 1, 0] = NAN
    offsets[0, 0, 1, 0] = NAN
    x = shaped(x, layout)
    assert_matches_with_nonfinite("dlu", forward.dlu_forward(x, logits, offsets, k, g, s),
                                  reference.dlu_upsample(*(t.double().cpu() for t in (x, logits, offsets)), k, g, s))
    f, m = carafe_inputs(n, c, h, w, k, g, s, dtype=dtype, device=kernel_device)
    f[0, 0, h - 1, w - 1], f[0, 1, 3, 10], f[0, 2, 0, 0] = NAN, INF, -INF
    m[0, 2, 0, 0], m[0, 5, 7, 20], m[0, 12, 2 * h - 1, 2 * w - 1] = INF, -INF, INF
    m[0, 4, 1, 3] = NAN
    f = shaped(f, layout)
    assert_matches_with_nonfinite("carafe", forward.carafe_forward(f, m, k, g, s),
                                  reference.carafe(f.double().cpu(), m.double().cpu(), k, g, s))
