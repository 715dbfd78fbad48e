"""Same-process A/B: this checkout's kernels against other versions of them, on the same inputs.

    python benchmarks/ab.py --export REV DIR [--patch FILE]   # DIR receives REV's dlu_triton/kernels (needs git),
                                                              # with a diff of them applied
    python benchmarks/ab.py DIR [DIR ...] [--ops dlu_backward] [--shapes 0 2] [--channels-last] [--quick] [--out FILE]

A version is a folder with `__init__.py`, `forward.py` and `backward.py` exposing the four
launchers with main's signatures: an older version's kernels, exported from git with `--export`
into an untracked folder such as scratch/ (where the GPU machine gets a copy of the tree without
.git; the folder travels with it), or a candidate not yet measured on a GPU, a folder of
benchmarks/candidates/ that imports what it does not change from dlu_triton.kernels and is loaded
as it is. For each anchor shape (or those --shapes picks by index) and op (the launchers
`dlu_forward`, `carafe_forward`, `dlu_backward`, `carafe_backward`, each with all its launches) it
times each version and the new one in turn, three rounds each, and reports the median of the
rounds' medians (`dlu_triton.benchmark.time_ms`: do_bench on CUDA, wall clock on CPU), new/old for
each folder, every version's fraction of the bandwidth floor (CUDA), and the largest relative
difference between the outputs of the new version and each folder's (|new - old| / max|old|, per
output), so a faster but wrong variant shows. A version that raises (a kernel that does not compile
on that GPU, say) gets "error" in its cells and its error's first line in the log, and the run goes
on. Several folders (the last measured version, candidates) share one GPU call. --channels-last
gives every version channels-last inputs (features, logits, offsets, masks, output gradient), as a
channels-last network would, instead of contiguous ones. --quick: two tiny shapes (s = 3, and s = 8
for the per-pixel tensor-core products), one round, to try the script, or a version's outputs, on
CPU with TRITON_INTERPRET=1 (a minute or two).
"""
import argparse
import importlib
import importlib.util
import os
import statistics
import subprocess
import sys

import torch

from dlu_triton import benchmark as B
from dlu_triton.kernels import backward, forward

OPS = ("dlu_forward", "carafe_forward", "dlu_backward", "carafe_backward")
# (N, C, H, W, k, G, s, dtype): the anchors of docs/performance.md, the shapes earlier versions
# lost on (few programs at C64 67x45, s >= 8), and float16 (a target's dtype), last so that the
# indices of the others stay as the A/Bs of docs/ used them
ANCHORS = [
    (2, 256, 128, 128, 5, 1, 2, torch.float32), (8, 256, 100, 152, 5, 1, 2, torch.float32),
    (2, 256, 64, 64, 5, 1, 4, torch.float32), (2, 256, 32, 32, 5, 1, 8, torch.float32),
    (2, 256, 16, 16, 5, 1, 16, torch.float32), (2, 256, 24, 24, 5, 1, 16, torch.float32),
    (2, 256, 128, 128, 3, 1, 2, torch.float32), (2, 256, 128, 128, 5, 1, 2, torch.bfloat16),
    (2, 64, 67, 45, 5, 1, 2, torch.float32), (2, 256, 128, 128, 5, 1, 2, torch.float16),
]
QUICK = [(1, 4, 3, 4, 3, 2, 3, torch.float32), (1, 8, 2, 3, 3, 1, 8, torch.float32)]
ROUNDS = 3


def export(rev, folder, patch=None):
    """REV's kernel files into `folder`, as an importable package, with `patch` (a diff of
    dlu_triton/kernels, as `git diff` writes it) applied."""
    path = "dlu_triton/kernels"
    names = subprocess.run(["git", "ls-tree", "--name-only", f"{rev}:{path}"], capture_output=True, text=True,
                           check=True).stdout.split()
    os.makedirs(folder, exist_ok=True)
    for name in names:
        if name.endswith(".py"):
            text = subprocess.run(["git", "show", f"{rev}:{path}/{name}"], capture_output=True, text=True,
                                  check=True).stdout
            with open(os.path.join(folder, name), "w") as f:
                f.write(text)
    # -p3 drops a/dlu_triton/kernels/ from the patch's paths
    if patch and subprocess.run(["git", "apply", "-p3", f"--directory={folder}", "--unsafe-paths", patch]).returncode:
        sys.exit(f"{patch} does not apply to {rev}'s kernels: regenerate it against {rev}")
    print(f"{rev}'s {path}" + (f" with {patch}" if patch else "") + f" -> {folder}")


def load(folder, index):
    """An old version's forward and backward modules, imported from `folder` under its own name."""
    name = f"ab_old_kernels{index}"
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(folder, "__init__.py"), submodule_search_locations=[folder])
    package = importlib.util.module_from_spec(spec)
    sys.modules[name] = package
    spec.loader.exec_module(package)
    return importlib.import_module(f"{name}.forward"), importlib.import_module(f"{name}.backward")


def inputs(shape, device, channels_last=False):
    """Random features, logits, offsets, masks and output gradient for one shape, contiguous or
    channels-last."""
    n, c, h, w, k, g, s, dt = shape
    torch.manual_seed(0)
    tensors = (*B.op_inputs(n, c, h, w, k, g, s, device, dt), torch.randn(n, c, s * h, s * w, device=device, dtype=dt))
    return tuple(t.contiguous(memory_format=torch.channels_last) for t in tensors) if channels_last else tensors


def calls(fwd, bwd, shape, tensors):
    """{op: a no-argument call of that op} of one version on the shared inputs."""
    *_, k, g, s, _ = shape
    x, logits, offsets, masks, dy = tensors
    return dict(
        dlu_forward=lambda: fwd.dlu_forward(x, logits, offsets, k, g, s),
        carafe_forward=lambda: fwd.carafe_forward(x, masks, k, g, s),
        dlu_backward=lambda: bwd.dlu_backward(dy, x, logits, offsets, k, g, s),
        carafe_backward=lambda: bwd.carafe_backward(dy, x, masks, k, g, s),
    )


def rel_diff(new, old):
    new, old = (new,) if isinstance(new, torch.Tensor) else new, (old,) if isinstance(old, torch.Tensor) else old
    return max(((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()
               for a, b in zip(new, old))


def attempt(call):
    """(call(), None), or (None, the error's first line) where a version fails (a kernel that does
    not compile on this GPU, say): a broken version costs its cells of the table, not the run."""
    try:
        return call(), None
    except Exception as e:  # noqa: BLE001 (reported in the log and the table)
        return None, f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"


def cell(value, spec):
    return "error" if value is None else format(value, spec)


def floor_ms(op, shape, bandwidth):
    if not bandwidth:
        return None
    n, c, h, w, k, g, s, dt = shape
    count = B.dlu_bytes if op.startswith("dlu") else B.carafe_bytes
    size = torch.empty((), dtype=dt).element_size()
    return count(n, c, h, w, k, g, s, size, backward=op.endswith("backward")) / bandwidth * 1e3


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("old", nargs="*", help="version folders: exported kernels or benchmarks/candidates/NAME")
    p.add_argument("--export", nargs=2, metavar=("REV", "DIR"), help="write REV's kernels to DIR and stop")
    p.add_argument("--patch", help="with --export: apply this candidate patch to the exported kernels")
    p.add_argument("--shapes", nargs="+", type=int, metavar="I", help="only these anchors (indices into ANCHORS)")
    p.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS))
    p.add_argument("--channels-last", action="store_true", help="channels-last inputs for every version")
    p.add_argument("--quick", action="store_true", help="two tiny shapes, one round (a CPU try-out)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", help="also write the table to this file (after each row)")
    args = p.parse_args()
    if args.export:
        return export(*args.export, patch=args.patch)
    if not args.old:
        p.error("give the old kernels' folder (or --export REV DIR)")
    olds = [load(folder, i) for i, folder in enumerate(args.old)]
    device = torch.device(args.device)
    bandwidth = B.copy_bandwidth(device) if device.type == "cuda" else None
    info = B.env_info(device)
    names = [os.path.basename(os.path.normpath(folder)) for folder in args.old]
    lines = [f"A/B {' and '.join(args.old)} (old) vs this checkout (new): {info.get('gpu', info.get('cpu'))}, "
             + ("channels-last inputs, " if args.channels_last else "")
             + f"torch {info['torch']}, triton {info['triton']}, {info['date']}"
             + (f", copy bandwidth {bandwidth / 1e9:.0f} GB/s" if bandwidth else ""), "",
             "| shape | op | " + " | ".join(f"{nm} ms" for nm in names) + " | new ms | "
             + " | ".join(f"new/{nm}" for nm in names) + " | "
             + " | ".join(f"{nm} of floor" for nm in names + ["new"]) + " | "
             + " | ".join(f"max rel diff vs {nm}" for nm in names) + " |",
             "|---|---|" + "---|" * (4 * len(names) + 2)]
    shapes = QUICK if args.quick else [ANCHORS[i] for i in args.shapes] if args.shapes else ANCHORS
    for shape in shapes:
        n, c, h, w, k, g, s, dt = shape
        label = f"N{n} C{c} {h}x{w} s{s} k{k} G{g} {str(dt)[6:]}"
        tensors = inputs(shape, device, args.channels_last)
        versions = [calls(fwd, bwd, shape, tensors) for fwd, bwd in olds] + [calls(forward, backward, shape, tensors)]
        for op in args.ops:
            runs = [attempt(version[op]) for version in versions]  # each call also compiles
            (new_out, new_err), errors = runs[-1], [err for _, err in runs]
            diffs = [None if new_err or err else rel_diff(new_out, out) for out, err in runs[:-1]]
            times = [[] for _ in versions]
            for _ in range(1 if args.quick else ROUNDS):
                for i, (t, version) in enumerate(zip(times, versions)):
                    if not errors[i]:
                        timed, errors[i] = attempt(
                            lambda: B.time_ms(version[op], device, reps=1 if args.quick else None))
                        t.append(timed and timed[0])
            for name, err in zip(names + ["new"], errors):
                if err:
                    print(f"{label} {op} {name}: {err}", file=sys.stderr)
            *old_ms, new_ms = (None if err else statistics.median(t) for t, err in zip(times, errors))
            floor = floor_ms(op, shape, bandwidth)
            shares = [f"{floor / ms:.0%}" if floor and ms else "-" for ms in (*old_ms, new_ms)]
            lines.append(f"| {label} | {op} | " + " | ".join(cell(ms, ".3f") for ms in (*old_ms, new_ms)) + " | "
                         + " | ".join(cell(new_ms and ms and new_ms / ms, ".2f") for ms in old_ms) + " | "
                         + " | ".join(shares) + " | " + " | ".join(cell(d, ".1e") for d in diffs) + " |")
            print(lines[-1], file=sys.stderr)
            if args.out:  # rewritten after each row, so a run stopped by its time limit keeps its rows
                with open(args.out, "w") as f:
                    f.write("\n".join(lines) + "\n")
        del versions, tensors
    print("\n".join(lines))


if __name__ == "__main__":
    main()
