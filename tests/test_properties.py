"""Property tests: random N, C, H, W (1 included), k, G, s, dtypes, layouts and offset scales,
fused ops against the float64 reference, forward and every gradient.

Each test runs per dtype, so a sweep spreads over pytest-xdist workers. CI runs a few examples
per test on Triton's interpreter; a GPU sweep sets DLU_TRITON_PROPERTY_EXAMPLES (examples per test
and dtype; docs/testing.md records the counts). Hypothesis draws the sizes, the seeded torch
generator the tensors.
"""
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dlu_triton

from .conftest import DEVICES, INTERPRETING
from .inputs import carafe_inputs, dlu_inputs
from .test_ops import check_against_reference, run_dlu

EXAMPLES = int(os.environ.get("DLU_TRITON_PROPERTY_EXAMPLES", "2"))
DEVICE = DEVICES[-1]  # the GPU where there is one, else the CPU (the interpreter under TRITON_INTERPRET=1)
DTYPES = ([torch.float64] if DEVICE == "cpu" else []) + [torch.float32, torch.float16, torch.bfloat16]
pytestmark = pytest.mark.skipif(
    DEVICE == "cpu" and not INTERPRETING,
    reason="on CPU the kernels run only with TRITON_INTERPRET=1; "
           "without it this would test the reference against itself")

SWEEP = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 20,
                 # the autouse seed and poisoning fixtures hold for every example
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# Each case stays cheap: on CPU the interpreter pays per program and tap (about N*G*s*s*k*k*H of
# them); on a GPU the float64 reference, run on the CPU, pays per output element.
BUDGET = 300 if DEVICE == "cpu" else float("inf")


@st.composite
def cases(draw):
    s = draw(st.sampled_from([1, 2, 3, 4, 5, 8]))
    k = draw(st.sampled_from([k for k in (1, 3, 5, 7) if s * s * k * k <= BUDGET / 2]))
    g = draw(st.sampled_from([g for g in (1, 2, 4) if g * s * s * k * k <= BUDGET]))
    n = draw(st.sampled_from([n for n in (1, 2) if n * g * s * s * k * k <= BUDGET]))
    # On a GPU: rows longer than a block and several channel blocks.
    c = g * draw(st.integers(1, 3 if DEVICE == "cpu" else 40))
    w = draw(st.integers(1, 6 if DEVICE == "cpu" else 80))
    if DEVICE == "cpu":
        h_max = min(5, BUDGET // (n * g * s * s * k * k))
    else:
        h_max = max(1, min(24, 2**19 // (n * c * s * s * w)))
    return dict(
        n=n, c=c, h=draw(st.integers(1, h_max)), w=w, k=k, g=g, s=s,
        channels_last=draw(st.booleans()), offset_scale=draw(st.sampled_from([0.3, 3.0, 30.0])),
    )


def layout(tensors, channels_last):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return [t.contiguous(memory_format=fmt) for t in tensors]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@SWEEP
@given(case=cases())
def test_dlu_matches_reference_on_random_cases(dtype, case):
    n, c, h, w, k, g, s = (case[x] for x in "n c h w k g s".split())
    inputs = dlu_inputs(n, c, h, w, k, g, s, dtype=dtype, device=DEVICE, offset_scale=case["offset_scale"])
    inputs = layout(inputs, case["channels_last"])
    out, grad, grads = run_dlu(inputs, k, g, s)
    check_against_reference("dlu", inputs, grad, out, grads, k, g, s)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@SWEEP
@given(case=cases())
def test_carafe_matches_reference_on_random_cases(dtype, case):
    n, c, h, w, k, g, s = (case[x] for x in "n c h w k g s".split())
    inputs = layout(carafe_inputs(n, c, h, w, k, g, s, dtype=dtype, device=DEVICE), case["channels_last"])
    inputs = [t.requires_grad_() for t in inputs]
    out = dlu_triton.carafe(*inputs, k, g, s)
    grad = torch.randn_like(out)
    check_against_reference("carafe", inputs, grad, out, torch.autograd.grad(out, inputs, grad), k, g, s)
