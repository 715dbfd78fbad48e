"""DLU and CARAFEPack: parameter counts, initialisation, and values and gradients of whole
modules against the same modules composed with the reference."""
import pytest
import torch
import torch.nn.functional as F

import dlu_triton
from dlu_triton import reference

from .conftest import exact_dtype
from .tolerance import assert_close

# docs/semantics.md, C=256, Cm=64, k=5, encoder 3.
PARAMS = {2: (35_489, 74_148), 4: (49_337, 247_248), 8: (104_729, 939_648), 16: (326_297, 3_709_248)}


@pytest.mark.parametrize("scale", PARAMS)
def test_parameter_counts_match_the_contract(scale):
    dlu, carafe = (sum(p.numel() for p in m(256, scale).parameters()) for m in (dlu_triton.DLU, dlu_triton.CARAFEPack))
    assert (dlu, carafe) == PARAMS[scale]
    if scale == 16:
        assert 1 - dlu / carafe > 0.91


def test_initialisation():
    m = dlu_triton.DLU(64, 4, up_group=2)
    assert torch.count_nonzero(m.conv_offset.weight) == 0 and torch.count_nonzero(m.conv_offset.bias) == 0
    assert m.kernel_space_generator.weight.std().item() == pytest.approx(0.001, rel=0.1)
    assert torch.count_nonzero(m.channel_compressor.bias) == 0
    bound = (6 / (64 + 64)) ** 0.5  # xavier-uniform, 1x1 conv
    assert m.channel_compressor.weight.abs().max() <= bound
    c = dlu_triton.CARAFEPack(64, 4)
    assert c.content_encoder.weight.std().item() == pytest.approx(0.001, rel=0.1)


def dlu_by_reference(m, x):
    c = m.channel_compressor(x)
    return reference.dlu_upsample(x, m.kernel_space_generator(c), m.conv_offset(c), m.up_kernel, m.up_group,
                                  m.scale_factor)


def carafe_by_reference(m, x):
    mask = m.kernel_normalizer(m.content_encoder(m.channel_compressor(x)))
    return reference.carafe(x, mask, m.up_kernel, m.up_group, m.scale_factor)


@pytest.mark.parametrize("module,composed", [(dlu_triton.DLU, dlu_by_reference),
                                             (dlu_triton.CARAFEPack, carafe_by_reference)])
@pytest.mark.parametrize("config", [dict(channels=8, scale_factor=2, up_kernel=3, up_group=2),
                                    dict(channels=6, scale_factor=3, up_kernel=5)])
def test_module_matches_reference_composition(module, composed, config, device, path):
    m = module(**config, compressed_channels=4).to(device, exact_dtype(device))
    with torch.no_grad():  # trained-looking weights: offsets off zero, kernels far from uniform
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(2, config["channels"], 3, 5, device=device, dtype=exact_dtype(device), requires_grad=True)
    out = m(x)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, [x, *m.parameters()], grad)
    expected_out = composed(m, x)
    expected = torch.autograd.grad(expected_out, [x, *m.parameters()], grad)
    assert_close("output", out, expected_out)
    for (name, _), a, e in zip([("x", x), *m.named_parameters()], got, expected):
        assert_close(f"grad {name}", a, e)


def test_untrained_dlu_is_carafe_with_source_kernels(device, path):
    m = dlu_triton.DLU(8, 2, up_kernel=3, compressed_channels=4).to(device, exact_dtype(device))
    x = torch.randn(1, 8, 4, 3, device=device, dtype=exact_dtype(device))
    logits = m.kernel_space_generator(m.channel_compressor(x))
    mask = F.interpolate(torch.softmax(logits, 1), scale_factor=2, mode="nearest")
    assert_close("output", m(x), reference.carafe(x, mask, 3, 1, 2))


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(channels=0, scale_factor=2), ValueError, "channels must be >= 1"),
    (dict(channels=8, scale_factor=2.0), TypeError, "scale_factor must be an int"),
    (dict(channels=8, scale_factor=2, up_kernel=4), ValueError, "up_kernel must be odd"),
    (dict(channels=8, scale_factor=2, up_group=3), ValueError, "divisible by up_group"),
    (dict(channels=8, scale_factor=2, encoder_kernel=2), ValueError, "encoder_kernel must be odd"),
])
@pytest.mark.parametrize("module", [dlu_triton.DLU, dlu_triton.CARAFEPack])
def test_module_rejects_bad_config(module, kwargs, error, message):
    with pytest.raises(error, match=message):
        module(**kwargs)


@pytest.mark.parametrize("x,error,message", [
    (torch.randn(1, 6, 3, 3), ValueError, "x must have 8 channels"),
    (torch.randn(8, 3, 3), ValueError, "x must be 4-D"),
    (torch.randint(0, 3, (1, 8, 3, 3)), TypeError, "x must be a floating-point tensor"),
    (torch.randn(1, 8, 3, 3, dtype=torch.float64), TypeError, "x has dtype torch.float64 but the module's parameters"),
    ("an image", TypeError, "x must be a torch.Tensor"),
    (torch.randn(1, 8, 0, 3), ValueError, "x must have H, W >= 1"),
    (torch.randn(1, 8, 3, 0), ValueError, "x must have H, W >= 1"),
], ids=["channels", "rank", "integer", "dtype", "not a tensor", "H = 0", "W = 0"])
@pytest.mark.parametrize("module", [dlu_triton.DLU, dlu_triton.CARAFEPack])
def test_module_rejects_bad_input(module, x, error, message):
    with pytest.raises(error, match=message):
        module(8, 2)(x)


@pytest.mark.parametrize("module", [dlu_triton.DLU, dlu_triton.CARAFEPack])
def test_module_empty_batch(module, device, path):
    """An empty batch gives an empty output, and gradients (zero) for the parameters."""
    m = module(8, 2, up_kernel=3, compressed_channels=4).to(device, exact_dtype(device))
    x = torch.randn(0, 8, 3, 5, device=device, dtype=exact_dtype(device), requires_grad=True)
    out = m(x)
    assert out.shape == (0, 8, 6, 10) and out.dtype == x.dtype
    out.sum().backward()
    assert x.grad.shape == x.shape
    assert all(p.grad is not None and not p.grad.any() for p in m.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="mixing devices needs a GPU")
@pytest.mark.parametrize("module", [dlu_triton.DLU, dlu_triton.CARAFEPack])
def test_module_rejects_input_on_another_device(module):
    with pytest.raises(ValueError, match="x is on cuda"):
        module(8, 2)(torch.randn(1, 8, 3, 3, device="cuda"))
