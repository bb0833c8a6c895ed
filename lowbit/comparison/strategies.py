"""The strategies a comparison runs: recipe specs from the registry, the default set for each
model kind, and the family each belongs to (the rows of the textbook comparison table)."""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..recipes import REGISTRY, Recipe, Sequence, from_spec

REFERENCE = "fp32"
# spec name -> family; a recipe class may also say its own with a ``family`` class attribute
FAMILIES = {
    "bf16": "autocast", "fp16": "autocast", "w8a8": "dynamic", "static": "static",
    "static-w8a8": "static", "rtn": "weight-only", "gptq": "weight-only", "awq": "weight-only",
    "hqq": "weight-only", "nf4": "llm", "llm-int8": "llm", "smoothquant": "llm", "qat": "qat",
    "qlora": "qat", "distill": "distill", "mixed": "mixed precision",
    "magnitude": "pruning", "wanda": "pruning", "sparsegpt": "pruning",
}
NEEDS = {"distill": ["calibration data", "training"], "qat": ["calibration data", "training"],
         "qlora": ["calibration data", "training"]}


@dataclass(frozen=True)
class Strategy:
    """One row of a comparison: a recipe spec (or ``"fp32"``, the float reference)."""

    spec: str

    @property
    def is_reference(self) -> bool:
        return self.spec == REFERENCE

    def recipe(self) -> Recipe | None:
        """The recipe, or None for the reference; raises ValueError for an unknown spec."""
        return None if self.is_reference else from_spec(self.spec)

    def family(self) -> str:
        if self.is_reference:
            return "float"
        last = self.spec.split("+")[0].split(":")[0]  # a chain is named by its first step
        cls = REGISTRY.get(last, (None,))[0]
        return getattr(cls, "family", None) or FAMILIES.get(last, "other")

    def needs(self, recipe: Recipe | None) -> list[str]:
        if recipe is None:
            return []
        steps = recipe.steps if isinstance(recipe, Sequence) else (recipe,)
        needs = []
        for step in steps:
            name = step.to_spec().split(":")[0]
            for need in NEEDS.get(name, ["calibration data"] if step.needs_data else []):
                if need not in needs:
                    needs.append(need)
        return needs

    def label(self, recipe: Recipe | None) -> str:
        return "fp32" if recipe is None else recipe.describe()


def group_size_for(model: nn.Module) -> int:
    """The largest of 128, 64, 32 that divides every Linear's input width (SmolLM2's 576 -> 64)."""
    widths = {m.in_features for m in model.modules() if isinstance(m, nn.Linear)}
    for g in (128, 64, 32):
        if all(w % g == 0 for w in widths):
            return g
    return 32


def default_strategies(kind: str, model: nn.Module, *, quick: bool = False,
                       train_minutes: float = 0) -> list[str]:
    """The default strategy set of a model kind: every family lowbit has for it.

    ``quick`` keeps one or two per family (the demo); ``train_minutes`` adds the training
    strategies (QAT, distillation) of causal LMs under that budget each.
    """
    g = group_size_for(model)
    if kind == "causal-lm":
        menu = f"candidates=w2g{g}|w3g{g}|w4g{g}|w8"
        if quick:   # mixed with RTN: its GPTQ sensitivity pass alone takes minutes on 2 cores
            specs = ["bf16", "w8a8", "rtn:w8", f"rtn:w4g{g}", f"gptq:w4g{g}", f"hqq:w4g{g}",
                     f"rtn:w3g{g}", "nf4", f"mixed:bpw=4.0,method=rtn,{menu}"]
        else:
            specs = ["bf16", "w8a8", "rtn:w8", f"rtn:w4g{g}", f"gptq:w4g{g}", f"awq:w4g{g}",
                     f"hqq:w4g{g}", f"rtn:w3g{g}", f"gptq:w3g{g}", f"awq:w3g{g}", f"hqq:w3g{g}",
                     "nf4", "llm-int8", "smoothquant:dynamic", "static-w8a8",
                     f"mixed:bpw=4.0,{menu}", f"mixed:bpw=3.5,{menu}",
                     f"sparsegpt:50%,w4g{g}", f"sparsegpt:2:4,w4g{g}"]
        if train_minutes:
            blocks = getattr(getattr(model, "config", None), "num_hidden_layers", None) or 4
            specs += [f"qat:w4g{g},minutes={train_minutes},max_steps=none",
                      f"distill:num_layers={max(1, round(0.75 * blocks))},minutes={train_minutes}"
                      f"+gptq:w4g{g}"]
    elif kind == "encoder":
        # (SmoothQuant knows decoder norm -> linear pairs only: not in the encoder set)
        specs = ["bf16", "w8a8", "w8a8:act_group_size=none", "static-w8a8", "rtn:w8",
                 f"rtn:w4g{g}", f"hqq:w4g{g}", "nf4", "llm-int8"]
        if quick:
            specs = specs[:7]
    elif kind == "cnn":
        specs = ["bf16", "static:minmax", "static:percentile", "static:histogram", "static:mse",
                 "w8a8", "rtn:w8", "mixed:bpw=6.0,method=rtn,activations=static,candidates=w4pcsym|w8",
                 "magnitude:50%+static:histogram"]
        if quick:
            specs = ["bf16", "static:minmax", "static:histogram", "w8a8"]
        # no QAT row: the QAT recipe trains Conv2d fake-quantized but converts only Linear
        # layers (there is no weight-only conv kernel), so its CNN would not be quantized
    elif kind == "rnn-lm":
        specs = ["bf16", "w8a8", "rtn:w8", f"rtn:w4g{g}"]
    else:
        raise ValueError(f"no default strategies for model kind {kind!r}")
    return [REFERENCE] + specs
