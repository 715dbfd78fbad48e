"""The one tolerance rule of the suite.

float64 and float32 results are compared with the float64 reference (relative to the reference's
largest magnitude: 1e-10 and 1e-5). For float16 and bfloat16 the error of the result against the
float64 reference may be at most twice PyTorch's own error in that dtype (the reference run in
the low dtype), FlashAttention's rule, where PyTorch's own error counts as at least the half ulp
that rounding the result costs (Triton's interpreter rounds to bfloat16 by truncation, a whole
ulp, where CUDA and PyTorch round to nearest).
"""
import torch

REL = {torch.float64: 1e-10, torch.float32: 1e-5}


def assert_close(name, actual, expected, lowp=None):
    """`expected` is the float64 reference; `lowp` the reference computed in actual's dtype."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a = actual.detach().double().cpu()
    e = expected.detach().double().cpu()
    scale = e.abs().max().item() if e.numel() else 0.0
    if actual.dtype in REL:
        bound = REL[actual.dtype] * max(scale, 1e-30)
    else:
        assert lowp is not None, f"{name}: a {actual.dtype} check needs the reference in {actual.dtype}"
        half_ulp = torch.finfo(actual.dtype).eps / 2 * scale
        bound = 2 * max((lowp.detach().double().cpu() - e).abs().max().item(), half_ulp)
    err = (a - e).abs()
    bad = ~(err <= bound)  # NaN counts as bad
    if bad.any():
        idx = bad.nonzero()[:5]
        lines = [f"  at {tuple(i.tolist())}: got {a[tuple(i)].item():.8g}, expected {e[tuple(i)].item():.8g}"
                 for i in idx]
        worst = err.nan_to_num(float("inf")).max().item()
        raise AssertionError(
            f"{name}: {int(bad.sum())} of {a.numel()} elements off (max error {worst:.3g}, "
            f"bound {bound:.3g}); first:\n" + "\n".join(lines)
        )
