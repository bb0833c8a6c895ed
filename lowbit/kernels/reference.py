"""Pure-PyTorch reference kernels: the specification every real kernel is tested against.

They run on any device and compute in fp32 (integer products exactly, in float64), returning
x's dtype. Canonical layouts (what lowbit stores in checkpoints):

- int8 weight: ``qweight`` int8 [N, K], ``scale`` fp32 [N];  w[n, k] = scale[n] * qweight[n, k].
- int4 weight: ``packed`` uint8 [N, K // 2], byte j of a row = element 2j (low nibble) and
  element 2j + 1 (high nibble), q in 0..15; ``scale`` and ``zero_point`` bf16
  [N, K // group_size];  w[n, k] = scale[n, g] * (q[n, k] - zero_point[n, g]), g = k // group_size.
- 2..7-bit weight: ``packed`` uint8 [N, ceil(K * bits / 8)], a little-endian bit string per row
  (lowbit.primitives.pack); ``scale``, ``zero_point`` as int4.
- NF4 with double quantization (QLoRA): ``codes`` uint8 [N, K // 2] (nibbles as int4); block b
  (b = n * K // block_size + k // block_size) has absmax s[b] = s8[b] * s2[b // 256] + offset,
  ``s8`` int8 [P] (P = N * K // block_size rounded up to 256), ``s2`` fp32 [P // 256], ``offset``
  fp32 [1];  w[n, k] = NF4[codes[n, k]] * s[b].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lowbit.formats import NF4_CODEBOOK
from lowbit.primitives import pack, unpack


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """q uint8 [N, K] in 0..15 -> packed uint8 [N, K // 2] (element 2j low nibble, 2j+1 high):
    lowbit.primitives.pack at 4 bits."""
    return pack(q.to(torch.uint8), 4)


def dequantize_int8(qweight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """fp32 [N, K] = scale[n] * qweight[n, k]."""
    return qweight.float() * scale.float()[:, None]


def dequantize_lowbit(packed, scale, zero_point, group_size: int, bits: int) -> torch.Tensor:
    """fp32 [N, K] = scale * (q - zero_point) per group of ``group_size`` along K, q the
    ``bits``-bit values of each row's little-endian bit string (lowbit.primitives.unpack: for
    4 bits, element 2j in the low nibble of byte j and 2j + 1 in the high one)."""
    K = scale.shape[1] * group_size
    q = unpack(packed, bits, K).float()  # (N, K)
    N = q.shape[0]
    w = (q.reshape(N, -1, group_size) - zero_point.float()[..., None]) * scale.float()[..., None]  # (N, G, gs)
    return w.reshape(N, K)


def dequantize_int4(packed, scale, zero_point, group_size: int) -> torch.Tensor:
    """:func:`dequantize_lowbit` at 4 bits: packed uint8 [N, K // 2]."""
    return dequantize_lowbit(packed, scale, zero_point, group_size, 4)


def linear_dequant(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Linear with an already dequantized weight, in x's dtype (formats with no fast kernel)."""
    return F.linear(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))


def _linear_fp32(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    y = F.linear(x.float(), w, None if bias is None else bias.float())
    return y.to(x.dtype)


def linear_int8_weight_only(x, qweight, scale, bias=None):
    """y = x @ (scale * qweight).T + bias, computed in fp32."""
    return _linear_fp32(x, dequantize_int8(qweight, scale), bias)


def linear_int4(x, packed, scale, zero_point, group_size, bias=None):
    """y = x @ dequantize_int4(...).T + bias, computed in fp32."""
    return _linear_fp32(x, dequantize_int4(packed, scale, zero_point, group_size), bias)


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per token (last dim): x_q = round(x * (127 / amax)), x_scale = amax / 127.

    Rounding is half-to-even on the fp32 product; a token of zeros gets x_q = 0, x_scale = 0.
    Returns x_q int8 [..., K] in [-127, 127] and x_scale fp32 [...].
    """
    x = x.float()
    amax = x.abs().amax(dim=-1, keepdim=True)
    c127 = torch.full_like(amax, 127.0)  # tensor / tensor: IEEE division, as in the kernels
    inv = torch.where(amax > 0, c127 / amax, torch.zeros_like(amax))
    x_q = torch.round(x * inv).clamp(-127, 127).to(torch.int8)
    return x_q, (amax / c127).squeeze(-1)


def linear_lowbit(x, packed, scale, zero_point, group_size, bits, bias=None):
    """y = x @ dequantize_lowbit(...).T + bias, computed in fp32 (2..7-bit group-wise weights)."""
    return _linear_fp32(x, dequantize_lowbit(packed, scale, zero_point, group_size, bits), bias)


def quantize_activations(x: torch.Tensor, group_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """quantize_per_token, or with one scale per token and group of ``group_size`` inputs.

    Returns x_q int8 [..., K] and x_scale fp32 [...] (per token) or [..., K // group_size].
    """
    if not group_size:
        return quantize_per_token(x)
    K = x.shape[-1]
    x_q, x_scale = quantize_per_token(x.reshape(*x.shape[:-1], K // group_size, group_size))
    return x_q.reshape(x.shape), x_scale


def linear_w8a8_dynamic(x, qweight, scale, bias=None, act_group_size=None):
    """W8A8: int8 x (quantize_activations: per token, or per token and group), exact integer
    dot products per group, fp32 rescale.

    y[m, n] = scale[n] * sum_g x_scale[m, g] * float(sum_{k in g} x_q[m, k] * qweight[n, k]) + bias[n]
    (one group spanning K when ``act_group_size`` is None).
    """
    x_q, x_scale = quantize_activations(x, act_group_size)
    if act_group_size:
        N, K = qweight.shape
        G = K // act_group_size
        # exact per group in fp32 too: every partial sum is an integer below 127 * 127 * 1040 < 2**24
        dtype = torch.float32 if act_group_size <= 1040 else torch.float64
        lead = x_q.shape[:-1]
        xg = x_q.to(dtype).reshape(-1, G, act_group_size).transpose(0, 1)  # (G, M, g)
        wg = qweight.to(dtype).reshape(N, G, act_group_size).permute(1, 2, 0)  # (G, g, N)
        acc = torch.bmm(xg, wg)  # (G, M, N)
        xs = x_scale.double().reshape(-1, G)
        y = acc[0].double() * xs[:, :1]
        for g in range(1, G):  # the groups summed in order, in float64
            y += acc[g].double() * xs[:, g:g + 1]
        y = y.float().reshape(*lead, N) * scale.float()
    else:
        acc = x_q.double() @ qweight.double().T  # exact: |acc| < 2**53
        y = acc.float() * (x_scale[..., None] * scale.float())
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


def dequantize_nf4(codes, s8, s2, offset, block_size: int) -> torch.Tensor:
    """fp32 [N, K] = NF4[codes] * absmax per block, the absmaxes recovered from s8, s2, offset."""
    N, K = codes.shape[0], codes.shape[1] * 2
    G = K // block_size
    q = unpack(codes, 4, K).long()  # (N, K)
    s = s8.reshape(-1, 256).float() * s2.reshape(-1, 1).float()  # (P / 256, 256)
    absmax = s.reshape(-1)[: N * G] + offset.float()  # (N * G,)
    table = torch.tensor(NF4_CODEBOOK, dtype=torch.float32, device=codes.device)
    w = table[q].reshape(N, G, block_size) * absmax.reshape(N, G, 1)  # (N, G, bs)
    return w.reshape(N, K)


def linear_nf4(x, codes, s8, s2, offset, block_size, bias=None):
    """y = x @ dequantize_nf4(...).T + bias, computed in fp32."""
    return _linear_fp32(x, dequantize_nf4(codes, s8, s2, offset, block_size), bias)
