"""Recipes: frozen configs that say how to quantize; :func:`lowbit.quantize` applies them.

Every recipe is registered under a short spec (``from_spec("gptq:w4g64")``, ``recipe.to_spec()``)
and plans what it will do before doing it (``recipe.plan(model)``).
"""
from .autocast import Autocast
from .base import ActivationQuant, LayerPlan, Plan, Recipe, quantize
from .distill import Distill, Sequence
from .llm_int8 import LLMInt8
from .nf4 import NF4
from .smoothquant import SmoothQuant, StaticW8A8
from .qat import QAT
from .qlora import QLoRA
from .registry import REGISTRY, from_spec, register, to_spec
from .static import StaticPTQ
from .weight_only import DynamicPTQ, WeightOnly
from .mixed import MixedPrecision  # noqa: E402  (after WeightOnly and NF4, which it uses)
from .prune import Prune  # noqa: E402

__all__ = ["ActivationQuant", "LayerPlan", "Plan", "Recipe", "quantize", "from_spec", "to_spec",
           "register", "REGISTRY", "WeightOnly", "DynamicPTQ", "NF4", "LLMInt8", "SmoothQuant",
           "StaticW8A8", "StaticPTQ", "QAT", "QLoRA", "Distill", "Sequence", "Autocast", "MixedPrecision", "Prune"]
