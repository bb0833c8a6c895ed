"""QActivation: a uint8 activation flowing between static int8 layers, and the ops that stay
exact on its grid (zero padding, max pooling, a fused ReLU/ReLU6); anything else sees it
dequantized (the explicit float crossing). See :mod:`lowbit.nn.static`."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# --- activations on the uint8 grid ------------------------------------------------------
def quantize_u8(x: torch.Tensor, scale: float, zero_point: int, qmax: int = 255) -> torch.Tensor:
    """uint8 ``clamp(round(x / scale) + zero_point, 0, qmax)``, channels-last for 4-D ``x``."""
    if x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    q = torch.round(x * (1.0 / scale)).add_(zero_point).clamp_(0, qmax)
    return q.to(torch.uint8)


def dequantize_u8(q: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    return q.to(torch.float32).sub_(zero_point).mul_(scale)


class QActivation:
    """A uint8 activation between quantized layers: ``real = scale * (q - zero_point)``.

    Not a ``torch.Tensor``: ops it cannot run exactly on the grid see it dequantized
    (``__torch_function__``), and the producing layer is told so (``feeds_float``).
    """

    __slots__ = ("q", "scale", "zero_point", "producer", "fused")

    def __init__(self, q, scale: float, zero_point: int, producer=None, fused=None):
        self.q, self.scale, self.zero_point = q, scale, zero_point
        self.producer, self.fused = producer, fused  # fused: the ReLU/ReLU6 its kernel applied

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
        return QActivation(q, self.scale, self.zero_point, self.producer, self.fused)

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
        fused = {"relu": (0.0, None), "relu6": (0.0, 6.0)}.get(x.fused)
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
