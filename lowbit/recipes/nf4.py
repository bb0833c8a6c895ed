"""NF4 (QLoRA's 4-bit NormalFloat, double-quantized block scales) on every selected Linear.

The default ``exclude=("lm_head",)`` keeps the output head (and so a tied input embedding)
float — an explicit choice, reported per layer as "excluded by pattern".
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..algorithms.nf4 import BLOCK_SIZES, quantize_nf4
from ..formats import NF4 as NF4_FORMAT, QFormat, bits_per_weight
from ..nn import QuantReport, swap_modules
from ..nn.nf4 import NF4Linear
from .base import LayerPlan, Recipe, float_bytes, patterns
from .registry import prefixed_int, register


@register("nf4")
@dataclass(frozen=True)
class NF4(Recipe):
    """4-bit NormalFloat weights with double quantization (QLoRA); activations stay float.

    Args:
        block_size: weights per absmax block along the input axis (32, 64, 128, 256).
        double_quant: store the block absmaxes as int8 per 256 (4.127 instead of 4.5 bits/weight).
        include, exclude: fnmatch patterns on module names (the head stays float by default).
    """

    block_size: int = 64
    double_quant: bool = True
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ("lm_head",)

    layer_types = (nn.Linear,)

    def __post_init__(self) -> None:
        if self.block_size not in BLOCK_SIZES:
            raise ValueError(f"NF4.block_size must be one of {BLOCK_SIZES}, got {self.block_size}")
        patterns(self, "include", "exclude")

    @property
    def weight_format(self) -> QFormat:
        return NF4_FORMAT.replace(group_size=self.block_size, double_quant=self.double_quant)


    def describe(self) -> str:
        return f"NF4 block {self.block_size}" + (" + double quant" if self.double_quant else "")

    @staticmethod
    def spec_option(token: str) -> dict | None:
        return {"double_quant": False} if token == "nodq" else prefixed_int(token, "b", "block_size")

    def spec_tokens(self) -> tuple[list[str], set[str]]:
        tokens = [] if self.block_size == 64 else [f"b{self.block_size}"]
        return tokens + ([] if self.double_quant else ["nodq"]), {"block_size", "double_quant"}

    def layer_plan(self, name: str, module: nn.Module) -> LayerPlan:
        N, K = module.weight.shape
        fp = float_bytes(module)
        if K % self.block_size:
            return LayerPlan(name, type(module).__name__, (N, K), "error", bytes=fp, float_bytes=fp,
                             reason=f"block_size {self.block_size} does not divide its input size {K}")
        fmt = self.weight_format
        nbytes = round(N * K * bits_per_weight(fmt, N * K, N) / 8) + (4 * N if module.bias is not None else 0)
        return LayerPlan(name, type(module).__name__, (N, K), "quantize", fmt.label(),
                         NF4Linear.planned_kernel(fmt, None, K), nbytes, fp)

    def apply(self, model: nn.Module, data) -> QuantReport:
        def build(name: str, module: nn.Module) -> nn.Module:
            W = quantize_nf4(module.weight.detach(), self.block_size, self.double_quant, name=name)
            return NF4Linear(W, module.bias)

        return swap_modules(model, build, types=self.layer_types, include=self.include,
                            exclude=self.exclude, recipe=self.describe())
