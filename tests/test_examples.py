"""examples/: the super-resolution example runs end to end (a few steps), and FlopCounterMode
counts the fused op inside its model, per module."""
import importlib.util
import json
import pathlib

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from dlu_triton import flops

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "super_resolution.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("super_resolution", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_flop_counter_counts_the_fused_op_in_the_example_model(example):
    model = example.SuperResolution("DLU")
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, 16, 16))
    up = counter.get_flop_counts()["SuperResolution.up"]
    c, s = example.CHANNELS, example.SCALE
    assert up[torch.ops.dlu_triton.dlu_upsample] == flops.reassembly_flops(c, 16, 16, 5, s)
    assert sum(up.values()) == flops.dlu_flops(c, s, 16, 16, compressed_channels=16)


def test_example_trains_every_upsampler(example, tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the CPU path: the interpreter is too slow for whole images
    args = ["--steps", "3", "--batch", "2", "--crop", "32", "--eval-every", "3", "--out", str(tmp_path)]
    results = example.main(args)
    assert [r["method"] for r in results] == example.METHODS
    assert all(len(r["psnr"]) == len(example.HELD_OUT) and all(15 < p < 60 for p in r["psnr"]) for r in results)
    dlu = results[-1]
    assert dlu["offset"] > 0  # three steps move the offsets off their zero initialisation
    assert json.loads((tmp_path / "results.json").read_text())["results"][0]["method"] == "nearest"
    assert (tmp_path / "curves.png").stat().st_size > 0
