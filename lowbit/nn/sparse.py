"""SparseQLinear: a Linear layer whose weight is pruned and quantized (:class:`SparseQTensor`)."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..formats import QFormat
from ..qtensor import SparseQTensor
from .base import QModule, register_layer

KERNEL = "reference.linear_sparse_dequant"


@register_layer
class SparseQLinear(QModule):
    """``y = x W^T + b`` with W stored as kept values packed at their bit width plus a bitmask.

    No fast kernel reads this layout on the CPU yet: ``forward`` rebuilds the dense weight at
    each call (the reference path, reported by :meth:`kernel`). The layer exists for its honest
    size: a 50%-pruned W4 g64 weight takes ~3.4 bits per weight, mask included.
    """

    def __init__(self, weight: SparseQTensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        if len(weight.shape) != 2:
            raise ValueError(f"SparseQLinear needs a 2-D [out, in] weight, got shape {tuple(weight.shape)}")
        self.out_features, self.in_features = weight.shape
        self.weight = weight
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.dequantize(x.dtype), self.bias)

    def kernel(self, x: torch.Tensor | None = None) -> str:
        return KERNEL

    @classmethod
    def planned_kernel(cls, fmt: QFormat, activation, in_features: int, device: str = "cpu") -> str:
        return KERNEL

    @classmethod
    def from_config(cls, weight: SparseQTensor, config: dict, bias: torch.Tensor | None) -> "SparseQLinear":
        if not isinstance(weight, SparseQTensor):
            raise ValueError("a SparseQLinear entry needs a sparse (bitmask) weight layout")
        return cls(weight, bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"format={self.weight.format.label()}, {1 - self.weight.nnz / self.weight.numel:.0%} pruned")
