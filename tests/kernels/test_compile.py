"""Every kernel compiles for a GPU (sm_90), checked on any machine.

Triton's interpreter runs the kernels' Python, and it accepts constructs that the compiler
rejects, such as a global written `X: tl.constexpr = ...` or `a = b = ...` inside a kernel. So the
suite also builds every launch the launchers make at small shapes, as the JIT would for an H100,
with the ptxas that Triton ships (`benchmarks/compile_report.py --smoke`). It runs in a process of
its own, since the compiler needs the kernels without TRITON_INTERPRET.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import triton

from dlu_triton.kernels import backward, common, forward

ROOT = Path(__file__).resolve().parents[2]
PTXAS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"


@pytest.mark.skipif(not PTXAS.exists(), reason=f"this Triton build ships no ptxas ({PTXAS})")
def test_every_kernel_compiles_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compile_report.py"), "--smoke"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"{run.stdout[-3000:]}\n{run.stderr[-6000:]}"
    kernels = {name for module in (forward, backward, common) for name in vars(module)
               if name.startswith("_") and name.endswith("_kernel")}
    missing = sorted(name for name in kernels if f" {name} " not in run.stdout)
    assert not missing, f"compiled at no smoke shape: {missing}\n{run.stdout}"
