"""dlu_triton/cpu_native.py: the compiled forward builds where a compiler is and runs when built.
tests/test_cpu.py checks its numbers; tests/test_cpu_native_build.py what happens when it cannot
be built, or its cache is damaged."""
import shutil

import pytest
import torch

from dlu_triton import cpu, cpu_native, reference

from .inputs import carafe_inputs, dlu_inputs
from .test_cpu import SHAPES
from .tolerance import assert_close


def test_the_kernel_builds():
    """Where a C compiler is on the PATH (CI's machines have gcc), the compiled forward must build:
    the "compiled" tests above would otherwise skip."""
    if not any(shutil.which(cc) for cc in ("cc", "gcc", "clang")):
        pytest.skip("no C compiler on the PATH")
    assert cpu_native.library() is not None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_compiled_forward_runs(dtype, monkeypatch):
    """With the kernel built, float32 and float64 forwards take it, not the gathers."""
    if cpu_native.library() is None:
        pytest.skip("no C compiler built dlu_triton/cpu_reassemble.c (test_the_kernel_builds says whether one should)")
    monkeypatch.setattr(cpu, "_reassemble", lambda *args: pytest.fail("the gathers ran"))
    n, c, h, w, k, g, s = SHAPES[0]
    features, masks = carafe_inputs(n, c, h, w, k, g, s, dtype=dtype)
    assert_close("carafe", cpu.carafe(features, masks, k, g, s), reference.carafe(features, masks, k, g, s))
    inputs = dlu_inputs(n, c, h, w, k, g, s, dtype=dtype)
    assert_close("dlu", cpu.dlu_upsample(*inputs, k, g, s), reference.dlu_upsample(*inputs, k, g, s))
