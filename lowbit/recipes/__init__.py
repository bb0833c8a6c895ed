"""Recipes: frozen configs that say how to quantize; :func:`lowbit.quantize` applies them."""
from .base import Recipe, quantize
from .weight_only import DynamicPTQ, WeightOnly

__all__ = ["Recipe", "quantize", "WeightOnly", "DynamicPTQ"]
