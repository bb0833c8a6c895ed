"""The entry call: ``lowbit.quantize(model, recipe, data=None)``."""
from __future__ import annotations

import copy
import logging
import time

from torch import nn

from ..nn.swap import QuantReport

log = logging.getLogger("lowbit")


class Recipe:
    """Base of all recipes. A recipe is a frozen dataclass; ``apply`` does the work in place."""

    needs_data = False

    def apply(self, model: nn.Module, data) -> QuantReport:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> str:
        return repr(self)


def quantize(model: nn.Module, recipe: Recipe, data=None, *, inplace: bool = False) -> nn.Module:
    """Quantize ``model`` with ``recipe`` and return it.

    Args:
        model: any ``nn.Module`` (a Hugging Face model, a CNN, ...).
        recipe: e.g. ``lowbit.recipes.WeightOnly(num_bits=4, group_size=128)``.
        data: calibration data, for recipes that need it.
        inplace: modify ``model`` itself instead of a deep copy (saves memory on large models).

    The returned model carries ``lowbit_report`` (:class:`~lowbit.nn.QuantReport`): which layers
    were quantized, to what, on which kernel, which were left float and why.
    """
    if not isinstance(recipe, Recipe):
        raise TypeError(
            f"quantize() expected a lowbit recipe (e.g. lowbit.recipes.WeightOnly(num_bits=4)), "
            f"got {type(recipe).__name__}"
        )
    if not isinstance(model, nn.Module):
        raise TypeError(f"quantize() expected a torch.nn.Module, got {type(model).__name__}")
    if recipe.needs_data and data is None:
        raise ValueError(f"{recipe.describe()} needs calibration data: pass data=...")
    if not inplace:
        model = copy.deepcopy(model)
    start = time.perf_counter()
    report = recipe.apply(model, data)
    model.lowbit_report = report
    log.info("lowbit: %s done in %.1f s: %d layers quantized, %d left float",
             recipe.describe(), time.perf_counter() - start, len(report.quantized),
             len(report.skipped))
    return model
