"""The GPUs the kernels are built for, and the choices a launcher makes per backend and per
Triton version."""
import torch
import triton

# The GPU targets every kernel is compiled for in CI (`benchmarks/compile_report.py --matrix`,
# docs/testing.md), with each one's shared memory a block may use (bytes, opt-in maximum): the
# GPUs `ops` lets launch the kernels. NVIDIA from Turing (sm_75) on; AMD's CDNA 2-4 data-centre
# GPUs (MI200, MI300, MI350).
TARGETS = {
    "sm_75": 65536, "sm_80": 167936, "sm_86": 101376, "sm_89": 101376, "sm_90": 232448, "sm_100": 232448,
    "sm_120": 101376, "gfx90a": 65536, "gfx942": 65536, "gfx950": 163840,
}


def backend(device):
    """The Triton backend that compiles for `device`'s kernels: "hip" on a ROCm build of PyTorch
    (whose GPUs are device type "cuda" too), else "cuda" (the interpreter's CPU tensors included)."""
    return "hip" if device.type == "cuda" and torch.version.hip else "cuda"


def dot_precision(*operands):
    """tl.dot's input precision for a product of these tensors' values, converted to the
    accumulator dtype first: plain float64 if any is float64. On NVIDIA, three tf32 products
    (about float32's accuracy) if any is float32 (DLU's kernel space and K buffer are, whatever
    the inputs' dtype), and one tf32 product when all are float16 or bfloat16, whose values are
    exact in tf32. On AMD, plain float32 ("ieee"): CDNA's matrix cores multiply float32
    directly, and tf32x3 is NVIDIA's alone."""
    dtypes = {t.dtype for t in operands}
    if torch.float64 in dtypes or backend(operands[0].device) == "hip":
        return "ieee"
    return "tf32x3" if torch.float32 in dtypes else "tf32"


# Between two axes of a load that are equally contiguous, Triton 3.6 gives the lanes to the
# first, 3.7 and later to the last (docs/performance.md, "the tie rule"): the flag of
# tiles.load_lanes_first and tiles.atomic_add_lanes_first.
TIES_LAST = int(tuple(int(v) for v in triton.__version__.split(".")[:2]) >= (3, 7))
