"""The kernels launch on the current CUDA stream and on the input's device, and replay from CUDA
graphs (GPU only)."""
import copy

import pytest
import torch

import dlu_triton

from .inputs import dlu_inputs
from .test_ops import check_against_reference
from .tolerance import assert_close

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA streams and devices need a GPU")


def test_side_stream_orders_the_kernels_after_its_own_work():
    """The inputs are written on a side stream after a long sleep there; a kernel launched on any
    other stream would read them before that, as NaN."""
    n, c, h, w, k, g, s = 2, 16, 9, 11, 5, 2, 2
    source = dlu_inputs(n, c, h, w, k, g, s, dtype=torch.float32, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        inputs = [torch.full_like(t, float("nan")) for t in source]
        torch.cuda._sleep(100_000_000)
        for dst, src in zip(inputs, source):
            dst.copy_(src)
        inputs = [t.requires_grad_() for t in inputs]
        out = dlu_triton.dlu_upsample(*inputs, k, g, s)
        grad = torch.ones_like(out)
        grads = torch.autograd.grad(out, inputs, grad)
    torch.cuda.current_stream().wait_stream(side)
    check_against_reference("dlu", source, grad, out, grads, k, g, s)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="a second GPU")
def test_second_device_while_the_first_is_current():
    n, c, h, w, k, g, s = 1, 8, 5, 7, 3, 1, 2
    inputs = [t.requires_grad_() for t in dlu_inputs(n, c, h, w, k, g, s, dtype=torch.float32, device="cuda:1")]
    with torch.cuda.device(0):
        out = dlu_triton.dlu_upsample(*inputs, k, g, s)
        grad = torch.ones_like(out)
        grads = torch.autograd.grad(out, inputs, grad)
    assert out.device == torch.device("cuda:1") and all(t.device == out.device for t in grads)
    check_against_reference("dlu", inputs, grad, out, grads, k, g, s)


@pytest.mark.parametrize("method", ["DLU", "CARAFEPack"])
def test_cuda_graph_replay_matches_eager(method, monkeypatch):
    """A training step captured by torch.cuda.make_graphed_callables (what hides the host's costs)
    and replayed on new data gives the eager module's output and gradients: every launch goes to
    the capturing stream, nothing waits on the host, every buffer comes from the graph's pool."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # the convolutions exact on both sides
    n, c, h, w, s = 2, 16, 9, 11, 2
    module = getattr(dlu_triton, method)(c, s, up_group=2).cuda()
    with torch.no_grad():  # DLU's offsets start at zero: make them sample between pixels
        for p in module.parameters():
            p.add_(0.1 * torch.randn_like(p))
    eager = copy.deepcopy(module)
    graphed = torch.cuda.make_graphed_callables(module, (torch.randn(n, c, h, w, device="cuda", requires_grad=True),))
    for _ in range(2):
        x = torch.randn(n, c, h, w, device="cuda")
        grad = torch.randn(n, c, s * h, s * w, device="cuda")
        results = []
        for m, call in ((module, graphed), (eager, eager)):
            m.zero_grad(set_to_none=True)
            xg = x.clone().requires_grad_()
            out = call(xg)
            out.backward(grad)
            results.append([out.detach().clone(), xg.grad.clone()] + [p.grad.clone() for p in m.parameters()])
        names = ["output", "grad x"] + [f"grad {name}" for name, _ in module.named_parameters()]
        for name, got, expected in zip(names, *results):
            assert_close(name, got, expected)
