"""lowbit.kernels: quantized Linear ops with a pure-PyTorch reference and C++ CPU kernels.

Ops: linear_int8_weight_only, linear_int4, linear_lowbit (2..7 bits), linear_w8a8_dynamic,
linear_dequant.
Which kernel runs: ``kernel_for(op, x)``; on this machine: ``available()``.
Build the C++ kernels ahead of time with ``python -m lowbit.kernels.build``.
"""
from lowbit.kernels.ops import (OPS, available, kernel_for, linear_dequant, linear_int4,
                                linear_int8_weight_only, linear_lowbit, linear_w8a8_dynamic)

__all__ = ["OPS", "available", "kernel_for", "linear_dequant", "linear_int4",
           "linear_int8_weight_only", "linear_lowbit", "linear_w8a8_dynamic"]
