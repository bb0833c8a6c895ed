"""WeightOnly (int2..int8 weights, float activations) and DynamicPTQ (W8A8 dynamic)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..formats import QFormat, int_format
from ..nn import QEmbedding, QLinear, QuantReport, Skip, swap_modules
from ..qtensor import QTensor
from .base import Recipe

METHODS = ("rtn",)


@dataclass(frozen=True)
class WeightOnly(Recipe):
    """Weight-only quantization of every ``nn.Linear`` (activations stay float).

    Args:
        num_bits: 2..8.
        group_size: elements per scale along the input axis; None = one scale per output channel.
        symmetric: None picks the format with a fast kernel: symmetric for 8 bits (int8
            kernel), asymmetric otherwise (int4 kernel; 3/2-bit run the reference path).
        method: "rtn" (round to nearest).
        include, exclude: fnmatch patterns on module names.
        embeddings: also quantize ``nn.Embedding`` tables to the same format. A tied output
            head and input embedding then share one packed table.
        skip_ragged: leave float (reported) the layers whose input size ``group_size`` does
            not divide, instead of raising.
    """

    num_bits: int = 4
    group_size: int | None = 128
    symmetric: bool | None = None
    method: str = "rtn"
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    embeddings: bool = False
    skip_ragged: bool = False

    def __post_init__(self) -> None:
        if not 2 <= self.num_bits <= 8:
            raise ValueError(f"WeightOnly.num_bits must be 2..8, got {self.num_bits}")
        if self.group_size is not None and (self.group_size < 1 or self.group_size & (self.group_size - 1)):
            raise ValueError(
                f"WeightOnly.group_size must be None (per channel) or a power of two such as "
                f"32, 64, 128, 256; got {self.group_size}"
            )
        if self.method not in METHODS:
            raise ValueError(f"WeightOnly.method must be one of {METHODS}, got {self.method!r}")
        object.__setattr__(self, "include", tuple(self.include))
        object.__setattr__(self, "exclude", tuple(self.exclude))

    activation = None

    @property
    def types(self) -> tuple[type, ...]:
        return (nn.Linear, nn.Embedding) if self.embeddings else (nn.Linear,)

    @property
    def format(self) -> QFormat:
        symmetric = self.num_bits == 8 if self.symmetric is None else self.symmetric
        return int_format(self.num_bits, signed=symmetric, symmetric=symmetric,
                          group_size=self.group_size)

    def describe(self) -> str:
        g = f"g{self.group_size}" if self.group_size else "per-channel"
        return f"WeightOnly W{self.num_bits} {g} {self.method}"

    def apply(self, model: nn.Module, data) -> QuantReport:
        fmt = self.format
        shared: dict[int, QTensor] = {}  # id(float weight) -> its QTensor, so ties survive

        def quantized(name: str, weight: torch.Tensor) -> QTensor:
            if id(weight) not in shared:
                try:
                    shared[id(weight)] = QTensor.from_float(weight.detach(), fmt, name=name)
                except ValueError as err:
                    if self.skip_ragged and "does not divide" in str(err):
                        raise Skip(str(err)) from None
                    raise
            return shared[id(weight)]

        def build(name: str, module: nn.Module) -> nn.Module:
            if isinstance(module, nn.Embedding):
                return QEmbedding.from_float(module, fmt, weight=quantized(name, module.weight))
            return QLinear.from_float(module, fmt, name=name, weight=quantized(name, module.weight))

        return swap_modules(model, build, types=self.types, include=self.include,
                            exclude=self.exclude, recipe=self.describe())


@dataclass(frozen=True)
class DynamicPTQ(Recipe):
    """W8A8 dynamic: int8 per-channel weights, activations quantized per token at run time.

    The analogue of PyTorch's ``quantize_dynamic`` on every ``nn.Linear``, with per-token
    (not per-tensor) activation scales and per-channel weight scales.
    """

    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "include", tuple(self.include))
        object.__setattr__(self, "exclude", tuple(self.exclude))

    format = int_format(8)
    activation = "int8_dynamic"
    types = (nn.Linear,)

    def describe(self) -> str:
        return "DynamicPTQ W8A8"

    def apply(self, model: nn.Module, data) -> QuantReport:
        def build(name: str, module: nn.Module) -> nn.Module:
            return QLinear.from_float(module, self.format, activation=self.activation, name=name)

        return swap_modules(model, build, types=self.types, include=self.include,
                            exclude=self.exclude, recipe=self.describe())
