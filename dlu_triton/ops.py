"""Custom ops, autograd, input validation and dispatch.

`torch.ops.dlu_triton.dlu_upsample` and `torch.ops.dlu_triton.carafe` are PyTorch custom ops with
fake implementations (so torch.compile traces them without a graph break) and autograd through
backward custom ops. The public functions call the same forward and backward functions through a
plain autograd.Function when nothing needs to see the op (`_call`): the host time of a call is
what both modules wait on. While torch.onnx.export traces, they call dlu_triton.export's
standard-op compositions instead. Dispatch, by the features' device:

- CUDA (float32, float16, bfloat16): the fused Triton kernels, on the tensors' own device, on a
  GPU that the compile matrix covers (`kernels.targets.TARGETS`: NVIDIA from sm_75, AMD gfx90a,
  gfx942, gfx950) with a Triton that has its backend; any other GPU gets a RuntimeError naming
  it and the way out before anything launches;
- CPU with TRITON_INTERPRET=1: the same Triton kernels in Triton's interpreter;
- CPU otherwise: `dlu_triton.cpu`, its compiled kernel (PyTorch gathers without a C compiler; every dtype);
- float64 on CUDA: the PyTorch reference.

Every check runs in Python before any kernel launches and raises TypeError or ValueError naming
the argument. Under torch.autocast the ops compute in their tensors' widest floating dtype
(`_register_autocast`).
"""
import contextlib
import functools
import os
import sys

import torch
import triton
from torch.autograd.function import once_differentiable
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

from . import cpu, export, reference
from .kernels import backward as bwd_kernels
from .kernels import forward as fwd_kernels
from .kernels.launch import new_output, output_format
from .kernels.targets import TARGETS, backend

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _on_device(t):
    """Triton launches on the current CUDA device, so make it the tensor's (cuda:1 works)."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def _use_triton(t):
    if t.device.type == "cuda":
        return t.dtype != torch.float64
    return t.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"


def gpu_problem(backend_name, capability, arch, triton_backends):
    """Why the kernels cannot run on a GPU (None if they can): its Triton backend ("cuda" or
    "hip"), NVIDIA's compute capability (major, minor), AMD's architecture name, and the backends
    the installed Triton has."""
    vendor = "amd" if backend_name == "hip" else "nvidia"
    if vendor not in triton_backends:
        return f"the installed Triton {triton.__version__} has no {vendor} backend"
    if vendor == "nvidia":
        oldest = min(int(t[3:]) for t in TARGETS if t.startswith("sm_"))
        if capability[0] * 10 + capability[1] < oldest:
            return (f"its compute capability {capability[0]}.{capability[1]} is below {oldest // 10}.{oldest % 10}, "
                    "the oldest the kernels are compiled and tested for")
        return None
    supported = sorted(t for t in TARGETS if t.startswith("gfx"))
    if arch.split(":")[0] not in supported:
        return f"its architecture {arch} is not one the kernels are compiled for ({', '.join(supported)})"
    return None


@functools.cache
def _gpu_problem(index):
    props = torch.cuda.get_device_properties(index)
    return props.name, gpu_problem(backend(torch.device("cuda", index)), (props.major, props.minor),
                                   getattr(props, "gcnArchName", ""), set(triton.backends.backends))


def _check_gpu(device):
    """RuntimeError, before any launch, if the Triton kernels cannot run on this GPU."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    name, problem = _gpu_problem(index)
    if problem:
        raise RuntimeError(
            f"dlu_triton's Triton kernels cannot run on cuda:{index} ({name}): {problem}. The PyTorch "
            "reference runs on any device: call dlu_triton.reference.dlu_upsample or .carafe, or compute in "
            "float64 (e.g. model.double()), which dlu_upsample, carafe and the modules send to it.")


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _check_tensor(name, t):
    """A 4-D tensor (N, C, H, W); the ops and the modules' input share it."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 4:
        raise ValueError(f"{name} must be 4-D (N, C, H, W), got {t.dim()}-D with shape {tuple(t.shape)}")


def _check_shape(name, t, expected, meaning):
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {meaning} = {tuple(expected)}, got {tuple(t.shape)}")


def _check_common(tensors, kernel_size, group_size, scale_factor):
    """Types, ranks, dtypes, devices and the integer arguments shared by both ops."""
    _check_int("kernel_size", kernel_size, 1)
    if kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd, got {kernel_size}")
    _check_int("group_size", group_size, 1)
    _check_int("scale_factor", scale_factor, 1)
    for name, t in tensors.items():
        _check_tensor(name, t)
        if t.dtype not in _FLOATS:
            raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
    (first, f), *rest = tensors.items()
    for name, t in rest:
        if t.dtype != f.dtype and not torch.is_autocast_enabled(f.device.type):  # autocast unifies them
            raise TypeError(f"{name} has dtype {t.dtype} but {first} has {f.dtype}; they must match")
        if t.device != f.device:
            raise ValueError(f"{name} is on {t.device} but {first} is on {f.device}; they must match")
        if t.shape[0] != f.shape[0]:
            raise ValueError(f"{name} has batch size {t.shape[0]} but {first} has {f.shape[0]}; they must match")
    n, c, h, w = f.shape
    if c < 1 or h < 1 or w < 1:
        raise ValueError(f"{first} must have C, H, W >= 1, got shape {tuple(f.shape)}")
    if c % group_size:
        raise ValueError(f"{first} channels ({c}) must be divisible by group_size ({group_size})")


def check_dlu(features, kernel_logits, offsets, kernel_size, group_size, scale_factor):
    tensors = dict(features=features, kernel_logits=kernel_logits, offsets=offsets)
    _check_common(tensors, kernel_size, group_size, scale_factor)
    n, _, h, w = features.shape
    k, g, s = kernel_size, group_size, scale_factor
    _check_shape("kernel_logits", kernel_logits, (n, g * k * k, h, w), "(N, group_size*kernel_size**2, H, W)")
    _check_shape("offsets", offsets, (n, 2 * g * s * s, h, w), "(N, 2*group_size*scale_factor**2, H, W)")


def check_carafe(features, masks, kernel_size, group_size, scale_factor):
    _check_common(dict(features=features, masks=masks), kernel_size, group_size, scale_factor)
    n, _, h, w = features.shape
    k, g, s = kernel_size, group_size, scale_factor
    _check_shape("masks", masks, (n, g * k * k, s * h, s * w), "(N, group_size*kernel_size**2, s*H, s*W)")


def _upsampled(features, scale_factor):
    n, c, h, w = features.shape
    return new_output(features, (n, c, scale_factor * h, scale_factor * w))


def _dispatch(features, kernel_fn, cpu_fn, reference_fn, args, like):
    """Run one op: the Triton kernels on the features' device, or the CPU path or the reference,
    whose results are put in the memory formats the fake implementation promises (those of the
    tensors in `like`)."""
    if _use_triton(features):
        if features.device.type == "cuda":
            _check_gpu(features.device)
        with _on_device(features):
            return kernel_fn(*args)
    out = (cpu_fn if features.device.type == "cpu" else reference_fn)(*args)
    if isinstance(out, torch.Tensor):
        return out.contiguous(memory_format=output_format(like[0]))
    return tuple(t.contiguous(memory_format=output_format(lk)) for t, lk in zip(out, like))


def _register_autograd(op, backward_op):
    """Autograd for an op whose arguments are tensors then (kernel_size, group_size, scale_factor):
    save the tensor inputs (no intermediates) and call `backward_op` on them."""
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:-3])
        ctx.config = inputs[-3:]

    def backward(ctx, grad_out):
        return *backward_op(grad_out, *ctx.saved_tensors, *ctx.config), None, None, None

    op.register_autograd(backward, setup_context=setup_context)


_AUTOCAST = torch.library.Library("dlu_triton", "IMPL")


def _register_autocast(name):
    """Under torch.autocast (CUDA or CPU) the op computes in its tensors' widest floating dtype
    and returns it, as torch.cat does: in an autocast model the convolutions' bf16/fp16
    predictions keep it in low precision (fp32 accumulation inside), an fp32 input keeps it fp32.
    (torch.library.register_autocast would cast to one fixed dtype.)"""
    op = getattr(torch.ops.dlu_triton, name).default
    for device_type in ("cuda", "cpu"):
        def kernel(_keyset, *args, device_type=device_type):
            floating = [isinstance(a, torch.Tensor) and a.is_floating_point() for a in args]
            widest = functools.reduce(torch.promote_types, (a.dtype for a, f in zip(args, floating) if f))
            with torch.autocast(device_type, enabled=False):
                return op(*(a.to(widest) if f else a for a, f in zip(args, floating)))

        _AUTOCAST.impl(name, kernel, "Autocast" + device_type.upper(), with_keyset=True)


# ---------------------------------------------------------------- DLU


def _dlu_forward(features, kernel_logits, offsets, kernel_size, group_size, scale_factor):
    args = (features, kernel_logits, offsets, kernel_size, group_size, scale_factor)
    return _dispatch(features, fwd_kernels.dlu_forward, cpu.dlu_upsample, reference.dlu_upsample, args, (features,))


@torch.library.custom_op("dlu_triton::dlu_upsample", mutates_args=())
def _dlu_upsample_op(
    features: torch.Tensor, kernel_logits: torch.Tensor, offsets: torch.Tensor,
    kernel_size: int, group_size: int, scale_factor: int,
) -> torch.Tensor:
    check_dlu(features, kernel_logits, offsets, kernel_size, group_size, scale_factor)
    return _dlu_forward(features, kernel_logits, offsets, kernel_size, group_size, scale_factor)


@_dlu_upsample_op.register_fake
def _(features, kernel_logits, offsets, kernel_size, group_size, scale_factor):
    check_dlu(features, kernel_logits, offsets, kernel_size, group_size, scale_factor)
    return _upsampled(features, scale_factor)


def _dlu_backward(
    grad_out: torch.Tensor, features: torch.Tensor, kernel_logits: torch.Tensor, offsets: torch.Tensor,
    kernel_size: int, group_size: int, scale_factor: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    args = (grad_out, features, kernel_logits, offsets, kernel_size, group_size, scale_factor)
    # The default logits gradient is summed with atomics (last bits vary run to run); PyTorch's
    # deterministic mode gets the variant summed in a fixed order.
    kernels = functools.partial(bwd_kernels.dlu_backward, deterministic=torch.are_deterministic_algorithms_enabled())
    return _dispatch(features, kernels, cpu.dlu_upsample_backward, reference.dlu_upsample_backward, args, args[1:4])


_dlu_upsample_backward_op = torch.library.custom_op("dlu_triton::dlu_upsample_backward", mutates_args=())(_dlu_backward)


@_dlu_upsample_backward_op.register_fake
def _(grad_out, features, kernel_logits, offsets, kernel_size, group_size, scale_factor):
    return tuple(new_output(t, t.shape) for t in (features, kernel_logits, offsets))


_register_autograd(_dlu_upsample_op, _dlu_upsample_backward_op)


# ---------------------------------------------------------------- CARAFE


def _carafe_forward(features, masks, kernel_size, group_size, scale_factor):
    args = (features, masks, kernel_size, group_size, scale_factor)
    return _dispatch(features, fwd_kernels.carafe_forward, cpu.carafe, reference.carafe, args, (features,))


@torch.library.custom_op("dlu_triton::carafe", mutates_args=())
def _carafe_op(
    features: torch.Tensor, masks: torch.Tensor, kernel_size: int, group_size: int, scale_factor: int,
) -> torch.Tensor:
    check_carafe(features, masks, kernel_size, group_size, scale_factor)
    return _carafe_forward(features, masks, kernel_size, group_size, scale_factor)


@_carafe_op.register_fake
def _(features, masks, kernel_size, group_size, scale_factor):
    check_carafe(features, masks, kernel_size, group_size, scale_factor)
    return _upsampled(features, scale_factor)


def _carafe_backward(
    grad_out: torch.Tensor, features: torch.Tensor, masks: torch.Tensor,
    kernel_size: int, group_size: int, scale_factor: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    args = (grad_out, features, masks, kernel_size, group_size, scale_factor)
    return _dispatch(features, bwd_kernels.carafe_backward, cpu.carafe_backward, reference.carafe_backward, args,
                     args[1:3])


_carafe_backward_op = torch.library.custom_op("dlu_triton::carafe_backward", mutates_args=())(_carafe_backward)


@_carafe_backward_op.register_fake
def _(grad_out, features, masks, kernel_size, group_size, scale_factor):
    return tuple(new_output(t, t.shape) for t in (features, masks))


_register_autograd(_carafe_op, _carafe_backward_op)
# The backward ops too: a backward run inside the autocast region must not autocast the
# reference's own einsums.
for _name in ("dlu_upsample", "dlu_upsample_backward", "carafe", "carafe_backward"):
    _register_autocast(_name)


# ---------------------------------------------------------------- public functions


class _Eager(torch.autograd.Function):
    """Autograd for an eager call on plain CPU or CUDA tensors: the same forward and backward
    as the custom ops, without the dispatcher's and torch.library's autograd layers around them
    (35-80 of the 224-238 us of host time of a DLU forward+backward on a 2-core x86_64 CPU
    with Triton's launches stubbed out; both modules are host-bound on the H100)."""

    @staticmethod
    def forward(ctx, run, run_backward, config, *tensors):
        ctx.save_for_backward(*tensors)
        ctx.run_backward, ctx.config = run_backward, config
        return run(*tensors, *config)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        return None, None, None, *ctx.run_backward(grad_out, *ctx.saved_tensors, *ctx.config)


def _onnx_exporting():
    """torch.onnx.is_in_onnx_export() without importing torch.onnx (`import torch` does not; no
    export runs before it is imported)."""
    onnx = sys.modules.get("torch.onnx")
    return onnx is not None and onnx.is_in_onnx_export()


def _call(op, run, run_backward, tensors, config, composition):
    """The custom op where something must see it (torch.compile, export and torch.jit.trace
    record it, dispatch modes such as FlopCounterMode count it, autocast casts its inputs, tensor
    subclasses and the meta device take its fake implementation); otherwise the same functions
    through `_Eager`.

    While torch.onnx.export traces the model (either exporter; torch 2.8 to 2.13 set
    is_in_onnx_export for both), the standard-op `composition` from dlu_triton.export instead:
    neither exporter can translate the custom op, and this needs no call from the user.
    torch.export, AOTInductor and torch.compile keep the op and its fused kernels. (The
    alternatives reach less: a TorchScript symbolic would be a second composition written in ONNX
    operators; an entry in torch._decomp's table, which the default exporter reads, makes
    inductor refuse the op as a fallback when the CI variable is set.)"""
    f = tensors[0]
    if (torch.compiler.is_compiling() or torch.jit.is_tracing() or is_in_torch_dispatch_mode()
            or f.device.type not in ("cpu", "cuda")
            or any(type(t) is not torch.Tensor for t in tensors) or torch.is_autocast_enabled(f.device.type)):
        if _onnx_exporting():
            return composition(*tensors, *config)
        return op(*tensors, *config)
    return _Eager.apply(run, run_backward, config, *tensors)


def dlu_upsample(features, kernel_logits, offsets, kernel_size=5, group_size=1, scale_factor=2):
    """Dynamic Lightweight Upsampling of `features` (N, C, H, W) to (N, C, s*H, s*W).

    kernel_logits: (N, G*k*k, H, W), unnormalised; softmax runs over each group's k*k channels.
    offsets: (N, 2*G*s*s, H, W), in low-resolution pixels, laid out as pixel_shuffle lays them
    out (channel (2g)*s*s + sy*s + sx is x, (2g+1)*s*s + ... is y).
    """
    check_dlu(features, kernel_logits, offsets, kernel_size, group_size, scale_factor)
    return _call(torch.ops.dlu_triton.dlu_upsample, _dlu_forward, _dlu_backward,
                 (features, kernel_logits, offsets), (kernel_size, group_size, scale_factor), export.dlu_upsample)


def carafe(features, masks, kernel_size, group_size, scale_factor):
    """CARAFE reassembly with mmcv's arguments: masks (N, G*k*k, s*H, s*W), already normalised."""
    check_carafe(features, masks, kernel_size, group_size, scale_factor)
    return _call(torch.ops.dlu_triton.carafe, _carafe_forward, _carafe_backward,
                 (features, masks), (kernel_size, group_size, scale_factor), export.carafe)
