"""Analytic counts against FlopCounterMode and the parameter counts of real modules, and the
paper's savings."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import dlu_triton
from dlu_triton import flops


def counted(module, x, backward=False):
    with FlopCounterMode(display=False) as counter:
        out = module(x)
        if backward:
            out.sum().backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("scale", [2, 4, 8, 16])
def test_flop_counter_agrees_with_analytic_counts(scale):
    x = torch.randn(1, 256, 4, 3, device="meta")
    for module, analytic in ((dlu_triton.DLU, flops.dlu_flops), (dlu_triton.CARAFEPack, flops.carafe_flops)):
        m = module(256, scale).to("meta")
        assert counted(m, x) == analytic(256, scale, 4, 3)
        params = dict(DLU=flops.dlu_params, CARAFEPack=flops.carafe_params)[module.__name__]
        assert flops.count_parameters(m) == params(256, scale)


def test_carafe_costs_the_published_199k_per_pixel():
    assert flops.carafe_flops(256, 2, 1, 1) == 199_168


@pytest.mark.parametrize("scale,saving", [(2, 0.38), (16, 0.63)])
def test_dlu_saves_the_papers_flops(scale, saving):
    x = torch.randn(1, 256, 8, 8, device="meta")
    dlu = counted(dlu_triton.DLU(256, scale).to("meta"), x)
    carafe = counted(dlu_triton.CARAFEPack(256, scale).to("meta"), x)
    assert 1 - dlu / carafe >= saving


def test_backward_is_counted():
    x = torch.randn(1, 8, 3, 4, requires_grad=True)
    features, logits, offsets = x, torch.randn(1, 9, 3, 4), torch.randn(1, 8, 3, 4)
    with FlopCounterMode(display=False) as counter:
        dlu_triton.dlu_upsample(features, logits, offsets, 3, 1, 2).sum().backward()
    assert counter.get_total_flops() == 3 * flops.reassembly_flops(8, 3, 4, 3, 2)


def test_zero_parameter_baselines():
    assert flops.nearest_flops(8, 2, 3, 4) == 0
    assert flops.bilinear_flops(8, 2, 3, 4) == 2 * 4 * 8 * 4 * 12
