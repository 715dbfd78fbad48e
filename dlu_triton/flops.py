"""FLOP and parameter counts, in the contract's convention: FLOPs = 2 x multiply-accumulates.

Counted: convolutions (2 * Cin * Cout * kh * kw per output pixel, bias excluded) and the
reassembly (2 * k*k * C * s*s per input pixel). Not counted, as in the papers: softmax,
pixel_shuffle, and DLU's bilinear sampling of the kernel (4 * k*k * G multiply-adds per output
pixel). With these, CARAFEPack(256, 2) costs the published 199K FLOPs per input pixel.

The same formulas are registered for the custom ops, so `torch.utils.flop_counter.FlopCounterMode`
counts models that contain them (forward and backward).
"""
import torch
from torch.utils.flop_counter import register_flop_formula

from . import ops  # noqa: F401  (registers torch.ops.dlu_triton)


def conv2d_flops(in_channels, out_channels, kernel, height, width, batch=1):
    return 2 * in_channels * out_channels * kernel * kernel * height * width * batch


def reassembly_flops(channels, height, width, kernel_size, scale_factor, batch=1):
    """CARAFE's (and DLU's) reassembly on an (N, C, H, W) input."""
    return 2 * kernel_size**2 * channels * scale_factor**2 * height * width * batch


def dlu_flops(channels, scale_factor, height, width, batch=1, up_kernel=5, up_group=1,
              encoder_kernel=3, compressed_channels=64):
    cm, hw = compressed_channels, (height, width, batch)
    return (conv2d_flops(channels, cm, 1, *hw)
            + conv2d_flops(cm, up_group * up_kernel**2, encoder_kernel, *hw)
            + conv2d_flops(cm, 2 * up_group * scale_factor**2, encoder_kernel, *hw)
            + reassembly_flops(channels, height, width, up_kernel, scale_factor, batch))


def carafe_flops(channels, scale_factor, height, width, batch=1, up_kernel=5, up_group=1,
                 encoder_kernel=3, compressed_channels=64):
    cm, hw = compressed_channels, (height, width, batch)
    return (conv2d_flops(channels, cm, 1, *hw)
            + conv2d_flops(cm, up_group * up_kernel**2 * scale_factor**2, encoder_kernel, *hw)
            + reassembly_flops(channels, height, width, up_kernel, scale_factor, batch))


def bilinear_flops(channels, scale_factor, height, width, batch=1):
    """Four multiply-adds per output element."""
    return 2 * 4 * channels * scale_factor**2 * height * width * batch


def nearest_flops(channels, scale_factor, height, width, batch=1):
    return 0


def _conv_params(cin, cout, kernel):
    return cin * cout * kernel * kernel + cout


def dlu_params(channels, scale_factor, up_kernel=5, up_group=1, encoder_kernel=3, compressed_channels=64):
    cm = compressed_channels
    return (_conv_params(channels, cm, 1) + _conv_params(cm, up_group * up_kernel**2, encoder_kernel)
            + _conv_params(cm, 2 * up_group * scale_factor**2, encoder_kernel))


def carafe_params(channels, scale_factor, up_kernel=5, up_group=1, encoder_kernel=3, compressed_channels=64):
    cm = compressed_channels
    return _conv_params(channels, cm, 1) + _conv_params(cm, up_group * up_kernel**2 * scale_factor**2, encoder_kernel)


def count_parameters(module):
    return sum(p.numel() for p in module.parameters())


def _reassembly(features_shape, kernel_size, scale_factor):
    n, c, h, w = features_shape
    return reassembly_flops(c, h, w, kernel_size, scale_factor, n)


@register_flop_formula([torch.ops.dlu_triton.dlu_upsample, torch.ops.dlu_triton.carafe])
def _forward_formula(features_shape, _, *rest, out_shape=None, **kwargs):
    kernel_size, scale_factor = rest[-3], rest[-1]
    return _reassembly(features_shape, kernel_size, scale_factor)


@register_flop_formula([torch.ops.dlu_triton.dlu_upsample_backward, torch.ops.dlu_triton.carafe_backward])
def _backward_formula(grad_shape, features_shape, *rest, out_shape=None, **kwargs):
    """The features' gradient and the kernels' gradient each cost one reassembly."""
    kernel_size, scale_factor = rest[-3], rest[-1]
    return 2 * _reassembly(features_shape, kernel_size, scale_factor)
