"""What the kernel families share: the kernel-space launch, the host-side arithmetic, the index
width and the tiles."""
import pytest
import torch
import triton
import triton.language as tl

from dlu_triton.kernels import kernel_space, launch, targets, tuning

from ..tolerance import assert_close

# (N, G, k, H, W): one pixel, k = 1 (a softmax of one tap), rows longer than a program's block of
# pixels and not a whole number of blocks, several groups and images
SPACES = [(1, 1, 1, 1, 1), (1, 1, 5, 1, 1), (2, 3, 3, 5, 7), (1, 2, 5, 17, 19), (1, 1, 7, 3, 130), (3, 1, 9, 2, 9)]


def expected_space(logits, g, k):
    n, _, h, w = logits.shape
    return torch.softmax(logits.double().reshape(n, g, k * k, h, w), 2).reshape(logits.shape)


@pytest.mark.parametrize("shape", SPACES, ids=str)
def test_kernel_space(kernel_device, shape, monkeypatch):
    n, g, k, h, w = shape
    if shape == SPACES[3]:  # one shape with 64-bit indexing forced on
        monkeypatch.setattr(kernel_space, "index_dtype", lambda *t: tl.int64)
    for dtype in (torch.float32, torch.bfloat16) + ((torch.float64,) if kernel_device == "cpu" else ()):
        logits = (3 * torch.randn(n, g * k * k, h, w, device=kernel_device)).to(dtype)
        space = kernel_space.kernel_space(logits, g, k)
        assert space.dtype == launch.accumulator(logits)
        assert_close(f"kernel space {dtype}", space, expected_space(logits, g, k))


def test_kernel_space_layouts_and_the_zeroed_buffer(kernel_device):
    """Channel-strided, channels_last and spatially strided logits; the space is contiguous
    whatever their layout, and copies of a buffer laid out like it (NaN before the launch) come
    back zero."""
    g, k = 2, 3
    base = torch.randn(2, 2 * g * k * k, 6, 11, device=kernel_device)
    for logits in (base[:, 1::2], base[:, : g * k * k].contiguous(memory_format=torch.channels_last),
                   base[:, : g * k * k, ::2, 1::3], base[:, : g * k * k, :1], base[:, : g * k * k, :, 3:4]):
        zeroed = kernel_space.new_space(logits, copies=3)
        assert zeroed.shape == (3, *logits.shape) and zeroed[0].is_contiguous()
        assert zeroed.isnan().all()  # the suite's poisoned allocation
        space = kernel_space.kernel_space(logits, g, k, zeroed=zeroed)
        assert space.is_contiguous()
        assert_close("kernel space", space, expected_space(logits, g, k))
        assert torch.equal(zeroed, torch.zeros_like(zeroed))


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter's NaN arithmetic
def test_kernel_space_nonfinite(kernel_device):
    """As torch.softmax: a NaN or +inf logit, or a group all -inf, makes the group NaN; a single
    -inf tap gets probability 0; huge finite logits do not overflow."""
    k = 3
    logits = torch.randn(1, 6 * k * k, 1, 2, device=kernel_device)
    logits[0, 0, 0, 0] = float("nan")
    logits[0, k * k + 4, 0, 0] = float("inf")
    logits[0, 2 * k * k: 3 * k * k, 0, 0] = float("-inf")
    logits[0, 3 * k * k + 1, 0, 0] = float("-inf")
    logits[0, 4 * k * k: 5 * k * k, 0, 0] = 3e38
    logits[0, 5 * k * k, 0, 0] = -3e38
    space = kernel_space.kernel_space(logits, 6, k)
    expected = expected_space(logits, 6, k)
    assert torch.equal(space.isnan(), expected.isnan()) and space.isnan()[0, : 3 * k * k, 0, 0].all()
    assert space[0, 3 * k * k + 1, 0, 0] == 0
    finite = ~expected.isnan()
    assert_close("kernel space", space[finite], expected[finite])


def test_host_arithmetic_matches_triton():
    """launch.pow2 and launch.cdiv stand in for triton's (slow from Python) in every launcher."""
    for n in [*range(1, 1100), 2**20 - 1, 2**20, 2**20 + 1]:
        assert launch.pow2(n) == triton.next_power_of_2(n), n
        for d in (1, 2, 3, 7, 32, 1000):
            assert launch.cdiv(n, d) == triton.cdiv(n, d), (n, d)
    assert launch.cdiv(0, 4) == 0


def test_index_width():
    small = torch.empty(2, 3, 4, 5)
    assert launch.index_dtype(small) == tl.int32
    far = torch.empty_strided((2, 1, 1, 1), (2**31, 1, 1, 1), device="meta")  # two elements, 2**31 apart
    assert launch.index_dtype(small, far) == tl.int64
    assert launch.index_dtype(small, torch.empty(0, 2**20, 2**20, 4, device="meta")) == tl.int32  # empty: never read
    view = torch.empty(2**31 + 8, dtype=torch.int8, device="meta")[4:]  # a large storage, reach 2**31 + 3
    assert launch.index_dtype(small, view) == tl.int64
    assert launch.index_dtype(small, view[:2**31]) == tl.int32  # in a large storage, reaching 2**31 - 1
    assert launch.index_dtype(small, view[::2**30]) == tl.int64


def test_tiles_fit():
    for cpg in (1, 7, 64, 256, 1024):
        for row in (1, 17, 64, 1000):
            for s in (1, 2, 3, 4, 8, 16, 64, 1000):
                sxp = triton.next_power_of_2(s)
                block_p = tuning.kernel_grad_pixels(row, s)
                assert block_p * sxp <= max(32, sxp) and 1 <= block_p <= triton.next_power_of_2(row)
                for k in (1, 3, 5, 7, 9):
                    block_c, block_p, sxb = tuning.feature_grad_blocks(cpg, row, s, k)
                    halo = 2 * (k // 2)
                    assert block_p > halo and block_p <= max(32, triton.next_power_of_2(halo + 1))
                    assert block_c * triton.next_power_of_2(k) * block_p <= 8192
                    assert block_c <= min(32, triton.next_power_of_2(cpg))
                    assert s % sxb == 0 and sxb in (1, 2)
                block_c, block_p, block_sy, warps = tuning.forward_blocks(cpg, row, s)
                assert block_c * block_p * block_sy * sxp <= 8192 and block_sy <= sxp
                assert block_p <= triton.next_power_of_2(row) and warps in (4, 8)


def test_dot_precision():
    """Three tf32 products whenever a float32 value enters (DLU's kernel space and K buffer are
    float32 in every dtype), one only when all are 16-bit (exact in tf32), float64 as is."""
    t = {dt: torch.empty(1, dtype=dt) for dt in (torch.float64, torch.float32, torch.float16, torch.bfloat16)}
    assert targets.dot_precision(t[torch.bfloat16], t[torch.float16]) == "tf32"
    assert targets.dot_precision(t[torch.bfloat16], t[torch.float32]) == "tf32x3"
    assert targets.dot_precision(t[torch.float32]) == "tf32x3"
    assert targets.dot_precision(t[torch.float32], t[torch.float64]) == "ieee"
