"""LLM.int8(): int8 weights, int8 activations with outlier input columns kept in fp32."""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..formats import INT8
from ..nn import QuantReport, swap_modules
from ..nn.llm_int8 import LLMInt8Linear
from .base import ActivationQuant, LayerPlan, Recipe, patterns
from .registry import register
from .weight_only import act_group_for, int8_layer_plan


@register("llm-int8")
@dataclass(frozen=True)
class LLMInt8(Recipe):
    """LLM.int8() (Dettmers et al., 2022): int8 per-channel weights; at run time the input
    features with any |x| > ``threshold`` go through fp32, the rest through int8 x int8.

    ``act_group_size=None`` is the paper's vector-wise scheme: one scale per token for the int8
    part (+1.67% perplexity on SmolLM2-135M, results/llm.json). The default 64 gives one scale
    per token and group of 64 inputs, as ``DynamicPTQ`` does; a layer whose width 64 does not
    divide falls back to per-token scales, and the log says so.
    """

    threshold: float = 6.0
    act_group_size: int | None = 64
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ("lm_head",)

    weight_format = INT8
    layer_types = (nn.Linear,)

    @property
    def activation(self) -> ActivationQuant:
        return ActivationQuant("dynamic", "token", self.act_group_size, self.threshold)

    def layer_plan(self, name: str, module: nn.Module) -> LayerPlan:
        return int8_layer_plan(name, module, self.activation, layer=LLMInt8Linear)

    def __post_init__(self) -> None:
        if not self.threshold > 0:
            raise ValueError(f"LLMInt8.threshold must be > 0 (the paper uses 6.0), got {self.threshold}")
        g = self.act_group_size
        if g is not None and (not isinstance(g, int) or g <= 0 or g % 64):
            raise ValueError(f"LLMInt8 act_group_size must be None (per token, the paper's) or a "
                             f"positive multiple of 64, got {g!r}")
        patterns(self, "include", "exclude")

    def describe(self) -> str:
        acts = f"activations per token x {self.act_group_size}" if self.act_group_size else "per-token activations"
        return f"LLM.int8 threshold {self.threshold:g}, {acts}"

    def apply(self, model: nn.Module, data) -> QuantReport:
        def build(name: str, module: nn.Module) -> nn.Module:
            return LLMInt8Linear.from_float(module, self.threshold, name=name,
                                            act_group_size=act_group_for(name, module, self.act_group_size))

        return swap_modules(model, build, types=self.layer_types, include=self.include,
                            exclude=self.exclude, recipe=self.describe())
