"""Module swapping — the one place lowbit walks a model — and the report of what it did."""
from __future__ import annotations

import fnmatch
import logging
from dataclasses import asdict, dataclass, field
from typing import Callable

from torch import nn

from .._memory import release_freed_memory

log = logging.getLogger("lowbit")


class Skip(Exception):
    """Raised by a layer builder to leave a layer float, with the reason for the report."""


@dataclass(frozen=True)
class LayerReport:
    name: str
    module_type: str
    status: str            # "quantized" | "pruned" | "skipped" | "excluded" | "not-handled" | "removed"
    format: str = ""
    kernel: str = ""
    bits_per_weight: float | None = None
    reason: str = ""


@dataclass
class QuantReport:
    """What a quantize call did to each candidate layer (attached as ``model.lowbit_report``)."""

    recipe: str
    layers: list[LayerReport] = field(default_factory=list)
    details: dict = field(default_factory=dict)   # what a recipe wants to add (mixed precision: its choice)

    @property
    def quantized(self) -> list[LayerReport]:
        return [r for r in self.layers if r.status == "quantized"]

    @property
    def pruned(self) -> list[LayerReport]:
        """Layers pruned and left float (pruned AND quantized layers count as quantized)."""
        return [r for r in self.layers if r.status == "pruned"]

    @property
    def skipped(self) -> list[LayerReport]:
        return [r for r in self.layers if r.status not in ("quantized", "pruned")]

    def as_dicts(self) -> list[dict]:
        return [asdict(r) for r in self.layers]

    def table(self) -> str:
        """A Markdown table, one row per layer."""
        pruned = f"{len(self.pruned)} pruned (float), " if self.pruned else ""
        lines = [f"lowbit: {self.recipe} — {len(self.quantized)} quantized, {pruned}"
                 f"{len(self.skipped)} left float", "",
                 "| layer | type | status | format | bits/weight | kernel | reason |",
                 "|---|---|---|---|---|---|---|"]
        for r in self.layers:
            bpw = f"{r.bits_per_weight:.3f}" if r.bits_per_weight is not None else ""
            lines.append(f"| {r.name} | {r.module_type} | {r.status} | {r.format} | {bpw} | "
                         f"{r.kernel} | {r.reason} |")
        return "\n".join(lines)


def matches(name: str, patterns) -> bool:
    """fnmatch-style patterns on the dotted module name (``"*.mlp.*"``, ``"lm_head"``)."""
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


# Layers a model's report and plan cover: everything that holds a weight matrix.
try:  # GPT-2 style linears: weight stored transposed, [in, out]
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - transformers is optional
    Conv1D = None
WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding) + ((Conv1D,) if Conv1D else ())


def as_patterns(value, what: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)  # one pattern, not one per character
    value = tuple(value)
    if not all(isinstance(p, str) for p in value):
        raise TypeError(f"{what} must be fnmatch patterns (str), got {value!r}")
    return value


def walk(model: nn.Module, types: tuple[type, ...], include=("*",), exclude=()):
    """The one walk over a model's layers: yields ``(name, module, selected, why_not)`` for every
    layer of ``types`` and every other weight layer (:data:`WEIGHT_LAYERS`), in module order.

    ``selected`` is True for layers of ``types`` matching ``include`` and not ``exclude``; for
    the others ``why_not`` says why they stay as they are.
    """
    include, exclude = as_patterns(include, "include"), as_patterns(exclude, "exclude")
    _check_literal_includes(model, types, include)
    handled = ", ".join(t.__name__ for t in types)
    # names first: holding the modules would keep every replaced float weight alive to the end
    names: list[tuple[str, bool]] = []
    for name, m in model.named_modules():
        inside = names and name.startswith(names[-1][0] + ".")  # a layer's own sub-layers
        if name and not inside and isinstance(m, types + WEIGHT_LAYERS):
            names.append((name, isinstance(m, types)))
    for name, of_type in names:
        module = model.get_submodule(name)
        if not of_type:
            yield name, module, False, f"not handled by this recipe (it takes {handled})"
        elif not matches(name, include) or matches(name, exclude):
            yield name, module, False, "excluded by pattern"
        else:
            yield name, module, True, ""


def swap_modules(
    model: nn.Module,
    build: Callable[[str, nn.Module], nn.Module],
    *,
    types: tuple[type, ...],
    include=("*",),
    exclude=(),
    recipe: str = "",
) -> QuantReport:
    """Replace every module of ``types`` whose name matches ``include`` and not ``exclude``.

    ``build(name, module)`` returns the replacement, or raises :class:`Skip` (reported) or
    ValueError (propagated with the layer's name: a user error must not pass silently). Every
    other weight layer of the model is in the report too, with the reason it stays float.
    """
    report = QuantReport(recipe)
    for name, module, selected, why in walk(model, types, include, exclude):
        kind = type(module).__name__
        if not selected:
            status = "excluded" if why == "excluded by pattern" else "not-handled"
            report.layers.append(LayerReport(name, kind, status, reason=why))
            continue
        try:
            new = build(name, module)
        except Skip as err:
            report.layers.append(LayerReport(name, kind, "skipped", reason=str(err)))
            continue
        set_submodule(model, name, new)
        report.layers.append(layer_report(name, kind, new))
        del module, new
        release_freed_memory()
    if not report.quantized:
        log.warning("lowbit: %s quantized no layer (include=%s, exclude=%s)", recipe, include, exclude)
    return report


def _check_literal_includes(model: nn.Module, types, include) -> None:
    """A layer named outright in ``include`` must exist and be of a quantizable type."""
    modules = dict(model.named_modules())
    wanted = ", ".join(t.__name__ for t in types)
    for pattern in include:
        if any(c in pattern for c in "*?["):
            continue
        if pattern not in modules:
            raise ValueError(f"include names layer {pattern!r}, which the model does not have; "
                             f"see model.named_modules() for the names")
        if not isinstance(modules[pattern], types):
            raise ValueError(
                f"layer {pattern!r} is a {type(modules[pattern]).__name__}, which this recipe "
                f"cannot quantize (it handles {wanted}); remove it from include"
            )


def layer_report(name: str, kind: str, module: nn.Module) -> LayerReport:
    if hasattr(module, "lowbit_describe"):  # layers that are not (yet) packed, e.g. QAT
        label, kernel, bpw = module.lowbit_describe()
        return LayerReport(name, kind, "quantized", label, kernel, bpw)
    w = module.weight
    label = w.format.label()
    activation = getattr(module, "activation", None)
    if activation is not None:
        label += f", activations {activation.label()}"
    return LayerReport(name, kind, "quantized", label, module.kernel(), round(w.bits_per_weight, 4))


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
