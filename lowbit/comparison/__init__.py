"""The measured comparison of quantization strategies on one model: ``lowbit.compare``."""
from .api import Budget, Comparison, compare, fast_kernels
from .lm import compare_lm, recipe_fields, table
from .strategies import Strategy, default_strategies
from .tasks import EncoderTask, ImageTask, LMTask, RNNTask, Task

__all__ = ["Budget", "Comparison", "EncoderTask", "ImageTask", "LMTask", "RNNTask", "Strategy",
           "Task", "compare", "compare_lm", "default_strategies", "fast_kernels", "recipe_fields",
           "table"]
