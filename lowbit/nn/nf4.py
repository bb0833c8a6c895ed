"""NF4Linear: a QLinear whose NF4 (double-quantized) weight runs lowbit's NF4 look-up kernel."""
from __future__ import annotations

import torch

from ..qtensor import QTensor
from .base import register_layer
from .qlinear import QLinear


@register_layer
class NF4Linear(QLinear):
    """``y = x W^T + b`` with W in NF4 + double quantization (QLoRA), run by
    the op ``linear_nf4`` (``kernel_op`` picks it; on CPU the AVX-512 table look-up fused with the
    dot product).

    Nothing is cached: the fp32 block scales are recovered from their int8 double quantization
    inside the kernel, so the resident size is the packed QTensor (4.127 bits per weight at block
    64). Without double quantization (or with blocks not a multiple of 32) the weight runs the
    reference path (``linear_dequant``).
    """

    def __init__(self, weight: QTensor, bias: torch.Tensor | None = None,
                 activation: "ActivationQuant | None" = None) -> None:
        super().__init__(weight, bias, activation)
        fmt = weight.format
        if fmt.kind != "codebook" or fmt.name != "nf4" or fmt.granularity != "group":
            raise ValueError(f"NF4Linear needs an NF4 group-wise weight, got {fmt.label()}")

