"""Quantization formats: what a stored number means, and over which elements one scale is shared.

A :class:`QFormat` says how many bits a value takes, whether the grid is integer (affine),
floating point (fp8) or a codebook (NF4, fp4, binary, ternary), and its granularity:

- ``"tensor"``  one scale for the whole tensor;
- ``"channel"`` one scale per output channel (row 0 axis of a weight);
- ``"token"``   one scale per token (each row of the last axis, for activations);
- ``"group"``   one scale per ``group_size`` consecutive elements of a row.

All four go through one code path (:func:`lowbit.primitives.as_groups`): the tensor is viewed as
``[rows, groups, group_len]`` and one (scale, zero_point) is chosen per group.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

GRANULARITIES = ("tensor", "channel", "token", "group")
KINDS = ("int", "float", "codebook")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# QLoRA (Dettmers et al., 2023), appendix E: the 16 quantiles of N(0, 1) normalised to [-1, 1],
# with an exact zero. These are the published constants of the format, not derived here.
NF4_CODEBOOK = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)
# OCP microscaling fp4 e2m1: sign, 2 exponent bits, 1 mantissa bit.
FP4_E2M1_CODEBOOK = (
    -6.0, -4.0, -3.0, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
)
BINARY_CODEBOOK = (-1.0, 1.0)
TERNARY_CODEBOOK = (-1.0, 0.0, 1.0)


@dataclass(frozen=True)
class QFormat:
    """A quantization format. Construct the named ones below and adjust with :meth:`replace`.

    Args:
        kind: ``"int"`` (affine integer grid), ``"float"`` (fp8 through torch's float8 dtypes)
            or ``"codebook"`` (a fixed table of values scaled by the block's absmax).
        num_bits: bits per stored value (1..8).
        signed: integer grid is ``[-2^(b-1), 2^(b-1)-1]`` if True, ``[0, 2^b-1]`` if False.
        symmetric: integer zero_point fixed (0 signed, 2^(b-1) unsigned) if True; chosen from
            the range if False.
        granularity: one of ``"tensor"``, ``"channel"``, ``"token"``, ``"group"``.
        group_size: elements per group, only with ``granularity="group"``.
        scale_dtype: dtype in which scale (and an asymmetric zero_point) are stored.
        codebook: the values of a codebook format, in increasing order.
        exponent_bits, mantissa_bits: the layout of a float format.
        scale_method: ``"absmax"`` (range of the block) or ``"meanabs"`` (mean |x| times
            ``scale_factor``, the choice of XNOR-Net for binary and of TWN for ternary).
        double_quant: quantize the scales themselves to 8 bits in blocks of 256 (QLoRA).
        name: a short label for reports.
    """

    kind: str
    num_bits: int
    signed: bool = True
    symmetric: bool = True
    granularity: str = "channel"
    group_size: int | None = None
    scale_dtype: str = "float32"
    codebook: tuple[float, ...] | None = None
    exponent_bits: int = 0
    mantissa_bits: int = 0
    scale_method: str = "absmax"
    scale_factor: float = 1.0
    double_quant: bool = False
    name: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"QFormat.kind must be one of {KINDS}, got {self.kind!r}")
        if not 1 <= self.num_bits <= 8:
            raise ValueError(f"QFormat.num_bits must be 1..8, got {self.num_bits}")
        if self.granularity not in GRANULARITIES:
            raise ValueError(
                f"QFormat.granularity must be one of {GRANULARITIES}, got {self.granularity!r}"
            )
        if (self.granularity == "group") != (self.group_size is not None):
            raise ValueError(
                "group_size goes with granularity='group' and only with it; got "
                f"granularity={self.granularity!r}, group_size={self.group_size!r}"
            )
        if self.group_size is not None and self.group_size < 1:
            raise ValueError(f"group_size must be a positive integer, got {self.group_size}")
        if self.scale_dtype not in _DTYPES:
            raise ValueError(f"scale_dtype must be one of {tuple(_DTYPES)}, got {self.scale_dtype!r}")
        if self.kind == "codebook":
            if not self.codebook or len(self.codebook) > 2**self.num_bits:
                raise ValueError(
                    f"a codebook format of {self.num_bits} bits needs 1..{2**self.num_bits} "
                    f"values, got {self.codebook!r}"
                )
            if list(self.codebook) != sorted(self.codebook):
                raise ValueError("codebook values must be in increasing order")
        if self.kind == "float" and (self.exponent_bits, self.mantissa_bits) not in ((4, 3), (5, 2)):
            raise ValueError(
                "float formats with a kernel-level dtype are fp8 e4m3 and e5m2 (exponent_bits, "
                f"mantissa_bits) = (4, 3) or (5, 2); got ({self.exponent_bits}, "
                f"{self.mantissa_bits}). fp4 is the codebook format FP4_E2M1."
            )
        if self.scale_method not in ("absmax", "meanabs"):
            raise ValueError(f"scale_method must be 'absmax' or 'meanabs', got {self.scale_method!r}")

    # --- the integer grid -------------------------------------------------------------
    @property
    def qmin(self) -> int:
        if self.kind != "int":
            return 0
        return -(2 ** (self.num_bits - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        if self.kind != "int":
            return len(self.codebook) - 1 if self.codebook else 2**self.num_bits - 1
        return 2 ** (self.num_bits - 1) - 1 if self.signed else 2**self.num_bits - 1

    @property
    def has_zero_point(self) -> bool:
        """True when a zero_point is stored (asymmetric integer formats)."""
        return self.kind == "int" and not self.symmetric

    @property
    def storage_bits(self) -> int:
        """Bits one value occupies once packed (8-bit formats are stored as bytes)."""
        return self.num_bits

    @property
    def torch_scale_dtype(self) -> torch.dtype:
        return _DTYPES[self.scale_dtype]

    @property
    def float_dtype(self) -> torch.dtype:
        assert self.kind == "float"
        return torch.float8_e4m3fn if self.exponent_bits == 4 else torch.float8_e5m2

    @property
    def float_max(self) -> float:
        return float(torch.finfo(self.float_dtype).max)

    def replace(self, **changes) -> "QFormat":
        """A copy with some fields changed, e.g. ``INT4.replace(group_size=64)``."""
        if "group_size" in changes and "granularity" not in changes:
            changes["granularity"] = "group" if changes["group_size"] is not None else "channel"
        return dataclasses.replace(self, **changes)

    def label(self) -> str:
        """A short human-readable description, e.g. ``int4 asym g128``."""
        base = self.name or (f"{'' if self.signed else 'u'}int{self.num_bits}")
        if self.kind == "int":
            base += " sym" if self.symmetric else " asym"
        gran = {"tensor": "per-tensor", "channel": "per-channel", "token": "per-token"}
        base += f" g{self.group_size}" if self.granularity == "group" else f" {gran[self.granularity]}"
        return base + (" dq" if self.double_quant else "")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "QFormat":
        d = dict(d)
        if d.get("codebook") is not None:
            d["codebook"] = tuple(d["codebook"])
        return cls(**d)


ACT_MODES = ("dynamic", "static")
ACT_GRANULARITIES = ("token", "tensor")


@dataclass(frozen=True)
class ActivationQuant:
    """How a layer's input is quantized to int8 at run time (a recipe with None is weight-only).

    Args:
        mode: ``"dynamic"`` (scales computed from each input) or ``"static"`` (calibrated once).
        granularity: ``"token"`` (one scale per token) or ``"tensor"`` (one per call/layer).
        group_size: with per-token scales, one scale per token and this many inputs.
        outlier_threshold: LLM.int8(): input columns with some ``|x|`` above it stay float.
        observer: static ranges: how the calibration chose them (``"absmax"``, ``"histogram"``, ...).
    """

    mode: str
    granularity: str = "token"
    group_size: int | None = None
    outlier_threshold: float | None = None
    observer: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in ACT_MODES:
            raise ValueError(f"ActivationQuant.mode must be one of {ACT_MODES}, got {self.mode!r}")
        if self.granularity not in ACT_GRANULARITIES:
            raise ValueError(f"ActivationQuant.granularity must be one of {ACT_GRANULARITIES}, "
                             f"got {self.granularity!r}")
        if self.group_size is not None and (self.granularity != "token" or self.group_size <= 0
                                            or self.group_size % 64):
            raise ValueError(f"ActivationQuant.group_size goes with per-token scales and must be a "
                             f"multiple of 64, got {self.group_size!r} ({self.granularity})")

    def label(self) -> str:
        """e.g. ``int8 dynamic per token x 64`` or ``int8 static per tensor (histogram)``."""
        text = f"int8 {self.mode} per {self.granularity}"
        if self.group_size:
            text += f" x {self.group_size}"
        if self.outlier_threshold is not None:
            text += f", columns |x| > {self.outlier_threshold:g} in fp32"
        return text + (f" ({self.observer})" if self.observer else "")


    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ActivationQuant":
        return cls(**d)


def int_format(num_bits: int, *, signed: bool = True, symmetric: bool = True,
               group_size: int | None = None, scale_dtype: str | None = None) -> QFormat:
    """An integer format; per channel unless ``group_size`` is given (scales bf16 then)."""
    granularity = "group" if group_size is not None else "channel"
    if scale_dtype is None:
        scale_dtype = "bfloat16" if group_size is not None else "float32"
    return QFormat("int", num_bits, signed=signed, symmetric=symmetric, granularity=granularity,
                   group_size=group_size, scale_dtype=scale_dtype)


INT8 = int_format(8)                                               # weights: sym per channel
UINT8 = int_format(8, signed=False, symmetric=False)
INT4 = int_format(4, signed=False, symmetric=False, group_size=128)  # q in 0..15, bf16 s and z
INT3 = int_format(3, signed=False, symmetric=False, group_size=128)
INT2 = int_format(2, signed=False, symmetric=False, group_size=128)
INT8_TOKEN = QFormat("int", 8, signed=True, symmetric=True, granularity="token", name="int8")
BINARY = QFormat("codebook", 1, codebook=BINARY_CODEBOOK, scale_method="meanabs", name="binary")
# TWN (Li et al., 2016): threshold 0.7 E|w|, i.e. a step of 1.4 E|w| on the grid {-1, 0, 1}.
TERNARY = QFormat("codebook", 2, codebook=TERNARY_CODEBOOK, scale_method="meanabs",
                  scale_factor=1.4, name="ternary")
FP8_E4M3 = QFormat("float", 8, exponent_bits=4, mantissa_bits=3, name="fp8_e4m3")
FP8_E5M2 = QFormat("float", 8, exponent_bits=5, mantissa_bits=2, name="fp8_e5m2")
FP4_E2M1 = QFormat("codebook", 4, codebook=FP4_E2M1_CODEBOOK, granularity="group", group_size=32,
                   scale_dtype="bfloat16", name="fp4_e2m1")
NF4 = QFormat("codebook", 4, codebook=NF4_CODEBOOK, granularity="group", group_size=64,
              double_quant=True, name="nf4")

NAMED_FORMATS = {
    "int8": INT8, "uint8": UINT8, "int4": INT4, "int3": INT3, "int2": INT2,
    "binary": BINARY, "ternary": TERNARY, "fp8_e4m3": FP8_E4M3, "fp8_e5m2": FP8_E5M2,
    "fp4_e2m1": FP4_E2M1, "nf4": NF4,
}


def bits_per_weight(fmt: QFormat, numel: int, rows: int) -> float:
    """Exact storage bits per weight of a ``rows x (numel / rows)`` tensor in ``fmt``.

    Counts packed values, scales, zero points and (with double quantization) the second-level
    scales; see :meth:`lowbit.qtensor.QTensor.nbytes` for the measured counterpart.
    """
    cols = numel // rows
    groups = {"tensor": 1, "channel": rows, "token": rows}.get(fmt.granularity)
    if groups is None:
        groups = rows * math.ceil(cols / fmt.group_size)
    sbits = torch.finfo(fmt.torch_scale_dtype).bits
    qbits = rows * math.ceil(cols * fmt.num_bits / 8) * 8
    scale_bits = groups * sbits * (2 if fmt.has_zero_point else 1)
    if fmt.double_quant:
        scale_bits = groups * 8 + math.ceil(groups / 256) * 32 + 32
    return (qbits + scale_bits) / numel


def sparse_bits_per_weight(fmt: QFormat, numel: int, rows: int, kept: float) -> float:
    """Bits per weight of a pruned weight stored as :class:`~lowbit.qtensor.SparseQTensor`: the
    ``kept`` fraction of values at ``fmt.num_bits``, a 1-bit mask, and the dense format's scales."""
    return bits_per_weight(fmt, numel, rows) - fmt.num_bits + kept * fmt.num_bits + 1
