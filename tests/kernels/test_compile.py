"""Every kernel compiles for every GPU target the package supports, checked on any machine.

Triton's interpreter runs the kernels' Python, and it accepts constructs that the compiler
rejects, such as a global written `X: tl.constexpr = ...` or `a = b = ...` inside a kernel, and
knows nothing of a backend's limits (AMD's tl.dot has no tf32x3; a GPU generation has less
shared memory a block than another). So the suite also builds every launch the launchers make
at small shapes, as the JIT would, for each target of `kernels.targets.TARGETS`: NVIDIA sm_75 to sm_120
with the ptxas that Triton ships and AMD gfx90a, gfx942, gfx950 with its LLVM
(`benchmarks/compile_report.py --matrix`, whose table docs/testing.md records). It runs in a
process of its own, since the compiler needs the kernels without TRITON_INTERPRET.
"""
import importlib
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest
import triton

import dlu_triton.kernels
from dlu_triton.kernels import targets

ROOT = Path(__file__).resolve().parents[2]
BACKENDS = set(triton.backends.backends)
# Triton links AMD code objects in-process from 3.5 on; 3.4 calls ROCm's ld.lld.
AMD_LINKS = "amd" in BACKENDS and hasattr(triton._C.libtriton.amd, "link_hsaco")


def check_matrix(targets):
    """compile_report.py --matrix for these targets: every launch compiles, within each target's
    shared memory, and every kernel of the package is among those compiled."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compile_report.py"), "--matrix", *targets],
                         env=env, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, f"{run.stdout[-3000:]}\n{run.stderr[-6000:]}"
    rows = [line for line in run.stdout.splitlines() if line.startswith("| ") and not line.startswith("| target")]
    assert [row.split(" | ")[0][2:] for row in rows] == targets, run.stdout
    modules = [importlib.import_module(f"dlu_triton.kernels.{m.name}")
               for m in pkgutil.iter_modules(dlu_triton.kernels.__path__)]
    kernels = {name for module in modules for name in vars(module)
               if name.startswith("_") and name.endswith("_kernel")}
    compiled = next(line for line in run.stdout.splitlines() if line.startswith("kernels: ")).split()[1:]
    missing = sorted(kernels - set(compiled))
    assert not missing, f"compiled at no smoke shape: {missing}\n{run.stdout}"


@pytest.mark.skipif("nvidia" not in BACKENDS, reason=f"this Triton build has backends {sorted(BACKENDS)} only")
def test_every_kernel_compiles_for_every_nvidia_target():
    check_matrix([t for t in targets.TARGETS if t.startswith("sm_")])


@pytest.mark.skipif(not AMD_LINKS, reason=f"Triton {triton.__version__} has no AMD backend that links without ROCm")
def test_every_kernel_compiles_for_every_amd_target():
    check_matrix([t for t in targets.TARGETS if t.startswith("gfx")])
