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

import torch
import torch.nn.functional as F
from torch import nn

from ..observers import UINT8_TENSOR, Observer
from ..qtensor import QTensor

KERNELS = {"conv": "onednn.qconv2d_pointwise", "linear": "onednn.qlinear_pointwise"}
_POST_OPS = {None: ("none", []), "relu": ("relu", []), "relu6": ("hardtanh", [0.0, 6.0])}
_ACT_FN = {None: lambda y: y, "relu": F.relu, "relu6": F.relu6}


# --- activations on the uint8 grid ------------------------------------------------------
def quantize_u8(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """uint8 ``clamp(round(x / scale) + zero_point, 0, 255)``, channels-last for 4-D ``x``."""
    if x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    q = torch.round(x * (1.0 / scale)).add_(zero_point).clamp_(0, 255)
    return q.to(torch.uint8)


def dequantize_u8(q: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    return q.to(torch.float32).sub_(zero_point).mul_(scale)


class QActivation:
    """A uint8 activation between quantized layers: ``real = scale * (q - zero_point)``.

    Not a ``torch.Tensor``: ops it cannot run exactly on the grid see it dequantized
    (``__torch_function__``), and the producing layer is told so (``feeds_float``).
    """

    __slots__ = ("q", "scale", "zero_point", "producer", "activation")

    def __init__(self, q, scale: float, zero_point: int, producer=None, activation=None):
        self.q, self.scale, self.zero_point = q, scale, zero_point
        self.producer, self.activation = producer, activation

    shape = property(lambda self: self.q.shape)
    device = property(lambda self: self.q.device)
    dtype = torch.float32  # what it stands for

    def dim(self) -> int:
        return self.q.dim()

    def size(self, d=None):
        return self.q.size() if d is None else self.q.size(d)

    def dequantize(self) -> torch.Tensor:
        if self.producer is not None:
            self.producer.feeds_float = True
        return dequantize_u8(self.q, self.scale, self.zero_point)

    def _like(self, q) -> "QActivation":
        return QActivation(q, self.scale, self.zero_point, self.producer, self.activation)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        x = args[0] if args else None
        if isinstance(x, QActivation):
            exact = _on_grid(func, x, args[1:], kwargs)
            if exact is not None:
                return exact
        return func(*_dequantize_tree(args), **_dequantize_tree(kwargs))

    def __getattr__(self, name):  # x.mean(...), x.flatten(1), ... on the float values
        return getattr(self.dequantize(), name)

    def _binary(op):
        return lambda self, other: op(self.dequantize(), _dequantize_tree(other))

    __add__ = _binary(lambda a, b: a + b)
    __radd__ = _binary(lambda a, b: b + a)
    __sub__ = _binary(lambda a, b: a - b)
    __rsub__ = _binary(lambda a, b: b - a)
    __mul__ = _binary(lambda a, b: a * b)
    __rmul__ = _binary(lambda a, b: b * a)
    __truediv__ = _binary(lambda a, b: a / b)
    __matmul__ = _binary(lambda a, b: a @ b)
    __getitem__ = _binary(lambda a, b: a[b])
    del _binary

    def __repr__(self) -> str:
        return (f"QActivation(shape={tuple(self.q.shape)}, scale={self.scale:.4g}, "
                f"zero_point={self.zero_point})")


def _on_grid(func, x: QActivation, rest, kwargs):
    """The result of ``func`` computed on x's uint8 grid, or None if it cannot be exact there."""
    name = getattr(func, "__name__", "")
    if func is F.pad:
        mode = kwargs.get("mode", rest[1] if len(rest) > 1 else "constant")
        value = kwargs.get("value", rest[2] if len(rest) > 2 else None)
        if mode == "constant" and not value:  # real 0.0 is the zero point
            return x._like(F.pad(x.q, rest[0] if rest else kwargs["pad"], value=x.zero_point))
    elif name in ("relu", "relu6", "hardtanh", "relu_", "hardtanh_"):
        if name.startswith("hardtanh"):
            lo = kwargs.get("min_val", rest[0] if rest else -1.0)
            hi = kwargs.get("max_val", rest[1] if len(rest) > 1 else 1.0)
        else:
            lo, hi = 0.0, (6.0 if name == "relu6" else None)
        fused = {"relu": (0.0, None), "relu6": (0.0, 6.0)}.get(x.activation)
        if fused is not None and lo <= fused[0] and (hi is None or (fused[1] is not None and hi >= fused[1])):
            return x  # the producing kernel already applied it
        qlo = max(0, min(255, round(lo / x.scale) + x.zero_point))
        qhi = 255 if hi is None else max(0, min(255, round(hi / x.scale) + x.zero_point))
        return x._like(x.q.clamp(qlo, qhi))
    elif name in ("max_pool2d", "_max_pool2d") and not kwargs.get("return_indices", False):
        # max commutes with a monotone grid; torch's uint8 max-pool limits channels-last
        # inputs to 255 elements, so pool a contiguous copy (one cheap uint8 pass)
        return x._like(func(x.q.contiguous(), *rest, **kwargs))
    return None


def _dequantize_tree(obj):
    if isinstance(obj, QActivation):
        return obj.dequantize()
    if isinstance(obj, (list, tuple)):
        return type(obj)(_dequantize_tree(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _dequantize_tree(v) for k, v in obj.items()}
    return obj


def dequantize_outputs(module: nn.Module, args, output):
    """Forward hook for the root module: the dequantize step at the model's output."""
    if isinstance(output, QActivation):
        return output.dequantize()
    if isinstance(output, (tuple, list, dict)):
        return _dequantize_tree(output)
    return output


# --- calibration-time modules -------------------------------------------------------------
class Observed(nn.Module):
    """A float Conv2d/Linear (BN already folded) plus its fused activation and two observers.

    Runs in float and watches its input and its (activated) output. ``weight`` is already the
    int8 :class:`QTensor` it will run with, so the report can describe it before calibration.
    """

    def __init__(self, module: nn.Module, weight: QTensor, activation: str | None,
                 input_observer: Observer, output_observer: Observer) -> None:
        super().__init__()
        self.float_module, self.weight, self.activation = module, weight, activation
        self.input_observer, self.output_observer = input_observer, output_observer
        self.op = "conv" if isinstance(module, nn.Conv2d) else "linear"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.input_observer.update(x)
        y = _ACT_FN[self.activation](self.float_module(x))
        self.output_observer.update(y)
        return y

    def kernel(self) -> str:
        return KERNELS[self.op]


# --- int8 modules -------------------------------------------------------------------------
class _StaticInt8(nn.Module):
    """Shared state of QConv2dStatic and QLinearStatic: weights, ranges, I/O bookkeeping."""

    def __init__(self, weight: QTensor, bias: torch.Tensor | None, activation: str | None,
                 input_qparams: tuple[float, int], output_qparams: tuple[float, int]) -> None:
        super().__init__()
        if weight.format.kind != "int" or weight.format.num_bits != 8 or not weight.format.signed:
            raise ValueError(f"static int8 layers need signed 8-bit weights, got {weight.format.label()}")
        self.activation = activation
        self.register_buffer("w_int8", None)                               # (out, ...) for export
        self.register_buffer("w_scale", None)                              # (out,)
        self._set_weight(weight, pack=False)  # the subclass packs once its geometry is set
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        self.bias_fp32 = self.bias  # as calibrated; ``bias`` is snapped by snap_bias()
        self.register_buffer("w_zero_point", torch.zeros(weight.shape[0], dtype=torch.int32))
        self.input_scale, self.input_zero_point = float(input_qparams[0]), int(input_qparams[1])
        self.output_scale, self.output_zero_point = float(output_qparams[0]), int(output_qparams[1])
        self.output_float = False   # set by profile(): the output only ever meets float ops
        self.feeds_float = False    # profiling marks, see QActivation
        self.feeds_int8 = False
        self.inputs_seen: set[str] = set()   # "int8" and/or "float"
        self.input_used: tuple[float, int] | None = None  # the input grid the kernel saw
        self.post_op, self.post_args = _POST_OPS[activation]

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
        return quantize_u8(x, self.input_scale, self.input_zero_point), self.input_scale, self.input_zero_point

    def _output_args(self) -> tuple[float, int, torch.dtype | None]:
        if self.output_float:
            return 1.0, 0, torch.float32
        return self.output_scale, self.output_zero_point, None

    def _wrap(self, y: torch.Tensor):
        if self.output_float:
            return y
        return QActivation(y, self.output_scale, self.output_zero_point, self, self.activation)

    def io(self) -> str:
        """What flows in and out, e.g. ``u8 in (previous layer) -> u8 out``."""
        src = {frozenset({"int8"}): "u8 in", frozenset({"float"}): "float in (quantize step)"}
        inp = src.get(frozenset(self.inputs_seen), "u8 or float in" if self.inputs_seen else "?")
        out = "fp32 out" if self.output_float else "u8 out"
        act = f", {self.activation} fused" if self.activation else ""
        return f"{inp} -> {out}{act}"

    def kernel(self) -> str:
        return f"{KERNELS[self.op]} ({self.io()})"

    def lowbit_footprint(self) -> tuple[int, int]:
        bias = 0 if self.bias is None else self.bias.numel() * 4
        return self.weight.nbytes + bias, self.weight.numel


class QConv2dStatic(_StaticInt8):
    """Conv2d on ``onednn.qconv2d_pointwise``: u8 activations, s8 per-channel weights."""

    op = "conv"

    def __init__(self, conv: nn.Conv2d, weight: QTensor, activation, input_qparams, output_qparams):
        super().__init__(weight, conv.bias, activation, input_qparams, output_qparams)
        self.stride, self.padding = list(conv.stride), list(conv.padding)
        self.dilation, self.groups = list(conv.dilation), conv.groups
        self.packed = self._pack()

    def _pack(self):
        return torch.ops.onednn.qconv_prepack(
            self.w_int8, self.w_scale, self.input_scale, self.input_zero_point, self.stride,
            self.padding, self.dilation, self.groups, None)

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


class QLinearStatic(_StaticInt8):
    """Linear on ``onednn.qlinear_pointwise``: u8 activations, s8 per-channel weights."""

    op = "linear"

    def __init__(self, linear: nn.Linear, weight: QTensor, activation, input_qparams, output_qparams):
        super().__init__(weight, linear.bias, activation, input_qparams, output_qparams)
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
    in_scale, in_zp = observed.input_observer.qparams(UINT8_TENSOR)
    out_scale, out_zp = observed.output_observer.qparams(UINT8_TENSOR)
    cls = QConv2dStatic if observed.op == "conv" else QLinearStatic
    return cls(observed.float_module, observed.weight, observed.activation,
               (in_scale.item(), int(in_zp.item())), (out_scale.item(), int(out_zp.item())))


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
