"""What every recipe is: a frozen dataclass with a plan, an apply, and a short spec.

    recipe = recipes.from_spec("gptq:w4g64")        # or recipes.WeightOnly(num_bits=4, ...)
    recipe.plan(model)                              # per layer: format, kernel, bytes, or why float
    lowbit.quantize(model, recipe, data=calib)      # plan -> warn on reference paths -> apply

A recipe says which layers it takes (``layer_types``, ``include``/``exclude``), what each
becomes (:meth:`Recipe.layer_plan`), how activations are quantized (:class:`ActivationQuant`),
and does the work in :meth:`Recipe.apply`. ``plan`` computes the per-layer table WITHOUT
quantizing; ``doctor``, ``compare``, the CLI and ``quantize`` all read it.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import time
import warnings
from dataclasses import dataclass, field
from typing import ClassVar

from torch import nn

from ..formats import ActivationQuant, QFormat  # noqa: F401  (ActivationQuant re-exported)
from ..nn.swap import QuantReport, as_patterns, walk

log = logging.getLogger("lowbit")

@dataclass(frozen=True)
class LayerPlan:
    """What a recipe would do to one layer, computed without quantizing it.

    ``status`` is ``"quantize"``, ``"float"`` (with ``reason``) or ``"error"`` (the recipe would
    raise on this layer; ``reason`` says why and what to do).
    """

    name: str
    module_type: str
    shape: tuple[int, ...]
    status: str
    format: str = ""
    kernel: str = ""
    bytes: int = 0
    float_bytes: int = 0
    reason: str = ""

    @property
    def reference(self) -> bool:
        """True when the layer would run a pure-PyTorch reference kernel (slow)."""
        return self.status == "quantize" and self.kernel.startswith("reference.")


@dataclass
class Plan:
    """The per-layer plan of a recipe on a model (:meth:`Recipe.plan`)."""

    recipe: str
    layers: list[LayerPlan] = field(default_factory=list)

    def by_status(self, status: str) -> list[LayerPlan]:
        return [p for p in self.layers if p.status == status]

    @property
    def reference_layers(self) -> list[LayerPlan]:
        return [p for p in self.layers if p.reference]

    @property
    def bytes(self) -> int:
        return sum(p.bytes for p in self.layers)

    @property
    def float_bytes(self) -> int:
        return sum(p.float_bytes for p in self.layers)

    def table(self) -> str:
        """A Markdown table, one row per layer, and a total."""
        lines = [f"plan for {self.recipe}:", "",
                 "| layer | type | shape | status | format | kernel | MB (fp32 -> planned) | note |",
                 "|---|---|---|---|---|---|---|---|"]
        for p in self.layers:
            lines.append(f"| {p.name} | {p.module_type} | {p.shape} | {p.status} | {p.format} | "
                         f"{p.kernel} | {p.float_bytes / 2**20:.2f} -> {p.bytes / 2**20:.2f} | {p.reason} |")
        lines += ["", f"these layers: {self.float_bytes / 2**20:.1f} MB fp32 -> "
                  f"{self.bytes / 2**20:.1f} MB; {len(self.by_status('quantize'))} quantized, "
                  f"{len(self.by_status('float'))} float, {len(self.by_status('error'))} would fail"]
        return "\n".join(lines)


def float_bytes(module: nn.Module) -> int:
    """Bytes of a layer's float weight and bias as they are now."""
    return sum(p.numel() * p.element_size() for p in (getattr(module, "weight", None),
                                                        getattr(module, "bias", None))
               if p is not None and hasattr(p, "element_size"))


class Recipe:
    """Base of every recipe (a frozen dataclass registered under a short spec).

    Subclasses set ``layer_types``, fields ``include``/``exclude`` where they select layers, and
    implement :meth:`layer_plan` (one layer, no quantization) and :meth:`apply`.
    """

    spec_names: ClassVar[tuple[str, ...]] = ()
    layer_types: ClassVar[tuple[type, ...]] = (nn.Linear,)
    needs_data: bool = False
    activation: ActivationQuant | None = None
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()

    @property
    def weight_format(self) -> QFormat | None:
        """The weight format of the quantized layers (None when the recipe quantizes none)."""
        return None

    def describe(self) -> str:
        return self.to_spec()

    def layer_plan(self, name: str, module: nn.Module) -> LayerPlan:  # pragma: no cover - abstract
        raise NotImplementedError

    def plan(self, model: nn.Module) -> Plan:
        """Per layer of the model: format, kernel, bytes, or why it stays float; quantizes nothing."""
        plan, owner = Plan(self.describe()), {}
        for name, module, selected, why in walk(model, self.layer_types, self.include, self.exclude):
            if selected:
                row = self.layer_plan(name, module)
            else:
                shape = tuple(getattr(getattr(module, "weight", None), "shape", ()))
                row = LayerPlan(name, type(module).__name__, shape, "float", bytes=float_bytes(module),
                                float_bytes=float_bytes(module), reason=why)
            weight = getattr(module, "weight", None)  # an nn.LSTM has none: nothing to tie
            tied = name if weight is None else owner.setdefault(id(weight), name)
            if tied != name:  # a tied weight (output head = input embedding) is held once
                row = dataclasses.replace(row, bytes=0, float_bytes=0,
                                          reason=(row.reason + "; " if row.reason else "") + f"weight tied to {tied}")
            plan.layers.append(row)
        return plan

    def apply(self, model: nn.Module, data) -> QuantReport:  # pragma: no cover - abstract
        raise NotImplementedError

    def to_spec(self) -> str:
        from .registry import to_spec

        return to_spec(self)


def patterns(recipe, *names: str) -> None:
    """Normalise pattern fields to tuples; a bare string is ONE pattern (not its characters)."""
    for name in names:
        value = as_patterns(getattr(recipe, name), f"{type(recipe).__name__}.{name}")
        object.__setattr__(recipe, name, value)


def warn_reference(plan: Plan) -> None:
    """Warn, naming the layers, when a plan puts layers on a reference (slow) kernel."""
    slow = plan.reference_layers
    if not slow:
        return
    names = ", ".join(p.name for p in slow[:4]) + (f" and {len(slow) - 4} more" if len(slow) > 4 else "")
    formats = sorted({p.format for p in slow})
    unavailable = _kernels_unavailable()
    faster = (f"lowbit's C++ kernels do not run on this machine ({unavailable}), so every format "
              f"does" if unavailable else
              "faster: 8 bits per channel (group_size=None), 2..7 bits asymmetric with groups of "
              "32..256 (symmetric=False), or NF4 with double quantization")
    warnings.warn(
        f"lowbit: {plan.recipe}: {len(slow)} layer(s) ({names}) would run a pure-PyTorch REFERENCE "
        f"kernel for {', '.join(formats)} ({slow[0].kernel}), much slower than fp32; {faster}. "
        f"`lowbit doctor` lists what runs where", stacklevel=3)


def _kernels_unavailable() -> str:
    """Why lowbit's CPU kernels cannot run here ("" when they can)."""
    from ..kernels import cpu

    module, why = cpu.extension_status()
    return "" if module is not None else why


def quantize(model: nn.Module, recipe: Recipe, data=None, *, inplace: bool = False) -> nn.Module:
    """Quantize ``model`` with ``recipe`` and return it.

    Args:
        model: any ``nn.Module`` (a Hugging Face model, a CNN, ...).
        recipe: e.g. ``lowbit.recipes.WeightOnly(num_bits=4, group_size=128)`` or
            ``lowbit.recipes.from_spec("gptq:w4g64")``.
        data: calibration data, for recipes that need it.
        inplace: modify ``model`` itself instead of a deep copy (saves memory on large models).

    The returned model carries ``lowbit_report`` (:class:`~lowbit.nn.QuantReport`): which layers
    were quantized, to what, on which kernel, which were left float and why. A plan that puts
    layers on a reference kernel warns before any work is done.
    """
    if isinstance(recipe, str):
        from .registry import from_spec

        recipe = from_spec(recipe)
    if not isinstance(recipe, Recipe):
        raise TypeError(
            f"quantize() expected a lowbit recipe (e.g. lowbit.recipes.WeightOnly(num_bits=4) or "
            f"the spec 'rtn:w4g64'), got {type(recipe).__name__}"
        )
    if not isinstance(model, nn.Module):
        raise TypeError(f"quantize() expected a torch.nn.Module, got {type(model).__name__}")
    if recipe.needs_data and data is None:
        raise ValueError(f"{recipe.describe()} needs calibration data: pass data=...")
    warn_reference(recipe.plan(model))
    if not inplace:
        model = copy.deepcopy(model)
    start = time.perf_counter()
    report = recipe.apply(model, data)
    model.lowbit_report = report
    log.info("lowbit: %s done in %.1f s: %d layers quantized, %d left float",
             recipe.describe(), time.perf_counter() - start, len(report.quantized),
             len(report.skipped))
    return model


def replace(recipe: Recipe, **changes) -> Recipe:
    """A copy of a recipe with some fields changed (validated again)."""
    return dataclasses.replace(recipe, **changes)
