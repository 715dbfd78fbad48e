"""One launch of each kernel at N2 C256 128x128 k5 s2 fp32, for Nsight Compute
(`bash benchmarks/gpu_run.sh profile` has the ncu command)."""
import torch

from dlu_triton import benchmark as B
from dlu_triton import ops
from dlu_triton.kernels import backward

n, c, h, w, k, s = 2, 256, 128, 128, 5, 2
x, logits, offsets, masks = B.op_inputs(n, c, h, w, k, 1, s, "cuda")
grad = torch.randn(n, c, s * h, s * w, device="cuda")
for _ in range(2):  # the first round compiles
    ops.dlu_upsample(x, logits, offsets, k, 1, s)
    ops.carafe(x, masks, k, 1, s)
    backward.dlu_backward(grad, x, logits, offsets, k, 1, s)
torch.cuda.synchronize()
