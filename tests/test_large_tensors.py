"""Large tensors: an output of more than 2^31 elements (64-bit indexing) matches the reference on
sampled regions, forward and every gradient (on a GPU with the memory for it). The region check
itself runs on small shapes everywhere, so its logic is tested on every machine.

A region of the output depends on a bounded neighbourhood of the inputs when the offsets are
bounded: with |offset| < 1.5 every sampled corner lies within 3 pixels of its source pixel and the
taps within k//2, so the reference on a crop of the inputs with that margin (and the gradients'
margin, which adds both) is exact on the region, whatever the tensor's size.
"""
import pytest
import torch

import dlu_triton

from .conftest import exact_dtype
from .inputs import LOW
from .test_ops import reference_results
from .tolerance import assert_close

REACH = 3  # corners within 3 pixels of the source pixel, for |offset| < 1.5


def bounded_inputs(n, c, h, w, k, g, s, dtype, device):
    features = torch.randn(n, c, h, w, dtype=dtype, device=device)
    logits = (2 * torch.randn(n, g * k * k, h, w, device=device)).to(dtype)
    offsets = (1.5 * torch.tanh(torch.randn(n, 2 * g * s * s, h, w, device=device))).to(dtype)
    return features, logits, offsets


def check_regions(inputs, grad, out, grads, k, g, s, regions):
    """Output and gradients on each low-resolution region (y, x, size) against the reference on a
    crop holding everything the region depends on; in float64, and for bf16/fp16 also in that dtype."""
    _, _, h, w = inputs[0].shape
    margin = k // 2 + REACH + 1
    for y, x, size in regions:
        y0, x0 = max(y - margin, 0), max(x - margin, 0)
        y1, x1 = min(y + size + margin, h), min(x + size + margin, w)
        crop = [t[:, :, y0:y1, x0:x1].cpu() for t in inputs]
        grad_crop = grad[:, :, s * y0:s * y1, s * x0:s * x1].cpu()
        low = slice(y - y0, y - y0 + size), slice(x - x0, x - x0 + size)
        high = slice(s * (y - y0), s * (y - y0 + size)), slice(s * (x - x0), s * (x - x0 + size))

        def run(dtype):
            results = reference_results("dlu", crop, grad_crop, k, g, s, dtype)
            return [r[:, :, high[0], high[1]] if i == 0 else r[:, :, low[0], low[1]] for i, r in enumerate(results)]

        expected = run(torch.float64)
        lowp = run(out.dtype) if out.dtype in LOW else [None] * 4
        got = [out[:, :, s * y:s * (y + size), s * x:s * (x + size)]] + [t[:, :, y:y + size, x:x + size] for t in grads]
        for name, a, e, lp in zip(("output", "grad features", "grad logits", "grad offsets"), got, expected, lowp):
            assert_close(f"region {(y, x, size)} {name}", a, e, lp)


def corners_and_middle(h, w, size):
    """The first and last pixels (where index arithmetic is largest) and one in the middle."""
    return [(0, 0, size), (h - size, w - size, size), (h // 2, w // 3, size), (0, w - size, size)]


def test_region_check_on_a_small_tensor(device, path):
    n, c, h, w, k, g, s = 1, 2, 13, 14, 5, 2, 2
    inputs = [t.requires_grad_() for t in bounded_inputs(n, c, h, w, k, g, s, exact_dtype(device), device)]
    out = dlu_triton.dlu_upsample(*inputs, k, g, s)
    grad = torch.randn_like(out)
    grads = torch.autograd.grad(out, inputs, grad)
    check_regions(inputs, grad, out, grads, k, g, s, corners_and_middle(h, w, 3))


def enough_gpu_memory(gib):
    return torch.cuda.is_available() and torch.cuda.mem_get_info()[1] >= gib * 2**30


@pytest.mark.skipif(not enough_gpu_memory(40), reason="an output of 2.4e9 elements needs a GPU with 40 GiB")
def test_output_past_int32_indexing_matches_on_regions():
    n, c, h, w, k, g, s = 1, 256, 1536, 1536, 5, 1, 2  # output 256 x 3072 x 3072 = 2.4e9 elements > 2^31
    inputs = [t.requires_grad_() for t in bounded_inputs(n, c, h, w, k, g, s, torch.bfloat16, "cuda")]
    out = dlu_triton.dlu_upsample(*inputs, k, g, s)
    assert out.numel() > 2**31
    grad = torch.randn_like(out)
    grads = torch.autograd.grad(out, inputs, grad)
    check_regions(inputs, grad, out, grads, k, g, s, corners_and_middle(h, w, 8))
