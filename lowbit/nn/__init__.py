"""Quantized modules and the model walk that swaps them in."""
from .qembedding import QEmbedding
from .qlinear import QLinear, kernel_op
from .swap import LayerReport, QuantReport, Skip, swap_modules

__all__ = ["QEmbedding", "QLinear", "kernel_op", "LayerReport", "QuantReport", "Skip", "swap_modules"]
