"""The reference against the contract written out as loops, against autograd, and against mmcv's
own CARAFE vectors."""
import os
import pathlib

import numpy as np
import pytest
import torch

from dlu_triton import reference

from .inputs import carafe_inputs, dlu_inputs
from .tolerance import assert_close

# mmcv's CARAFE test vectors (tests/data/mmcv-carafe/README.md); DLU_TRITON_PEER_VECTORS points elsewhere.
PEER = pathlib.Path(os.environ.get("DLU_TRITON_PEER_VECTORS", pathlib.Path(__file__).parent / "data" / "mmcv-carafe"))


def contract_dlu(features, logits, offsets, k, g, s):
    """docs/semantics.md, steps 1-3, one output pixel at a time."""
    x, lg, off = (t.double().numpy() for t in (features, logits, offsets))
    n_, c_, h, w = x.shape
    out = np.zeros((n_, c_, s * h, s * w))
    cpg, r = c_ // g, k // 2
    for n in range(n_):
        for oy in range(s * h):
            for ox in range(s * w):
                iy, ix, sy, sx = oy // s, ox // s, oy % s, ox % s
                for gi in range(g):
                    dx = off[n, (2 * gi) * s * s + sy * s + sx, iy, ix]
                    dy = off[n, (2 * gi + 1) * s * s + sy * s + sx, iy, ix]
                    py, px = min(max(iy + dy, 0), h - 1), min(max(ix + dx, 0), w - 1)
                    y0, x0 = int(np.floor(py)), int(np.floor(px))
                    fy, fx = py - y0, px - x0
                    kern = np.zeros(k * k)
                    for yy, xx, wt in ((y0, x0, (1 - fy) * (1 - fx)), (y0, x0 + 1, (1 - fy) * fx),
                                       (y0 + 1, x0, fy * (1 - fx)), (y0 + 1, x0 + 1, fy * fx)):
                        if wt:
                            v = lg[n, gi * k * k:(gi + 1) * k * k, yy, xx]
                            kern += wt * np.exp(v - v.max()) / np.exp(v - v.max()).sum()
                    for ci in range(gi * cpg, (gi + 1) * cpg):
                        for j in range(k * k):
                            ty, tx = iy + j // k - r, ix + j % k - r
                            if 0 <= ty < h and 0 <= tx < w:
                                out[n, ci, oy, ox] += kern[j] * x[n, ci, ty, tx]
    return torch.from_numpy(out)


@pytest.mark.parametrize("shape", [(1, 4, 3, 5, 3, 2, 2), (2, 2, 1, 4, 5, 1, 3), (1, 3, 4, 1, 1, 1, 2),
                                   (1, 2, 2, 2, 3, 1, 4)])
def test_reference_is_the_contract(shape):
    n, c, h, w, k, g, s = shape
    inputs = dlu_inputs(n, c, h, w, k, g, s)
    assert_close("dlu", reference.dlu_upsample(*inputs, k, g, s), contract_dlu(*inputs, k, g, s))


def test_untrained_dlu_uses_the_source_pixels_kernel():
    """Zero offsets: each output pixel gets the softmaxed kernel of its source pixel."""
    n, c, h, w, k, g, s = 2, 4, 3, 5, 3, 2, 2
    features, logits, offsets = dlu_inputs(n, c, h, w, k, g, s)
    masks = torch.softmax(logits.view(n, g, k * k, h, w), 2).view(n, -1, h, w)
    masks = masks.repeat_interleave(s, 2).repeat_interleave(s, 3)
    assert_close("dlu", reference.dlu_upsample(features, logits, offsets * 0, k, g, s),
                 reference.carafe(features, masks, k, g, s))


@pytest.mark.parametrize("shape", [(2, 4, 3, 5, 3, 2, 2), (1, 2, 1, 4, 5, 1, 3), (1, 2, 4, 1, 1, 2, 1)])
def test_reference_backward_is_autograd(shape):
    n, c, h, w, k, g, s = shape
    inputs = [t.requires_grad_() for t in dlu_inputs(n, c, h, w, k, g, s)]
    out = reference.dlu_upsample(*inputs, k, g, s)
    grad = torch.randn_like(out)
    for name, a, b in zip("features logits offsets".split(), torch.autograd.grad(out, inputs, grad),
                          reference.dlu_upsample_backward(grad, *inputs, k, g, s)):
        assert_close(name, b, a)
    inputs = [t.requires_grad_() for t in carafe_inputs(n, c, h, w, k, g, s)]
    out = reference.carafe(*inputs, k, g, s)
    for name, a, b in zip(("features", "masks"), torch.autograd.grad(out, inputs, grad),
                          reference.carafe_backward(grad, *inputs, k, g, s)):
        assert_close(name, b, a)


def load_peer(name, shape):
    return torch.from_numpy(np.fromfile(PEER / f"carafe_{name}.bin", dtype=np.float32).reshape(shape))


@pytest.fixture
def peer():
    if not PEER.is_dir():
        pytest.fail(f"mmcv's CARAFE vectors are missing: expected them in {PEER}")
    return dict(feat=load_peer("feat", (2, 64, 3, 3)), mask=load_peer("mask", (2, 100, 6, 6)),
                output=load_peer("output", (2, 64, 6, 6)), feat_grad=load_peer("feat_grad", (2, 64, 3, 3)),
                mask_grad=load_peer("mask_grad", (2, 100, 6, 6)))


def test_reference_matches_mmcv_vectors(peer):
    """mmcv computed these in float32 on CUDA; its own test accepts 1e-3, we hold to 1e-5."""
    feat, mask = peer["feat"].double(), peer["mask"].double()
    out = reference.carafe(feat, mask, 5, 4, 2)
    torch.testing.assert_close(out, peer["output"].double(), rtol=1e-5, atol=1e-5)
    grads = reference.carafe_backward(torch.ones_like(out), feat, mask, 5, 4, 2)
    torch.testing.assert_close(grads[0], peer["feat_grad"].double(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[1], peer["mask_grad"].double(), rtol=1e-5, atol=1e-5)
