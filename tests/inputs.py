"""Fresh random inputs for both ops."""
import torch

LOW = (torch.float16, torch.bfloat16)


def dlu_inputs(n, c, h, w, k, g, s, dtype=torch.float64, device="cpu", offset_scale=3.0):
    """features, kernel_logits, offsets. The offsets push many sampling points past the border.

    In float16/bfloat16 an offset can be a whole number, which puts the sampling point on a kink
    of the bilinear interpolation, where the derivative is one-sided and the reference's
    normalise/unnormalise round trip may pick the other side; such offsets are moved a quarter
    pixel (exactly representable) so the gradient is defined.
    """
    features = torch.randn(n, c, h, w, device=device, dtype=dtype)
    logits = (2 * torch.randn(n, g * k * k, h, w, device=device)).to(dtype)
    offsets = (offset_scale * torch.randn(n, 2 * g * s * s, h, w, device=device)).to(dtype)
    if dtype in LOW:
        offsets = torch.where(offsets == offsets.round(), offsets + 0.25, offsets)
    return features, logits, offsets


def carafe_inputs(n, c, h, w, k, g, s, dtype=torch.float64, device="cpu"):
    features = torch.randn(n, c, h, w, device=device, dtype=dtype)
    masks = torch.softmax(torch.randn(n, g, k * k, s * h, s * w, device=device), dim=2)
    return features, masks.reshape(n, g * k * k, s * h, s * w).to(dtype)
