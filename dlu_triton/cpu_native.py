"""The CPU path's compiled kernel, forward and backward: cpu_reassemble.c, built at first use with
the machine's C compiler (as Triton builds its launchers) and called through ctypes (which releases
the GIL). It is built with OpenMP where the compiler has it: linked against libgomp.so.1, it
shares the OpenMP runtime torch has already loaded, so its threads are torch's. Each call runs
torch.get_num_threads() of them, passed explicitly: OpenMP's own count is per calling thread.

The compiler: $CC, parsed as a command line ("gcc -O1" is a compiler and an argument), else cc,
gcc or clang on the PATH, given BUILD_TIMEOUT seconds.

The cache. The library is cached under $DLU_TRITON_CACHE_DIR (default ~/.cache/dlu_triton) as
cpu_reassemble-<key>.so, the key a hash of the source, the compiler's command line, its flags
and the CPU's feature flags (it is built with -march=native, so a cache shared between machines
must not hand one machine's build to another): any of these changing builds a new one. Beside
it, <name>.sha256 seals it: written after the build loaded and passed a one-call self-test, and
checked before the library is mapped. A file cut short, emptied or replaced since is rebuilt,
never loaded: mapping a truncated library kills the process with SIGBUS, which no handler
catches. A library that will not load, lacks the kernel's functions or fails the self-test is
not used. Where the cache cannot be written, or not executed from (a noexec mount), the build is
made and loaded in a private temporary folder, deleted once the library is loaded.

Without a compiler that builds it, `library()` is None, one RuntimeWarning per process says why,
what it costs and how to fix it, and dlu_triton.cpu computes forward and backward with
embedding_bag gathers instead.
"""
import contextlib
import ctypes
import functools
import hashlib
import math
import os
import platform
import shlex
import shutil
import signal
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("cpu_reassemble.c")
# tried in order: some compilers refuse -march=native, or have no OpenMP (then one thread computes)
FLAGS = (["-O3", "-march=native", "-fopenmp"], ["-O3", "-march=native"], ["-O3", "-fopenmp"], ["-O3"])
COMMON = ["-shared", "-fPIC", "-std=gnu11"]
SUFFIXES = {torch.float32: "_f32", torch.float64: "_f64"}
BUILD_TIMEOUT = 120  # seconds; a build takes 1-2 s on a 2-core x86_64 machine
# The fallback's cost, measured: docs/benchmarks.md, "CPU" (docs/results/cpu-paths.md).
FALLBACK_COST = "DLU's forward and forward+backward 1.5-2.9x slower at docs/benchmarks.md's two CPU shapes"


class _Unavailable(Exception):
    """The compiled kernel cannot be had: why, and how to fix it."""

    def __init__(self, why, fix):
        super().__init__(why)
        self.why, self.fix = why, fix


class _CompileError(Exception):
    """This compiler with these flags does not build the kernel (another set of flags may)."""


def _cpu_identity():
    """What -march=native sees: the CPU's feature flags where the OS lists them."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), platform.processor())
    except OSError:
        return platform.processor()


def _compiler():
    """The compiler's command line: $CC split as a shell would, else the first C compiler on the PATH."""
    cc = os.environ.get("CC", "").strip()
    if cc:
        try:
            return shlex.split(cc)
        except ValueError as e:
            raise _Unavailable(f"CC={cc!r} is not a command line ({e})", "correct CC") from None
    found = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if found is None:
        raise _Unavailable("no C compiler: CC is unset and no cc, gcc or clang is on the PATH",
                           "install gcc or clang, or set CC to a C compiler")
    return [found]


def _cache_dir():
    path = Path(os.environ.get("DLU_TRITON_CACHE_DIR") or Path.home() / ".cache" / "dlu_triton")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _seal_of(library):
    return library.with_name(library.name + ".sha256")


def _whole(library):
    """Whether the cached library is the one its seal describes."""
    try:
        return _seal_of(library).read_text().strip() == _digest(library)
    except (OSError, UnicodeError):
        return False


def _compile(compiler, flags, out):
    """Compile the kernel to `out`, within BUILD_TIMEOUT. _CompileError with the compiler's
    complaint if it fails; _Unavailable if it does not finish (no other flags are tried)."""
    command = [*compiler, *flags, *COMMON, str(SOURCE), "-o", str(out)]
    try:
        # its own session: on a timeout the compiler's children are killed with it
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, start_new_session=True)
    except OSError as e:
        raise _CompileError(f"{shlex.join(compiler)} could not be run ({e.strerror or e})") from None
    try:
        _, err = process.communicate(timeout=BUILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):  # the group may have ended meanwhile
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise _Unavailable(f"{shlex.join(compiler)} did not finish building it in {BUILD_TIMEOUT} s",
                           "set CC to a C compiler that works, or raise dlu_triton.cpu_native.BUILD_TIMEOUT") from None
    if process.returncode:
        complaint = err.decode(errors="replace").strip().splitlines()[-5:]
        raise _CompileError(f"{shlex.join(command)} exited with {process.returncode}"
                            + (": " + " / ".join(complaint) if complaint else ""))


def _load(path):
    """The library at `path`, its functions typed, after one small call in each dtype; OSError if
    it does not load, lacks a function or computes wrong."""
    lib = ctypes.CDLL(str(path))
    pointer, ints = ctypes.c_void_p, [ctypes.c_int64]
    tensors = [pointer, *ints * 3, pointer, *ints * 4, pointer, *ints * 3]  # features, kernels, offsets
    sizes = [*ints * 7]  # C, H, W, k, G, s, threads
    try:
        for suffix in SUFFIXES.values():
            forward, backward = getattr(lib, "reassemble" + suffix), getattr(lib, "reassemble_backward" + suffix)
            allocation = getattr(lib, "allocation" + suffix)
            forward.argtypes = [*tensors, pointer, *ints * 3, *sizes]
            backward.argtypes = [*tensors, pointer, *ints * 3, pointer, *ints * 3, pointer, *ints * 4, pointer,
                                 pointer, *ints * 3, *sizes]
            forward.restype = backward.restype = ctypes.c_int
            allocation.argtypes = [*ints * 6, ctypes.c_int, ctypes.c_int, *ints]
            allocation.restype = ctypes.c_int64
    except AttributeError as e:
        raise OSError(f"{path.name} lacks the kernel's functions ({e})") from None
    for ctype, suffix in ((ctypes.c_float, "_f32"), (ctypes.c_double, "_f64")):
        x, m, out = (ctype * 1)(2.0), (ctype * 1)(3.0), (ctype * 1)(math.nan)  # one pixel, k = s = 1
        code = getattr(lib, "reassemble" + suffix)(x, 0, 0, 0, m, 0, 0, 0, 0, None, 0, 0, 0, out, 0, 0, 0,
                                                   1, 1, 1, 1, 1, 1, 1)
        if code or out[0] != 6.0:
            raise OSError(f"{path.name} failed its self-test (2 * 3 gave {out[0]}, status {code})")
    return lib


def _cached(name):
    """The sealed library `name` of the cache, loaded; None where there is none, or it will not load."""
    try:
        library = _cache_dir() / name
    except OSError:
        return None
    if not _whole(library):
        return None
    try:
        return _load(library)
    except OSError:
        return None  # a new build replaces it, or is made in a private folder


def _build(compiler, flags, name):
    """A new build, loaded: compiled in a temporary folder in the cache, then moved into the cache
    and sealed; where the cache cannot be written, or loaded from, the build is loaded from a
    private temporary folder instead. Whatever folder it was built in is deleted."""
    try:
        cache = _cache_dir()
        folder = Path(tempfile.mkdtemp(prefix=".build-", dir=cache))
    except OSError:
        cache, folder = None, Path(tempfile.mkdtemp(prefix="dlu_triton_"))
    try:
        built = folder / name
        _compile(compiler, flags, built)
        try:
            lib = _load(built)
        except OSError:
            if cache is None:
                raise
            with tempfile.TemporaryDirectory(prefix="dlu_triton_") as private:  # a noexec cache
                return _load(Path(shutil.copy(built, private)))
        if cache is not None:
            try:
                seal = folder / "seal"
                seal.write_text(_digest(built))
                os.replace(built, cache / name)  # atomic: whoever reads the cache sees a whole file or none
                os.replace(seal, _seal_of(cache / name))
            except OSError:
                pass  # loaded all the same; the next process builds again
        return lib
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _library():
    compiler = _compiler()
    identity = [SOURCE.read_bytes(), shlex.join(compiler).encode(), platform.machine().encode(),
                _cpu_identity().encode()]
    failure = None
    for flags in FLAGS:
        key = hashlib.sha256(b"\0".join([*identity, " ".join(flags).encode()])).hexdigest()[:16]
        name = f"cpu_reassemble-{key}.so"
        try:
            lib = _cached(name)
            return lib if lib is not None else _build(compiler, flags, name)
        except _CompileError as e:
            failure = e  # the next flags may build
        except OSError as e:
            raise _Unavailable(f"the library {shlex.join(compiler)} built will not load ({e})",
                               "set CC to a C compiler that builds shared libraries for this machine, and check "
                               "that the temporary folder allows executable mappings (not mounted noexec)") from None
    raise _Unavailable(str(failure), "set CC to a working C compiler (gcc or clang)")


@functools.cache
def library():
    """The compiled kernels (a ctypes library), or None when they cannot be had (warned, once)."""
    try:
        return _library()
    except _Unavailable as e:
        why, fix = e.why, e.fix
    except OSError as e:  # the package's source unreadable, say
        why, fix = str(e), "reinstall dlu_triton"
    warnings.warn(f"dlu_triton: the CPU kernel cannot be had: {why}. CPU ops run the PyTorch fallback instead, "
                  f"{FALLBACK_COST}. To fix: {fix}.", RuntimeWarning, stacklevel=2)
    return None


def available(dtype):
    """Whether the compiled forward computes this dtype here."""
    return dtype in SUFFIXES and library() is not None


def check_sizes(features, kernel_size, group_size, scale_factor, backward=False, dlu=False):
    """ValueError, before a call, where what the kernel would allocate for these sizes (the
    threads' scratch, and in DLU's backward their shares of the kernel space's gradient)
    overflows 64 bits: such sizes would wrap its arithmetic."""
    _, c, h, w = features.shape
    allocation = getattr(library(), "allocation" + SUFFIXES[features.dtype])
    if allocation(c, h, w, kernel_size, group_size, scale_factor, backward, backward and dlu,
                  torch.get_num_threads()) < 0:
        raise ValueError(f"kernel_size ({kernel_size}) and scale_factor ({scale_factor}) are too large for the CPU "
                         f"kernel with features of shape {tuple(features.shape)}: its scratch memory would exceed "
                         "2**63 bytes")


def _tensors(features, kernels, offsets):
    dlu = (offsets.data_ptr(), *offsets.stride()) if offsets is not None else (None, 0, 0, 0)
    return features.data_ptr(), *features.stride(), kernels.data_ptr(), *kernels.stride(), *dlu


def _check(code):
    if code == -1:
        raise MemoryError("dlu_triton: the CPU kernel could not allocate its scratch buffers")
    if code:
        raise ValueError("dlu_triton: sizes too large for the CPU kernel (check_sizes was not called)")


def reassemble(features, kernels, offsets, out, kernel_size, scale_factor):
    """out = CARAFE of one image, features [C, H, W] into out [C, H*s, W*s]: kernels CARAFE's
    masks [G, k*k, H*s, W*s], offsets None; or, for DLU, kernels the kernel space [G, k*k, H, W]
    and offsets [2*G*s*s, H, W]. Any strides; one dtype, float32 or float64."""
    c, h, w = features.shape
    fn = getattr(library(), "reassemble" + SUFFIXES[features.dtype])
    _check(fn(*_tensors(features, kernels, offsets), out.data_ptr(), *out.stride(), c, h, w, kernel_size,
              kernels.shape[0], scale_factor, torch.get_num_threads()))


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
              kernels.shape[0], scale_factor, torch.get_num_threads()))
