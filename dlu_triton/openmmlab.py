"""OpenMMLab drop-in: `DLU`, `CARAFEPack` and an FPN neck in mmengine's root `MODELS` registry.

Importing this module (from a config: `custom_imports=dict(imports=['dlu_triton.openmmlab'])`)
registers, in the root registry that `mmcv.cnn.build_upsample_layer` searches and that
mmdetection's and mmsegmentation's registries fall back to:

- `DLU` as 'DLU', and as 'dlu' (the official DLU code's name);
- `CARAFEPack` as 'CARAFEPack', and as 'carafe' (mmcv's name, which only mmcv's compiled ops
  register);
- `UpsamplerFPN` as 'UpsamplerFPN', and as 'UNIFIED_FPN' (the neck of the official DLU configs).

A name already registered by another package keeps its entry; the import then warns once,
naming it. Only mmengine and mmcv-lite are needed (`pip install "dlu-triton[openmmlab]"`),
not mmcv's compiled ops. docs/openmmlab.md has the configs.
"""
import warnings

from mmcv.cnn import ConvModule, build_upsample_layer
from mmengine.model import BaseModule, ModuleList, xavier_init
from mmengine.registry import MODELS
from torch import nn

from .modules import DLU, CARAFEPack


class UpsamplerFPN(BaseModule):
    """An FPN whose top-down path upsamples with any upsampler in the registry: 'nearest',
    'bilinear', 'deconv', 'pixel_shuffle', 'carafe', 'dlu', 'DLU', 'CARAFEPack', or another
    upsampler that takes (channels, scale_factor). Constructor, submodule names (so state dict
    keys) and forward are those of the official DLU code's `UNIFIED_FPN` (itself mmdetection's
    `FPN_CARAFE` with DLU added): 1x1 lateral convolutions, 3x3 output convolutions, extra levels
    by stride-2 convolutions on the last input then on each other, and each level's lateral plus
    the level above upsampled 2x (cropped to the smaller size).

    upsample_cfg: the upsampler's config without channels and scale_factor (the neck sets them);
    'deconv' and 'pixel_shuffle' need upsample_kernel.
    init_weights(): xavier-uniform for every convolution, then each upsampler's own init_weights.
    """

    def __init__(self, in_channels, out_channels, num_outs, start_level=0, end_level=-1, norm_cfg=None,
                 act_cfg=None, order=("conv", "norm", "act"),
                 upsample_cfg=dict(type="carafe", up_kernel=5, up_group=1, encoder_kernel=3, encoder_dilation=1),
                 init_cfg=None):
        super().__init__(init_cfg)
        if not isinstance(in_channels, (list, tuple)):
            raise TypeError(f"in_channels must be a list of ints, got {type(in_channels).__name__}")
        if tuple(order) not in (("conv", "norm", "act"), ("act", "conv", "norm")):
            raise ValueError(f"order must be ('conv', 'norm', 'act') or ('act', 'conv', 'norm'), got {order}")
        self.in_channels = list(in_channels)
        self.out_channels = out_channels
        self.num_ins = len(in_channels)
        self.num_outs = num_outs
        self.norm_cfg = norm_cfg
        self.act_cfg = act_cfg
        self.with_bias = norm_cfg is None
        self.order = tuple(order)
        if not isinstance(upsample_cfg, dict) or not upsample_cfg.get("type"):
            raise ValueError(
                f"upsample_cfg must be a dict with a type (an upsampler's registry name), got {upsample_cfg}")
        self.upsample_cfg = dict(upsample_cfg)
        self.upsample = self.upsample_cfg["type"]
        self.upsample_kernel = self.upsample_cfg.pop("upsample_kernel", None)
        if self.upsample in ("deconv", "pixel_shuffle") and not (self.upsample_kernel or 0) > 0:
            raise ValueError(f"upsample_cfg of type {self.upsample!r} needs upsample_kernel > 0, got {upsample_cfg}")
        if end_level == -1:
            self.backbone_end_level = self.num_ins
            if num_outs < self.num_ins - start_level:
                raise ValueError(f"num_outs ({num_outs}) must be >= the inputs used ({self.num_ins - start_level})")
        else:
            self.backbone_end_level = end_level
            if not end_level <= self.num_ins or num_outs != end_level - start_level:
                raise ValueError(f"end_level ({end_level}) must be <= len(in_channels) ({self.num_ins}) and "
                                 f"num_outs ({num_outs}) == end_level - start_level ({end_level - start_level})")
        self.start_level = start_level
        self.end_level = end_level

        self.lateral_convs = ModuleList()
        self.fpn_convs = ModuleList()
        self.upsample_modules = ModuleList()
        for i in range(start_level, self.backbone_end_level):
            self.lateral_convs.append(self._conv(in_channels[i], 1))
            self.fpn_convs.append(self._conv(out_channels, 3, padding=1))
            if i != self.backbone_end_level - 1:
                self.upsample_modules.append(self._upsampler())
        for i in range(num_outs - self.backbone_end_level + start_level):  # extra levels
            source = in_channels[self.backbone_end_level - 1] if i == 0 else out_channels
            self.lateral_convs.append(self._conv(source, 3, stride=2, padding=1))
            self.upsample_modules.append(self._upsampler())
            self.fpn_convs.append(self._conv(out_channels, 3, padding=1))

    def _conv(self, in_channels, kernel, **kw):
        return ConvModule(in_channels, self.out_channels, kernel, norm_cfg=self.norm_cfg, bias=self.with_bias,
                          act_cfg=self.act_cfg, inplace=False, order=self.order, **kw)

    def _upsampler(self):
        """One 2x upsampler from upsample_cfg, given the arguments its type takes."""
        cfg, c = dict(self.upsample_cfg), self.out_channels
        if self.upsample == "deconv":
            pad = (self.upsample_kernel - 1) // 2
            cfg.update(in_channels=c, out_channels=c, kernel_size=self.upsample_kernel, stride=2, padding=pad,
                       output_padding=pad)
        elif self.upsample == "pixel_shuffle":
            cfg.update(in_channels=c, out_channels=c, scale_factor=2, upsample_kernel=self.upsample_kernel)
        elif self.upsample in ("nearest", "bilinear"):
            cfg.update(scale_factor=2, mode=self.upsample, align_corners=None if self.upsample == "nearest" else False)
        else:
            cfg.update(channels=c, scale_factor=2)
        return build_upsample_layer(cfg)

    def init_weights(self):
        super().init_weights()
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                xavier_init(m, distribution="uniform")
        for m in self.upsample_modules:
            if hasattr(m, "init_weights"):
                m.init_weights()

    @staticmethod
    def _add(a, b):
        """a + b, b cropped to a's size (an odd level's upsampled neighbour is one pixel larger)."""
        return a + b[:, :, :a.shape[2], :a.shape[3]]

    def forward(self, inputs):
        if len(inputs) != self.num_ins:
            raise ValueError(f"expected {self.num_ins} feature maps (len(in_channels)), got {len(inputs)}")
        laterals = []
        for i, conv in enumerate(self.lateral_convs):
            if i <= self.backbone_end_level - self.start_level:
                laterals.append(conv(inputs[min(i + self.start_level, len(inputs) - 1)]))
            else:
                laterals.append(conv(laterals[-1]))
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = self._add(laterals[i - 1], self.upsample_modules[i - 1](laterals[i]))
        return tuple(conv(lateral) for conv, lateral in zip(self.fpn_convs, laterals))


def _register(module, name):
    """Register `module` under `name` in the root MODELS, unless another package's class holds the
    name: then leave it and warn (once, with Python's default warning filter)."""
    held = MODELS.module_dict.get(name)
    if held is None or held.__module__ == module.__module__:  # free, or ours from an earlier import
        MODELS.register_module(name=name, module=module, force=True)
    else:
        warnings.warn(f"dlu_triton.openmmlab: {name!r} is already registered in mmengine's MODELS "
                      f"({held.__module__}.{held.__qualname__}); it is left as it is, and dlu_triton's "
                      f"{module.__name__} stays available as {module.__name__!r}.", stacklevel=2)


for _module, _names in ((DLU, ("DLU", "dlu")), (CARAFEPack, ("CARAFEPack", "carafe")),
                        (UpsamplerFPN, ("UpsamplerFPN", "UNIFIED_FPN"))):
    for _name in _names:
        _register(_module, _name)
