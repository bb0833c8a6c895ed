"""QTensor: a really quantized tensor — packed low-bit data, scales, zero points, format."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import primitives as P
from .formats import QFormat, int_format

# QLoRA's double quantization: the fp32 absmax scales of a tensor, minus their mean, are
# quantized to signed 8 bits in blocks of 256 with one fp32 scale per block.
SCALE_FORMAT = int_format(8, group_size=256, scale_dtype="float32")


@dataclass
class QTensor:
    """Packed quantized data with everything needed to recover real values.

    Attributes:
        data: packed values, uint8 ``[rows, ceil(cols * bits / 8)]`` (int8 for signed 8-bit).
        scale: ``[rows, groups]`` in ``format.scale_dtype`` — or, with double quantization, a
            QTensor holding the scales themselves quantized to 8 bits.
        zero_point: ``[rows, groups]`` for asymmetric integer formats, else None.
        format: the :class:`QFormat`.
        shape: the logical (unpacked) shape.
        offset: added to the dequantized values (the mean removed before double quantization).
    """

    data: torch.Tensor
    scale: "torch.Tensor | QTensor"
    zero_point: torch.Tensor | None
    format: QFormat
    shape: torch.Size
    offset: torch.Tensor | None = None

    # --- construction ------------------------------------------------------------------
    @classmethod
    def from_float(cls, x: torch.Tensor, fmt: QFormat, *, name: str = "tensor",
                   scale: torch.Tensor | None = None,
                   zero_point: torch.Tensor | None = None) -> "QTensor":
        """Quantize ``x`` (RTN unless ``scale``/``zero_point`` come from an algorithm)."""
        if not x.is_floating_point():
            raise TypeError(f"{name}: expected a floating-point tensor to quantize, got {x.dtype}")
        if scale is None:
            scale, zero_point = P.choose_qparams(x, fmt, name=name)
        q = P.quantize(x, scale, zero_point, fmt, name=name)
        return cls.from_int(q, scale, zero_point, fmt)

    @classmethod
    def from_int(cls, q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None,
                 fmt: QFormat) -> "QTensor":
        """Pack already-quantized values ``q`` (as returned by :func:`primitives.quantize`)."""
        shape = q.shape
        q2 = q.reshape(shape[0], -1) if fmt.granularity != "token" else q.reshape(-1, shape[-1])
        if fmt.granularity == "tensor":
            q2 = q.reshape(1, -1)
        if fmt.kind == "int" and fmt.signed and fmt.num_bits < 8:
            q2 = (q2.to(torch.int16) - fmt.qmin).to(torch.uint8)  # bias onto [0, 2^b)
        data = P.pack(q2, fmt.num_bits) if fmt.num_bits < 8 else q2.contiguous()
        stored_scale: torch.Tensor | QTensor = scale
        offset = None
        if fmt.double_quant:
            flat = scale.float().reshape(1, -1)
            offset = flat.mean().reshape(1)
            stored_scale = _quantize_scales(flat - offset, scale.shape)
        contiguous = lambda t: t if t is None or isinstance(t, QTensor) else t.contiguous()  # noqa: E731
        return cls(data.contiguous(), contiguous(stored_scale), contiguous(zero_point), fmt,
                   torch.Size(shape), offset)

    # --- recovery ----------------------------------------------------------------------
    def int_values(self) -> torch.Tensor:
        """The unpacked values on the format's grid, logical shape (inverse of ``from_int``)."""
        fmt = self.format
        cols = self.data.shape[-1] if fmt.num_bits == 8 else _cols(self.shape, fmt)
        q = P.unpack(self.data, fmt.num_bits, cols) if fmt.num_bits < 8 else self.data
        if fmt.kind == "int" and fmt.signed and fmt.num_bits < 8:
            q = (q.to(torch.int16) + fmt.qmin).to(torch.int8)
        return q.reshape(self.shape)

    def scales(self) -> torch.Tensor:
        """The real per-group scales ``[rows, groups]`` (dequantized if double-quantized)."""
        if isinstance(self.scale, QTensor):
            rows, groups = P.qparams_shape(self.shape, self.format)
            flat = self.scale.dequantize().reshape(-1)[: rows * groups]
            return flat.reshape(rows, groups) + self.offset
        return self.scale

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Real values in ``dtype``, logical shape."""
        if isinstance(self.scale, QTensor):
            return P.dequantize(self.int_values(), self.scales(), self.zero_point, self.format, dtype)
        out = P.dequantize(self.int_values(), self.scale, self.zero_point, self.format, dtype)
        return out if self.offset is None else out + self.offset.to(dtype)

    # --- accounting --------------------------------------------------------------------
    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes held: packed data + scales (recursively) + zero points + offset."""
        total = self.data.numel() * self.data.element_size()
        total += self.scale.nbytes if isinstance(self.scale, QTensor) else _bytes(self.scale)
        total += _bytes(self.zero_point) + _bytes(self.offset)
        return total

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.nbytes / self.numel

    # --- tensors for saving -------------------------------------------------------------
    def tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """Flat dict of the stored tensors (for safetensors), keys prefixed."""
        out = {prefix + "data": self.data}
        if isinstance(self.scale, QTensor):
            out.update(self.scale.tensors(prefix + "scale."))
        else:
            out[prefix + "scale"] = self.scale
        if self.zero_point is not None:
            out[prefix + "zero_point"] = self.zero_point
        if self.offset is not None:
            out[prefix + "offset"] = self.offset
        return out

    def layout(self) -> dict:
        """JSON-able description (format and shapes), the inverse of :meth:`from_tensors`."""
        d = {"format": self.format.to_dict(), "shape": list(self.shape)}
        if isinstance(self.scale, QTensor):
            d["scale"] = self.scale.layout()
        return d

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], desc: dict, prefix: str = "") -> "QTensor":
        fmt = QFormat.from_dict(desc["format"])
        scale = (cls.from_tensors(tensors, desc["scale"], prefix + "scale.") if "scale" in desc
                 else tensors[prefix + "scale"])
        return cls(tensors[prefix + "data"], scale, tensors.get(prefix + "zero_point"), fmt,
                   torch.Size(desc["shape"]), tensors.get(prefix + "offset"))

    def validate(self, name: str = "weight") -> None:
        """Check every stored tensor against the format and logical shape (layout, dtype, value
        range) before anything runs on it; raises ValueError naming the tensor and the fix."""
        expected = QTensor.from_float(torch.zeros(self.shape, device="meta"), self.format)
        want = {k: (tuple(t.shape), t.dtype) for k, t in expected.tensors().items()}
        got = {k: (tuple(t.shape), t.dtype) for k, t in self.tensors().items()}
        for key in sorted(set(want) | set(got)):
            if want.get(key) != got.get(key):
                w = "absent" if key not in want else f"{list(want[key][0])} {want[key][1]}"
                g = "absent" if key not in got else f"{list(got[key][0])} {got[key][1]}"
                raise ValueError(f"{name}.{key}: a {self.format.label()} tensor of shape "
                                 f"{list(self.shape)} stores {w} here, got {g}; the checkpoint "
                                 f"does not match its description, re-save it")
        for key, t in self.tensors().items():
            if t.is_floating_point() and not bool(torch.isfinite(t.float()).all()):
                raise ValueError(f"{name}.{key} holds NaN or inf values; the checkpoint is damaged")
        fmt = self.format
        if self.zero_point is not None:
            z = self.zero_point.float()
            if bool(((z < fmt.qmin) | (z > fmt.qmax)).any()):
                raise ValueError(f"{name}.zero_point has values outside {fmt.label()}'s grid "
                                 f"[{fmt.qmin}, {fmt.qmax}]; the checkpoint is damaged")
        if not isinstance(self.scale, QTensor) and bool((self.scale.float() < 0).any()):
            raise ValueError(f"{name}.scale has negative values; the checkpoint is damaged")

    def to(self, device) -> "QTensor":
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        scale = self.scale.to(device) if isinstance(self.scale, QTensor) else mv(self.scale)
        return QTensor(mv(self.data), scale, mv(self.zero_point), self.format, self.shape, mv(self.offset))

    def __repr__(self) -> str:
        return (f"QTensor({self.format.label()}, shape={tuple(self.shape)}, "
                f"{self.bits_per_weight:.3f} bits/weight)")


def _quantize_scales(centred: torch.Tensor, shape) -> QTensor:
    """Second-level quantization of scales (QLoRA §3): int8 blocks of 256 (last one padded)."""
    padded = torch.nn.functional.pad(centred.reshape(1, -1), (0, (-centred.numel()) % 256))
    return QTensor.from_float(padded, SCALE_FORMAT, name="scales")


def _cols(shape: torch.Size, fmt: QFormat) -> int:
    if fmt.granularity == "tensor":
        return math.prod(shape)
    if fmt.granularity == "token":
        return shape[-1]
    return math.prod(shape[1:]) if len(shape) > 1 else 1


def _bytes(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.numel() * t.element_size()


@dataclass
class SparseQTensor:
    """A pruned quantized weight: only the kept values are stored, packed at the format's bit
    width, with a bitmask saying where they are.

    Attributes:
        mask: uint8 ``[rows, ceil(cols / 8)]``, bit ``j`` of a row's little-endian bit string set
            where column ``j`` is kept.
        values: uint8 ``[ceil(nnz * bits / 8)]``: the kept values on the grid, row by row, packed
            like :func:`lowbit.primitives.pack` (signed grids biased onto ``[0, 2^b)``).
        scale, zero_point: ``[rows, groups]``, as for the dense format (groups are of the dense
            columns, so the scale of a value does not depend on which others were pruned).
        format, shape: the value format and the logical dense shape.

    Pruned entries dequantize to exactly 0 whatever the format's zero point. Bits per weight
    count everything: values, mask, scales, zero points.
    """

    mask: torch.Tensor
    values: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor | None
    format: QFormat
    shape: torch.Size

    @classmethod
    def from_int(cls, q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None,
                 fmt: QFormat, keep: torch.Tensor) -> "SparseQTensor":
        """Keep the values ``q`` [rows, cols] where ``keep`` is True."""
        if fmt.kind != "int" or fmt.double_quant or fmt.granularity not in ("channel", "group"):
            raise ValueError(f"sparse storage holds integer formats with per-channel or group "
                             f"scales, got {fmt.label()}")
        if keep.shape != q.shape:
            raise ValueError(f"sparse storage: mask shape {tuple(keep.shape)} differs from the "
                             f"values' {tuple(q.shape)}")
        v = q[keep].reshape(1, -1)
        if fmt.signed and fmt.num_bits < 8:
            v = (v.to(torch.int16) - fmt.qmin).to(torch.uint8)
        values = (P.pack(v, fmt.num_bits) if fmt.num_bits < 8 else v.contiguous().view(torch.uint8))
        return cls(P.pack(keep.to(torch.uint8), 1).contiguous(), values.reshape(-1).contiguous(),
                   scale.contiguous(), None if zero_point is None else zero_point.contiguous(),
                   fmt, torch.Size(q.shape))

    @property
    def nnz(self) -> int:
        return int(self.keep().sum())

    def keep(self) -> torch.Tensor:
        """The bool mask [rows, cols]."""
        return P.unpack(self.mask, 1, self.shape[1]).bool()

    def int_values(self) -> torch.Tensor:
        """The values on the grid, dense [rows, cols]; pruned entries hold the zero of the grid
        where it has one (they are masked out by :meth:`dequantize` in any case)."""
        fmt, keep = self.format, self.keep()
        nnz = int(keep.sum())
        dtype = torch.int8 if fmt.signed else torch.uint8
        if fmt.num_bits < 8:
            v = P.unpack(self.values.reshape(1, -1), fmt.num_bits, nnz).reshape(-1)
            if fmt.signed:
                v = (v.to(torch.int16) + fmt.qmin).to(torch.int8)
        else:
            v = self.values[:nnz].view(dtype)
        q = torch.full(tuple(self.shape), P.fixed_zero_point(fmt) if fmt.symmetric else 0, dtype=dtype)
        q[keep] = v
        return q

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        out = P.dequantize(self.int_values(), self.scale, self.zero_point, self.format, dtype)
        return out * self.keep().to(dtype)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return sum(_bytes(t) for t in (self.mask, self.values, self.scale, self.zero_point))

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.nbytes / self.numel

    def tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        out = {prefix + "mask": self.mask, prefix + "values": self.values, prefix + "scale": self.scale}
        if self.zero_point is not None:
            out[prefix + "zero_point"] = self.zero_point
        return out

    def layout(self) -> dict:
        return {"format": self.format.to_dict(), "shape": list(self.shape), "sparse": "bitmask"}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], desc: dict, prefix: str = "") -> "SparseQTensor":
        return cls(tensors[prefix + "mask"], tensors[prefix + "values"], tensors[prefix + "scale"],
                   tensors.get(prefix + "zero_point"), QFormat.from_dict(desc["format"]),
                   torch.Size(desc["shape"]))

    def validate(self, name: str = "weight") -> None:
        """Check the mask, the value count it implies, and the scales before anything runs."""
        fmt, (rows, cols) = self.format, tuple(self.shape)
        dense = QTensor.from_float(torch.zeros(self.shape, device="meta"), fmt).tensors()
        want = {"mask": ((rows, math.ceil(cols / 8)), torch.uint8), "scale": (tuple(dense["scale"].shape), dense["scale"].dtype)}
        if "zero_point" in dense:
            want["zero_point"] = (tuple(dense["zero_point"].shape), dense["zero_point"].dtype)
        got = {k: (tuple(t.shape), t.dtype) for k, t in self.tensors().items() if k != "values"}
        for key in sorted(set(want) | set(got)):
            if want.get(key) != got.get(key):
                raise ValueError(f"{name}.{key}: a sparse {fmt.label()} tensor of shape {[rows, cols]} "
                                 f"stores {want.get(key, 'nothing')} here, got {got.get(key, 'nothing')}; "
                                 f"the checkpoint does not match its description, re-save it")
        if cols % 8 and bool((self.mask[:, -1] >> (cols % 8)).any()):
            raise ValueError(f"{name}.mask sets bits past the {cols} columns; the checkpoint is damaged")
        nnz = self.nnz
        expected = math.ceil(nnz * fmt.num_bits / 8)
        if self.values.dim() != 1 or self.values.dtype != torch.uint8 or self.values.numel() != expected:
            raise ValueError(f"{name}.values: the mask keeps {nnz} values of {fmt.num_bits} bits, "
                             f"which take {expected} bytes (uint8, 1-D); got {self.values.numel()} "
                             f"{self.values.dtype} {list(self.values.shape)}; the checkpoint is damaged")
        if not bool(torch.isfinite(self.scale.float()).all()) or bool((self.scale.float() < 0).any()):
            raise ValueError(f"{name}.scale holds NaN, inf or negative values; the checkpoint is damaged")
        if self.zero_point is not None:
            z = self.zero_point.float()
            if bool(((z < fmt.qmin) | (z > fmt.qmax)).any()):
                raise ValueError(f"{name}.zero_point has values outside {fmt.label()}'s grid "
                                 f"[{fmt.qmin}, {fmt.qmax}]; the checkpoint is damaged")

    def map(self, fn) -> "SparseQTensor":
        """The same tensor with ``fn`` applied to every stored tensor (device moves)."""
        mv = lambda t: None if t is None else fn(t)  # noqa: E731
        return SparseQTensor(mv(self.mask), mv(self.values), mv(self.scale), mv(self.zero_point),
                             self.format, self.shape)

    def to(self, device) -> "SparseQTensor":
        return self.map(lambda t: t.to(device))

    def __repr__(self) -> str:
        return (f"SparseQTensor({self.format.label()}, shape={tuple(self.shape)}, "
                f"{1 - self.nnz / max(1, self.numel):.0%} pruned, {self.bits_per_weight:.3f} bits/weight)")
