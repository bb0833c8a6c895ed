"""Quantization-aware training: fake-quantized Linear/Conv2d, then conversion to real kernels.

The forward pass rounds weights (and, where asked, inputs) onto the target grid; the backward
pass uses the straight-through estimator (Bengio et al. 2013, "Estimating or Propagating
Gradients Through Stochastic Neurons"): the gradient passes unchanged inside the representable
range and is zero outside it. Step sizes are either set by an observer (min/max of the weight,
a moving average of the activation range) or learned:

- LSQ (Esser et al. 2020, "Learned Step Size Quantization"): the scale is a parameter whose
  gradient is ``round(x/s) - x/s`` inside the range and ``qmin``/``qmax`` outside, times
  ``1 / sqrt(numel * qmax)`` to keep its step comparable to the weights'.
- LSQ+ (Bhalgat et al. 2020): the zero point (grid offset) is learned too.

A Conv2d followed by a BatchNorm2d trains as :class:`QATConvBn2d` (``QAT(batchnorm="simulate")``,
the default when the model has BatchNorms and ``data`` is given): the weight is fake-quantized
*after* folding BN's running statistics into it, as the deployed int8 conv will be, while the
BatchNorm keeps normalising with batch statistics (and updating its running ones) until
:func:`freeze_batchnorm` (Jacob et al. 2018, section 3.2; Krishnamoorthi 2018, section 3.2).

``prepare_qat(model, QAT(...), data)`` returns a trainable copy; ``convert(model)`` returns a
really quantized one: each QATLinear becomes a :class:`~lowbit.nn.QLinear` whose packed weight is
exactly the grid the training saw (int8/int4/3/2-bit kernels as in PTQ).
"""
from __future__ import annotations

import copy
import itertools
import logging
import math
import time
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .formats import QFormat, int_format
from .nn import QLinear
from .nn.swap import QuantReport, Skip, matches, set_submodule, swap_modules
from .primitives import as_groups, choose_qparams, fixed_zero_point
from .qtensor import QTensor

log = logging.getLogger("lowbit")
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


@dataclass(frozen=True)
class QAT:
    """What :func:`prepare_qat` makes trainable.

    Args:
        num_bits, group_size, symmetric: the weight format (group_size None = per channel;
            ``symmetric=None`` picks symmetric at 8 bits, asymmetric below, as WeightOnly does).
        act_bits: quantize each layer's input to this many bits (per tensor, asymmetric), or
            None to leave activations float (weight-only QAT, as for LLMs).
        learn: None (observers), "lsq" (learned scales) or "lsq+" (learned scales and offsets).
        include, exclude: fnmatch patterns on module names (e.g. exclude the output head).
        batchnorm: "simulate" trains each Conv2d -> BatchNorm2d pair as a :class:`QATConvBn2d`
            (found by running the first batch of ``data``); "as-is" leaves BatchNorms alone
            (fold them first with ``lowbit.fold`` if the deployed model has them folded).
    """

    num_bits: int = 4
    group_size: int | None = None
    symmetric: bool | None = None
    act_bits: int | None = None
    learn: str | None = "lsq"
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    batchnorm: str = "simulate"

    def __post_init__(self) -> None:
        if not 2 <= self.num_bits <= 8:
            raise ValueError(f"QAT.num_bits must be 2..8, got {self.num_bits}")
        if self.batchnorm not in ("simulate", "as-is"):
            raise ValueError(f"QAT.batchnorm must be 'simulate' or 'as-is', got {self.batchnorm!r}")
        if self.act_bits is not None and not 2 <= self.act_bits <= 8:
            raise ValueError(f"QAT.act_bits must be None or 2..8, got {self.act_bits}")
        if self.learn not in LEARN:
            raise ValueError(f"QAT.learn must be one of {LEARN}, got {self.learn!r}")
        object.__setattr__(self, "include", tuple(self.include))
        object.__setattr__(self, "exclude", tuple(self.exclude))

    @property
    def weight_format(self) -> QFormat:
        symmetric = self.num_bits == 8 if self.symmetric is None else self.symmetric
        if self.learn == "lsq+":
            symmetric = False
        return int_format(self.num_bits, signed=symmetric, symmetric=symmetric,
                          group_size=self.group_size)

    @property
    def input_format(self) -> QFormat | None:
        if self.act_bits is None:
            return None
        return int_format(self.act_bits, signed=False, symmetric=False).replace(granularity="tensor")

    def describe(self) -> str:
        acts = f"A{self.act_bits}" if self.act_bits else "float activations"
        return f"QAT W{self.num_bits} ({self.weight_format.label()}), {acts}, learn={self.learn}"


def prepare_qat(model: nn.Module, recipe: QAT, data: Iterable | None = None, *,
                inplace: bool = False, init: dict[str, QTensor] | None = None) -> nn.Module:
    """A trainable copy of ``model`` with every matching Linear/Conv2d fake-quantized.

    Activation quantizers are initialized from the first batches of ``data`` (needed when
    ``recipe.act_bits`` is set): run before building the optimizer, so learned scales are
    registered parameters by then. ``init`` maps layer names to already quantized weights
    (e.g. from GPTQ, ``lowbit.quantize(model, WeightOnly(method="gptq", ...))``): those layers
    start from that weight (dequantized) and its grid instead of the float weight's range.
    """
    if not isinstance(recipe, QAT):
        raise TypeError(f"prepare_qat needs a lowbit.qat.QAT recipe, got {type(recipe).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    conv_bn = _conv_bn_pairs(model, recipe, data)

    def build(name: str, module: nn.Module) -> nn.Module:
        try:
            if name in conv_bn:
                bn_name = conv_bn[name]
                layer = QATConvBn2d(module, model.get_submodule(bn_name), recipe.weight_format,
                                    recipe.input_format, recipe.learn, name)
                set_submodule(model, bn_name, nn.Identity())  # it now runs inside the pair
            else:
                cls = QATConv2d if isinstance(module, nn.Conv2d) else QATLinear
                layer = cls(module, recipe.weight_format, recipe.input_format, recipe.learn, name)
        except ValueError as err:
            if "does not divide" in str(err):
                raise Skip(str(err)) from None
            raise
        if init and name in init:
            if name in conv_bn:
                raise ValueError(f"prepare_qat: init= for {name}, which trains with its BatchNorm "
                                 f"{conv_bn[name]} folded; pass QAT(batchnorm='as-is') with init=")
            with torch.no_grad():
                module.weight.copy_(init[name].dequantize(module.weight.dtype).reshape(module.weight.shape))
            layer.weight_quant.load_grid(init[name])
        return layer

    report = swap_modules(model, build, types=(nn.Linear, nn.Conv2d), include=recipe.include,
                          exclude=recipe.exclude, recipe=recipe.describe())
    model.lowbit_report = report
    if recipe.act_bits is not None:
        if data is None:
            raise ValueError("prepare_qat: act_bits needs data (a few batches) to initialize the "
                             "activation ranges; pass data=[batch, ...]")
        was_training = model.training
        model.eval()
        quantizers = [m for m in model.modules() if isinstance(m, FakeQuantizer)]
        with torch.no_grad():
            for i, batch in enumerate(itertools.islice(data, 8)):
                model(*batch) if isinstance(batch, (tuple, list)) else model(batch)
                if i == 0:  # initialized by the first batch; widen over the rest
                    for q in quantizers:
                        q.calibrating = True
        for q in quantizers:
            q.calibrating = False
        model.train(was_training)
    return model


def _conv_bn_pairs(model: nn.Module, recipe: QAT, data) -> dict[str, str]:
    """{conv: bn} pairs to train as QATConvBn2d (found by one traced run on the first batch)."""
    if recipe.batchnorm != "simulate" or not any(
            isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        return {}
    if data is None:
        raise ValueError("prepare_qat: the model has BatchNorm2d layers; QAT(batchnorm='simulate') "
                         "needs data=[batch, ...] to find which conv each one follows, or pass "
                         "QAT(batchnorm='as-is')")
    from .fold import trace_pairs
    batch = next(iter(data))
    was_training = model.training
    model.eval()
    pairs, _ = trace_pairs(model, lambda m: m(*batch) if isinstance(batch, (tuple, list)) else m(batch))
    model.train(was_training)
    return {c: b for c, b in pairs.items()
            if matches(c, recipe.include) and not matches(c, recipe.exclude)}


def freeze_observers(model: nn.Module) -> None:
    """Fix every observer-driven scale (the usual step late in QAT)."""
    for m in model.modules():
        if isinstance(m, FakeQuantizer):
            m.freeze()


def _keep_eval(module: nn.Module, args) -> None:
    module.training = False


def freeze_batchnorm(model: nn.Module) -> None:
    """Use the running statistics from now on (BatchNorm in eval mode across model.train();
    its affine parameters still train)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not getattr(m, "_lowbit_frozen", False):
            m.eval()
            m.register_forward_pre_hook(_keep_eval)
            m._lowbit_frozen = True


def convert(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Really quantize a QAT model: each QATLinear becomes a QLinear holding its trained grid.

    Layers with quantized inputs keep them on the grid the training learned only where a real
    kernel exists; QATConv2d layers and fake-quantized activations have no weight-only kernel
    here, so they stay float with their fake quantization (reported, not hidden).
    """
    if not inplace:
        model = copy.deepcopy(model)

    def build(name: str, module: _QATLayer) -> nn.Module:
        if isinstance(module, (QATConv2d, QATConvBn2d)):
            raise Skip("Conv2d QAT keeps its fake quantization (no weight-only conv kernel); "
                       "use StaticPTQ on the trained float weights for int8 conv")
        weight = module.weight_quant.quantized_weight(module.module.weight)
        q = QLinear(weight, module.module.bias)
        if module.input_quant is not None:
            log.warning("lowbit convert: %s: input fake quantization dropped (weight-only kernel); "
                        "activations run in float", name)
        return q

    report: QuantReport = swap_modules(model, build, types=(QATLinear, QATConv2d, QATConvBn2d),
                                       recipe="convert QAT")
    model.lowbit_report = report
    return model.eval()


def fit(model: nn.Module, loss_fn, batches: Iterable, *, optimizer: torch.optim.Optimizer,
        epochs: int = 1, desc: str = "QAT", freeze_observers_at: float | None = 0.8,
        freeze_bn_at: float | None = 0.5, max_seconds: float | None = None) -> list[float]:
    """A small training loop: ``loss_fn(model, batch) -> loss`` per batch, with observers and
    BatchNorm frozen at the given fractions of training, stopping early once ``max_seconds``
    have passed (a time budget). Returns the per-step losses."""
    batches = list(batches)
    total = epochs * len(batches)
    losses, step = [], 0
    deadline = time.perf_counter() + max_seconds if max_seconds is not None else math.inf
    model.train()
    bar = tqdm(total=None if max_seconds is not None else total, desc=desc, unit="step", disable=None)
    for _ in range(epochs):
        for batch in batches:
            if time.perf_counter() >= deadline:
                break
            if freeze_observers_at is not None and step == int(freeze_observers_at * total):
                freeze_observers(model)
            if freeze_bn_at is not None and step == int(freeze_bn_at * total):
                freeze_batchnorm(model)
            loss = loss_fn(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if time.perf_counter() >= deadline:
            break
    bar.close()
    return losses


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *,
                      temperature: float = 1.0, student_hidden=None, teacher_hidden=None,
                      hidden_weight: float = 0.0) -> torch.Tensor:
    """KL(teacher || student) of temperature-softened distributions, times T^2 (Hinton et al.
    2015), plus ``hidden_weight`` times the mean MSE of matching hidden states if given."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"distillation_loss: student logits {tuple(student_logits.shape)} and "
                         f"teacher logits {tuple(teacher_logits.shape)} must have the same shape")
    t = temperature
    log_p_s = F.log_softmax(student_logits.float() / t, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.float() / t, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1).mean() * t * t
    if hidden_weight and student_hidden is not None and teacher_hidden is not None:
        mse = torch.stack([F.mse_loss(s.float(), h.float()) for s, h in zip(student_hidden, teacher_hidden)])
        kl = kl + hidden_weight * mse.mean()
    return kl
