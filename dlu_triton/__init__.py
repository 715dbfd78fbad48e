"""Fused Triton kernels for Dynamic Lightweight Upsampling (DLU) and CARAFE."""
from . import export, flops  # noqa: F401  (flops registers the ops' FLOP formulas)
from .modules import DLU, CARAFEPack
from .ops import carafe, dlu_upsample

__all__ = ["dlu_upsample", "carafe", "DLU", "CARAFEPack", "flops", "export"]
__version__ = "0.1.0"
