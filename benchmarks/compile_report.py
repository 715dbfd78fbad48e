"""What the compiler makes of each kernel for an H100 (sm_90), on any machine, GPU or not.

    python benchmarks/compile_report.py [--layouts] [--loops]      # without TRITON_INTERPRET
    python benchmarks/compile_report.py --smoke                     # every kernel at small shapes (CI)
    python benchmarks/compile_report.py --matrix [TARGET ...]       # the smoke launches for every GPU target (CI)
    python benchmarks/compile_report.py --matrix --machine-code FILE  # and each launch's machine code digest
    python benchmarks/compile_report.py --candidate DIR [...]       # any of the above for a candidate's kernels

The launchers run as usual on CPU tensors of the benchmark anchors' shapes until the launch,
which is caught instead of run. Its arguments are specialised as Triton's JIT specialises them
on a GPU (an int equal to 1 becomes a constant; other ints and pointers divisible by 16 are
marked so, except the launcher's do_not_specialize ints), then triton.compile builds the kernel
for sm_90 with the ptxas that Triton ships, with Triton's cache off. Per kernel it prints the
compile's wall time (on this machine's CPU: what a first call on a new family costs), registers a thread, stack
(spills), shared memory (the launch's dynamic shared memory: layout conversions, reductions and
software-pipelined buffers), and the PTX's global loads and stores by width (b32 = 4 bytes a lane,
v2/v4 = 8/16) and atomics; with --layouts also each global load's, store's and atomic's tile
and how the compiler spread it over lanes (threadsPerWarp, in the order of the tile's axes: an
access whose lanes run along an axis that is not contiguous in memory costs a 32-byte sector per
element); with --loops also each SASS loop's length and its FFMAs, global loads and barriers. For forward v6 with
triton 3.6 this gives the 122 registers ncu measured on the H100.

--matrix compiles the smoke launches for each target of `kernels.targets.TARGETS` (or those named):
NVIDIA sm_75 to sm_120 and AMD gfx90a, gfx942, gfx950, with the launchers' per-backend choices
(`targets.backend`, `targets.dot_precision`) taken for that target's backend. It prints one table
row a target (kernels compiled, failures, the largest shared memory a launch asks for against
that target's per-block limit, the most registers, the launches with spills) and exits 1 if any
launch fails to compile or asks for more shared memory than its target has. With --machine-code
FILE it also writes, per target and launch, a digest of the machine code (NVIDIA SASS from
cuobjdump, AMD assembly) with source locations left out: two trees whose files differ in
comments, docstrings or module layout only give the same FILE, so such a change needs no GPU
measurement (compare two FILEs with `cmp`).
"""
import collections
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from dlu_triton.kernels import backward, forward, kernel_space, targets

TARGET = GPUTarget("cuda", 90, 32)


def gpu_target(name):
    """sm_90 -> NVIDIA's target, gfx942 -> AMD's (64-lane wavefronts)."""
    return GPUTarget("cuda", int(name[3:]), 32) if name.startswith("sm_") else GPUTarget("hip", name, 64)


POINTER = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float64: "*fp64",
           torch.int64: "*i64"}


def kernels_of(*modules):
    """The @triton.jit kernels (named _*_kernel) that these modules define or import."""
    found = {id(v): v for m in modules for name, v in vars(m).items()
             if name.startswith("_") and name.endswith("_kernel") and isinstance(v, triton.runtime.JITFunction)}
    return tuple(found.values())


KERNELS = kernels_of(kernel_space, forward, backward)


def specialise(fn, args, kwargs):
    """ASTSource and options for one caught launch, as the JIT would build them."""
    kwargs = dict(kwargs)
    options = {k: kwargs.pop(k) for k in ("num_warps", "num_stages", "enable_fp_fusion") if k in kwargs}
    kwargs.pop("grid")
    kwargs.pop("warmup")
    bound = dict(zip(fn.arg_names, args), **kwargs)
    signature, constants, attrs = {}, {}, {}
    for i, p in enumerate(fn.params):
        v = bound[p.name]
        if p.is_constexpr:
            signature[p.name], constants[(i,)] = "constexpr", v
        elif isinstance(v, torch.Tensor):
            signature[p.name] = POINTER[v.dtype]
            if v.data_ptr() % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif v == 1 and not p.do_not_specialize:
            signature[p.name], constants[(i,)] = "constexpr", 1
        else:
            signature[p.name] = "i32" if -2**31 <= v < 2**31 else "i64"
            if v % 16 == 0 and not p.do_not_specialize:
                attrs[(i,)] = [["tt.divisibility", 16]]
    return ASTSource(fn, signature, constants, attrs), options


def cuobjdump(cubin, option):
    """cuobjdump (shipped with Triton) on a cubin."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([tool, option, f.name], capture_output=True, text=True, check=True).stdout


def resources(cubin):
    """Registers and stack bytes. cuobjdump's SHARED is the static shared memory only (1 KB on
    sm_90 for every kernel that uses any); Triton's buffers are dynamic, in the compiled kernel's
    metadata."""
    text = cuobjdump(cubin, "--dump-resource-usage")
    return {k: int(v) for k, v in re.findall(r"(REG|STACK|LOCAL):(\d+)", text)}


def loops(cubin):
    """Each loop of the SASS (a backward branch), innermost first: its instructions, and of them
    the FFMAs, global loads and barriers, e.g. "162 (67 ffma 20 ldg 2 bar)". A hot loop's length
    per FFMA is what a latency-bound kernel's issue slots go to (docs/performance.md, v15)."""
    rows = re.findall(r"/\*([0-9a-f]{4,})\*/\s+(.*?);", cuobjdump(cubin, "-sass"))
    at = {int(a, 16): i for i, (a, _) in enumerate(rows)}
    ops = [re.sub(r"^@!?U?P\w+\s+", "", text).split()[0].split(".")[0] for _, text in rows]
    found = []
    for i, (a, text) in enumerate(rows):
        target = re.search(r"\bBRA\s+(?:\S+\s+)?0x([0-9a-f]+)", text)
        if target and int(target.group(1), 16) < int(a, 16) and int(target.group(1), 16) in at:
            body = ops[at[int(target.group(1), 16)]:i + 1]
            found.append(f"{len(body)} ({body.count('FFMA')} ffma {body.count('LDG')} ldg {body.count('BAR')} bar)")
    return ", ".join(found) or "none"


def memory_layouts(ttgir):
    """One line per global load, store and atomic: its tile and the layout the compiler gave it.
    Between two axes that are equally contiguous the lanes go to the first under triton 3.6 and
    to the last from 3.7 on (docs/performance.md, "the tie rule"): compare a kernel's lines under
    both to find a tile laid out across the wrong axis by one of them."""
    layouts = dict(re.findall(r"^(#\w+) = #ttg\.\w+<\{(.*)\}>$", ttgir, re.M))
    lines = []
    access = r"\b(tt\.load|tt\.store|tt\.atomic_rmw)\b.*?tensor<([\dx]+)x!tt\.ptr<\w+>, (#[^>]*>?)>"
    for op, shape, layout in re.findall(access, ttgir):
        parent = re.search(r"dim = (\d+), parent = (#\w+)", layout)
        if parent:
            where = f"axis {parent.group(1)} dropped from {layouts[parent.group(2)]}"
        else:
            where = layouts.get(layout, layout)
        for long, short in (("sizePerThread", "per thread"), ("threadsPerWarp", "lanes"), ("warpsPerCTA", "warps")):
            where = where.replace(long + " =", short)
        lines.append(f"    {op[3:]:10s} [{shape}]  {where}")
    return lines


def caught_launches(launch):
    """Run `launch` with every kernel launch caught instead of run: [(kernel, args, kwargs)]."""
    caught = []

    def catch(fn, args, kwargs):
        caught.append((fn, args, kwargs))
        for t in args:  # index buffers the launcher reads afterwards (the deterministic backward's rows)
            if isinstance(t, torch.Tensor) and not t.is_floating_point():
                t.zero_()

    for fn in KERNELS:
        fn.run = lambda *a, _fn=fn, **kw: catch(_fn, a, kw)
    try:
        launch()
    finally:
        for fn in KERNELS:
            del fn.run
    return caught


def report(name, launch, layouts=False, sass_loops=False, seen=None):
    """Compile each launch of `launch` for sm_90 and print one line per kernel (given a set
    `seen`, only for kernels and specialisations not in it yet)."""
    for fn, args, kwargs in caught_launches(launch):
        src, options = specialise(fn, args, kwargs)
        if seen is not None:
            key = (src.hash(), str(options))
            if key in seen:
                continue
            seen.add(key)
        start = time.perf_counter()
        k = triton.compile(src, target=TARGET, options=options)
        seconds = time.perf_counter() - start
        r = resources(k.asm["cubin"])
        ptx = k.asm["ptx"]
        accesses = collections.Counter(f"{op.split('.')[0]}.{w}" for op, w in re.findall(
            r"\b(ld\.global|st\.global|atom\.global|red\.global)[\w.]*?\.((?:v\d\.)?[bfsu]\d+)\b", ptx))
        # loads the software pipeliner turned into asynchronous copies to shared memory
        accesses["cp.async"] = len(re.findall(r"\bcp\.async\.c[ag]\b", ptx))
        mem = " ".join(f"{name}:{n}" for name, n in sorted(accesses.items()) if n)
        print(f"{name:34s} {fn.__name__:22s} {seconds:5.1f} s  warps {options.get('num_warps', 4)} regs {r['REG']:3d} "
              f"stack {r['STACK']:4d} shared {k.metadata.shared:6d}  {mem}")
        if sass_loops:
            print(f"    loops: {loops(k.asm['cubin'])}")
        if layouts:
            print("\n".join(memory_layouts(k.asm["ttgir"])))


def registers_and_spills(k, target):
    """(registers a thread, spilled bytes or registers) of a compiled kernel: from cuobjdump on
    NVIDIA (REG, STACK), from the code object's metadata on AMD (VGPRs, spilled VGPRs + SGPRs)."""
    if target.backend == "cuda":
        r = resources(k.asm["cubin"])
        return r["REG"], r["STACK"]
    meta = dict(re.findall(r"\.(vgpr_count|vgpr_spill_count|sgpr_spill_count):\s+(\d+)", k.asm["amdgcn"]))
    return int(meta["vgpr_count"]), int(meta["vgpr_spill_count"]) + int(meta["sgpr_spill_count"])


def machine_code(k, target):
    """A compiled kernel's machine code without source locations: SASS on NVIDIA, the AMD
    assembly's instructions and metadata on AMD (its .loc/.file lines and debug sections left out)."""
    if target.backend == "cuda":
        text = cuobjdump(k.asm["cubin"], "-sass")
        return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("//##"))
    lines, debug = [], False
    for line in k.asm["amdgcn"].splitlines():
        if line.lstrip().startswith(".section"):
            debug = ".debug" in line
        if not debug and not re.match(r"\s*\.(loc|file)\b", line):
            lines.append(line)
    return "\n".join(lines)


def launch_name(fn, src, options):
    """A launch's identity that survives edits elsewhere in its source: the kernel and its
    specialisation (argument types, constants, alignment attributes, options)."""
    constants = {k: str(v) for k, v in src.constants.items()}
    return f"{fn.__name__} {src.signature} {constants} {src.attrs} {sorted(options.items())}"


def launchers(shapes, deterministic=False):
    """(label, call) for each launcher call at these shapes: both ops' forward and backward, and
    with `deterministic` the deterministic DLU backward too."""
    for n, c, h, w, k, g, s, dt in shapes:
        x = torch.randn(n, c, h, w, dtype=dt)
        logits = torch.randn(n, g * k * k, h, w, dtype=dt)
        offsets = torch.randn(n, 2 * g * s * s, h, w, dtype=dt)
        masks = torch.rand(n, g * k * k, s * h, s * w, dtype=dt)
        dy = torch.randn(n, c, s * h, s * w, dtype=dt)
        shape = f"N{n} C{c} {h}x{w} s{s} k{k} {str(dt)[6:]}"
        calls = {
            "dlu fwd": lambda: forward.dlu_forward(x, logits, offsets, k, g, s),
            "carafe fwd": lambda: forward.carafe_forward(x, masks, k, g, s),
            "dlu bwd": lambda: backward.dlu_backward(dy, x, logits, offsets, k, g, s),
            "carafe bwd": lambda: backward.carafe_backward(dy, x, masks, k, g, s),
        }
        if deterministic:
            calls["dlu bwd deterministic"] = lambda: backward.dlu_backward(dy, x, logits, offsets, k, g, s,
                                                                           deterministic=True)
        for name, call in calls.items():  # each called before the loop moves on
            yield f"{name} {shape}", call


def matrix(names, digests=None):
    """The smoke launches compiled for each target; a markdown table, and False if any failed.
    Given a dict `digests`, it receives {target: {launch: machine code digest}}."""
    print(f"triton {triton.__version__}, torch {torch.__version__}\n")
    print("| target | launches compiled | failed | max shared (limit) | max registers | launches with spills |")
    print("|---|---|---|---|---|---|")
    ok = True
    for name in names:
        target = gpu_target(name)
        targets.backend = lambda device, _b=target.backend: _b  # the launchers' per-backend choices
        seen, failed, shared, regs, spills, errors, names_seen = set(), 0, 0, 0, [], [], set()
        for fn, args, kwargs in (launch for _, call in launchers(SMOKE, True) for launch in caught_launches(call)):
            src, options = specialise(fn, args, kwargs)
            key = (src.hash(), str(options))
            if key in seen:
                continue
            seen.add(key)
            names_seen.add(fn.__name__)
            try:
                k = triton.compile(src, target=target, options=options)
            except Exception as e:  # the table names every failing kernel, then the run fails
                failed += 1
                errors.append(f"{fn.__name__}: {str(e).strip().splitlines()[-1][:200]}")
                continue
            if digests is not None:
                code = machine_code(k, target).encode()
                digests.setdefault(name, {})[launch_name(fn, src, options)] = hashlib.sha256(code).hexdigest()
            r, spill = registers_and_spills(k, target)
            shared, regs = max(shared, k.metadata.shared), max(regs, r)
            if spill:
                spills.append(f"{fn.__name__} ({spill})")
        limit = targets.TARGETS[name]
        ok &= not failed and shared <= limit
        print(f"| {name} | {len(seen) - failed} | {failed} | {shared} ({limit}){'' if shared <= limit else ' OVER'} | "
              f"{regs} | {', '.join(spills) or 'none'} |", flush=True)
        for e in errors:
            print(f"    {e}", file=sys.stderr)
    print(f"\nkernels: {' '.join(sorted(names_seen))}")
    return ok


ANCHORS = [(2, 256, 128, 128, 5, 1, 2, torch.float32), (2, 256, 128, 128, 5, 1, 2, torch.bfloat16),
           (2, 256, 64, 64, 5, 1, 4, torch.float32), (2, 256, 32, 32, 5, 1, 8, torch.float32),
           (2, 256, 16, 16, 5, 1, 16, torch.float32), (2, 256, 128, 128, 3, 1, 2, torch.float32)]
# Small shapes that between them take every kernel and every branch of the launchers: the FMA
# kernels, k = 1 and s = 1 (the per-channel mask gradient), odd s with groups and float16, the
# mask gradient's banded product (s = 2, 3, 4), the one-pixel products in bfloat16 (s = 8), and
# (with --smoke or --matrix) the deterministic backward. tests/kernels/test_compile.py compiles
# them for every target in CI, where no GPU shows a kernel that Triton's interpreter runs but
# its compiler rejects.
SMOKE = [(1, 8, 5, 6, 5, 1, 2, torch.float32), (1, 4, 3, 4, 1, 1, 1, torch.float32),
         (1, 8, 4, 5, 7, 2, 3, torch.float16), (1, 32, 2, 3, 5, 1, 4, torch.float32),
         (1, 16, 2, 2, 3, 1, 8, torch.bfloat16)]


def use_candidate(folder):
    """Report on a candidate's launchers and kernels (a folder with forward.py and backward.py,
    as benchmarks/ab.py loads it) instead of the package's."""
    global forward, backward, KERNELS
    from benchmarks.ab import load
    forward, backward = load(folder, 0)
    # main's kernels stay caught too: a candidate may launch some of them
    KERNELS = tuple({id(k): k for k in KERNELS + kernels_of(forward, backward)}.values())


def main():
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("run without TRITON_INTERPRET=1: the report compiles for the GPU")
    if "--candidate" in sys.argv[1:]:
        at = sys.argv.index("--candidate")
        use_candidate(sys.argv[at + 1])
        del sys.argv[at:at + 2]
    os.environ["TRITON_ALWAYS_COMPILE"] = "1"  # time the compile, not a cache hit
    if "--matrix" in sys.argv[1:]:
        args = sys.argv[1:]
        out = args.pop(args.index("--machine-code") + 1) if "--machine-code" in args else None
        names = [a for a in args if not a.startswith("--")] or list(targets.TARGETS)
        digests = {} if out else None
        ok = matrix(names, digests)
        if out:
            with open(out, "w") as f:
                json.dump(digests, f, indent=1, sort_keys=True)
        sys.exit(0 if ok else 1)
    layouts = "--layouts" in sys.argv[1:]
    sass_loops = "--loops" in sys.argv[1:]
    smoke = "--smoke" in sys.argv[1:]
    seen = set() if smoke else None  # the smoke run compiles each specialisation once
    print(f"triton {triton.__version__}, target sm_{TARGET.arch}")
    for label, call in launchers(SMOKE if smoke else ANCHORS, deterministic=smoke):
        report(label, call, layouts, sass_loops, seen)


if __name__ == "__main__":
    main()
