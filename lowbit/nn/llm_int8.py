"""Int8 Linear modules for LLMs: LLM.int8()'s mixed decomposition and static per-tensor W8A8."""
from __future__ import annotations

import torch
from torch import nn

from .. import kernels
from ..algorithms.llm_int8 import decompose, outlier_columns
from ..formats import INT8, ActivationQuant
from ..qtensor import QTensor
from .base import QModule, register_layer


def _check_int8_weight(cls: str, weight: QTensor) -> None:
    fmt = weight.format
    if len(weight.shape) != 2 or not (fmt.kind == "int" and fmt.num_bits == 8 and fmt.signed
                                      and fmt.symmetric and fmt.granularity == "channel"):
        raise ValueError(f"{cls} needs a 2-D int8 symmetric per-channel weight (lowbit.formats."
                         f"INT8), got {fmt.label()} of shape {tuple(weight.shape)}")


class _Int8Linear(QModule):
    """Shared parts: int8 per-channel ``weight`` QTensor, fp32 bias, footprint, ``.to``."""

    def __init__(self, weight: QTensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        _check_int8_weight(type(self).__name__, weight)
        self.out_features, self.in_features = weight.shape
        self.weight = weight
        self.bias = None if bias is None else nn.Parameter(bias.detach().float().clone(), requires_grad=False)

    def _scale(self) -> torch.Tensor:
        return self.weight.scale.reshape(-1)  # (N,) fp32

    @classmethod
    def from_config(cls, weight: QTensor, config: dict, bias: torch.Tensor | None) -> "_Int8Linear":
        return cls(weight, bias)  # run-time constants are buffers: they come with the state dict


@register_layer
class LLMInt8Linear(_Int8Linear):
    """LLM.int8() (Dettmers et al., 2022): int8 x int8 for the regular input features, fp32 for
    the feature columns where some |x| > ``threshold`` in this call (decided at run time).

    The int8 part runs ``torch.ops.lowbit.linear_w8a8_dynamic`` (int8 activations, int32
    accumulation) on x with the outlier columns zeroed; the outlier columns meet the dequantized
    int8 weight columns in fp32 (the weight is stored once, int8: 8 bits per weight + scales).
    ``act_group_size=None`` is the paper's vector-wise scheme (one activation scale per token);
    an integer gives one scale per token and group of that many inputs (see ``DynamicPTQ``).
    """


    def __init__(self, weight: QTensor, bias: torch.Tensor | None = None, threshold: float = 6.0,
                 act_group_size: int | None = None) -> None:
        super().__init__(weight, bias)
        if not threshold > 0:
            raise ValueError(f"LLMInt8Linear threshold must be > 0, got {threshold}")
        if act_group_size is not None and (act_group_size <= 0 or self.in_features % act_group_size):
            raise ValueError(f"LLMInt8Linear act_group_size must divide in_features {self.in_features}, "
                             f"got {act_group_size}; use None for one activation scale per token")
        self.register_buffer("threshold", torch.tensor(float(threshold)))  # saved with the model
        # saved too (0 = per token), so a reloaded model quantizes activations the same way
        self.register_buffer("act_group", torch.tensor(int(act_group_size or 0)))

    @property
    def act_group_size(self) -> int | None:
        return int(self.act_group) or None

    @property
    def activation(self) -> ActivationQuant:
        return ActivationQuant("dynamic", "token", self.act_group_size, float(self.threshold))

    @classmethod
    def from_float(cls, linear: nn.Linear, threshold: float = 6.0, *, act_group_size: int | None = None,
                   name: str = "linear") -> "LLMInt8Linear":
        return cls(QTensor.from_float(linear.weight.detach(), INT8, name=name), linear.bias, threshold,
                   act_group_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)  # (M, K)
        O = outlier_columns(x2, self.threshold)
        w8a8 = torch.ops.lowbit.linear_w8a8_dynamic
        if O.numel() == 0:
            y = w8a8(x2, self.weight.data, self._scale(), self.bias, self.act_group_size)
        else:
            x_int8, x_fp = decompose(x2, O)  # (M, K), (M, |O|)
            y = w8a8(x_int8, self.weight.data, self._scale(), self.bias, self.act_group_size)
            W_O = self.weight.data.index_select(1, O).float() * self._scale()[:, None]  # (N, |O|)
            y = y + (x_fp.float() @ W_O.T).to(y.dtype)
        return y.reshape(*x.shape[:-1], self.out_features)

    def kernel(self, x: torch.Tensor | None = None) -> str:
        """The int8 part's kernel (``kernel_for``'s name); the outlier columns add an fp32 matmul."""
        if x is None:
            return kernels.kernel_for("linear_w8a8_dynamic", self.weight.data.device, torch.float32,
                                      (1, self.in_features))
        return kernels.kernel_for("linear_w8a8_dynamic", x.device, x.dtype, x.shape)

    @classmethod
    def planned_kernel(cls, fmt, activation, in_features: int, device: str = "cpu") -> str:
        return kernels.kernel_for("linear_w8a8_dynamic", device, torch.float32, (1, in_features))

    def extra_repr(self) -> str:
        fields = dict(in_features=self.in_features, out_features=self.out_features,
                      format=self.weight.format.label(), threshold=f"{float(self.threshold):g}",
                      act_group_size=self.act_group_size)
        return ", ".join(f"{k}={v}" for k, v in fields.items())


@register_layer
class StaticW8A8Linear(_Int8Linear):
    """W8A8 with a STATIC per-tensor activation scale (calibrated), int8 per-channel weights:

        x_q = clamp(round(x / s_x), -127, 127)      y = (x_q W_q^T) * s_x * s_W + b

    The integer product is ``torch._int_mm`` (exact int32). ``input_scale`` is a buffer, saved
    with the model.
    """

    activation = ActivationQuant("static", "tensor", observer="absmax")

    def __init__(self, weight: QTensor, bias: torch.Tensor | None = None,
                 input_scale: torch.Tensor | float = 1.0) -> None:
        super().__init__(weight, bias)
        s = torch.as_tensor(input_scale, dtype=torch.float32).reshape(())
        if not s > 0:
            raise ValueError(f"StaticW8A8Linear input_scale must be > 0, got {float(s)}")
        self.register_buffer("input_scale", s.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features).float()  # (M, K)
        x_q = torch.round(x2 / self.input_scale).clamp(-127, 127).to(torch.int8)
        acc = torch._int_mm(x_q, self.weight.data.t())  # (M, N) int32, exact
        y = acc.float() * (self.input_scale * self._scale())
        if self.bias is not None:
            y = y + self.bias
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def kernel(self, x: torch.Tensor | None = None) -> str:
        return self.planned_kernel(self.weight.format, self.activation, self.in_features)

    @classmethod
    def planned_kernel(cls, fmt, activation, in_features: int, device: str = "cpu") -> str:
        return "torch._int_mm (int8 x int8 -> int32)"

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"format={self.weight.format.label()}, input_scale={float(self.input_scale):.4g}")
