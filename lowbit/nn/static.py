"""Static int8 modules: Conv2d and Linear on oneDNN's u8 x s8 kernels, with uint8 activations
flowing between them.

How int8 flows through an arbitrary Python ``forward``: a quantized layer returns a
:class:`QActivation` (uint8 data, per-tensor scale, zero point). The next quantized layer
takes its uint8 data as is. Between layers, the ops that are exact on the integer grid run on
it directly (zero padding, max pooling, a ReLU/ReLU6 the producing kernel already fused);
any other op (a residual add, a mean, a float layer) sees the QActivation dequantized: the
explicit float crossing. A layer that receives a float tensor quantizes it with the input
range its observer chose, which is the quantize step at the model's input and after every
crossing. The model's outputs are dequantized by a hook on the root module.

After conversion one profiling pass (:func:`profile`) records what each layer actually
received and who consumed its output; a layer whose output only ever meets float ops writes
fp32 straight from the kernel instead of uint8 that would be dequantized at once, and each bias
is rounded onto the int32 grid of the input the layer receives (as in integer inference and
the ONNX export).

Kernels: ``torch.ops.onednn.qconv2d_pointwise`` / ``qlinear_pointwise`` with u8 activations
(oneDNN's s8-activation path is a reference kernel), s8 symmetric weights per output channel,
fp32 bias, ReLU/ReLU6 fused as post-ops, requantization to the next layer's uint8 inside the
kernel.
"""
from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from ..formats import ActivationQuant, QFormat
from ..observers import UINT8_TENSOR, Observer
from ..qtensor import QTensor
from .base import QModule, register_layer
from .qactivation import QActivation, _dequantize_tree, dequantize_outputs, dequantize_u8, quantize_u8  # noqa: F401

KERNELS = {"conv": "onednn.qconv2d_pointwise", "linear": "onednn.qlinear_pointwise"}
_POST_OPS = {None: ("none", []), "relu": ("relu", []), "relu6": ("hardtanh", [0.0, 6.0])}
_ACT_FN = {None: lambda y: y, "relu": F.relu, "relu6": F.relu6}
UINT7_TENSOR = UINT8_TENSOR.replace(num_bits=7)


def activation_format() -> QFormat:
    """The activation grid of static int8 layers on this CPU: uint8, or uint7 (0..127) on x86
    without VNNI, whose u8 x s8 instruction (vpmaddubsw) saturates int16 pair sums above 32767
    (oneDNN and ONNX Runtime then compute wrong sums; PyTorch's ``reduce_range`` for the same
    reason). 127 * 128 * 2 < 32768, so 7-bit activations are exact there."""
    from ..kernels.cpu import missing_cpu_flags

    vnni = not missing_cpu_flags(flags=("avx512_vnni",)) or not missing_cpu_flags(flags=("avx_vnni",))
    return UINT8_TENSOR if vnni else UINT7_TENSOR


# --- calibration-time modules -------------------------------------------------------------
class Observed(nn.Module):
    """A float Conv2d/Linear (BN already folded) plus its fused activation and two observers.

    Runs in float and watches its input and its (activated) output. ``weight`` is already the
    int8 :class:`QTensor` it will run with, so the report can describe it before calibration.
    """

    def __init__(self, module: nn.Module, weight: QTensor, fused: str | None,
                 input_observer: Observer, output_observer: Observer) -> None:
        super().__init__()
        self.float_module, self.weight, self.fused = module, weight, fused
        self.input_observer, self.output_observer = input_observer, output_observer
        self.op = "conv" if isinstance(module, nn.Conv2d) else "linear"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.input_observer.update(x)
        y = _ACT_FN[self.fused](self.float_module(x))
        self.output_observer.update(y)
        return y

    def kernel(self) -> str:
        return KERNELS[self.op]


# --- int8 modules -------------------------------------------------------------------------
class _StaticInt8(QModule):
    """Shared state of QConv2dStatic and QLinearStatic: weights, ranges, I/O bookkeeping."""

    def __init__(self, weight: QTensor, bias: torch.Tensor | None, fused: str | None,
                 input_qparams: tuple[float, int], output_qparams: tuple[float, int]) -> None:
        super().__init__()
        fmt = weight.format
        if fmt.kind != "int" or not fmt.signed or not fmt.symmetric or fmt.granularity == "group":
            raise ValueError(f"static int8 layers need signed symmetric weights (8 bits, or 2..7 bits "
                             f"that the int8 kernel runs widened), per channel or tensor; got {fmt.label()}")
        self.fused = fused  # ReLU / ReLU6 applied by the kernel (a post-op), or None
        # derived from ``weight`` (for the kernel and the ONNX export), so not saved twice
        self.register_buffer("w_int8", None, persistent=False)             # (out, ...)
        self.register_buffer("w_scale", None, persistent=False)            # (out,)
        self._set_weight(weight, pack=False)  # the subclass packs once its geometry is set
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        self.bias_fp32 = self.bias  # as calibrated; ``bias`` is snapped by snap_bias()
        self.register_buffer("w_zero_point", torch.zeros(weight.shape[0], dtype=torch.int32))
        self.input_scale, self.input_zero_point = float(input_qparams[0]), int(input_qparams[1])
        self.input_qmax = 255 if len(input_qparams) < 3 else int(input_qparams[2])
        self.output_scale, self.output_zero_point = float(output_qparams[0]), int(output_qparams[1])
        self.output_float = False   # set by profile(): the output only ever meets float ops
        self.feeds_float = False    # profiling marks, see QActivation
        self.feeds_int8 = False
        self.inputs_seen: set[str] = set()   # "int8" and/or "float"
        self.input_used: tuple[float, int] | None = None  # the input grid the kernel saw
        self.post_op, self.post_args = _POST_OPS[fused]

    def _set_weight(self, weight: QTensor, pack: bool = True) -> None:
        self.weight = weight
        self.w_int8 = weight.int_values().to(torch.int8).reshape(weight.shape)
        self.w_scale = weight.scales().float().reshape(-1).expand(weight.shape[0]).contiguous()
        if pack:
            self.packed = self._pack()

    def _pack(self):
        raise NotImplementedError

    def snap_bias(self) -> None:
        """Round the bias onto the int32 grid of the input grid the kernel sees
        (:func:`bias_int32`), as integer inference adds it to the accumulator (ONNX Runtime's
        QLinearConv, TFLite): lowbit's model then computes the same sums as its ONNX export.
        Moves each bias by at most half a step, ``input scale x weight scale / 2``.

        A channel whose weights are ~0 (dead after BN folding; EfficientNet-Lite0's stem has
        three, weight scales ~1e-8) would need a bias beyond int32 on that grid: its weight
        scale is raised until the bias fits in 2^30 steps (headroom for the accumulator). Its
        weights round to ~0 either way; clamping the bias instead would change the channel.
        """
        if self.bias_fp32 is None or self.input_used is None:
            return
        x_scale = self.input_used[0]
        need = (self.bias_fp32.double().abs() / (x_scale * BIAS_STEPS_MAX)).float()   # (out,)
        if (need > self.w_scale).any():
            scales = self.weight.scales().float()                    # (out, 1) or (1, 1)
            need = need.reshape(-1, 1) if scales.shape[0] == need.shape[0] else need.max().reshape(1, 1)
            scale = torch.maximum(scales, need)
            self._set_weight(QTensor.from_float(self.weight.dequantize(), self.weight.format,
                                                scale=scale, zero_point=None))
        bias_q, bias_scale = bias_int32(self.bias_fp32, x_scale, self.w_scale)
        self.bias = bias_q.double().mul(bias_scale.double()).float()

    def _input(self, x) -> tuple[torch.Tensor, float, int]:
        if isinstance(x, QActivation):
            if x.producer is not None:
                x.producer.feeds_int8 = True
            self.inputs_seen.add("int8")
            self.input_used = (x.scale, x.zero_point)
            return x.q, x.scale, x.zero_point
        self.inputs_seen.add("float")
        self.input_used = (self.input_scale, self.input_zero_point)
        q = quantize_u8(x, self.input_scale, self.input_zero_point, self.input_qmax)
        return q, self.input_scale, self.input_zero_point

    def _output_args(self) -> tuple[float, int, torch.dtype | None]:
        if self.output_float:
            return 1.0, 0, torch.float32
        return self.output_scale, self.output_zero_point, None

    def _wrap(self, y: torch.Tensor):
        if self.output_float:
            return y
        return QActivation(y, self.output_scale, self.output_zero_point, self, self.fused)

    def io(self) -> str:
        """What flows in and out, e.g. ``u8 in (previous layer) -> u8 out``."""
        src = {frozenset({"int8"}): "u8 in", frozenset({"float"}): "float in (quantize step)"}
        inp = src.get(frozenset(self.inputs_seen), "u8 or float in" if self.inputs_seen else "?")
        out = "fp32 out" if self.output_float else "u8 out"
        act = f", {self.fused} fused" if self.fused else ""
        return f"{inp} -> {out}{act}"

    def kernel(self, x=None) -> str:
        return KERNELS[self.op]

    def lowbit_footprint(self) -> tuple[int, int]:
        bias = 0 if self.bias is None else self.bias.numel() * 4
        return self.weight.nbytes + bias, self.weight.numel

    @property
    def activation(self) -> ActivationQuant:
        return ActivationQuant("static", "tensor")

    @classmethod
    def planned_kernel(cls, fmt, activation, in_features: int, device: str = "cpu") -> str:
        return KERNELS[cls.op]

    def config(self) -> dict:
        return {"fused": self.fused,
                "input_qparams": [self.input_scale, self.input_zero_point, self.input_qmax],
                "output_qparams": [self.output_scale, self.output_zero_point],
                "output_float": self.output_float,
                "input_used": list(self.input_used) if self.input_used else None,
                "inputs_seen": sorted(self.inputs_seen), **self._geometry()}

    def _geometry(self) -> dict:
        return {}

    @classmethod
    def from_config(cls, weight: QTensor, config: dict, bias: torch.Tensor | None) -> "_StaticInt8":
        float_layer = SimpleNamespace(bias=bias, **{k: config[k] for k in ("stride", "padding", "dilation",
                                                                           "groups") if k in config})
        layer = cls(float_layer, weight, config["fused"], tuple(config["input_qparams"]),
                    tuple(config["output_qparams"]))
        layer.output_float = bool(config["output_float"])
        layer.input_used = tuple(config["input_used"]) if config.get("input_used") else None
        layer.inputs_seen = set(config.get("inputs_seen", ()))
        return layer


@register_layer
class QConv2dStatic(_StaticInt8):
    """Conv2d on ``onednn.qconv2d_pointwise``: u8 activations, s8 per-channel weights."""

    op = "conv"

    def __init__(self, conv: nn.Conv2d, weight: QTensor, fused, input_qparams, output_qparams):
        super().__init__(weight, conv.bias, fused, input_qparams, output_qparams)
        self.stride, self.padding = list(conv.stride), list(conv.padding)
        self.dilation, self.groups = list(conv.dilation), conv.groups
        self.packed = self._pack()

    def _pack(self):
        return torch.ops.onednn.qconv_prepack(
            self.w_int8, self.w_scale, self.input_scale, self.input_zero_point, self.stride,
            self.padding, self.dilation, self.groups, None)

    def _geometry(self) -> dict:
        return {"stride": self.stride, "padding": self.padding, "dilation": self.dilation,
                "groups": self.groups}

    def forward(self, x):
        q, x_scale, x_zp = self._input(x)
        out_scale, out_zp, out_dtype = self._output_args()
        y = torch.ops.onednn.qconv2d_pointwise(
            q, x_scale, x_zp, self.packed, self.w_scale, self.w_zero_point, self.bias,
            self.stride, self.padding, self.dilation, self.groups, out_scale, out_zp, out_dtype,
            self.post_op, self.post_args, "")
        return self._wrap(y)

    def extra_repr(self) -> str:
        return (f"{self.w_int8.shape[1] * self.groups}, {self.w_int8.shape[0]}, "
                f"kernel_size={tuple(self.w_int8.shape[2:])}, stride={tuple(self.stride)}, "
                f"groups={self.groups}, {self.io()}")


@register_layer
class QLinearStatic(_StaticInt8):
    """Linear on ``onednn.qlinear_pointwise``: u8 activations, s8 per-channel weights."""

    op = "linear"

    def __init__(self, linear: nn.Linear, weight: QTensor, fused, input_qparams, output_qparams):
        super().__init__(weight, linear.bias, fused, input_qparams, output_qparams)
        self.packed = self._pack()

    def _pack(self):
        return torch.ops.onednn.qlinear_prepack(self.w_int8, None)

    def forward(self, x):
        q, x_scale, x_zp = self._input(x)
        out_scale, out_zp, out_dtype = self._output_args()
        lead = q.shape[:-1]
        y = torch.ops.onednn.qlinear_pointwise(
            q.reshape(-1, q.shape[-1]), x_scale, x_zp, self.packed, self.w_scale,
            self.w_zero_point, self.bias, out_scale, out_zp, out_dtype, self.post_op,
            self.post_args, "")
        return self._wrap(y.reshape(*lead, y.shape[-1]))

    def extra_repr(self) -> str:
        return f"in_features={self.w_int8.shape[1]}, out_features={self.w_int8.shape[0]}, {self.io()}"


STATIC_TYPES = (QConv2dStatic, QLinearStatic)


BIAS_STEPS_MAX = 2.0 ** 30  # |int32 bias| bound that leaves the accumulator headroom


def bias_int32(bias: torch.Tensor, x_scale: float, w_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``bias`` (out,) as int32 at scale ``x_scale * w_scale`` (per output channel): the
    integer bias of int8 inference. Returns (int32 values, fp32 scales)."""
    bias_scale = (x_scale * w_scale.double()).float()                         # (out,)
    limit = 2.0 ** 31 - 1
    bias_q = torch.round(bias.double() / bias_scale.double()).clamp_(-limit, limit)
    return bias_q.to(torch.int32), bias_scale


def convert_observed(observed: Observed) -> _StaticInt8:
    """The int8 module for a calibrated :class:`Observed` (raises if it saw no data)."""
    fmt = activation_format()
    in_scale, in_zp = observed.input_observer.qparams(fmt)
    out_scale, out_zp = observed.output_observer.qparams(fmt)
    cls = QConv2dStatic if observed.op == "conv" else QLinearStatic
    return cls(observed.float_module, observed.weight, observed.fused,
               (in_scale.item(), int(in_zp.item()), fmt.qmax), (out_scale.item(), int(out_zp.item())))


@torch.no_grad()
def profile(model: nn.Module, run) -> None:
    """Run ``run(model)`` once and settle each int8 layer's output: uint8 where another int8
    layer consumes it, fp32 where it only ever meets float ops (or is never consumed)."""
    layers = [m for m in model.modules() if isinstance(m, STATIC_TYPES)]
    for m in layers:
        m.output_float, m.feeds_float, m.feeds_int8 = False, False, False
        m.inputs_seen = set()
    run(model)
    for m in layers:
        m.output_float = not m.feeds_int8
        m.snap_bias()


def float_crossings(model: nn.Module) -> list[str]:
    """Where float remains between int8 layers, as settled by :func:`profile`."""
    notes = []
    for name, m in model.named_modules():
        if isinstance(m, STATIC_TYPES):
            if "float" in m.inputs_seen:
                notes.append(f"{name}: input arrives float and is quantized")
            if m.feeds_float and not m.output_float:
                notes.append(f"{name}: uint8 output is also dequantized for a float op")
            if m.output_float:
                notes.append(f"{name}: writes fp32 (consumed only by float ops)")
    return notes
