"""The forward launchers directly, on shapes that need several row and channel blocks per
program grid, and with 64-bit indexing forced on."""
import pytest
import torch
import triton
import triton.language as tl

from dlu_triton import reference
from dlu_triton.kernels import common, forward

from ..conftest import DEVICES, INTERPRETING
from ..inputs import carafe_inputs, dlu_inputs
from ..tolerance import assert_close

# C per group > 256 and a row longer than one block: every kernel tiles in both directions.
WIDE = (1, 260, 2, 37, 3, 1, 2)


@pytest.fixture(params=DEVICES)
def kernel_device(request):
    if request.param == "cpu" and not INTERPRETING:
        pytest.skip("the Triton kernels run on CPU only with TRITON_INTERPRET=1 (the README's test command sets it)")
    return request.param


def dtype_for(device):
    return torch.float32 if device == "cuda" else torch.float64


def check_forward(shape, device):
    """Both forward launchers against the float64 reference."""
    n, c, h, w, k, g, s = shape
    dt = dtype_for(device)
    inputs = dlu_inputs(n, c, h, w, k, g, s, dtype=dt, device=device)
    assert_close("dlu", forward.dlu_forward(*inputs, k, g, s), reference.dlu_upsample(*(t.double() for t in inputs), k, g, s))
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


def test_host_arithmetic_matches_triton():
    """common.pow2 and common.cdiv stand in for triton's (slow from Python) in every launcher."""
    for n in [*range(1, 1100), 2**20 - 1, 2**20, 2**20 + 1]:
        assert common.pow2(n) == triton.next_power_of_2(n), n
        for d in (1, 2, 3, 7, 32, 1000):
            assert common.cdiv(n, d) == triton.cdiv(n, d), (n, d)
    assert common.cdiv(0, 4) == 0


def test_index_width():
    small = torch.empty(2, 3, 4, 5)
    assert common.index_dtype(small) == tl.int32
    far = torch.empty_strided((2, 1, 1, 1), (2**31, 1, 1, 1), device="meta")  # two elements, 2**31 apart
    assert common.index_dtype(small, far) == tl.int64
    assert common.index_dtype(small, torch.empty(0, 2**20, 2**20, 4, device="meta")) == tl.int32  # empty: never read
    view = torch.empty(2**31 + 8, dtype=torch.int8, device="meta")[4:]  # a large storage, reach 2**31 + 3
    assert common.index_dtype(small, view) == tl.int64
    assert common.index_dtype(small, view[:2**31]) == tl.int32  # in a large storage, reaching 2**31 - 1
    assert common.index_dtype(small, view[::2**30]) == tl.int64


def test_tiles_fit():
    for cpg in (1, 7, 64, 256, 1024):
        for row in (1, 17, 64, 1000):
            for s in (1, 2, 3, 4, 8, 16, 64, 1000):
                sxp = triton.next_power_of_2(s)
                block_p = common.kernel_grad_pixels(row, s)
                assert block_p * sxp <= max(32, sxp) and 1 <= block_p <= triton.next_power_of_2(row)
                for k in (1, 3, 5, 7, 9):
                    block_c, block_p, sxb = common.feature_grad_blocks(cpg, row, s, k)
                    halo = 2 * (k // 2)
                    assert block_p > halo and block_p <= max(32, triton.next_power_of_2(halo + 1))
                    assert block_c * triton.next_power_of_2(k) * block_p <= 8192 and block_c <= min(32, triton.next_power_of_2(cpg))
                    assert s % sxb == 0 and sxb in (1, 2)
                block_c, block_p, block_sy, warps = common.forward_blocks(cpg, row, s)
                assert block_c * block_p * block_sy * sxp <= 8192 and block_sy <= sxp
                assert block_p <= triton.next_power_of_2(row) and warps in (4, 8)
