"""The numerics of quantization: ranges to (scale, zero_point), quantize, dequantize, pack.

Affine integer quantization (Jacob et al., 2018), with S the scale and Z the zero point:

    S = (max - min) / (qmax - qmin)        Z = round(qmin - min / S)
    q = clamp(round(r / S + Z), qmin, qmax)       r = S (q - Z)

The range is widened to include 0 so that real zero is exactly representable. Symmetric
formats fix Z (0 for signed grids) and take S = absmax / qmax. Codebook formats (NF4, fp4,
binary, ternary) store the index of the nearest table value of r / S; fp8 stores torch's
float8 bits of r / S.

Every granularity goes through :func:`as_groups`: a tensor is viewed as ``[rows, groups,
group_len]`` and each group gets one scale. For weights ``rows`` is the output channel (axis
0, the rest flattened); for ``"token"`` the rows are all leading axes and the last axis is
reduced.
"""
from __future__ import annotations

import math

import torch

from .formats import QFormat

_EPS = 1e-12


# --- granularity: one code path ---------------------------------------------------------
def as_groups(x: torch.Tensor, fmt: QFormat, *, name: str = "tensor") -> torch.Tensor:
    """View ``x`` as ``[rows, groups, group_len]`` for ``fmt``'s granularity.

    Raises ValueError naming ``name`` when a group size does not divide the row length.
    """
    if fmt.granularity == "tensor":
        return x.reshape(1, 1, -1)
    if fmt.granularity == "token":
        rows, cols = (x.numel() // x.shape[-1], x.shape[-1]) if x.dim() else (1, 1)
    else:
        rows = x.shape[0] if x.dim() else 1
        cols = x.numel() // max(rows, 1)
    if fmt.granularity != "group":
        return x.reshape(rows, 1, cols)
    g = fmt.group_size
    if cols % g:
        divisors = [d for d in (32, 64, 128, 256) if cols % d == 0]
        hint = f"use group_size={divisors[-1]}" if divisors else "use per-channel (group_size=None)"
        raise ValueError(
            f"{name}: group_size={g} does not divide its input size {cols} "
            f"(shape {tuple(x.shape)}); {hint}, or exclude this layer"
        )
    return x.reshape(rows, cols // g, g)


def qparams_shape(shape: torch.Size, fmt: QFormat) -> tuple[int, int]:
    """(rows, groups) of the scale tensor of a tensor of ``shape`` in ``fmt``."""
    g = as_groups(torch.empty(shape, device="meta"), fmt)
    return g.shape[0], g.shape[1]


# --- choosing scale and zero point ------------------------------------------------------
def choose_qparams(
    x: torch.Tensor, fmt: QFormat, *, name: str = "tensor",
    min_val: torch.Tensor | None = None, max_val: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scale and zero_point for ``x`` (shape ``[rows, groups]``), stored in ``fmt.scale_dtype``.

    ``min_val``/``max_val`` (shape ``[rows, groups]``) override the observed range, which is
    how observers and clipping searches pass a narrower range in. zero_point is None for
    formats that store none.
    """
    xg = as_groups(x, fmt, name=name).float()
    if fmt.scale_method == "meanabs":
        scale = xg.abs().mean(-1) * fmt.scale_factor
        return _store_scale(scale, fmt), None
    lo = xg.amin(-1) if min_val is None else min_val.float()
    hi = xg.amax(-1) if max_val is None else max_val.float()
    lo, hi = torch.minimum(lo, torch.zeros_like(lo)), torch.maximum(hi, torch.zeros_like(hi))
    if fmt.kind == "codebook":
        top = max(abs(fmt.codebook[0]), abs(fmt.codebook[-1]))
        return _store_scale(torch.maximum(-lo, hi) / top, fmt), None
    if fmt.kind == "float":
        return _store_scale(torch.maximum(-lo, hi) / fmt.float_max, fmt), None
    if fmt.symmetric:
        half = (fmt.qmax - fmt.qmin) / 2 if not fmt.signed else fmt.qmax
        return _store_scale(torch.maximum(-lo, hi) / half, fmt), None
    scale = _store_scale((hi - lo) / (fmt.qmax - fmt.qmin), fmt)
    zero_point = torch.round(fmt.qmin - lo / scale.float()).clamp(fmt.qmin, fmt.qmax)
    return scale, zero_point.to(fmt.torch_scale_dtype)


def _store_scale(scale: torch.Tensor, fmt: QFormat) -> torch.Tensor:
    """Cast to the stored dtype, never letting a scale round to zero."""
    tiny = torch.finfo(fmt.torch_scale_dtype).tiny
    return scale.clamp_min(max(tiny, _EPS)).to(fmt.torch_scale_dtype)


def fixed_zero_point(fmt: QFormat) -> int:
    """The implied zero point of a symmetric integer format (0 signed, mid-grid unsigned)."""
    return 0 if fmt.signed else 2 ** (fmt.num_bits - 1)


# --- quantize / dequantize --------------------------------------------------------------
def quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None,
             fmt: QFormat, *, name: str = "tensor") -> torch.Tensor:
    """Values of ``x`` on ``fmt``'s grid, same shape as ``x``, unpacked.

    int formats give integers in [qmin, qmax] (int8 for signed, uint8 for unsigned); codebook
    formats give the uint8 index of the nearest table value; float formats give their bits
    as uint8.
    """
    xg = as_groups(x, fmt, name=name).float()                      # (rows, groups, g)
    s = scale.float().reshape(xg.shape[0], xg.shape[1], 1)
    if fmt.kind == "float":
        q = (xg / s).clamp(-fmt.float_max, fmt.float_max).to(fmt.float_dtype).view(torch.uint8)
        return q.reshape(x.shape)
    if fmt.kind == "codebook":
        table = torch.tensor(fmt.codebook, dtype=torch.float32, device=x.device)
        midpoints = (table[1:] + table[:-1]) / 2
        q = torch.bucketize(xg / s, midpoints)
        return q.to(torch.uint8).reshape(x.shape)
    z = _zero_point(zero_point, fmt, xg)
    q = torch.round(xg / s + z).clamp(fmt.qmin, fmt.qmax)
    return q.to(torch.int8 if fmt.signed else torch.uint8).reshape(x.shape)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None,
               fmt: QFormat, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Real values ``S (q - Z)`` (or ``S * table[q]``) of unpacked ``q``, in ``dtype``."""
    qg = as_groups(q, fmt)
    s = scale.float().reshape(qg.shape[0], qg.shape[1], 1)
    if fmt.kind == "float":
        r = qg.view(fmt.float_dtype).float() * s
    elif fmt.kind == "codebook":
        table = torch.tensor(fmt.codebook, dtype=torch.float32, device=q.device)
        r = table[qg.long()] * s
    else:
        r = (qg.float() - _zero_point(zero_point, fmt, qg)) * s
    return r.reshape(q.shape).to(dtype)


def _zero_point(zero_point, fmt: QFormat, xg: torch.Tensor):
    if zero_point is None:
        return float(fixed_zero_point(fmt)) if fmt.kind == "int" and fmt.symmetric else 0.0
    return zero_point.float().reshape(xg.shape[0], xg.shape[1], 1)


class _RoundSTE(torch.autograd.Function):
    """Quantize-dequantize whose gradient is the straight-through estimator (Bengio et al.)."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, fmt):
        q = quantize(x, scale, zero_point, fmt)
        out = dequantize(q, scale, zero_point, fmt, dtype=x.dtype)
        if fmt.kind == "int":  # gradient passes inside the representable range, zero outside
            xg = as_groups(x, fmt)
            s = scale.float().reshape(xg.shape[0], xg.shape[1], 1)
            z = _zero_point(zero_point, fmt, xg)
            lo, hi = (fmt.qmin - z) * s, (fmt.qmax - z) * s
            ctx.save_for_backward(((xg >= lo) & (xg <= hi)).reshape(x.shape))
        else:
            ctx.save_for_backward(torch.ones_like(x, dtype=torch.bool))
        return out

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None,
                  fmt: QFormat) -> torch.Tensor:
    """``dequantize(quantize(x))`` with a straight-through gradient (zero outside the range)."""
    return _RoundSTE.apply(x, scale, zero_point, fmt)


# --- packing ----------------------------------------------------------------------------
def pack(q: torch.Tensor, num_bits: int) -> torch.Tensor:
    """Pack the last axis of ``q`` (values in ``[0, 2^num_bits)``) into bytes.

    Values are laid out little-endian: value ``i`` of a row starts at bit ``i * num_bits`` of
    the row's bit string (so for 4 bits, byte j holds value 2j in its low nibble and 2j+1 in
    its high nibble). A row of ``n`` values takes ``ceil(n * num_bits / 8)`` bytes; rows are
    padded with zeros. 8-bit values are returned as they are (viewed as uint8).
    """
    if num_bits == 8:
        return q.contiguous().view(torch.uint8)
    if not 1 <= num_bits <= 7:
        raise ValueError(f"pack: num_bits must be 1..8, got {num_bits}")
    n = q.shape[-1]
    per_unit, unit_bytes = _unit(num_bits)                    # values per unit, bytes per unit
    units = math.ceil(n / per_unit)
    if unit_bytes == 1:  # 1, 2, 4 bits: whole values per byte, stay in uint8
        v = q.reshape(-1, n).to(torch.uint8) & ((1 << num_bits) - 1)
        v = torch.nn.functional.pad(v, (0, units * per_unit - n)).reshape(-1, units, per_unit)
        out = v[..., 0].clone()
        for i in range(1, per_unit):
            out |= v[..., i] << (i * num_bits)
        return out.reshape(*q.shape[:-1], units)
    v = q.reshape(-1, n).to(torch.int64) & ((1 << num_bits) - 1)
    v = torch.nn.functional.pad(v, (0, units * per_unit - n)).reshape(-1, units, per_unit)
    shifts = torch.arange(per_unit, device=q.device) * num_bits
    word = (v << shifts).sum(-1)                                   # (rows, units) < 2^(8*unit_bytes)
    byte_shifts = torch.arange(unit_bytes, device=q.device) * 8
    out = ((word.unsqueeze(-1) >> byte_shifts) & 0xFF).to(torch.uint8).reshape(-1, units * unit_bytes)
    nbytes = math.ceil(n * num_bits / 8)
    return out[:, :nbytes].reshape(*q.shape[:-1], nbytes).contiguous()


def unpack(packed: torch.Tensor, num_bits: int, n: int) -> torch.Tensor:
    """Inverse of :func:`pack`: ``n`` uint8 values per row from the packed last axis."""
    if num_bits == 8:
        return packed.view(torch.uint8)
    per_unit, unit_bytes = _unit(num_bits)
    units = math.ceil(n / per_unit)
    if unit_bytes == 1:
        shifts = torch.arange(0, 8, num_bits, dtype=torch.uint8, device=packed.device)
        v = (packed.reshape(-1, packed.shape[-1], 1) >> shifts) & ((1 << num_bits) - 1)
        return v.reshape(-1, units * per_unit)[:, :n].reshape(*packed.shape[:-1], n)
    b = packed.reshape(-1, packed.shape[-1]).to(torch.int64)
    b = torch.nn.functional.pad(b, (0, units * unit_bytes - b.shape[-1])).reshape(-1, units, unit_bytes)
    word = (b << (torch.arange(unit_bytes, device=b.device) * 8)).sum(-1)   # (rows, units)
    shifts = torch.arange(per_unit, device=b.device) * num_bits
    v = (word.unsqueeze(-1) >> shifts) & ((1 << num_bits) - 1)             # (rows, units, per)
    return v.reshape(-1, units * per_unit)[:, :n].to(torch.uint8).reshape(*packed.shape[:-1], n)


def _unit(num_bits: int) -> tuple[int, int]:
    """Smallest whole-byte unit: (values per unit, bytes per unit)."""
    unit_bytes = num_bits // math.gcd(num_bits, 8)
    return unit_bytes * 8 // num_bits, unit_bytes
