"""StaticPTQ: int8 weights and activations, activation ranges fixed by a calibration pass.

    fold Conv+BN  ->  swap Conv2d/Linear for observed float layers  ->  calibrate (tqdm)
    ->  swap them for int8 oneDNN layers  ->  profile once: where does uint8 flow?

The returned model takes and returns float tensors; inside, uint8 activations flow between
adjacent int8 layers (see :mod:`lowbit.nn.static` for where float crossings remain).
"""
from __future__ import annotations

import dataclasses
import fnmatch
import logging
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from ..calibration import layer_patches
from ..fold import fold_model, trace_pairs
from ..formats import QFormat, bits_per_weight, int_format
from ..nn import QuantReport, Skip, swap_modules
from ..nn.static import KERNELS, Observed, convert_observed, dequantize_outputs, float_crossings, profile
from ..observers import OBSERVERS, make_observer
from ..qtensor import QTensor
from .base import ActivationQuant, LayerPlan, Recipe, float_bytes, patterns
from .registry import register

log = logging.getLogger("lowbit")


@register("static")
@dataclass(frozen=True)
class StaticPTQ(Recipe):
    """Static W8A8 post-training quantization of every Conv2d and Linear.

    Args:
        observer: how activation ranges are chosen: ``"histogram"`` (entropy/KL),
            ``"mse"``, ``"percentile"``, ``"minmax"`` or ``"moving_average"``.
        per_channel: one weight scale per output channel (else one per tensor).
        fold_bn: fold BatchNorm2d into the preceding conv (exact in float) first.
        include, exclude: fnmatch patterns on module names; excluded layers stay float.
        max_batches: calibrate on at most this many batches of ``data``.
        weight_bits: ``((name, bits), ...)``: layers (fnmatch patterns, first match wins) whose
            weights are STORED at 2..7 bits (signed, symmetric); the int8 kernel runs them with
            the values widened to int8, so they save bytes on disk and in the checkpoint, not
            time. Mixed precision (:class:`~lowbit.recipes.MixedPrecision` with
            ``activations="static"``) fills it in per layer.
        weight_method: "rtn" (round each weight to nearest) or "gptq": the weights below 8 bits
            are chosen by GPTQ on each layer's input Hessian, gathered in the same calibration
            pass (a convolution's inputs unfolded to its kernel's patches; a depthwise one per
            channel). 8-bit weights are rounded either way.

    ``data`` is an iterable of batches: tensors (``model(batch)``), tuples (``model(*batch)``)
    or dicts (``model(**batch)``).
    """

    observer: str = "histogram"
    per_channel: bool = True
    fold_bn: bool = True
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    max_batches: int | None = None
    weight_bits: tuple[tuple[str, int], ...] = ()
    weight_method: str = "rtn"

    needs_data = True
    layer_types = (nn.Conv2d, nn.Linear)

    def __post_init__(self) -> None:
        if self.observer not in OBSERVERS:
            raise ValueError(f"StaticPTQ.observer must be one of {tuple(OBSERVERS)}, "
                             f"got {self.observer!r}")
        patterns(self, "include", "exclude")
        pairs = tuple((str(n), int(b)) for n, b in (self.weight_bits.items() if isinstance(self.weight_bits, dict)
                                                     else self.weight_bits))
        if any(not 2 <= b <= 8 for _, b in pairs):
            raise ValueError(f"StaticPTQ.weight_bits must be 2..8 per layer, got {pairs}")
        object.__setattr__(self, "weight_bits", pairs)
        if self.weight_method not in ("rtn", "gptq"):
            raise ValueError(f"StaticPTQ.weight_method must be 'rtn' or 'gptq', got {self.weight_method!r}")

    @property
    def weight_format(self) -> QFormat:
        fmt = int_format(8)  # signed, symmetric, fp32 scales
        return fmt if self.per_channel else fmt.replace(granularity="tensor")

    def format_for(self, name: str) -> QFormat:
        """The weight format of layer ``name`` (8 bits unless ``weight_bits`` says otherwise)."""
        bits = next((b for pattern, b in self.weight_bits if fnmatch.fnmatchcase(name, pattern)), 8)
        return self.weight_format.replace(num_bits=bits)

    @property
    def activation(self) -> ActivationQuant:
        return ActivationQuant("static", "tensor", observer=self.observer)

    def describe(self) -> str:
        return f"StaticPTQ W8A8 ({self.observer}, {'per-channel' if self.per_channel else 'per-tensor'})"

    @staticmethod
    def spec_option(token: str) -> dict | None:
        if token == "pertensor":
            return {"per_channel": False}
        return {"observer": token} if token in OBSERVERS else None

    def spec_tokens(self) -> tuple[list[str], set[str]]:
        return [self.observer] + ([] if self.per_channel else ["pertensor"]), {"observer", "per_channel"}

    def layer_plan(self, name: str, module: nn.Module) -> LayerPlan:
        shape, kind, fp = tuple(module.weight.shape), type(module).__name__, float_bytes(module)
        why = _unsupported(module)
        if why:
            return LayerPlan(name, kind, shape, "float", bytes=fp, float_bytes=fp, reason=why)
        fmt = self.format_for(name)
        W = module.weight
        nbytes = round(W.numel() * bits_per_weight(fmt, W.numel(), shape[0]) / 8)
        nbytes += 0 if module.bias is None else 4 * shape[0]
        op = "conv" if isinstance(module, nn.Conv2d) else "linear"
        return LayerPlan(name, kind, shape, "quantize", f"{fmt.label()}, activations "
                         f"{self.activation.label()}", KERNELS[op], nbytes, fp)

    def apply(self, model: nn.Module, data) -> QuantReport:
        batches = list(_take(data, self.max_batches))
        if not batches:
            raise ValueError("StaticPTQ got no calibration batches: pass data=[batch, ...]")
        model.eval()
        with torch.no_grad():
            conv_bn, fused = trace_pairs(model, lambda m: _call(m, batches[0]))
            if self.fold_bn:
                fold_model(model, conv_bn)
            report = swap_modules(model, self._observe(fused), types=self.layer_types,
                                  include=self.include, exclude=self.exclude,
                                  recipe=self.describe())
            hessians = _HessianHooks(model) if self.weight_method == "gptq" else None
            for batch in tqdm(batches, desc="calibrating", unit="batch", disable=None):
                _call(model, batch)
            if hessians is not None:
                hessians.apply_gptq()
            swap_modules(model, lambda name, m: convert_observed(m), types=(Observed,))
            model.register_forward_hook(dequantize_outputs)  # the dequantize step at the output
            profile(model, lambda m: _call(m, batches[0]))
        for note in float_crossings(model):
            log.debug("lowbit static: %s", note)
        return _final_report(model, report)

    def _observe(self, fused: dict[str, str]):
        def build(name: str, module: nn.Module) -> Observed:
            why = _unsupported(module)
            if why:
                raise Skip(why)
            weight = QTensor.from_float(module.weight.detach(), self.format_for(name), name=name)
            return Observed(module, weight, fused.get(name),
                            make_observer(self.observer, name=f"{name} input"),
                            make_observer(self.observer, name=f"{name} output"))

        return build


class _HessianHooks:
    """Input Hessians of the observed layers stored below 8 bits, gathered by forward pre-hooks
    during calibration; :meth:`apply_gptq` then replaces their rounded weights with GPTQ's."""

    def __init__(self, model: nn.Module) -> None:
        self.layers = {n: m for n, m in model.named_modules()
                       if isinstance(m, Observed) and m.weight.format.num_bits < 8}
        self.H: dict[str, torch.Tensor] = {}
        self.handles = [m.register_forward_pre_hook(self._hook(n)) for n, m in self.layers.items()]

    def _hook(self, name: str):
        def record(module: Observed, args) -> None:
            X = layer_patches(module.float_module, args[0].detach().float())
            H = torch.einsum("gti,gtj->gij", X, X)
            self.H[name] = H if name not in self.H else self.H[name] + H
        return record

    @torch.no_grad()
    def apply_gptq(self) -> None:
        from ..algorithms.gptq import gptq

        for h in self.handles:
            h.remove()
        for name, m in self.layers.items():
            if name not in self.H:
                continue                    # never called: convert_observed raises for it
            fmt, W = m.weight.format, m.float_module.weight.detach().float()
            qw = gptq(W.reshape(W.shape[0], -1), self.H[name], fmt)
            m.weight = QTensor.from_int(qw.q.reshape(W.shape), qw.scale.reshape(m.weight.scale.shape), None, fmt)
            log.debug("lowbit static: %s weights by GPTQ (%d bits)", name, fmt.num_bits)


def _unsupported(module: nn.Module) -> str:
    """Why a Conv2d/Linear cannot run the int8 kernels ("" when it can)."""
    if module.weight.dtype != torch.float32:
        return f"weights are {module.weight.dtype}; the int8 kernels take fp32 layers"
    if isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros":
            return f"padding_mode={module.padding_mode!r} has no int8 kernel (only zero padding)"
        if isinstance(module.padding, str):
            return f"padding={module.padding!r}: give explicit padding for int8"
    return ""


def _final_report(model: nn.Module, report: QuantReport) -> QuantReport:
    """The first swap's report, with each int8 layer's kernel and its I/O as profiled."""
    modules = dict(model.named_modules())
    def reason(m) -> str:
        bits = m.weight.format.num_bits
        widened = f"; {bits}-bit weights stored packed, widened to int8 for the kernel" if bits < 8 else ""
        return m.io() + widened

    layers = [dataclasses.replace(r, kernel=modules[r.name].kernel(), reason=reason(modules[r.name]))
              if r.status == "quantized" else r for r in report.layers]
    return QuantReport(report.recipe, layers)


def _take(data, limit):
    if isinstance(data, torch.Tensor):
        data = [data]
    if not isinstance(data, Iterable):
        raise TypeError(f"StaticPTQ data must be an iterable of batches, got {type(data).__name__}")
    for i, batch in enumerate(data):
        if limit is not None and i >= limit:
            return
        yield batch


def _call(model: nn.Module, batch):
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)
