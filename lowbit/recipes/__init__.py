"""Recipes: frozen configs that say how to quantize; :func:`lowbit.quantize` applies them."""
from .base import Recipe, quantize
from .distill import Distill, Sequence
from .llm import NF4, LLMInt8, SmoothQuant, StaticW8A8
from .static import StaticPTQ
from .weight_only import DynamicPTQ, WeightOnly

__all__ = ["Recipe", "quantize", "WeightOnly", "DynamicPTQ", "NF4", "LLMInt8", "SmoothQuant",
           "StaticW8A8", "StaticPTQ", "Distill", "Sequence"]
