"""Fused Triton kernels for Dynamic Lightweight Upsampling (DLU) and CARAFE."""
from .modules import CARAFEPack, DLU
from .ops import carafe, dlu_upsample

__all__ = ["dlu_upsample", "carafe", "DLU", "CARAFEPack"]
__version__ = "0.1.0"
