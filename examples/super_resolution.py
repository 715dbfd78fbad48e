"""4x super-resolution with a learnable upsampler: nearest, bilinear, CARAFEPack and DLU, each
trained under the same budget (same network around it, same data, same steps) on images that ship
with scikit-image, and evaluated on two images none of them saw.

    pip install -e ".[examples]"
    python examples/super_resolution.py --out docs/results/examples      # the run in docs/examples.md
    python examples/super_resolution.py --steps 50                        # a quick look

Network: three 3x3 convolutions at low resolution, the 4x upsampler on their 32 channels, one 3x3
convolution to RGB, plus the bilinearly upsampled input (so every model starts from bilinear).
Low-resolution inputs are 4x4 box averages of the high-resolution crops. Reported: PSNR (RGB,
4-pixel border shaved) on the held-out images, parameters and FLOPs (FlopCounterMode, which counts
the fused ops through their registered formulas), and how far DLU's learned offsets move the
kernels' sampling points from their zero initialisation. Adam for every model; DLU's offset
predictor at a tenth of the learning rate (--offset-lr-mult), as learned sampling offsets are
usually trained.
"""
import argparse
import json
import math
import pathlib
import sys
import time

import numpy as np
import skimage.data
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import dlu_triton

SCALE, CHANNELS = 4, 32
TRAIN = ["astronaut", "rocket", "immunohistochemistry", "hubble_deep_field", "retina"]
HELD_OUT = ["chelsea", "coffee"]
METHODS = ["nearest", "bilinear", "CARAFEPack", "DLU"]


def image(name):
    """An RGB float image in [0, 1], (3, H, W), cropped to a multiple of the scale."""
    x = torch.from_numpy(np.ascontiguousarray(getattr(skimage.data, name)()[..., :3])).permute(2, 0, 1).float() / 255
    h, w = x.shape[1] // SCALE * SCALE, x.shape[2] // SCALE * SCALE
    return x[:, :h, :w]


def downsample(hr):
    return F.avg_pool2d(hr, SCALE)


def upsampler(method):
    if method in ("nearest", "bilinear"):
        return nn.Upsample(scale_factor=SCALE, mode=method)
    return getattr(dlu_triton, method)(CHANNELS, SCALE, compressed_channels=16)


class SuperResolution(nn.Module):
    def __init__(self, method):
        super().__init__()
        self.head = nn.Sequential(nn.Conv2d(3, CHANNELS, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1))
        self.up = upsampler(method)
        self.tail = nn.Conv2d(CHANNELS, 3, 3, padding=1)

    def forward(self, lr):
        base = F.interpolate(lr, scale_factor=SCALE, mode="bilinear", align_corners=False)
        return base + self.tail(self.up(self.head(lr)))


def psnr(sr, hr):
    s = SCALE
    mse = (sr.clamp(0, 1) - hr)[..., s:-s, s:-s].square().mean().item()
    return 10 * math.log10(1 / mse)


def batches(images, steps, batch, crop, generator):
    """Random crops (with flips) from the training images, the same sequence for every method."""
    for _ in range(steps):
        crops = []
        for _ in range(batch):
            img = images[torch.randint(len(images), (1,), generator=generator).item()]
            y = torch.randint(img.shape[1] - crop + 1, (1,), generator=generator).item()
            x = torch.randint(img.shape[2] - crop + 1, (1,), generator=generator).item()
            c = img[:, y:y + crop, x:x + crop]
            if torch.rand(1, generator=generator).item() < 0.5:
                c = c.flip(2)
            crops.append(c)
        yield torch.stack(crops)


def offset_magnitude(model, lr):
    """How far DLU fetches each output pixel's kernel: the mean distance, in low-resolution pixels,
    from its source pixel to its sampling point clamped to the image as DLU clamps it (a raw offset
    past the border says nothing more). Zero at initialisation."""
    with torch.no_grad():
        up = model.up
        off = up.conv_offset(up.channel_compressor(model.head(lr)))  # (N, 2*s*s, H, W), one group
        h, w = off.shape[-2:]
        iy = torch.arange(h, device=off.device, dtype=off.dtype)[:, None]
        ix = torch.arange(w, device=off.device, dtype=off.dtype)
        dx = (ix + off[:, :SCALE**2]).clamp(0, w - 1) - ix
        dy = (iy + off[:, SCALE**2:]).clamp(0, h - 1) - iy
        return dx.hypot(dy).mean().item()


def evaluate(model, held_out, device):
    model.eval()
    with torch.no_grad():
        scores = [psnr(model(downsample(hr[None].to(device))), hr[None].to(device)) for hr in held_out]
    model.train()
    return scores


def count_flops(model, device):
    """FLOPs of one forward pass on a 64x64 output (16x16 input), as FlopCounterMode counts them."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, 64 // SCALE, 64 // SCALE, device=device))
    return counter.get_total_flops()


def train(method, train_images, held_out, args, log):
    torch.manual_seed(args.seed)
    model = SuperResolution(method).to(args.device)
    # Learned sampling offsets take a smaller step (as deformable attention's do): under Adam every
    # parameter moves about lr per step, and the offsets' weak gradient would let them wander.
    offset = {id(p) for n, p in model.named_parameters() if n.startswith("up.conv_offset")}
    opt = torch.optim.Adam([
        dict(params=[p for p in model.parameters() if id(p) not in offset]),
        dict(params=[p for p in model.parameters() if id(p) in offset], lr=args.lr * args.offset_lr_mult),
    ], lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.steps)
    data = batches(train_images, args.steps, args.batch, args.crop, torch.Generator().manual_seed(args.seed))
    curve, start = [], time.time()
    probe = downsample(held_out[0][None].to(args.device))
    for step, hr in enumerate(data, 1):
        hr = hr.to(args.device)
        loss = F.l1_loss(model(downsample(hr)), hr)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % args.eval_every == 0 or step == args.steps:
            scores = evaluate(model, held_out, args.device)
            point = dict(step=step, psnr=scores, loss=loss.item())
            if method == "DLU":
                point["offset"] = offset_magnitude(model, probe)
            curve.append(point)
            log(f"  {method:<10} step {step:>5}  loss {loss.item():.4f}  PSNR " + " ".join(f"{p:.2f}" for p in scores)
                + (f"  sampling distance {point['offset']:.3f} px" if method == "DLU" else ""))
    return dict(method=method, params=sum(p.numel() for p in model.parameters()),
                upsampler_params=sum(p.numel() for p in model.up.parameters()),
                gflops_64px=count_flops(model, args.device) / 1e9, seconds=time.time() - start,
                psnr=curve[-1]["psnr"], curve=curve, offset=curve[-1].get("offset"))


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for r in results:
        steps = [p["step"] for p in r["curve"]]
        a.plot(steps, [float(np.mean(p["psnr"])) for p in r["curve"]], "o-", ms=3, label=r["method"])
    a.set_xlabel("training step")
    a.set_ylabel("PSNR (dB), mean over held-out images")
    a.set_title("4x super-resolution, held-out images")
    a.legend()
    dlu = next(r for r in results if r["method"] == "DLU")
    b.plot([p["step"] for p in dlu["curve"]], [p["offset"] for p in dlu["curve"]], "o-", ms=3, color="C3")
    b.set_xlabel("training step")
    b.set_ylabel("mean sampling distance (low-resolution pixels)")
    b.set_title("DLU's offsets leave their zero initialisation")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--crop", type=int, default=64, help="side of the high-resolution training crops")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--offset-lr-mult", type=float, default=0.1,
                   help="learning-rate multiplier of DLU's offset predictor")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=METHODS)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=pathlib.Path, help="folder for results.json and curves.png")
    return p.parse_args(argv)


def main(argv=None):
    args = parse(argv)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    train_images = [image(n) for n in TRAIN]
    held_out = [image(n) for n in HELD_OUT]
    results = [train(m, train_images, held_out, args, log) for m in args.methods]
    interpolated = [psnr(F.interpolate(downsample(hr[None]), scale_factor=SCALE, mode="bilinear"), hr[None])
                    for hr in held_out]
    print(f"\n4x super-resolution, {args.steps} steps of {args.batch} crops of {args.crop}px, device {args.device}, "
          f"torch {torch.__version__}")
    print(f"{'method':<11} {'params':>8} {'upsampler':>9} {'GFLOPs@64px':>11} "
          + " ".join(f"{'PSNR ' + n:>13}" for n in HELD_OUT) + f" {'mean':>6} {'train s':>8}")
    for r in results:
        print(f"{r['method']:<11} {r['params']:>8,} {r['upsampler_params']:>9,} {r['gflops_64px']:>11.4f} "
              + " ".join(f"{p:>13.2f}" for p in r["psnr"]) + f" {np.mean(r['psnr']):>6.2f} {r['seconds']:>8.0f}")
    print(f"{'(bilinear interpolation of the input, no network)':<41} "
          + " ".join(f"{p:>13.2f}" for p in interpolated) + f" {np.mean(interpolated):>6.2f}")
    dlu = next((r for r in results if r["method"] == "DLU"), None)
    if dlu:
        print(f"DLU's mean sampling distance on {HELD_OUT[0]}: {dlu['offset']:.3f} low-resolution pixels "
              "(0 at initialisation)")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(dict(
            args={k: str(v) for k, v in vars(args).items()}, torch=torch.__version__, held_out=HELD_OUT,
            interpolated_psnr=interpolated, results=results), indent=1))
        if "DLU" in args.methods:
            plot(results, args.out / "curves.png")
    return results


if __name__ == "__main__":
    main()
