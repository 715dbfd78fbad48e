"""The forward_nhwc candidate's performance model, from arithmetic and the sm_90 compile (no GPU).

    PYTHONPATH=. python benchmarks/candidates/forward_nhwc/model.py [--gpu H200|H100] [--out FILE]

For each shape (the A/B anchors in both memory formats) it builds the candidate's launches as the
launchers do, compiles the reassembly kernel for sm_90 (as benchmarks/compile_report.py does) and
reads from the compiler's output the registers and shared memory (so the programs and warps
resident on an SM) and, from the SASS, the instructions a thread executes on an interior tile:

    prologue (the slot's kernels: its point-chunk loop x chunks)
    + channel blocks x (first tap row + (k - 1) x the tap-row loop + the rest of the block: store)

(the channel-block loop's body holds both paths, interior and masked, each a first row and a row
loop; the rest is what is left of it). Then, per SM and at the datasheet clock, the time each
resource needs for the whole launch:
- issue: those instructions x warps, at 4 warp instructions a clock (FFMA among them: the FP32
  peak, 128 lanes a clock an SM);
- L1: one wavefront a clock for each 128-byte line a warp's global or shared access touches, on
  an interior tile: a feature load (4 pixels x 8 lanes x 16 bytes: 4 lines), a slot load (4
  pixels' runs: 1 line each), and a channels-first store moved through shared memory (written,
  read, stored: 3 x 16 lines a channel block) or a channels-last one (16 lines);
- DRAM: the candidate's bytes (the minimal bytes of dlu_triton.benchmark, plus the NHWC copy's
  read and write where the input is channels-first, plus DLU's taps-last kernel space written and
  read, plus the scratch slots written) at the measured copy bandwidth; the NHWC copy and the
  kernel space as launches of their own at that bandwidth.
If the three overlapped perfectly the reassembly would take the largest (`bound`); the minimal
bytes over (bound + the other launches) is then the best fraction of the floor this design can
reach (`best`). The prediction takes the reassembly at 60-80% of that overlap and the other
launches at 80% of the copy bandwidth (`predicted`): a guess, not a measurement, which the A/B
replaces. README.md says what the A/B should show and what would make the model wrong.
"""
import argparse
import os
import re
import sys

import torch

from benchmarks import compile_report as CR
from dlu_triton import benchmark as B

HERE = os.path.dirname(os.path.abspath(__file__))
CLOCK = 1.98e9  # H100 SXM and H200 datasheet boost clock (67 TFLOPS FP32 = 132 SMs x 128 FMA x 2 x 1.98 GHz)
SMS = 132
# measured copy bandwidth (read + write): docs/performance.md (H200, 2026-12-04), performance-log.md (H100, v11)
BANDWIDTH = {"H200": 4225e9, "H100": 3006e9}
REGISTERS, SHARED, WARPS = 65536, 232448, 64

# (N, C, H, W, k, G, s, dtype, channels_last): benchmarks/ab.py's anchors, channels-first and -last
ANCHORS = [(2, 256, 128, 128, 5, 1, 2, torch.float32), (8, 256, 100, 152, 5, 1, 2, torch.float32),
           (2, 256, 64, 64, 5, 1, 4, torch.float32), (2, 256, 32, 32, 5, 1, 8, torch.float32),
           (2, 256, 16, 16, 5, 1, 16, torch.float32), (2, 256, 128, 128, 3, 1, 2, torch.float32),
           (2, 256, 128, 128, 5, 1, 2, torch.bfloat16), (2, 256, 128, 128, 5, 1, 2, torch.float16)]
SHAPES = [(*a, cl) for cl in (False, True) for a in ANCHORS]


def sass_loops(cubin):
    """[(start, end, ops)] of each SASS loop (a backward branch), ops its instructions' opcodes and
    whether each global load is predicated."""
    rows = re.findall(r"/\*([0-9a-f]{4,})\*/\s+(.*?);", CR.cuobjdump(cubin, "-sass"))
    at = {int(a, 16): i for i, (a, _) in enumerate(rows)}
    found = []
    for i, (a, text) in enumerate(rows):
        target = re.search(r"\bBRA\s+(?:\S+\s+)?0x([0-9a-f]+)", text)
        if target and int(target.group(1), 16) < int(a, 16) and int(target.group(1), 16) in at:
            start = at[int(target.group(1), 16)]
            ops = [(re.sub(r"^@!?U?P\w+\s+", "", t).split()[0], t.startswith("@")) for _, t in rows[start:i + 1]]
            found.append((start, i, ops))
    return found


def loop_costs(cubin, taps_a_row, ffma_a_row):
    """(tap-row loop, rest of a channel block, prologue chunk loop): instructions a thread, from the
    SASS; None where the tap rows are not a loop (k = 3: the compiler unrolls its two rows)."""
    loops = sass_loops(cubin)
    rows = [lp for lp in loops if sum(op == "FFMA" for op, _ in lp[2]) == ffma_a_row]
    interior = [lp for lp in rows if not any(op.startswith("LDG") and pred for op, pred in lp[2])]
    outer = [lp for lp in loops if rows and lp[0] < rows[0][0] and lp[1] > rows[-1][1]]
    if not interior or not outer:
        return None
    row = len(interior[0][2])
    # the channel-block loop holds a first row and a row loop for each path: what is left is the
    # block's setup and store (a first row taken as a loop body less its 3 loop instructions)
    rest = len(outer[-1][2]) - sum(2 * len(lp[2]) - 3 for lp in rows)
    prologue = [lp for lp in loops if lp[1] < rows[0][0] and lp not in outer]
    return row, rest, len(prologue[0][2]) if prologue else 0


def model(shape, gpu, costs):
    """One row of the table a op; `costs` caches loop_costs by (op, s, dtype, layout), reused at k = 3."""
    n, c, h, w, k, g, s, dt, channels_last = shape
    fwd = CR.forward
    size = torch.empty((), dtype=dt).element_size()
    x = torch.randn(n, c, h, w, dtype=dt)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    logits = torch.randn(n, g * k * k, h, w, dtype=dt)
    offsets = torch.randn(n, 2 * g * s * s, h, w, dtype=dt)
    masks = torch.rand(n, g * k * k, s * h, s * w, dtype=dt)
    ry, nx, sy, sxb, cb = fwd.nhwc_blocks(c // g, s, size)
    vec, sb, pix = 16 // min(4, size), sy * sxb, ry * nx
    sxp = 1 << (s - 1).bit_length()
    kkp = 1 << (k * k - 1).bit_length()
    programs = n * -(-h // ry) * -(-w // nx) * -(-s // sy) * (sxp // sxb) * g
    blocks = -(-(c // g) // cb)
    chunks = -(-pix * sb // min(pix * sb, 1024 // kkp))
    rows = []
    for op, call in (("dlu", lambda: fwd.dlu_forward(x, logits, offsets, k, g, s)),
                     ("carafe", lambda: fwd.carafe_forward(x, masks, k, g, s))):
        launch = [lc for lc in CR.caught_launches(call) if lc[0].__name__ == "_nhwc_reassemble_kernel"][0]
        src, options = CR.specialise(*launch)
        kernel = CR.triton.compile(src, target=CR.TARGET, options=options)
        regs = CR.resources(kernel.asm["cubin"])["REG"]
        shared = kernel.metadata.shared
        resident = min(REGISTERS // (-(-regs // 8) * 8 * 32 * 4), SHARED // max(shared, 1), WARPS // 4)
        key = (op, s, dt, channels_last)
        found = loop_costs(kernel.asm["cubin"], k, k * sb * vec)
        if found:
            costs[key] = (found[0] / k, found[1], found[2])  # per tap, per block, per chunk
        per_tap, rest, chunk = costs[key]
        per_thread = blocks * (k * k * per_tap + rest) + chunks * chunk
        ffma = blocks * k * k * sb * vec
        issue = per_thread * 4 * programs / (4 * SMS * CLOCK)  # 4 warps a program
        # L1 wavefronts a warp: per tap a feature load (4 lines) and SB/4 slot loads (1 line each); per
        # channel block the store's lines, 3 times through shared memory for channels-first output
        lines = sb * vec * 32 * size // 128
        per_warp = blocks * (k * k * (4 + sb // 4) + (lines if channels_last else 3 * lines))
        l1 = per_warp * 4 * programs / (SMS * CLOCK)
        count = B.dlu_bytes if op == "dlu" else B.carafe_bytes
        minimal = count(n, c, h, w, k, g, s, size)
        copy = 0 if channels_last else 2 * x.numel() * size
        space = n * h * w * g * kkp * 4 if op == "dlu" else 0  # written by its launch, read by this one
        scratch = programs * k * k * pix * sb * 4
        dram = (minimal + scratch + space) / BANDWIDTH[gpu]
        bound = max(issue, l1, dram)
        others = (copy + space) / BANDWIDTH[gpu]
        floor = minimal / BANDWIDTH[gpu]
        rows.append(dict(op=op, regs=regs, shared=shared, warps=4 * resident, ratio=per_thread / ffma, issue=issue,
                         l1=l1, dram=dram, others=others, floor=floor, best=floor / (bound + others),
                         low=floor / (bound / 0.6 + others / 0.8), high=floor / (bound / 0.8 + others / 0.8)))
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpu", choices=sorted(BANDWIDTH), default="H200")
    p.add_argument("--out")
    args = p.parse_args()
    CR.use_candidate(HERE)
    lines = [f"forward_nhwc model, {args.gpu}: copy bandwidth {BANDWIDTH[args.gpu] / 1e9:.0f} GB/s, "
             f"{SMS} SMs at {CLOCK / 1e9:.2f} GHz; times in us", "",
             "| shape | layout | op | regs | shared | warps an SM | instr / FFMA | issue | L1 | DRAM | other launches "
             "| floor | best of floor | predicted |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    costs = {}
    for shape in sorted(SHAPES, key=lambda sh: sh[4] != 5):  # k = 5 first: k = 3 reuses its loop costs
        n, c, h, w, k, g, s, dt, cl = shape
        for r in model(shape, args.gpu, costs):
            lines.append(f"| N{n} C{c} {h}x{w} s{s} k{k} {str(dt)[6:]} | {'NHWC' if cl else 'NCHW'} | {r['op']} | "
                         f"{r['regs']} | {r['shared']} | {r['warps']} | {r['ratio']:.2f} | {r['issue'] * 1e6:.1f} | "
                         f"{r['l1'] * 1e6:.1f} | {r['dram'] * 1e6:.1f} | {r['others'] * 1e6:.1f} | "
                         f"{r['floor'] * 1e6:.1f} | {r['best']:.0%} | {r['low']:.0%}-{r['high']:.0%} |")
        print(lines[-1], file=sys.stderr)
    print("\n".join(lines))
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
