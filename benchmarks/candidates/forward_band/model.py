"""The forward_band candidate's performance model, from arithmetic and the sm_90 compile (no GPU).

    PYTHONPATH=. python benchmarks/candidates/forward_band/model.py [--tiles] [--gpu H100|H200] [--out FILE]

For each shape (the A/B anchors, and with --tiles the tile choices at s = 2) it builds the
candidate's launch as the launcher does, compiles the banded kernel for sm_90 (as
benchmarks/compile_report.py does) and reads from the compiler's output:
- registers, shared memory, and so the programs (and warps) resident on an SM;
- the channel loop's SASS: instructions a thread, tensor-core instructions, the width of each
  global load, asynchronous copy and store (LDG.E.128 = 16 bytes a lane);
- the loop's shared-memory traffic from the TTGIR (asynchronous copies, local loads and
  allocations, layout conversions, and the operands wgmma reads from shared memory);
- the L1 wavefronts of the loop's global loads and stores: each access's tile, laid out as the
  TTGIR says (sizePerThread, threadsPerWarp, warpsPerCTA, order) and vectorised as the SASS
  says, on an interior tile of the shape; one wavefront per 128-byte line a warp instruction
  touches.
Then, per SM, the time each resource needs for the whole launch, at the datasheet's 1.83 GHz
(NVIDIA's dense tensor peaks, 989 TFLOPS bfloat16 and 495 TFLOPS tf32 on 132 SMs, are 4096 and
2048 FLOP a clock an SM at that clock):
- DRAM: the minimal bytes (dlu_triton.benchmark) at the measured copy bandwidth: the floor;
- tensor cores: the band's FLOPs (window taps padded, not k*k) times 3 (tf32x3) in float32;
  in 16 bits one product (CARAFE) or two (DLU's K in two parts) at the bfloat16 rate;
- issue: SASS instructions a thread x warps, at 4 warp instructions a clock;
- shared memory: 128 bytes a clock;
- L1: one wavefront a clock.
If all of them overlapped perfectly the kernel would take the largest (`bound`); the floor over
that is the best fraction of the floor it can reach. They do not overlap perfectly, and
latency (bytes in flight) can bound it below all of them: README.md says what the A/B should show.
"""
import argparse
import collections
import math
import os
import re
import sys

import torch
import triton

from benchmarks import compile_report as CR
from dlu_triton import benchmark as B
from dlu_triton.kernels.targets import TIES_LAST

HERE = os.path.dirname(os.path.abspath(__file__))
CLOCK = 1.83e9
SMS = 132
TENSOR = {"tf32": 2048, "16": 4096}  # FLOP a clock an SM
SMEM_BW = 128  # bytes a clock an SM
# measured copy bandwidth (read + write): docs/performance.md (H200, 2026-12-04), performance-log.md (H100)
BANDWIDTH = {"H200": 4225e9, "H100": 3004e9}
REGISTERS, SHARED, WARPS = 65536, 232448, 64

# (N, C, H, W, k, G, s, dtype, channels_last)
SHAPES = [(2, 256, 128, 128, 5, 1, 2, torch.float32, False), (8, 256, 100, 152, 5, 1, 2, torch.float32, False),
          (2, 256, 64, 64, 5, 1, 4, torch.float32, False), (2, 256, 32, 32, 5, 1, 8, torch.float32, False),
          (2, 256, 16, 16, 5, 1, 16, torch.float32, False), (2, 256, 128, 128, 3, 1, 2, torch.float32, False),
          (2, 256, 128, 128, 5, 1, 2, torch.bfloat16, False), (2, 256, 128, 128, 5, 1, 2, torch.float16, False),
          (2, 256, 128, 128, 5, 1, 2, torch.float32, True), (2, 256, 128, 128, 5, 1, 2, torch.bfloat16, True)]
# tile choices at s = 2 (BY, BX, BSY, BLOCK_C, warps)
TILES = {5: [(4, 4, 2, 64, 4), (4, 4, 2, 32, 4), (2, 4, 2, 64, 4), (2, 2, 2, 64, 4), (1, 8, 2, 64, 4),
             (2, 8, 2, 64, 4), (1, 16, 2, 64, 4)],
         3: [(2, 2, 2, 64, 4), (2, 4, 2, 64, 4), (4, 4, 2, 64, 4), (2, 8, 2, 64, 4), (4, 8, 2, 64, 4),
             (1, 16, 2, 64, 4)]}
# and at s = 4, 8, 16 (float32)
TILES_LARGE_S = {(4, 5): [(1, 1, 4, 64, 4), (1, 2, 4, 64, 4), (2, 2, 4, 64, 4), (1, 4, 4, 64, 4)],
                 (4, 3): [(2, 2, 4, 64, 4), (1, 4, 4, 64, 4), (2, 4, 4, 64, 4)],
                 (8, 5): [(1, 1, 8, 64, 4), (1, 2, 8, 64, 4), (1, 1, 4, 64, 4)],
                 (16, 5): [(1, 1, 4, 64, 4), (1, 1, 8, 64, 4), (1, 1, 2, 64, 4)]}


def load_candidate():
    """The candidate's forward module, its kernels caught by compile_report's launches."""
    CR.use_candidate(HERE)
    return CR.forward


def compiled_band(fwd, op, x, kernels, offsets, k, g, s):
    """(compiled kernel, its launch arguments by name) of the candidate's banded kernel."""
    call = (lambda: fwd.dlu_forward(x, kernels, offsets, k, g, s)) if op == "dlu" else \
        (lambda: fwd.carafe_forward(x, kernels, k, g, s))
    for fn, args, kwargs in CR.caught_launches(call):
        if fn is fwd._band_kernel:
            src, options = CR.specialise(fn, args, kwargs)
            bound = dict(zip(fn.arg_names, args), **kwargs)
            return triton.compile(src, target=CR.TARGET, options=options), bound
    raise RuntimeError("the banded kernel was not launched")


def sass_rows(cubin):
    rows = re.findall(r"/\*([0-9a-f]{4,})\*/\s+(.*?);", CR.cuobjdump(cubin, "-sass"))
    return [(int(a, 16), re.sub(r"^@!?U?P\w+\s+", "", text)) for a, text in rows]


def hot_loop(rows):
    """(first, last) row of the SASS loop that holds the tensor-core instructions."""
    at = {a: i for i, (a, _) in enumerate(rows)}
    best = None
    for i, (a, text) in enumerate(rows):
        m = re.search(r"\bBRA\s+(?:\S+\s+)?0x([0-9a-f]+)", text)
        if not m:
            continue
        t = int(m.group(1), 16)
        if t < a and t in at:
            body = [op for _, op in rows[at[t]:i + 1]]
            if any(op.startswith(("HGMMA", "HMMA")) for op in body) and (best is None or i - at[t] > best[1] - best[0]):
                best = (at[t], i)
    return best


def access_widths(body):
    """{kind: bytes a lane} of the loop's global loads (LDG), asynchronous copies (LDGSTS) and stores (STG)."""
    widths = collections.Counter()
    for op in body:
        m = re.match(r"(LDGSTS|LDG|STG)\.E(?:\.BYPASS)?(?:\.LTC\d+B)?(?:\.(U8|S8|U16|S16|64|128))?", op)
        if m:
            size = {"U8": 1, "S8": 1, "U16": 2, "S16": 2, "64": 8, "128": 16}.get(m.group(2), 4)
            widths[(m.group(1), size)] += 1
    return widths


def tensor_bytes(text):
    m = re.search(r"<([\dx]+)x(f32|f16|bf16|f64|i32|i1)", text)
    dims = [int(d) for d in m.group(1).split("x")]
    return math.prod(dims) * {"f32": 4, "f16": 2, "bf16": 2, "f64": 8, "i32": 4, "i1": 1}[m.group(2)]


def loop_body(ttgir):
    """The TTGIR lines of the scf.for that holds the product (the channel loop)."""
    lines = ttgir.splitlines()
    for i, line in enumerate(lines):
        if "scf.for" in line:
            depth, body = 0, []
            for line2 in lines[i:]:
                depth += line2.count("{") - line2.count("}")
                body.append(line2)
                if depth <= 0:
                    break
            if any("warp_group_dot" in b or "tt.dot" in b for b in body):
                return body
    raise RuntimeError("no channel loop with a product")


def shared_traffic(body):
    """Shared-memory bytes a loop iteration moves: asynchronous copies, local loads, allocations
    and stores, layout conversions (counted as a write and a read: an upper bound, some are
    shuffles), and the wgmma operands it reads from shared memory."""
    total = collections.Counter()
    for line in body:
        if "async_copy_global_to_local" in line:
            total["async copy"] += tensor_bytes(line.split("->")[1])
        elif "ttg.local_load" in line:
            total["local load"] += tensor_bytes(line.split("->")[1])
        elif re.search(r"ttg\.local_alloc %", line) or "ttg.local_store" in line:
            total["local store"] += tensor_bytes(line.split(":")[-1])
        elif "ttg.convert_layout" in line:
            total["conversion"] += 2 * tensor_bytes(line.split("->")[1])
        elif "ttng.warp_group_dot " in line:
            operands = line.split(":", 1)[1].split("->")[0]
            total["wgmma operands"] += sum(tensor_bytes(part) for part in operands.split(" * ") if "memdesc" in part)
    return total


def layouts(ttgir):
    return {name: dict(re.findall(r"(\w+) = \[([\d, ]+)\]", body))
            for name, body in re.findall(r"^(#\w+) = #ttg\.blocked<\{(.*)\}>$", ttgir, re.M)}


def loop_accesses(body, ttgir):
    """[(kind, shape, layout)] of the loop's global loads, asynchronous copies and stores."""
    found, table = [], layouts(ttgir)
    for line in body:
        for kind, pattern in (("LDGSTS", r"async_copy_global_to_local .*?: tensor<([\dx]+)x!tt\.ptr<\w+>, (#\w+)>"),
                              ("LDG", r"tt\.load .*?: tensor<([\dx]+)x!tt\.ptr<\w+>, (#\w+)>"),
                              ("STG", r"tt\.store .*?: tensor<([\dx]+)x!tt\.ptr<\w+>, (#\w+)>")):
            m = re.search(pattern, line)
            if m and m.group(2) in table:
                lay = {k: [int(v) for v in vals.split(",")] for k, vals in table[m.group(2)].items()}
                found.append((kind, [int(d) for d in m.group(1).split("x")], lay))
    return found


def wavefronts(shape, lay, vec, address, active, warps):
    """L1 wavefronts (distinct 128-byte lines a warp instruction touches) of one access of a
    [D0, D1] tile laid out blocked (sizePerThread, threadsPerWarp, warpsPerCTA, order), `vec`
    elements a lane an instruction along the layout's fastest axis; address(i0, i1) in bytes,
    active(i0, i1) whether the element is accessed."""
    spt, tpw, wpc, order = lay["sizePerThread"], lay["threadsPerWarp"], lay["warpsPerCTA"], lay["order"]
    fast, slow = order
    cta = [spt[d] * tpw[d] * wpc[d] for d in (0, 1)]
    reps = [max(1, shape[d] // cta[d]) for d in (0, 1)]
    count = 0
    for w in range(warps):
        wc = {fast: w % wpc[fast], slow: w // wpc[fast] % wpc[slow]}
        for r0 in range(reps[0]):
            for r1 in range(reps[1]):
                for es in range(spt[slow]):
                    for ef in range(0, spt[fast], vec):
                        lines = set()
                        for lane in range(32):
                            lc = {fast: lane % tpw[fast], slow: lane // tpw[fast] % tpw[slow]}
                            e = {slow: es, fast: ef}
                            rep = (r0, r1)
                            i = [(rep[d] * cta[d] + wc[d] * spt[d] * tpw[d] + lc[d] * spt[d] + e[d]) % shape[d]
                                 for d in (0, 1)]
                            last = list(i)
                            last[fast] += vec - 1
                            if active(*i):
                                lines.add(address(*i) // 128)
                                lines.add(address(*last) // 128)
                        count += len(lines)
    return count


def model(fwd, op, shape, gpu, blocks=None):
    n, c, h, w, k, g, s, dt, channels_last = shape
    torch.manual_seed(0)
    x = torch.randn(n, c, h, w, dtype=dt)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    if op == "dlu":
        kernels, offsets = torch.randn(n, g * k * k, h, w, dtype=dt), torch.randn(n, 2 * g * s * s, h, w, dtype=dt)
    else:
        kernels, offsets = torch.rand(n, g * k * k, s * h, s * w, dtype=dt), None
    rule = fwd.band_blocks
    if blocks:
        fwd.band_blocks = lambda *a: blocks
    try:
        blocks = fwd.band_blocks(c // g, s, k, x.element_size())
        kernel, args = compiled_band(fwd, op, x, kernels, offsets, k, g, s)
    finally:
        fwd.band_blocks = rule
    by, bx, bsy, block_c, warps = blocks
    esize = x.element_size()
    regs = CR.resources(kernel.asm["cubin"])
    smem = kernel.metadata.shared
    rows = sass_rows(kernel.asm["cubin"])
    first, last = hot_loop(rows)
    body = [op_ for _, op_ in rows[first:last + 1]]
    prologue = first
    widths = access_widths(body)
    ttgir = kernel.asm["ttgir"]
    loop = loop_body(ttgir)
    smem_iter = shared_traffic(loop)

    # the geometry of the tiles of one row of the image away from its edges, as the kernel
    # indexes them (the window's alignment, and so the lines it touches, varies along the row)
    sxn, sxc, sxy, sxx = x.stride()
    sun, suc, suy, sux = (c * s * s * h * w, 1, s * w * c, c) if channels_last else (c * s * s * h * w, s * s * h * w,
                                                                                     s * w, 1)
    wu, wv = bx + k - 1, by + k - 1
    wtp, sxp = args["WTP"], args["SXP"]
    row = bx * sxp
    pts = by * bsy * row
    iy0 = (h // 2) // by * by
    columns = range(bx * (k // 2 // bx + 1), w - wu - bx, bx)

    def x_address(ix0):
        return lambda wt, ci: (ci * sxc + (iy0 - k // 2 + wt // wu) * sxy + (ix0 - k // 2 + wt % wu) * sxx) * esize

    def out_address(ix0):
        return lambda p, ci: (ci * suc + ((iy0 + p // (row * bsy)) * s + p // row % bsy) * suy
                              + (ix0 * s + p % row) * sux) * esize

    waves = collections.Counter()
    for kind, tile, lay in loop_accesses(loop, ttgir):
        vec = max(1, max([size for (knd, size), cnt in widths.items() if knd == kind] or [esize]) // esize)
        for ix0 in columns:
            if kind == "STG":
                waves[kind] += wavefronts(tile, lay, vec, out_address(ix0), lambda p, ci: True, warps)
            elif TIES_LAST:  # tiles.load_lanes_first loads the features' tile transposed, [channels, window]
                address = x_address(ix0)
                waves[kind] += wavefronts(tile, lay, vec, lambda ci, wt: address(wt, ci),
                                          lambda ci, wt: wt < wv * wu, warps)
            else:
                waves[kind] += wavefronts(tile, lay, vec, x_address(ix0), lambda wt, ci: wt < wv * wu, warps)
    waves = {kind: count / len(columns) for kind, count in waves.items()}

    # the whole launch
    programs = n * -(-h // by) * -(-w // bx) * -(-s // bsy) * g
    steps = programs * -(-(c // g) // block_c)
    count = B.dlu_bytes if op == "dlu" else B.carafe_bytes
    floor = count(n, c, h, w, k, g, s, esize) / BANDWIDTH[gpu]
    products = 3 if dt == torch.float32 else (2 if args["PARTS"] == 2 else 1)
    rate = TENSOR["tf32"] if dt == torch.float32 else TENSOR["16"]
    flops = steps * 2 * pts * wtp * block_c * products
    per_sm = 1 / (SMS * CLOCK)
    resident = min(REGISTERS // (-(-regs["REG"] // 8) * 8 * 32 * warps), SHARED // (smem + 1024), WARPS // warps)
    times = dict(
        floor=floor,
        tensor=flops / rate * per_sm,
        issue=programs * warps * (prologue + len(body) * steps / programs) / 4 * per_sm,
        shared=steps * sum(smem_iter.values()) / SMEM_BW * per_sm,
        l1=steps * sum(waves.values()) * per_sm,
    )
    return dict(op=op, shape=shape, blocks=blocks, regs=regs["REG"], stack=regs["STACK"], smem=smem,
                resident=resident, loop=len(body), prologue=prologue,
                mma=sum(o.startswith(("HGMMA", "HMMA")) for o in body),
                widths=dict(widths), smem_iter=dict(smem_iter), waves=dict(waves), programs=programs, steps=steps,
                flops=flops, times=times, wtp=wtp, pts=pts, x_tile=wtp * block_c * esize)


def describe(shape):
    n, c, h, w, k, g, s, dt, cl = shape
    return f"N{n} C{c} {h}x{w} s{s} k{k} {str(dt)[6:]}{' channels_last' if cl else ''}"


def table(results, gpu):
    head = ("| shape | op | tile BYxBX, BSY, C | regs | shared KB | programs/SM | loop instr | wavefronts/step | "
            "smem KB/step | floor us | tensor us | issue us | shared us | L1 us | bound | best of floor |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for m in results:
        t = m["times"]
        bound = max(t, key=t.get)
        by, bx, bsy, bc, _ = m["blocks"]
        lines.append(
            f"| {describe(m['shape'])} | {m['op']} | {by}x{bx}, {bsy}, {bc} | "
            f"{m['regs']}{'+spill' if m['stack'] else ''} | {m['smem'] / 1024:.0f} | {m['resident']} | {m['loop']} | "
            f"{sum(m['waves'].values()):.0f} | {sum(m['smem_iter'].values()) / 1024:.0f} | "
            + " | ".join(f"{t[key] * 1e6:.1f}" for key in ("floor", "tensor", "issue", "shared", "l1"))
            + f" | {bound} | {t['floor'] / max(t.values()):.0%} |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpu", choices=sorted(BANDWIDTH), default="H200")
    p.add_argument("--tiles", action="store_true", help="the tile choices at s = 2 instead of the anchors")
    p.add_argument("--detail", action="store_true", help="each row's access widths, wavefronts and shared traffic")
    p.add_argument("--out", help="also write the table here")
    args = p.parse_args()
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("run without TRITON_INTERPRET=1: the model compiles for the GPU")
    fwd = load_candidate()
    results = []
    if args.tiles:
        for (ss, kk), tiles in TILES_LARGE_S.items():
            h = 256 // ss
            for tile in tiles:
                for op in ("dlu", "carafe"):
                    results.append(model(fwd, op, (2, 256, h, h, kk, 1, ss, torch.float32, False), args.gpu, tile))
                    print(table(results[-1:], args.gpu).splitlines()[-1], flush=True)
        for kk, tiles in TILES.items():
            for dt in (torch.float32, torch.bfloat16):
                for tile in tiles:
                    for op in ("dlu", "carafe"):
                        results.append(model(fwd, op, (2, 256, 128, 128, kk, 1, 2, dt, False), args.gpu, tile))
                        print(table(results[-1:], args.gpu).splitlines()[-1], flush=True)
    else:
        for shape in SHAPES:
            for op in ("dlu", "carafe"):
                results.append(model(fwd, op, shape, args.gpu))
                print(table(results[-1:], args.gpu).splitlines()[-1], flush=True)
    text = (f"triton {triton.__version__}, sm_90, {args.gpu} copy bandwidth {BANDWIDTH[args.gpu] / 1e9:.0f} GB/s\n\n"
            + table(results, args.gpu))
    if args.detail:
        text += "\n\n" + "\n".join(
            f"{describe(m['shape'])} {m['op']}: SASS widths {m['widths']}, wavefronts {m['waves']}, "
            f"shared bytes {m['smem_iter']}, tensor-core instructions {m['mma']}, prologue {m['prologue']}, "
            f"programs {m['programs']}, X tile {m['x_tile']} B" for m in results)
    print("\n" + text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
