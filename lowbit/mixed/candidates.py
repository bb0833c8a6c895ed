"""The menu a mixed-precision choice picks from: one :class:`Candidate` per weight format.

A candidate is written like the weight part of a recipe spec: ``w4g64`` (4 bits, groups of 64,
asymmetric), ``w8`` (8 bits per output channel, symmetric), ``w3g128``, ``w4pcsym`` (4 bits per
channel, symmetric: what the static int8 kernels can run), ``nf4`` / ``nf4b32``
(NormalFloat-4, double-quantized absmax blocks) or ``fp32`` (the layer stays float). Each one
knows its exact storage bits for a layer, the kernel it runs on here, and how to quantize one
weight with the chosen method (RTN, HQQ, or GPTQ given the layer's input Hessian).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..algorithms.gptq import gptq
from ..formats import QFormat, bits_per_weight
from ..nn import QLinear
from ..nn.nf4 import NF4Linear
from ..qtensor import QTensor
from ..recipes.nf4 import NF4
from ..recipes.weight_only import WeightOnly

METHODS = ("rtn", "hqq", "gptq")
DEFAULT_CANDIDATES = ("w2g64", "w3g64", "w4g64", "w8")


@dataclass(frozen=True)
class Candidate:
    """One format of the menu; ``recipe`` is None for ``fp32`` (the layer stays float)."""

    spec: str
    method: str
    recipe: WeightOnly | NF4 | None

    @property
    def format(self) -> QFormat | None:
        return None if self.recipe is None else self.recipe.weight_format

    @property
    def algorithm(self) -> str:
        """What really quantizes a weight: GPTQ/HQQ do not apply to NF4 or to symmetric 8 bits."""
        if self.recipe is None:
            return "none"
        return "nf4-rtn" if isinstance(self.recipe, NF4) else self.recipe.method

    def bits(self, module: nn.Module) -> float:
        """Storage bits per weight of ``module``'s weight in this format (scales included)."""
        W = module.weight
        if self.recipe is None:
            return float(W.element_size() * 8)
        rows = W.shape[0]
        return bits_per_weight(self.format, W.numel(), rows)

    def fits(self, module: nn.Module) -> str:
        """"" when this format can hold ``module``'s weight, else why not."""
        if self.recipe is None:
            return ""
        group, K = self.format.group_size, module.weight[0].numel()   # a conv's kernel, flattened
        if self.format.granularity == "group" and K % group:
            return f"{self.spec}: group {group} does not divide the input size {K}"
        return ""

    def kernel(self, name: str, module: nn.Module) -> str:
        """The kernel this layer would run in this format here ("float" for fp32)."""
        if self.recipe is None:
            return "float"
        if isinstance(module, nn.Conv2d):   # convolutions quantize with static int8 activations only
            return "onednn.qconv2d_pointwise (static int8 activations)"
        return self.recipe.layer_plan(name, module).kernel

    def quantize(self, name: str, W: torch.Tensor, H: torch.Tensor | None = None) -> QTensor | None:
        """The quantized weight ``[out, in]``; GPTQ needs ``H`` (the layer's input ``E[x x^T]``)."""
        if self.recipe is None:
            return None
        if isinstance(self.recipe, NF4):
            return QTensor.from_float(W, self.format, name=name)
        if self.recipe.method == "gptq":
            if H is None:
                raise ValueError(f"{name}: candidate {self.spec} with method gptq needs the layer's "
                                 f"input Hessian; pass calibration data")
            r = self.recipe
            qw = gptq(W, H, self.format, damp=r.damp, lazy_batch=r.lazy_batch, act_order=r.act_order,
                      mse_clip=r.gptq_clip)
            return QTensor.from_int(qw.q, qw.scale, qw.zero_point, self.format)
        return self.recipe.quantize_weight(name, W)

    def module(self, weight: QTensor | None, float_module: nn.Module) -> nn.Module:
        """The layer that replaces ``float_module`` (itself for fp32)."""
        if weight is None:
            return float_module
        cls = NF4Linear if isinstance(self.recipe, NF4) else QLinear
        return cls(weight, float_module.bias)


def parse_candidate(spec: str, method: str = "gptq") -> Candidate:
    """``"w4g64"`` / ``"w8"`` / ``"nf4"`` / ``"nf4b32"`` / ``"fp32"`` -> :class:`Candidate`."""
    if method not in METHODS:
        raise ValueError(f"mixed precision method must be one of {METHODS}, got {method!r}")
    text = spec.strip().lower()
    if text == "fp32":
        return Candidate("fp32", method, None)
    if text.startswith("nf4"):
        block = text[3:].lstrip("b") or "64"
        if not block.isdigit():
            raise ValueError(f"candidate {spec!r}: NF4 is written nf4 or nf4b<block>, e.g. nf4b64")
        return Candidate(text, method, NF4(block_size=int(block)))
    symmetric = text.endswith("sym")               # w4pcsym: signed symmetric (static int8 kernels)
    option = WeightOnly.spec_option(text[:-3] if symmetric else text)
    if not option or set(option) - {"num_bits", "group_size"}:
        raise ValueError(f"candidate {spec!r} not understood; expected w<bits>[g<group>|pc][sym] (w4g64, "
                         f"w3g128, w8, w4pcsym), nf4[b<block>] or fp32. bf16 layers have no kernel in "
                         f"lowbit's mixed menu yet")
    bits = option["num_bits"]
    # HQQ fits zero points; at 8 bits the fast format is symmetric per channel: round it.
    how = "rtn" if method == "hqq" and (bits == 8 or symmetric) else method
    recipe = WeightOnly(method=how, **option, **({"symmetric": True} if symmetric else {}))
    return Candidate(text, method, recipe)


def parse_candidates(specs, method: str = "gptq") -> tuple[Candidate, ...]:
    if isinstance(specs, str):
        specs = [s for s in specs.replace("|", ",").split(",") if s.strip()]
    cands = tuple(parse_candidate(s, method) for s in specs)
    if not cands:
        raise ValueError("mixed precision needs at least one candidate format, e.g. w4g64,w8")
    labels = [c.spec for c in cands]
    if len(set(labels)) != len(labels):
        raise ValueError(f"candidate formats repeat: {labels}")
    return cands


def layer_bits(cands, module: nn.Module) -> list[float]:
    """Storage bits per weight of ``module`` in each candidate; inf where it does not fit."""
    return [c.bits(module) if not c.fits(module) else math.inf for c in cands]
