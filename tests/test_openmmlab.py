"""The OpenMMLab drop-in (dlu_triton/openmmlab.py, docs/openmmlab.md): the registry names,
mmcv's build_upsample_layer for every upsampler, the FPN neck built through the root registry
with each, the documented config, official checkpoints, and a name another package holds."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("mmengine")
pytest.importorskip("mmcv.cnn")

from mmcv.cnn import build_upsample_layer  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.registry import MODELS  # noqa: E402

import dlu_triton  # noqa: E402
from dlu_triton import reference  # noqa: E402
from dlu_triton.openmmlab import UpsamplerFPN  # noqa: E402

from .tolerance import assert_close  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def reference_path(monkeypatch):
    """The registry and the neck's plumbing are under test here, not the kernels (tested on
    their own): on CPU the ops take the PyTorch reference, not Triton's slow interpreter."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")


UPSAMPLERS = [dict(type="nearest"), dict(type="bilinear"), dict(type="deconv", upsample_kernel=3),
              dict(type="pixel_shuffle", upsample_kernel=3), dict(type="carafe", up_kernel=3),
              dict(type="dlu", up_kernel=3, compressed_channels=8),
              dict(type="DLU", up_group=2, up_kernel=3, compressed_channels=8),
              dict(type="CARAFEPack", compressed_channels=8)]


@pytest.mark.parametrize("name, cls", [("DLU", dlu_triton.DLU), ("dlu", dlu_triton.DLU),
                                       ("CARAFEPack", dlu_triton.CARAFEPack), ("carafe", dlu_triton.CARAFEPack),
                                       ("UpsamplerFPN", UpsamplerFPN), ("UNIFIED_FPN", UpsamplerFPN)])
def test_registered_names(name, cls):
    assert MODELS.get(name) is cls


@pytest.mark.parametrize("cfg", UPSAMPLERS, ids=lambda c: c["type"])
def test_build_upsample_layer(cfg):
    cfg = {k: v for k, v in cfg.items() if k != "upsample_kernel"}
    extra = dict(
        nearest=dict(scale_factor=2), bilinear=dict(scale_factor=2),
        deconv=dict(in_channels=8, out_channels=8, kernel_size=4, stride=2, padding=1),
        pixel_shuffle=dict(in_channels=8, out_channels=8, scale_factor=2, upsample_kernel=3),
    ).get(cfg["type"], dict(channels=8, scale_factor=2))
    layer = build_upsample_layer({**cfg, **extra})
    x = torch.randn(2, 8, 5, 7, requires_grad=True)
    y = layer(x)
    y.square().sum().backward()
    assert y.shape == (2, 8, 10, 14) and torch.isfinite(x.grad).all()
    if cfg["type"] in ("dlu", "DLU", "carafe", "CARAFEPack"):
        assert isinstance(layer, (dlu_triton.DLU, dlu_triton.CARAFEPack))


def pyramid(channels, size=16):
    """A 4-level backbone output: channels[i] at size / 2**i (the last level odd-sized, so the
    neck crops an upsampled level)."""
    return [torch.randn(2, c, size >> i | (i == 3), size >> i | (i == 3), requires_grad=True)
            for i, c in enumerate(channels)]


@pytest.mark.parametrize("upsample_cfg", UPSAMPLERS, ids=lambda c: c["type"])
def test_neck_with_each_upsampler(upsample_cfg):
    neck = MODELS.build(dict(type="UNIFIED_FPN", in_channels=[4, 8, 16, 32], out_channels=8, num_outs=5,
                             upsample_cfg=upsample_cfg))
    neck.init_weights()
    inputs = pyramid([4, 8, 16, 32])
    outs = neck(inputs)
    assert [tuple(o.shape) for o in outs] == [(2, 8, 16, 16), (2, 8, 8, 8), (2, 8, 4, 4), (2, 8, 3, 3), (2, 8, 2, 2)]
    sum(o.square().sum() for o in outs).backward()
    assert all(torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0 for x in inputs)
    assert len(neck.upsample_modules) == 4  # 3 top-down steps and the extra level's


def test_neck_matches_its_definition():
    """The neck's output written out: laterals, the top-down sums with the upsampler (cropped),
    the output convolutions, and the extra level by a stride-2 convolution of the last input."""
    neck = UpsamplerFPN([4, 8, 16], 8, num_outs=4, upsample_cfg=dict(type="dlu", up_kernel=3, compressed_channels=8))
    neck.init_weights()
    inputs = [torch.randn(1, c, s, s) for c, s in ((4, 12), (8, 6), (16, 3))]
    lat = [neck.lateral_convs[i](inputs[i]) for i in range(3)] + [neck.lateral_convs[3](inputs[2])]
    for i in (3, 2, 1):
        up = neck.upsample_modules[i - 1](lat[i])
        lat[i - 1] = lat[i - 1] + up[:, :, :lat[i - 1].shape[2], :lat[i - 1].shape[3]]
    for got, want in zip(neck(inputs), (neck.fpn_convs[i](lat[i]) for i in range(4))):
        torch.testing.assert_close(got, want)


def test_the_documented_config_builds_and_runs():
    text = (ROOT / "docs" / "openmmlab.md").read_text()
    snippet = re.search(r"## A neck with DLU.*?```python\n(.*?)```", text, re.S).group(1)
    cfg = Config.fromstring(snippet, ".py")
    assert cfg.custom_imports["imports"] == ["dlu_triton.openmmlab"]
    neck = MODELS.build(cfg.model.neck)
    assert isinstance(neck, UpsamplerFPN) and all(isinstance(m, dlu_triton.DLU) for m in neck.upsample_modules)
    neck.init_weights()
    inputs = pyramid([256, 512, 1024, 2048], size=8)
    outs = neck(inputs)
    sum(o.sum() for o in outs).backward()
    assert len(outs) == 5 and all(torch.isfinite(x.grad).all() for x in inputs)


def official_dlu_state(c, s, k=5, enc=3, cm=64):
    """A state dict with the official DLUPack's parameter names and shapes (up_group 1)."""
    shapes = {"channel_compressor.weight": (cm, c, 1, 1), "channel_compressor.bias": (cm,),
              "kernel_space_generator.weight": (k * k, cm, enc, enc), "kernel_space_generator.bias": (k * k,),
              "conv_offset.weight": (2 * s * s, cm, enc, enc), "conv_offset.bias": (2 * s * s,)}
    return {name: torch.randn(shape, dtype=torch.float64) * 0.3 for name, shape in shapes.items()}


def official_pipeline(state, x, k, s, enc=3):
    """The official DLUPack.forward, written out in PyTorch: softmax of the kernel space, the
    offsets over a linspace grid, grid_sample (border, align_corners), then CARAFE."""
    c = F.conv2d(x, state["channel_compressor.weight"], state["channel_compressor.bias"])
    offset = F.conv2d(c, state["conv_offset.weight"], state["conv_offset.bias"], padding=enc // 2)
    mask = F.conv2d(c, state["kernel_space_generator.weight"], state["kernel_space_generator.bias"], padding=enc // 2)
    n, mc, h, w = mask.shape
    mask = F.softmax(mask.view(n, mc // k**2, -1, h, w), dim=2).view(n, mc, h, w)
    offset = F.pixel_shuffle(offset, s).permute(0, 2, 3, 1).clone()
    offset[..., 0] *= 2 / (w - 1)
    offset[..., 1] *= 2 / (h - 1)
    new_h = torch.repeat_interleave(torch.linspace(-1, 1, h, dtype=x.dtype), s).view(-1, 1).repeat(1, s * w)
    new_w = torch.repeat_interleave(torch.linspace(-1, 1, w, dtype=x.dtype), s).repeat(s * h, 1)
    grid = torch.stack((new_w, new_h), dim=2)[None].expand(n, -1, -1, -1) + offset
    masks = F.grid_sample(mask, grid, padding_mode="border", align_corners=True)
    return reference.carafe(x, masks, k, 1, s)


@pytest.mark.parametrize("s", [2, 4])
def test_official_checkpoint_loads_and_computes_the_official_output(s):
    state = official_dlu_state(16, s)
    up = dlu_triton.DLU(16, s).double()
    up.load_state_dict(state, strict=True)
    x = torch.randn(2, 16, 6, 7, dtype=torch.float64)
    with torch.no_grad():
        assert_close("DLU with the official checkpoint", up(x), official_pipeline(state, x, 5, s))


def test_official_neck_checkpoint_loads():
    """The official UNIFIED_FPN's keys and shapes for its COCO config (ResNet-50 channels, 5
    outputs, DLU): lateral and output ConvModules, one DLU per top-down step and extra level."""
    ins, out = [256, 512, 1024, 2048], 256
    state = {}
    for i, c in enumerate(ins + [2048]):
        kernel = 1 if i < 4 else 3
        state[f"lateral_convs.{i}.conv.weight"] = torch.randn(out, c, kernel, kernel)
        state[f"lateral_convs.{i}.conv.bias"] = torch.randn(out)
        state[f"fpn_convs.{i}.conv.weight"] = torch.randn(out, out, 3, 3)
        state[f"fpn_convs.{i}.conv.bias"] = torch.randn(out)
    for i in range(4):
        state.update({f"upsample_modules.{i}.{k}": v.float() for k, v in official_dlu_state(out, 2).items()})
    neck = MODELS.build(dict(type="UNIFIED_FPN", in_channels=ins, out_channels=out, num_outs=5,
                             upsample_cfg=dict(type="dlu", up_kernel=5, up_group=1, encoder_kernel=3,
                                               encoder_dilation=1, compressed_channels=64)))
    neck.load_state_dict(state, strict=True)


def test_a_name_another_package_holds_stays_and_warns_once():
    """In a fresh interpreter: 'dlu' and 'UNIFIED_FPN' registered by someone else first."""
    script = """
import warnings
from mmengine.registry import MODELS
import torch.nn as nn

class OfficialDLUPack(nn.Module): pass
class OfficialFPN(nn.Module): pass
MODELS.register_module(name='dlu', module=OfficialDLUPack)
MODELS.register_module(name='UNIFIED_FPN', module=OfficialFPN)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('default')
    import dlu_triton.openmmlab
    import importlib
    importlib.reload(dlu_triton.openmmlab)  # a second import: still once per name
import dlu_triton
assert MODELS.get('dlu') is OfficialDLUPack and MODELS.get('UNIFIED_FPN') is OfficialFPN
assert MODELS.get('DLU') is dlu_triton.DLU and MODELS.get('UpsamplerFPN').__name__ == 'UpsamplerFPN'
messages = sorted(str(w.message) for w in caught if 'dlu_triton.openmmlab' in str(w.message))
assert len(messages) == 2, messages
assert "'UNIFIED_FPN' is already registered" in messages[0] and "OfficialFPN" in messages[0], messages
assert "'dlu' is already registered" in messages[1] and "OfficialDLUPack" in messages[1], messages
print('ok')
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stdout + run.stderr
