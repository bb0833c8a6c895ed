"""Half-precision execution, the "fp16/bf16 where possible" mixed precision of ``torch.autocast``.

The weights of the matmul layers (Linear, Conv, Embedding) are stored in bf16 or fp16 (half
the bytes) and the model's forward runs under ``torch.autocast``: matmuls and convolutions
in half precision, normalisations, softmax and reductions in fp32 (autocast's own op lists).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn

from ..nn import QuantReport
from ..nn.swap import LayerReport, walk
from .base import LayerPlan, Recipe, float_bytes, patterns
from .registry import register

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def native_half(dtype: str) -> bool:
    """Whether this CPU has native instructions for ``dtype`` matmuls (else oneDNN emulates them)."""
    from ..doctor import cpu_flags

    flags = set(cpu_flags())
    if dtype == "bfloat16":
        return bool(flags & {"avx512_bf16", "amx_bf16"})
    return bool(flags & {"avx512_fp16", "amx_fp16"})


@register("fp16", dtype="float16")
@register("bf16", dtype="bfloat16")
@dataclass(frozen=True)
class Autocast(Recipe):
    """Store matmul weights in ``dtype`` and run the forward under ``torch.autocast``.

    Args:
        dtype: "bfloat16" (spec ``bf16``) or "float16" (spec ``fp16``).
        include, exclude: fnmatch patterns on module names (excluded layers stay fp32).
    """

    dtype: str = "bfloat16"
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()

    layer_types = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding)

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise ValueError(f"Autocast.dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")
        patterns(self, "include", "exclude")

    def describe(self) -> str:
        return f"{self.dtype} autocast"

    def spec_tokens(self) -> tuple[list[str], set[str]]:
        return [], {"dtype"}

    def _kernel(self) -> str:
        native = "native" if native_half(self.dtype) else "emulated: this CPU has no native " + self.dtype
        return f"torch.autocast {self.dtype} ({native})"

    def layer_plan(self, name: str, module: nn.Module) -> LayerPlan:
        fp = float_bytes(module)
        return LayerPlan(name, type(module).__name__, tuple(module.weight.shape), "quantize",
                         self.dtype, self._kernel(), fp // 2, fp)

    def apply(self, model: nn.Module, data) -> QuantReport:
        dtype = _DTYPES[self.dtype]
        report = QuantReport(self.describe())
        for name, module, selected, why in walk(model, self.layer_types, self.include, self.exclude):
            if not selected:
                report.layers.append(LayerReport(name, type(module).__name__, "excluded", reason=why))
                continue
            module.to(dtype)
            report.layers.append(LayerReport(name, type(module).__name__, "quantized", self.dtype,
                                             self._kernel(), 16.0))
        run_under_autocast(model, self.dtype)
        return report


def run_under_autocast(model: nn.Module, dtype: str) -> nn.Module:
    """Wrap ``model.forward`` in ``torch.autocast(dtype)``; ``model.lowbit_autocast`` records it
    (a checkpoint saves it and :func:`lowbit.load` re-applies it)."""
    if dtype not in _DTYPES:
        raise ValueError(f"autocast dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    forward = model.forward

    @functools.wraps(forward)
    def autocast_forward(*args, **kwargs):
        device = next(model.parameters()).device.type
        with torch.autocast(device, dtype=_DTYPES[dtype]):
            return forward(*args, **kwargs)

    model.forward = autocast_forward
    model.lowbit_autocast = dtype
    return model
