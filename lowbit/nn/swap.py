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
    status: str            # "quantized" | "skipped" | "excluded"
    format: str = ""
    kernel: str = ""
    bits_per_weight: float | None = None
    reason: str = ""


@dataclass
class QuantReport:
    """What a quantize call did to each candidate layer (attached as ``model.lowbit_report``)."""

    recipe: str
    layers: list[LayerReport] = field(default_factory=list)

    @property
    def quantized(self) -> list[LayerReport]:
        return [r for r in self.layers if r.status == "quantized"]

    @property
    def skipped(self) -> list[LayerReport]:
        return [r for r in self.layers if r.status != "quantized"]

    def as_dicts(self) -> list[dict]:
        return [asdict(r) for r in self.layers]

    def table(self) -> str:
        """A Markdown table, one row per layer."""
        lines = [f"lowbit: {self.recipe} — {len(self.quantized)} quantized, "
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
    ValueError (propagated with the layer's name: a user error must not pass silently).
    """
    _check_literal_includes(model, types, include)
    report = QuantReport(recipe)
    # names only: holding the modules would keep every replaced float weight alive to the end
    names = [name for name, module in model.named_modules() if name and isinstance(module, types)]
    for name in names:
        module = model.get_submodule(name)
        kind = type(module).__name__
        if not matches(name, include) or matches(name, exclude):
            report.layers.append(LayerReport(name, kind, "excluded", reason="excluded by pattern"))
            continue
        try:
            new = build(name, module)
        except Skip as why:
            report.layers.append(LayerReport(name, kind, "skipped", reason=str(why)))
            continue
        set_submodule(model, name, new)
        report.layers.append(describe(name, kind, new))
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


def describe(name: str, kind: str, module: nn.Module) -> LayerReport:
    if hasattr(module, "lowbit_describe"):  # layers that are not (yet) packed, e.g. QAT
        label, kernel, bpw = module.lowbit_describe()
        return LayerReport(name, kind, "quantized", label, kernel, bpw)
    w = module.weight
    label = w.format.label()
    activation = getattr(module, "activation", None)
    if activation:
        group = getattr(module, "act_group_size", None)
        label += f", activations {activation} " + (f"per token x {group} inputs" if group else "per token")
    return LayerReport(name, kind, "quantized", label, module.kernel(), round(w.bits_per_weight, 4))


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
