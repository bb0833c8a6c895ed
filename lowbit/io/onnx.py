"""Export a StaticPTQ model to ONNX in QDQ form, for ONNX Runtime.

Each int8 layer becomes what ONNX Runtime fuses into ``QLinearConv`` / ``QLinearMatMul``::

    x -> QuantizeLinear -> DequantizeLinear --\\
    w (int8 initializer) -> DequantizeLinear (per channel, axis 0) -> Conv / Gemm -> act
    b (int32, scale x_scale * w_scale) -> DequantizeLinear --/      -> QuantizeLinear -> DequantizeLinear

with exactly the scales and zero points the lowbit model runs with: the input grid is the one
the kernel saw when the model was profiled (the previous layer's output grid where uint8 flows
in, the layer's own input range where float flows in), the same int32 bias (lowbit snaps its
bias onto that grid when it profiles); outputs that lowbit writes as fp32 get no
QuantizeLinear. Ops between layers (padding, pooling, adds) export as float ops.

Uses PyTorch's TorchScript-based exporter (``dynamo=False``), whose ``symbolic`` hook emits the
Q/DQ nodes. Needs the ``onnx`` package; running the result needs ``onnxruntime``.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.static import _ACT_FN, STATIC_TYPES, QConv2dStatic, bias_int32, dequantize_u8, quantize_u8


class _QDQ(torch.autograd.Function):
    """Per-tensor uint8 fake quantization that exports as QuantizeLinear -> DequantizeLinear."""

    @staticmethod
    def forward(ctx, x, scale: float, zero_point: int):
        return dequantize_u8(quantize_u8(x, scale, zero_point), scale, zero_point)

    @staticmethod
    def symbolic(g, x, scale, zero_point):
        s = g.op("Constant", value_t=torch.tensor(scale, dtype=torch.float32))
        z = g.op("Constant", value_t=torch.tensor(zero_point, dtype=torch.uint8))
        return g.op("DequantizeLinear", g.op("QuantizeLinear", x, s, z), s, z)


class _DQ(torch.autograd.Function):
    """Per-channel (axis 0) dequantization of an integer initializer."""

    @staticmethod
    def forward(ctx, q, scale, zero_point):
        shape = (-1,) + (1,) * (q.dim() - 1)
        return (q.double() - zero_point.double().reshape(shape)).mul(scale.double().reshape(shape)).float()

    @staticmethod
    def symbolic(g, q, scale, zero_point):
        return g.op("DequantizeLinear", q, scale, zero_point, axis_i=0)


class _ExportView(nn.Module):
    """Float QDQ view of one int8 layer (same parameters), used only while exporting."""

    def __init__(self, layer, int32_bias: bool = True) -> None:
        super().__init__()
        self.int32_bias = int32_bias
        if layer.input_used is None:
            raise ValueError("export_onnx needs a profiled StaticPTQ model: quantize it with "
                             "lowbit.quantize(model, StaticPTQ(...), data=...) first")
        self.layer = layer
        bias = layer.bias if layer.bias is not None else torch.zeros(layer.w_int8.shape[0])
        bias_q, bias_scale = bias_int32(bias, layer.input_used[0], layer.w_scale)  # == snapped bias
        self.register_buffer("bias_q", bias_q)
        self.register_buffer("bias_scale", bias_scale)
        self.register_buffer("zeros_i8", torch.zeros(layer.w_int8.shape[0], dtype=torch.int8))
        self.register_buffer("zeros_i32", torch.zeros(layer.w_int8.shape[0], dtype=torch.int32))

    def forward(self, x):
        m = self.layer
        x = _QDQ.apply(x, *m.input_used)
        w = _DQ.apply(m.w_int8, m.w_scale, self.zeros_i8)
        b = _DQ.apply(self.bias_q, self.bias_scale, self.zeros_i32) if self.int32_bias else m.bias
        if isinstance(m, QConv2dStatic):
            y = F.conv2d(x, w, b, m.stride, m.padding, m.dilation, m.groups)
        else:
            y = F.linear(x, w, b)
        y = _ACT_FN[m.fused](y)
        if not m.output_float:
            y = _QDQ.apply(y, m.output_scale, m.output_zero_point)
        return y


@contextlib.contextmanager
def export_view(model: nn.Module, int32_bias: bool = True):
    """Temporarily replace every int8 layer of ``model`` by its float QDQ view."""
    from ..nn.swap import set_submodule

    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, STATIC_TYPES)]
    if not layers:
        raise ValueError("export_onnx: the model has no static int8 layers; quantize it with "
                         "lowbit.recipes.StaticPTQ first")
    for name, layer in layers:
        set_submodule(model, name, _ExportView(layer, int32_bias))
    try:
        yield model
    finally:
        for name, layer in layers:
            set_submodule(model, name, layer)


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | os.PathLike, *,
                opset: int = 17, dynamic_batch: bool = True, int32_bias: bool = True) -> Path:
    """Write ``model`` (a StaticPTQ model) to ``path`` as a QDQ ONNX graph; returns the path.

    ``int32_bias`` writes biases as int32 at scale ``x_scale * w_scale`` (what ONNX Runtime
    needs to fuse a layer into QLinearConv); lowbit's model already runs with its bias rounded
    onto that grid, so both compute the same sums. False writes the bias as fp32, which ONNX
    Runtime runs as a float conv on dequantized values.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    axes = {"input": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch else None
    tmp = path.with_suffix(".tmp.onnx")
    with export_view(model, int32_bias), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(model, (example,), str(tmp), dynamo=False, opset_version=opset,
                          input_names=["input"], output_names=["output"], dynamic_axes=axes)
    tmp.replace(path)  # never a half-written file
    return path
