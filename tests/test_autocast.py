"""torch.autocast: the ops compute in their tensors' widest floating dtype and return it (as
torch.cat does), and models with DLU or CARAFEPack train under autocast without dtype errors."""
import pytest
import torch
from torch import nn

import dlu_triton

from .inputs import carafe_inputs, dlu_inputs
from .test_ops import check_against_reference

LOW = {"cpu": [torch.bfloat16], "cuda": [torch.bfloat16, torch.float16]}


def low_dtypes():
    return [(d, dt) for d in LOW if d == "cpu" or torch.cuda.is_available() for dt in LOW[d]]


@pytest.mark.parametrize("device,low", low_dtypes(), ids=str)
def test_ops_compute_in_the_widest_input_dtype(device, low, path):
    """Under autocast the op is the op on its inputs cast to their widest dtype, values and gradients."""
    if device == "cuda" and path == "cpu":
        pytest.skip("CUDA runs the Triton path")
    n, c, h, w, k, g, s = 1, 4, 3, 5, 3, 2, 2
    features, logits, offsets = dlu_inputs(n, c, h, w, k, g, s, dtype=torch.float32, device=device)
    for f in (features, features.to(low)):  # fp32 features with low-precision predictions, then all low
        inputs = [t.detach().clone().requires_grad_() for t in (f, logits.to(low), offsets.to(low))]
        with torch.autocast(device, dtype=low):
            out = dlu_triton.dlu_upsample(*inputs, k, g, s)
        assert out.dtype == f.dtype
        grad = torch.randn_like(out)
        grads = torch.autograd.grad(out, inputs, grad)
        cast = [t.detach().to(f.dtype).requires_grad_() for t in inputs]
        expected = dlu_triton.dlu_upsample(*cast, k, g, s)
        torch.testing.assert_close(out, expected, rtol=0, atol=0)
        expected_grads = torch.autograd.grad(expected, cast, grad)
        for got, want, t in zip(grads, expected_grads, inputs):
            assert got.dtype == t.dtype
            torch.testing.assert_close(got, want.to(t.dtype))
        check_against_reference("dlu", cast, grad, expected, expected_grads, k, g, s)
    features, masks = carafe_inputs(n, c, h, w, k, g, s, dtype=torch.float32, device=device)
    with torch.autocast(device, dtype=low):
        assert dlu_triton.carafe(features.to(low), masks, k, g, s).dtype == torch.float32
        assert dlu_triton.carafe(features.to(low), masks.to(low), k, g, s).dtype == low


@pytest.mark.parametrize("upsampler", [dlu_triton.DLU, dlu_triton.CARAFEPack])
@pytest.mark.parametrize("device,low", low_dtypes(), ids=str)
def test_model_trains_under_autocast(upsampler, device, low, path):
    if device == "cuda" and path == "cpu":
        pytest.skip("CUDA runs the Triton path")
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), upsampler(8, 2, up_kernel=3, compressed_channels=4),
                          nn.Conv2d(8, 3, 3, padding=1)).to(device)
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler(device, enabled=low == torch.float16)
    x, target = torch.randn(1, 3, 3, 4, device=device), torch.randn(1, 3, 6, 8, device=device)
    for _ in range(3):
        with torch.autocast(device, dtype=low):
            out = model(x)
            loss = (out.float() - target).square().mean()
        assert out.dtype == low  # the last conv's output; the upsampler ran in the convs' low dtype
        opt.zero_grad()
        scaler.scale(loss).backward()
        assert all(p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in model.parameters())
        scaler.step(opt)
        scaler.update()
    assert torch.isfinite(loss)
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
