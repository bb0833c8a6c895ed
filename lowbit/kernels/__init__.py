"""lowbit.kernels: quantized Linear ops declared with torch.library (``torch.ops.lowbit.*``), each
with a pure-PyTorch reference and C++ CPU (and CUDA) kernels.

Ops: linear_int8_weight_only, linear_int4, linear_lowbit (2..7 bits), linear_w8a8_dynamic,
linear_nf4, linear_dequant (ops.py). Which kernel runs: ``kernel_for(op, device, dtype, shape)``
(dispatch.py); on this machine: ``available()``. Build the C++ kernels ahead of time with
``python -m lowbit.kernels.build``.
"""
from lowbit.kernels.dispatch import available, kernel_for
from lowbit.kernels.ops import (OPS, linear_dequant, linear_int4, linear_int8_weight_only, linear_lowbit,
                                linear_nf4, linear_w8a8_dynamic)

__all__ = ["OPS", "available", "kernel_for", "linear_dequant", "linear_int4", "linear_int8_weight_only",
           "linear_lowbit", "linear_nf4", "linear_w8a8_dynamic"]
