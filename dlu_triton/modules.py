"""`DLU` and `CARAFEPack`: drop-in upsamplers with mmcv CARAFEPack's constructor.

Initialisation follows the official code: xavier-uniform for every conv (zero bias), then
normal(std=0.001) for the kernel predictor, and DLU's conv_offset all zero, so an untrained DLU
gives each output pixel the kernel of its source pixel.
"""
import torch
import torch.nn.functional as F
from torch import nn

from .ops import _check_int, _check_tensor, carafe, dlu_upsample


def _check_config(channels, scale_factor, up_kernel, up_group, encoder_kernel, encoder_dilation, compressed_channels):
    for name, value in dict(
        channels=channels, scale_factor=scale_factor, up_kernel=up_kernel, up_group=up_group,
        encoder_kernel=encoder_kernel, encoder_dilation=encoder_dilation, compressed_channels=compressed_channels,
    ).items():
        _check_int(name, value, 1)
    if up_kernel % 2 == 0:
        raise ValueError(f"up_kernel must be odd, got {up_kernel}")
    if encoder_kernel % 2 == 0:
        raise ValueError(f"encoder_kernel must be odd (same padding), got {encoder_kernel}")
    if channels % up_group:
        raise ValueError(f"channels ({channels}) must be divisible by up_group ({up_group})")


def _encoder(in_channels, out_channels, kernel, dilation):
    return nn.Conv2d(in_channels, out_channels, kernel, padding=(kernel - 1) * dilation // 2, dilation=dilation)


def _xavier(module):
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)


class _Upsampler(nn.Module):
    def __init__(self, channels, scale_factor, up_kernel=5, up_group=1, encoder_kernel=3,
                 encoder_dilation=1, compressed_channels=64):
        super().__init__()
        _check_config(channels, scale_factor, up_kernel, up_group, encoder_kernel, encoder_dilation,
                      compressed_channels)
        self.channels = channels
        self.scale_factor = scale_factor
        self.up_kernel = up_kernel
        self.up_group = up_group
        self.channel_compressor = nn.Conv2d(channels, compressed_channels, 1)

    def _check_input(self, x):
        """The module's input, named `x`, checked before the convolutions see it."""
        _check_tensor("x", x)
        if x.shape[1] != self.channels:
            raise ValueError(f"x must have {self.channels} channels (the module's `channels`), got {x.shape[1]}")
        if x.shape[2] < 1 or x.shape[3] < 1:
            raise ValueError(f"x must have H, W >= 1, got shape {tuple(x.shape)} (an empty batch, N = 0, is allowed)")
        weight = self.channel_compressor.weight
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
        if x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
            raise TypeError(f"x has dtype {x.dtype} but the module's parameters are {weight.dtype}; "
                            "convert one (module.to(dtype)) or run under torch.autocast")
        if x.device != weight.device:
            raise ValueError(f"x is on {x.device} but the module's parameters are on {weight.device}")

    def extra_repr(self):
        return (f"channels={self.channels}, scale_factor={self.scale_factor}, up_kernel={self.up_kernel}, "
                f"up_group={self.up_group}")


class DLU(_Upsampler):
    """Dynamic Lightweight Upsampling (Fu et al., ICPR 2024): a k*k kernel space predicted at low
    resolution, sampled per output pixel at a learned offset, reassembling the input."""

    def __init__(self, channels, scale_factor, up_kernel=5, up_group=1, encoder_kernel=3,
                 encoder_dilation=1, compressed_channels=64):
        super().__init__(channels, scale_factor, up_kernel, up_group, encoder_kernel, encoder_dilation,
                         compressed_channels)
        self.kernel_space_generator = _encoder(
            compressed_channels, up_group * up_kernel**2, encoder_kernel, encoder_dilation)
        self.conv_offset = _encoder(
            compressed_channels, 2 * up_group * scale_factor**2, encoder_kernel, encoder_dilation)
        self.init_weights()

    def init_weights(self):
        _xavier(self)
        nn.init.normal_(self.kernel_space_generator.weight, std=0.001)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x):
        self._check_input(x)
        c = self.channel_compressor(x)
        return dlu_upsample(
            x, self.kernel_space_generator(c), self.conv_offset(c), self.up_kernel, self.up_group, self.scale_factor)


class CARAFEPack(_Upsampler):
    """CARAFE (Wang et al., ICCV 2019) as mmcv's CARAFEPack: a full-resolution mask predicted per
    output pixel through pixel_shuffle, softmax-normalised, reassembling the input."""

    def __init__(self, channels, scale_factor, up_kernel=5, up_group=1, encoder_kernel=3,
                 encoder_dilation=1, compressed_channels=64):
        super().__init__(channels, scale_factor, up_kernel, up_group, encoder_kernel, encoder_dilation,
                         compressed_channels)
        self.content_encoder = _encoder(
            compressed_channels, up_kernel**2 * up_group * scale_factor**2, encoder_kernel, encoder_dilation)
        self.init_weights()

    def init_weights(self):
        _xavier(self)
        nn.init.normal_(self.content_encoder.weight, std=0.001)

    def kernel_normalizer(self, mask):
        # pixel_shuffle, then a softmax over each group's k*k taps; spelled out with every size
        # named, for an empty batch: there a view's -1 is undetermined, and F.pixel_shuffle's
        # backward returns the gradient unreshaped.
        n, c, h, w = mask.shape
        s, kk = self.scale_factor, self.up_kernel**2
        c //= s * s
        mask = mask.view(n, c, s, s, h, w).permute(0, 1, 4, 2, 5, 3).reshape(n, c // kk, kk, h * s, w * s)
        return F.softmax(mask, dim=2).view(n, c, h * s, w * s)

    def forward(self, x):
        self._check_input(x)
        mask = self.kernel_normalizer(self.content_encoder(self.channel_compressor(x)))
        return carafe(x, mask, self.up_kernel, self.up_group, self.scale_factor)
