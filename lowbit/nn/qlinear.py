"""QLinear: a Linear layer whose weight is a packed QTensor and whose forward is one kernel call."""
from __future__ import annotations

import torch
from torch import nn

from .. import kernels
from ..kernels import checks
from ..formats import ActivationQuant, QFormat
from ..qtensor import QTensor
from .base import QModule, register_layer


def kernel_op(fmt: QFormat, activation: ActivationQuant | None) -> str:
    """Which kernel op serves a weight format (and activation quantization); the one place it
    is decided. QLinear quantizes activations only dynamically, per token (x group)."""
    int8_channel = (fmt.kind == "int" and fmt.num_bits == 8 and fmt.signed and fmt.symmetric
                    and fmt.granularity == "channel" and fmt.scale_dtype == "float32")
    if activation is not None:
        if not isinstance(activation, ActivationQuant):
            raise TypeError(f"activation must be a lowbit.formats.ActivationQuant or None, got {activation!r}")
        if (activation.mode, activation.granularity, activation.outlier_threshold) != ("dynamic", "token", None):
            raise ValueError(f"QLinear quantizes activations dynamically per token (x group); got "
                             f"{activation.label()}: use LLMInt8Linear for outlier columns, "
                             f"StaticW8A8Linear or StaticPTQ's layers for static scales")
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
    if (fmt.kind == "codebook" and fmt.name == "nf4" and fmt.granularity == "group"
            and fmt.group_size % 32 == 0 and fmt.double_quant):
        return "linear_nf4"
    return "linear_dequant"


# Each op's arguments after x, from a layer (its QTensor weight, bias and options), in the op's
# schema order (lowbit/kernels/ops.py).
OP_ARGS = {
    "linear_int8_weight_only": lambda m, x: (m.weight.data, m.weight.scale.reshape(-1), m.bias),
    "linear_w8a8_dynamic": lambda m, x: (m.weight.data, m.weight.scale.reshape(-1), m.bias, m.act_group_size),
    "linear_int4": lambda m, x: (m.weight.data, m.weight.scale, m.weight.zero_point,
                                 m.weight.format.group_size, m.bias),
    "linear_lowbit": lambda m, x: (m.weight.data, m.weight.scale, m.weight.zero_point,
                                   m.weight.format.group_size, m.weight.format.num_bits, m.bias),
    "linear_nf4": lambda m, x: (m.weight.data, m.weight.scale.data, m.weight.scale.scale, m.weight.offset,
                                m.weight.format.group_size, m.bias),
    "linear_dequant": lambda m, x: (m.weight.dequantize(x.dtype), m.bias),
}


@register_layer
class QLinear(QModule):
    """``y = x W^T + b`` with W stored as a :class:`QTensor` (packed), run by a real kernel.

    ``forward`` is one call of the op ``self.op`` (``kernel_op``: from the weight's format) with
    ``OP_ARGS``; the op's CPU kernel runs the C++ kernel ``kernel_for`` names. Formats with no fast
    kernel (symmetric 2/3-bit, fp8, ...) run ``linear_dequant``: the weight is dequantized at each
    call — the reference path, reported as such by :meth:`kernel`.
    """

    def __init__(self, weight: QTensor, bias: torch.Tensor | None = None,
                 activation: ActivationQuant | None = None) -> None:
        super().__init__()
        if len(weight.shape) != 2:
            raise ValueError(f"QLinear needs a 2-D [out, in] weight, got shape {tuple(weight.shape)}")
        self.out_features, self.in_features = weight.shape
        self.op = kernel_op(weight.format, activation)
        if activation is not None:
            checks.act_group("QLinear", activation.group_size, self.in_features)
        self.weight = weight
        self.activation = activation
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    @property
    def act_group_size(self) -> int | None:
        return None if self.activation is None else self.activation.group_size

    @classmethod
    def from_float(cls, linear: nn.Linear, fmt: QFormat, *, activation: ActivationQuant | None = None,
                   name: str = "linear", weight: QTensor | None = None) -> "QLinear":
        """Quantize ``linear`` (round to nearest unless an algorithm hands in ``weight``)."""
        kernel_op(fmt, activation)  # raise early, with the format in the message
        if weight is None:
            weight = QTensor.from_float(linear.weight.detach(), fmt, name=name)
        return cls(weight, linear.bias, activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.OPS[self.op](x, *OP_ARGS[self.op](self, x))  # e.g. torch.ops.lowbit.linear_int4

    def kernel(self, x: torch.Tensor | None = None) -> str:
        """Name of the kernel that runs for ``x`` (default: one fp32 token on this layer's device)."""
        if x is None:
            return kernels.kernel_for(self.op, self.weight.data.device, torch.float32, (1, self.in_features))
        return kernels.kernel_for(self.op, x.device, x.dtype, x.shape)

    @classmethod
    def planned_kernel(cls, fmt: QFormat, activation: ActivationQuant | None, in_features: int,
                       device: str = "cpu") -> str:
        """The kernel a layer of this class with ``fmt`` would run for one token (for plans)."""
        return kernels.kernel_for(kernel_op(fmt, activation), device, torch.float32, (1, in_features))

    def config(self) -> dict:
        return {"activation": None if self.activation is None else self.activation.to_dict()}

    @classmethod
    def from_config(cls, weight: QTensor, config: dict, bias: torch.Tensor | None) -> "QLinear":
        act = config.get("activation")
        return cls(weight, bias, None if act is None else ActivationQuant.from_dict(act))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"format={self.weight.format.label()}, op={self.op}"
                + (f", activations {self.activation.label()}" if self.activation else ""))
