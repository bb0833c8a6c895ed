"""NF4Linear: a QLinear whose NF4 (double-quantized) weight runs lowbit's NF4 look-up kernel."""
from __future__ import annotations

import torch

from ..kernels import nf4 as nf4_kernels
from ..qtensor import QTensor
from .base import register_layer
from .qlinear import QLinear


@register_layer
class NF4Linear(QLinear):
    """``y = x W^T + b`` with W in NF4 + double quantization (QLoRA), run by
    ``lowbit.kernels.nf4.linear_nf4`` (AVX-512 table look-up fused with the dot product).

    Nothing is cached: the fp32 block scales are recovered from their int8 double quantization
    inside the kernel, so the resident size is the packed QTensor (4.127 bits per weight at block
    64). Without double quantization the weight runs the reference path (``linear_dequant``).
    """

    def __init__(self, weight: QTensor, bias: torch.Tensor | None = None,
                 activation: str | None = None) -> None:
        super().__init__(weight, bias, activation)
        fmt = weight.format
        if fmt.kind != "codebook" or fmt.name != "nf4" or fmt.granularity != "group":
            raise ValueError(f"NF4Linear needs an NF4 group-wise weight, got {fmt.label()}")
        if fmt.double_quant:
            self.op = "linear_nf4"

    @classmethod
    def from_config(cls, weight: QTensor, config: dict, bias: torch.Tensor | None) -> "NF4Linear":
        return cls(weight, bias, config.get("activation"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.op != "linear_nf4":
            return super().forward(x)
        w = self.weight
        return nf4_kernels.linear_nf4(x, w.data, w.scale.data, w.scale.scale, w.offset,
                                      w.format.group_size, self.bias)

    def kernel(self, x: torch.Tensor | None = None) -> str:
        if self.op != "linear_nf4":
            return super().kernel(x)
        if x is None:
            x = torch.zeros(1, self.in_features, device=self.weight.data.device)
        return nf4_kernels.kernel_for(x, self.weight.format.group_size)

    @classmethod
    def planned_kernel(cls, fmt, activation, in_features: int, device: str = "cpu") -> str:
        if not fmt.double_quant:
            return super().planned_kernel(fmt, activation, in_features, device)
        return nf4_kernels.kernel_for(torch.zeros(1, in_features, device=device), fmt.group_size)
