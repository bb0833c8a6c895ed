"""QLinear: a Linear layer whose weight is a packed QTensor and whose forward is one kernel call."""
from __future__ import annotations

import torch
from torch import nn

from .. import kernels
from ..kernels import checks
from ..formats import QFormat
from ..qtensor import QTensor
from .base import QModule, register_layer

ACTIVATIONS = (None, "int8_dynamic")


def kernel_op(fmt: QFormat, activation: str | None) -> str:
    """Which kernel op serves a weight format (and activation mode); the one place it is decided."""
    int8_channel = (fmt.kind == "int" and fmt.num_bits == 8 and fmt.signed and fmt.symmetric
                    and fmt.granularity == "channel" and fmt.scale_dtype == "float32")
    if activation == "int8_dynamic":
        if not int8_channel:
            raise ValueError(
                f"W8A8 dynamic needs int8 symmetric per-channel weights with fp32 scales, got "
                f"{fmt.label()} ({fmt.scale_dtype} scales)"
            )
        return "linear_w8a8_dynamic"
    if int8_channel:
        return "linear_int8_weight_only"
    if (fmt.kind == "int" and fmt.num_bits == 4 and not fmt.signed and not fmt.symmetric
            and fmt.granularity == "group" and fmt.group_size in (32, 64, 128, 256)
            and fmt.scale_dtype == "bfloat16" and not fmt.double_quant):
        return "linear_int4"
    if (fmt.kind == "int" and fmt.num_bits in (2, 3, 5, 6, 7) and not fmt.signed and not fmt.symmetric
            and fmt.granularity == "group" and fmt.group_size % 32 == 0
            and fmt.scale_dtype == "bfloat16" and not fmt.double_quant):
        return "linear_lowbit"
    return "linear_dequant"


@register_layer
class QLinear(QModule):
    """``y = x W^T + b`` with W stored as a :class:`QTensor` (packed), run by a real kernel.

    Formats with no fast kernel (symmetric 2/3-bit, fp8, ...) run ``linear_dequant``: the weight is
    dequantized at each call — the reference path, reported as such by :meth:`kernel`.
    """

    def __init__(self, weight: QTensor, bias: torch.Tensor | None = None,
                 activation: str | None = None, act_group_size: int | None = None) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"QLinear activation must be one of {ACTIVATIONS}, got {activation!r}")
        if len(weight.shape) != 2:
            raise ValueError(f"QLinear needs a 2-D [out, in] weight, got shape {tuple(weight.shape)}")
        self.out_features, self.in_features = weight.shape
        if act_group_size is not None:
            if activation != "int8_dynamic":
                raise ValueError(f"QLinear act_group_size={act_group_size} needs activation="
                                 f"'int8_dynamic', got {activation!r}")
            checks.act_group("QLinear", act_group_size, self.in_features)
        self.weight = weight
        self.activation = activation
        self.act_group_size = act_group_size
        self.op = kernel_op(weight.format, activation)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    @classmethod
    def from_float(cls, linear: nn.Linear, fmt: QFormat, *, activation: str | None = None,
                   act_group_size: int | None = None, name: str = "linear",
                   weight: QTensor | None = None) -> "QLinear":
        """Quantize ``linear`` (round to nearest unless an algorithm hands in ``weight``)."""
        if weight is None:
            weight = QTensor.from_float(linear.weight.detach(), fmt, name=name)
        kernel_op(fmt, activation)  # raise early, with the format in the message
        return cls(weight, linear.bias, activation, act_group_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if self.op == "linear_int8_weight_only":
            return kernels.linear_int8_weight_only(x, w.data, w.scale.reshape(-1), self.bias)
        if self.op == "linear_w8a8_dynamic":
            return kernels.linear_w8a8_dynamic(x, w.data, w.scale.reshape(-1), self.bias,
                                               act_group_size=self.act_group_size)
        if self.op == "linear_int4":
            return kernels.linear_int4(x, w.data, w.scale, w.zero_point, w.format.group_size, self.bias)
        if self.op == "linear_lowbit":
            return kernels.linear_lowbit(x, w.data, w.scale, w.zero_point, w.format.group_size,
                                         w.format.num_bits, self.bias)
        return kernels.linear_dequant(x, w.dequantize(x.dtype), self.bias)

    def kernel(self, x: torch.Tensor | None = None) -> str:
        """Name of the kernel that runs for ``x`` (default: one token on this layer's device)."""
        if x is None:
            x = torch.zeros(1, self.in_features, device=self.weight.data.device)
        return kernels.kernel_for(self.op, x)

    @classmethod
    def planned_kernel(cls, fmt: QFormat, activation: str | None, in_features: int,
                       device: str = "cpu") -> str:
        """The kernel a layer of this class with ``fmt`` would run for one token (for plans)."""
        return kernels.kernel_for(kernel_op(fmt, activation), torch.zeros(1, in_features, device=device))

    def config(self) -> dict:
        return {"activation": self.activation, "act_group_size": self.act_group_size}

    @classmethod
    def from_config(cls, weight: QTensor, config: dict, bias: torch.Tensor | None) -> "QLinear":
        return cls(weight, bias, config.get("activation"), config.get("act_group_size"))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"format={self.weight.format.label()}, op={self.op}"
                + (f", activation={self.activation}" if self.activation else "")
                + (f", act_group_size={self.act_group_size}" if self.act_group_size else ""))
