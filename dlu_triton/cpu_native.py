"""The CPU path's compiled kernel, forward and backward: cpu_reassemble.c, built at first use with
the machine's C compiler (as Triton builds its launchers) and called through ctypes (which releases
the GIL). It is built with OpenMP where the compiler has it: linked against libgomp.so.1, it
shares the OpenMP runtime torch has already loaded, so its threads are torch's
(torch.get_num_threads()), not a second pool spinning against them.

The library is cached under $DLU_TRITON_CACHE_DIR (default ~/.cache/dlu_triton), keyed on the
source, the compiler, its flags and the CPU's feature flags (it is built with -march=native, so a
cache shared between machines must not hand one machine's build to another). Without a working
compiler `library()` is None and dlu_triton.cpu computes forward and backward with embedding_bag
gathers instead.
"""
import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("cpu_reassemble.c")
# tried in order: some compilers refuse -march=native, or have no OpenMP (then one thread computes)
FLAGS = (["-O3", "-march=native", "-fopenmp"], ["-O3", "-march=native"], ["-O3", "-fopenmp"], ["-O3"])
COMMON = ["-shared", "-fPIC", "-std=gnu11"]
SUFFIXES = {torch.float32: "_f32", torch.float64: "_f64"}


def _cpu_identity():
    """What -march=native sees: the CPU's feature flags where the OS lists them."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), platform.processor())
    except OSError:
        return platform.processor()


def _cache_dir():
    path = Path(os.environ.get("DLU_TRITON_CACHE_DIR") or Path.home() / ".cache" / "dlu_triton")
    try:
        path.mkdir(parents=True, exist_ok=True)
        return path
    except OSError:
        return Path(tempfile.mkdtemp(prefix="dlu_triton_"))


def _build(compiler, flags):
    """The library's path, compiled unless cached; None if this compiler and flags fail."""
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, compiler.encode(), " ".join(flags).encode(),
                                     platform.machine().encode(), _cpu_identity().encode()])).hexdigest()[:16]
    target = _cache_dir() / f"cpu_reassemble-{key}.so"
    if target.exists():
        return target
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        result = subprocess.run([compiler, *flags, *COMMON, str(SOURCE), "-o", str(built)], capture_output=True)
        if result.returncode != 0:
            return None
        os.replace(built, target)  # atomic: concurrent builders (pytest-xdist workers) agree
    return target


@functools.cache
def library():
    """The compiled kernels (a ctypes library), or None when no C compiler builds them."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        return None
    for flags in FLAGS:
        try:
            path = _build(compiler, flags)
        except OSError:
            path = None
        if path is not None:
            lib = ctypes.CDLL(str(path))
            pointer, ints = ctypes.c_void_p, [ctypes.c_int64]
            tensors = [pointer, *ints * 3, pointer, *ints * 4, pointer, *ints * 3]  # features, kernels, offsets
            for suffix in SUFFIXES.values():
                forward, backward = getattr(lib, "reassemble" + suffix), getattr(lib, "reassemble_backward" + suffix)
                forward.argtypes = [*tensors, pointer, *ints * 3, *ints * 6]
                backward.argtypes = [*tensors, pointer, *ints * 3, pointer, *ints * 3, pointer, *ints * 4, pointer, pointer,
                                     *ints * 3, *ints * 6]
                forward.restype = backward.restype = ctypes.c_int
            return lib
    return None


def available(dtype):
    """Whether the compiled forward computes this dtype here."""
    return dtype in SUFFIXES and library() is not None


def _tensors(features, kernels, offsets):
    dlu = (offsets.data_ptr(), *offsets.stride()) if offsets is not None else (None, 0, 0, 0)
    return features.data_ptr(), *features.stride(), kernels.data_ptr(), *kernels.stride(), *dlu


def _check(code):
    if code:
        raise MemoryError("dlu_triton: the CPU kernel could not allocate its scratch buffers")


def reassemble(features, kernels, offsets, out, kernel_size, scale_factor):
    """out = CARAFE of one image, features [C, H, W] into out [C, H*s, W*s]: kernels CARAFE's
    masks [G, k*k, H*s, W*s], offsets None; or, for DLU, kernels the kernel space [G, k*k, H, W]
    and offsets [2*G*s*s, H, W]. Any strides; one dtype, float32 or float64."""
    c, h, w = features.shape
    fn = getattr(library(), "reassemble" + SUFFIXES[features.dtype])
    _check(fn(*_tensors(features, kernels, offsets), out.data_ptr(), *out.stride(), c, h, w, kernel_size,
              kernels.shape[0], scale_factor))


def reassemble_backward(grad_out, features, kernels, offsets, grad_features, grad_kernels, kernel_size, scale_factor):
    """The backward of `reassemble` for one image: the features' gradient added to grad_features
    [C, H, W] (zeroed by the caller); grad_kernels CARAFE's masks' gradient [G, k*k, H*s, W*s] to
    write, or for DLU the pair (the kernel space's gradient [G, k*k, H, W], contiguous and zeroed,
    added to; the offsets' gradient [2*G*s*s, H, W], written)."""
    c, h, w = features.shape
    fn = getattr(library(), "reassemble_backward" + SUFFIXES[features.dtype])
    if offsets is None:
        carafe, dlu = (grad_kernels.data_ptr(), *grad_kernels.stride()), (None, None, 0, 0, 0)
    else:
        grad_space, grad_offsets = grad_kernels
        assert grad_space.is_contiguous()
        carafe = (None, 0, 0, 0, 0)
        dlu = (grad_space.data_ptr(), grad_offsets.data_ptr(), *grad_offsets.stride())
    _check(fn(*_tensors(features, kernels, offsets), grad_out.data_ptr(), *grad_out.stride(),
              grad_features.data_ptr(), *grad_features.stride(), *carafe, *dlu, c, h, w, kernel_size,
              kernels.shape[0], scale_factor))
