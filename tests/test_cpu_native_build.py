"""dlu_triton/cpu_native.py's build and cache against what a machine does to them: a cached
library cut short or that will not load, a compiler that writes garbage, builds a library
without the kernel's functions, never returns or comes with arguments, a cache that cannot be
written or executed from, sizes that would wrap the kernel's scratch arithmetic, and a call from
a new Python thread. Where the code before these checks crashed the process (SIGBUS, a
segfault) or hung, the scenario runs in a subprocess. Every test uses its own temporary cache
folder (DLU_TRITON_CACHE_DIR)."""
import ctypes
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

from dlu_triton import cpu, cpu_native, reference

from .inputs import carafe_inputs, dlu_inputs
from .tolerance import assert_close

ROOT = Path(__file__).resolve().parent.parent
COMPILER = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
pytestmark = pytest.mark.skipif(COMPILER is None, reason="no C compiler on the PATH (test_the_kernel_builds)")


def check_ops():
    """DLU's and CARAFE's forward and backward on the CPU path against the reference."""
    n, c, h, w, k, g, s = 1, 8, 5, 7, 3, 2, 2
    dy = torch.randn(n, c, s * h, s * w, dtype=torch.float64)
    inputs = dlu_inputs(n, c, h, w, k, g, s)
    assert_close("dlu", cpu.dlu_upsample(*inputs, k, g, s), reference.dlu_upsample(*inputs, k, g, s))
    for got, want in zip(cpu.dlu_upsample_backward(dy, *inputs, k, g, s),
                         reference.dlu_upsample_backward(dy, *inputs, k, g, s)):
        assert_close("dlu backward", got, want)
    inputs = carafe_inputs(n, c, h, w, k, g, s)
    assert_close("carafe", cpu.carafe(*inputs, k, g, s), reference.carafe(*inputs, k, g, s))
    for got, want in zip(cpu.carafe_backward(dy, *inputs, k, g, s), reference.carafe_backward(dy, *inputs, k, g, s)):
        assert_close("carafe backward", got, want)


# Run in a subprocess: the ops checked, then what the process saw, as JSON on the last line.
PROBE = """
import json, warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    from dlu_triton import cpu_native
    {prelude}
    from tests.test_cpu_native_build import check_ops
    check_ops()
print(json.dumps(dict(compiled=cpu_native.library() is not None,
                      warnings=[str(w.message) for w in caught if "dlu_triton" in str(w.message)])))
"""


def run_python(script, cache, timeout=120, **env):
    """Run `script` in a new Python with DLU_TRITON_CACHE_DIR=cache: (return code, stdout, stderr).
    Its own session, killed whole on a timeout (a hung compiler's children hold its pipes)."""
    env = {**os.environ, "DLU_TRITON_CACHE_DIR": str(cache), "TRITON_INTERPRET": "0", **env}
    process = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], cwd=ROOT, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"the process did not finish in {timeout} s")
    return process.returncode, out, err


def probe(cache, prelude="", timeout=120, **env):
    code, out, err = run_python(PROBE.format(prelude=prelude), cache, timeout, **env)
    assert code == 0, f"the process died (return code {code}):\n{err[-3000:]}"
    return json.loads(out.splitlines()[-1])


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """A cache folder the kernel was built into once (its library and seal), for tests to copy."""
    folder = tmp_path_factory.mktemp("built")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DLU_TRITON_CACHE_DIR", str(folder))
        mp.delenv("CC", raising=False)
        cpu_native.library.cache_clear()
        try:
            assert cpu_native.library() is not None
        finally:
            cpu_native.library.cache_clear()
    return folder


def cache_from(built, tmp_path):
    """A copy of `built`: the cache folder, and its library."""
    cache = tmp_path / "cache"
    shutil.copytree(built, cache)
    return cache, next(cache.glob("*.so"))


def compiler_script(tmp_path, body):
    """A compiler: a shell script taking a compiler's arguments ("$out": what -o names). Its CC."""
    script = tmp_path / "tools" / "cc"
    script.parent.mkdir(exist_ok=True)
    script.write_text('#!/bin/sh\nwhile [ $# -gt 0 ]; do [ "$1" = -o ] && out="$2"; shift; done\n' + body)
    script.chmod(0o755)
    return shlex.quote(str(script))


@pytest.fixture
def instant_cc(built, tmp_path):
    """A compiler that "builds" the kernel by copying the library `built` holds: the cache's
    handling of builds, without a real compiler's seconds each."""
    return compiler_script(tmp_path, f'exec cp {shlex.quote(str(next(built.glob("*.so"))))} "$out"\n')


@pytest.fixture
def fresh_library(monkeypatch, tmp_path):
    """library() forgotten, so the test's environment builds or loads it again (forgotten after
    too); temporary folders made in tmp_path/tmp, to check they are cleaned up."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.delenv("CC", raising=False)
    cpu_native.library.cache_clear()
    yield scratch
    cpu_native.library.cache_clear()


def primed(cache, monkeypatch):
    """`cache` as a build with the test's CC leaves it, and its library; DLU_TRITON_CACHE_DIR
    names it. Built in this process into another folder and copied, so that no path of the
    cache's has been loaded here (the dynamic loader would hand back the library loaded before)."""
    first = cache.with_name(cache.name + "-first")
    monkeypatch.setenv("DLU_TRITON_CACHE_DIR", str(first))
    cpu_native.library.cache_clear()
    assert cpu_native.library() is not None
    cpu_native.library.cache_clear()
    shutil.copytree(first, cache)
    monkeypatch.setenv("DLU_TRITON_CACHE_DIR", str(cache))
    return next(cache.glob("*.so"))


def assert_sealed(cache, library):
    """The cache holds the library and its seal, which matches it, and nothing else."""
    seal = library.with_name(library.name + ".sha256")
    assert sorted(p.name for p in cache.iterdir()) == [library.name, seal.name]
    assert seal.read_text() == hashlib.sha256(library.read_bytes()).hexdigest()


def fallback_warning(record):
    """The one warning of a process whose kernel could not be had: why, what it costs, the fix."""
    ours = [str(w.message) for w in record if "dlu_triton" in str(w.message)]
    assert len(ours) == 1, ours
    assert cpu_native.FALLBACK_COST in ours[0] and "To fix:" in ours[0]
    return ours[0]


def test_a_cached_library_cut_short_is_rebuilt_not_loaded(instant_cc, tmp_path, fresh_library, monkeypatch):
    """A library cut short (a full disk, an interrupted copy): mapping it raised SIGBUS in every
    process until someone deleted it. Now its seal no longer matches: rebuilt, never loaded."""
    monkeypatch.setenv("CC", instant_cc)
    cache = tmp_path / "cache"
    library = primed(cache, monkeypatch)
    library.write_bytes(library.read_bytes()[:8192])
    assert probe(cache, CC=instant_cc) == dict(compiled=True, warnings=[])
    assert_sealed(cache, library)


@pytest.mark.parametrize("content", ["garbage", "no kernel functions", "wrong answers"])
def test_a_cached_library_that_will_not_load_or_computes_wrong_is_rebuilt(content, instant_cc, tmp_path,
                                                                         fresh_library, monkeypatch):
    """Sealed as if whole, but not a library, without the kernel's functions, or computing
    wrong: the first op raised OSError or AttributeError. Now it is rebuilt."""
    monkeypatch.setenv("CC", instant_cc)
    cache = tmp_path / "cache"
    library = primed(cache, monkeypatch)
    if content == "garbage":
        library.write_bytes(b"not a library")
    else:
        body = "int nothing(void) { return 0; }" if content == "no kernel functions" else "\n".join(
            f"int {name}{suffix}() {{ return 0; }}" for name in ("reassemble", "reassemble_backward", "allocation")
            for suffix in ("_f32", "_f64"))
        source = tmp_path / "other.c"
        source.write_text(body)
        subprocess.run([COMPILER, "-shared", "-fPIC", str(source), "-o", str(library)], check=True)
    library.with_name(library.name + ".sha256").write_text(hashlib.sha256(library.read_bytes()).hexdigest())
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert cpu_native.library() is not None
        check_ops()
    assert not [w for w in record if "dlu_triton" in str(w.message)]
    assert_sealed(cache, library)


@pytest.mark.parametrize("writes", ["garbage", "no kernel functions"])
def test_a_compiler_whose_library_will_not_load_leaves_the_fallback_and_says_so(writes, tmp_path, fresh_library,
                                                                               monkeypatch):
    """A compiler that exits 0 but writes garbage, or a library without the kernel's functions:
    the first op raised OSError or AttributeError, and the file stayed cached. Now the fallback
    runs, one warning says why, and nothing is cached."""
    other = tmp_path / "other.c"
    other.write_text("int nothing(void) { return 0; }")
    make = {"garbage": 'echo garbage > "$out"',
            "no kernel functions": f'exec {shlex.quote(COMPILER)} -shared -fPIC {shlex.quote(str(other))} -o "$out"'}
    cc = compiler_script(tmp_path, make[writes])
    cache = tmp_path / "cache"
    monkeypatch.setenv("CC", cc)
    monkeypatch.setenv("DLU_TRITON_CACHE_DIR", str(cache))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert cpu_native.library() is None
        check_ops()
        assert cpu_native.library() is None  # asked again: no second warning
    assert "will not load" in fallback_warning(record)
    assert not list(cache.iterdir()) and not list(fresh_library.iterdir())


def test_without_a_compiler_the_gathers_run_and_one_warning_says_why(tmp_path, fresh_library, monkeypatch):
    """A compiler that fails (or none) leaves library() None, and the ops to the gathers: said
    once, with the compiler's command and the fallback's cost; no files left behind."""
    monkeypatch.setenv("CC", "false")
    monkeypatch.setenv("DLU_TRITON_CACHE_DIR", str(tmp_path / "cache"))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert cpu_native.library() is None and not cpu_native.available(torch.float32)
        check_ops()
    assert "false -O3" in fallback_warning(record)
    assert not list((tmp_path / "cache").iterdir()) and not list(fresh_library.iterdir())


def test_a_compiler_that_never_returns_is_given_up(tmp_path):
    """The first op waited for a hung compiler forever. Now the build has a time limit (here 1 s),
    the compiler and its children are killed, and the fallback runs, said once."""
    cc = compiler_script(tmp_path, "sleep 60\n")
    result = probe(tmp_path / "cache", prelude="cpu_native.BUILD_TIMEOUT = 1", timeout=50, CC=cc)
    assert not result["compiled"] and len(result["warnings"]) == 1 and "did not finish" in result["warnings"][0]


def test_a_compiler_with_arguments(tmp_path, fresh_library, monkeypatch):
    """CC="<compiler> -O1", the compiler's path with a space in it: no compiled kernel, silently,
    before. Now CC is parsed as a command line."""
    link = tmp_path / "my tools" / "cc"
    link.parent.mkdir()
    link.symlink_to(COMPILER)
    monkeypatch.setenv("CC", shlex.join([str(link), "-O1"]))
    monkeypatch.setenv("DLU_TRITON_CACHE_DIR", str(tmp_path / "cache"))
    assert cpu_native.library() is not None
    check_ops()


def unwritable_folder(tmp_path):
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):  # root, whom permission bits do not stop: Linux's /proc takes no files
        return Path("/proc/self")
    return folder


@pytest.mark.parametrize("problem", ["unwritable", "noexec"])
def test_a_cache_that_cannot_be_used_gives_a_private_build(problem, instant_cc, tmp_path, fresh_library,
                                                           monkeypatch):
    """An existing cache folder that cannot be written: no compiled kernel, silently, before; on a
    noexec mount, OSError from the first op. Now the build is made and loaded in a private
    temporary folder, deleted after. (noexec is simulated: the cache's libraries refuse to map,
    with the error a noexec mount gives.)"""
    cache = unwritable_folder(tmp_path) if problem == "unwritable" else tmp_path / "cache"
    if problem == "noexec":
        real = ctypes.CDLL

        def noexec(name, *args, **kwargs):
            if Path(name).is_relative_to(cache):
                raise OSError(f"{name}: failed to map segment from shared object")
            return real(name, *args, **kwargs)

        monkeypatch.setattr(ctypes, "CDLL", noexec)
    monkeypatch.setenv("DLU_TRITON_CACHE_DIR", str(cache))
    monkeypatch.setenv("CC", instant_cc)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert cpu_native.library() is not None
        check_ops()
    assert not [w for w in record if "dlu_triton" in str(w.message)]
    assert not list(fresh_library.iterdir()), "the private build was not deleted"
    if problem == "noexec":
        assert not list(cache.iterdir())


def test_sizes_that_would_wrap_the_scratch_arithmetic_are_refused(built, tmp_path):
    """CARAFE with k = 27361475, s = 15 in float64, its masks expanded from one element: the
    kernel's scratch size wrapped and it segfaulted. Now a ValueError names the sizes."""
    cache, _ = cache_from(built, tmp_path)
    code, out, err = run_python("""
        import torch
        from dlu_triton import carafe, cpu
        k, s = 27361475, 15
        x = torch.randn(1, 1, 1, 1, dtype=torch.float64)
        masks = torch.ones(1, 1, 1, 1, dtype=torch.float64).expand(1, k * k, s, s)
        for call in (lambda: carafe(x, masks, k, 1, s), lambda: cpu.carafe_backward(torch.ones(1, 1, s, s).double(),
                                                                                     x, masks, k, 1, s)):
            try:
                call()
            except ValueError as e:
                print(e)
        """, cache)
    assert code == 0, f"the process died (return code {code}):\n{err[-3000:]}"
    assert out.count("kernel_size (27361475) and scale_factor (15) are too large") == 2, out


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads in Linux's /proc")
def test_a_new_python_thread_runs_torchs_thread_count(built, tmp_path):
    """torch.set_num_threads(1), then an op in a new Python thread: OpenMP's count is per
    calling thread, and the kernel ran 2 threads there (a new OpenMP worker appeared). Now it
    runs torch.get_num_threads()."""
    cache, _ = cache_from(built, tmp_path)
    code, out, err = run_python("""
        import os, threading, torch
        from dlu_triton import cpu
        from tests.inputs import carafe_inputs
        torch.set_num_threads(1)
        n, c, h, w, k, g, s = 1, 16, 40, 20, 3, 2, 2
        features, masks = carafe_inputs(n, c, h, w, k, g, s)
        dy = torch.randn(n, c, s * h, s * w, dtype=torch.float64)
        here = [cpu.carafe(features, masks, k, g, s), *cpu.carafe_backward(dy, features, masks, k, g, s)]

        def run():
            before = len(os.listdir("/proc/self/task"))
            there = [cpu.carafe(features, masks, k, g, s), *cpu.carafe_backward(dy, features, masks, k, g, s)]
            print(before, len(os.listdir("/proc/self/task")), all(map(torch.equal, here, there)))

        thread = threading.Thread(target=run)
        thread.start()
        thread.join()
        """, cache)
    assert code == 0, err[-3000:]
    before, after, same = out.split()
    assert (int(after) - int(before), same) == (0, "True"), out
