"""The LSQ math: round/gradient-scale straight-through helpers and :class:`FakeQuantizer`."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..formats import QFormat
from ..primitives import as_groups, choose_qparams, fixed_zero_point
from ..qtensor import QTensor

LEARN = (None, "lsq", "lsq+")


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) forward, identity backward."""
    return x + (torch.round(x) - x).detach()


def grad_scale(x: torch.Tensor, factor: float) -> torch.Tensor:
    """x forward, gradient times ``factor`` backward (LSQ's step-size gradient scale)."""
    return x * factor + (x - x * factor).detach()


class FakeQuantizer(nn.Module):
    """Quantize-dequantize onto ``fmt``'s integer grid with a straight-through gradient.

    The scale (and zero point) are set on the first call from the input's range. Afterwards
    they follow an observer (``learn=None``: the current min/max for weights, a moving average
    with ``momentum`` for activations) until :meth:`freeze` is called, or are learned
    (``learn="lsq"``: the scale, ``"lsq+"``: the scale and the zero point).
    """

    def __init__(self, fmt: QFormat, *, learn: str | None = None, momentum: float | None = None,
                 name: str = "tensor") -> None:
        super().__init__()
        if fmt.kind != "int":
            raise ValueError(f"{name}: QAT needs an integer format, got {fmt.label()}")
        if learn not in LEARN:
            raise ValueError(f"{name}: learn must be one of {LEARN}, got {learn!r}")
        if learn == "lsq+" and fmt.symmetric:
            raise ValueError(f"{name}: learn='lsq+' learns a zero point; use an asymmetric format "
                             f"(got {fmt.label()})")
        self.fmt = fmt.replace(scale_dtype="float32")  # train in fp32; convert() casts
        self.stored_fmt = fmt
        self.learn, self.momentum, self.name = learn, momentum, name
        self.observing = True
        self.calibrating = False  # prepare_qat: widen the range over the calibration batches
        self.register_buffer("scale", None)       # [rows, groups]; a Parameter once learned
        self.register_buffer("zero_point", None)
        self._grad_factor = 1.0

    @property
    def initialized(self) -> bool:
        return self.scale is not None

    def freeze(self) -> None:
        """Stop following the observer: the current scale and zero point stay fixed."""
        self.observing = False

    def _qparams(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scale, zero = choose_qparams(x.detach(), self.fmt, name=self.name)
        if zero is None:
            zero = torch.full_like(scale, float(fixed_zero_point(self.fmt)))
        return scale.float(), zero.float()

    def _initialize(self, x: torch.Tensor) -> None:
        scale, zero = self._qparams(x)
        if self.learn:
            del self._buffers["scale"]
            self.scale = nn.Parameter(scale)
            # LSQ's g = 1 / sqrt(N * qmax), N the values per scale: per sample for activations
            per_scale = (x[0].numel() if self.fmt.granularity == "tensor" and x.dim() > 1
                         else as_groups(x, self.fmt).shape[-1])
            self._grad_factor = 1.0 / math.sqrt(per_scale * self.fmt.qmax)
        else:
            self.scale = scale
        if self.learn == "lsq+":
            del self._buffers["zero_point"]
            self.zero_point = nn.Parameter(zero)
        else:
            self.zero_point = zero

    def load_grid(self, weight: QTensor) -> None:
        """Start from an already quantized weight's grid (e.g. GPTQ's): its scales and zero
        points become this quantizer's (learned ones stay learnable)."""
        fmt = weight.format
        if (fmt.num_bits, fmt.granularity, fmt.group_size, fmt.symmetric) != (
                self.fmt.num_bits, self.fmt.granularity, self.fmt.group_size, self.fmt.symmetric):
            raise ValueError(f"{self.name}: cannot start from a {fmt.label()} weight; this quantizer "
                             f"trains {self.stored_fmt.label()}")
        scale = weight.scales().float().reshape(self.scale.shape)
        zero = (weight.zero_point.float().reshape(self.scale.shape) if weight.zero_point is not None
                else torch.full_like(scale, float(fixed_zero_point(self.fmt))))
        with torch.no_grad():
            self.scale.copy_(scale)
            self.zero_point.copy_(zero)

    def _widen(self, x: torch.Tensor) -> None:
        """Calibration: the range becomes the union of the current one and x's."""
        xg = as_groups(x, self.fmt, name=self.name)
        lo = torch.minimum((self.fmt.qmin - self.zero_point) * self.scale, xg.amin(-1).float())
        hi = torch.maximum((self.fmt.qmax - self.zero_point) * self.scale, xg.amax(-1).float())
        scale, zero = choose_qparams(x, self.fmt, min_val=lo, max_val=hi)
        zero = torch.full_like(scale, float(fixed_zero_point(self.fmt))) if zero is None else zero
        self.scale.copy_(scale.float())
        self.zero_point.copy_(zero.float())

    def _observe(self, x: torch.Tensor) -> None:
        scale, zero = self._qparams(x)
        if self.momentum is not None:  # moving average of the range (activations)
            m = self.momentum
            lo_old = (self.fmt.qmin - self.zero_point) * self.scale
            hi_old = (self.fmt.qmax - self.zero_point) * self.scale
            lo_new, hi_new = (self.fmt.qmin - zero) * scale, (self.fmt.qmax - zero) * scale
            lo, hi = (1 - m) * lo_old + m * lo_new, (1 - m) * hi_old + m * hi_new
            scale, zero = choose_qparams(x.detach(), self.fmt, min_val=lo, max_val=hi)
            zero = torch.full_like(scale, float(fixed_zero_point(self.fmt))) if zero is None else zero
        self.scale.copy_(scale.float())
        self.zero_point.copy_(zero.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.initialized:
            with torch.no_grad():
                self._initialize(x)
        elif self.calibrating:
            with torch.no_grad():
                self._widen(x)
        elif self.observing and not self.learn and self.training:
            with torch.no_grad():
                self._observe(x)
        xg = as_groups(x, self.fmt, name=self.name)              # (rows, groups, g)
        scale = self.scale
        if self.learn:
            scale = grad_scale(scale, self._grad_factor)
        s = scale.abs().clamp_min(1e-12).unsqueeze(-1)
        stored = self.stored_fmt.torch_scale_dtype
        if stored != torch.float32:  # train on the grid that will be stored (bf16 scales)
            s = s + (s.to(stored).float() - s).detach()
        z = self.zero_point.unsqueeze(-1)
        if self.learn == "lsq+":
            z = round_ste(z)
        q = torch.clamp(round_ste(xg / s + z), self.fmt.qmin, self.fmt.qmax)
        return ((q - z) * s).reshape(x.shape).to(x.dtype)

    def quantized_weight(self, w: torch.Tensor) -> QTensor:
        """The packed weight on exactly the grid this quantizer trains on."""
        fmt = self.stored_fmt
        scale = self.scale.detach().abs().clamp_min(1e-12).to(fmt.torch_scale_dtype)
        zero = None
        if not fmt.symmetric:
            zero = torch.round(self.zero_point.detach()).clamp(fmt.qmin, fmt.qmax).to(fmt.torch_scale_dtype)
        return QTensor.from_float(w.detach(), fmt, name=self.name, scale=scale, zero_point=zero)

    def extra_repr(self) -> str:
        return f"{self.fmt.label()}, learn={self.learn}, observing={self.observing}"
