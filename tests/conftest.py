import os
import sys

import numpy as np
import pytest
import torch

from dlu_triton.kernels import launch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    """Every buffer a kernel launcher allocates starts as NaN (an index buffer as -1, which
    index_add_ refuses), so an unwritten element fails."""
    allocate = launch.new_output

    def poisoned(like, size, dtype=None, memory_format=None):
        out = allocate(like, size, dtype, memory_format)
        return out.fill_(float("nan") if out.is_floating_point() else -1)

    for name, module in list(sys.modules.items()):  # the launchers' modules, whichever imported it
        launcher = name.startswith(("dlu_triton.kernels.", "dlu_triton.cpu"))
        if launcher and getattr(module, "new_output", None) is allocate:
            monkeypatch.setattr(module, "new_output", poisoned)


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


def exact_dtype(device):
    """float64 where the kernels take it (CPU: the interpreter and the CPU path); on CUDA float64
    goes to the reference, so the kernels are checked in float32 there."""
    return torch.float64 if device == "cpu" else torch.float32


@pytest.fixture(params=["triton", "cpu"])
def path(request, device, monkeypatch):
    """Which implementation the ops dispatch to: the Triton kernels (CUDA, or the interpreter on
    CPU) or the CPU path (dlu_triton.cpu: CPU without the interpreter)."""
    if request.param == "triton" and device == "cpu" and not INTERPRETING:
        pytest.skip("the Triton kernels run on CPU only with TRITON_INTERPRET=1 (the README's test command sets it)")
    if request.param == "cpu":
        if device != "cpu":
            pytest.skip("CUDA always dispatches to the Triton kernels")
        monkeypatch.setenv("TRITON_INTERPRET", "0")
    return request.param
