"""Fake-quantized layers: :class:`QATLinear`, :class:`QATConv2d` and :class:`QATConvBn2d`."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..formats import QFormat
from .fake import FakeQuantizer


class _QATLayer(nn.Module):
    """A float layer whose weight (and optionally input) are fake-quantized in forward."""

    def __init__(self, module: nn.Module, weight_fmt: QFormat, input_fmt: QFormat | None,
                 learn: str | None, name: str) -> None:
        super().__init__()
        self.module = module
        self.weight_quant = FakeQuantizer(weight_fmt, learn=learn, name=f"{name}.weight")
        self.input_quant = (FakeQuantizer(input_fmt, learn=learn, momentum=0.01, name=f"{name} input")
                            if input_fmt is not None else None)
        with torch.no_grad():
            self.weight_quant(module.weight)  # initialize from the weight now (before the optimizer)

    @property
    def weight(self) -> torch.Tensor:
        return self.module.weight

    def lowbit_describe(self) -> tuple[str, str, float | None]:
        """(format, kernel, bits per weight) for QuantReport: float kernels while training."""
        fmt = self.weight_quant.stored_fmt
        label = fmt.label() + (f", inputs {self.input_quant.fmt.label()}" if self.input_quant else "")
        return label, "fake quantization (float kernels while training)", None

    @property
    def bias(self) -> torch.Tensor | None:
        return self.module.bias

    def _inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.input_quant is not None:
            x = self.input_quant(x)
        return x, self.weight_quant(self.module.weight)


class QATLinear(_QATLayer):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, w = self._inputs(x)
        return F.linear(x, w, self.module.bias)


class QATConv2d(_QATLayer):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, w = self._inputs(x)
        m = self.module
        return F.conv2d(x, w, m.bias, m.stride, m.padding, m.dilation, m.groups)


class QATConvBn2d(_QATLayer):
    """Conv2d + BatchNorm2d with BN folding simulated: the conv runs on
    ``fake_quant(W * gamma / sigma_running)`` and its output is divided back by that factor
    before the BatchNorm (batch statistics while training, running ones once frozen or in
    eval). In eval mode the output equals the folded conv ``fold_conv_bn(conv, bn)`` with its
    weight on the fake-quantized grid; ``.module`` is ``Sequential(conv, bn)``."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, weight_fmt: QFormat,
                 input_fmt: QFormat | None, learn: str | None, name: str) -> None:
        if bn.num_features != conv.out_channels or not bn.track_running_stats:
            raise ValueError(f"{name}: a BatchNorm2d with running statistics over the conv's "
                             f"{conv.out_channels} channels is needed to simulate folding")
        nn.Module.__init__(self)
        self.module = nn.Sequential(conv, bn)
        self.weight_quant = FakeQuantizer(weight_fmt, learn=learn, name=f"{name}.weight")
        self.input_quant = (FakeQuantizer(input_fmt, learn=learn, momentum=0.01, name=f"{name} input")
                            if input_fmt is not None else None)
        with torch.no_grad():
            self.weight_quant(self._folded_weight())  # the grid starts on the folded weight

    @property
    def weight(self) -> torch.Tensor:
        return self.module[0].weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.module[0].bias

    def _factor(self) -> torch.Tensor:
        bn = self.module[1]
        gamma = bn.weight if bn.affine else torch.ones_like(bn.running_var)
        return gamma / torch.sqrt(bn.running_var + bn.eps)                       # (C_out,)

    def _folded_weight(self) -> torch.Tensor:
        return self.module[0].weight * self._factor().reshape(-1, 1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, bn = self.module
        if self.input_quant is not None:
            x = self.input_quant(x)
        factor = self._factor()
        w = self.weight_quant(conv.weight * factor.reshape(-1, 1, 1, 1))
        y = F.conv2d(x, w, None, conv.stride, conv.padding, conv.dilation, conv.groups)
        y = y / factor.reshape(1, -1, 1, 1)
        if conv.bias is not None:
            y = y + conv.bias.reshape(1, -1, 1, 1)
        return bn(y)
