"""Pure-PyTorch reference of the dynamic int8 LSTM: the numerics the C++ kernel reproduces.

Activations are quantized per row to 7 bits (:func:`quantize_rows_7bit`: symmetric, [-63, 63],
scale amax / 63, round half to even; the 7th bit is what lets the C++ kernel multiply with
vpmaddubsw without saturating, as fbgemm's ``reduce_range``), weights are int8 per output
channel, every product is an exact integer dot product rescaled in fp32
(:func:`linear_dynamic`). Gates and the cell state stay fp32. Runs anywhere, slowly: the C++
kernel is compared against it in tests.
"""
from __future__ import annotations

import torch

QMAX = 63  # 7-bit activations


def quantize_rows_7bit(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row (last dim): x_q = round_half_even(x * (63 / amax)) in [-63, 63] int8, x_scale =
    amax / 63 fp32 [...]; a row of zeros gets x_q = 0, x_scale = 0."""
    x = x.float()
    amax = x.abs().amax(dim=-1, keepdim=True)
    cmax = torch.full_like(amax, float(QMAX))  # tensor / tensor: IEEE division, as in the kernel
    inv = torch.where(amax > 0, cmax / amax, torch.zeros_like(amax))
    x_q = torch.round(x * inv).clamp(-QMAX, QMAX).to(torch.int8)
    return x_q, (amax / cmax).squeeze(-1)


def linear_dynamic(x, qweight, scale, bias=None):
    """y[m, n] = float(sum_k x_q[m, k] * qweight[n, k]) * (x_scale[m] * scale[n]) + bias[n], with
    (x_q, x_scale) = quantize_rows_7bit(x) and the dot products exact."""
    x_q, x_scale = quantize_rows_7bit(x)
    acc = x_q.double() @ qweight.double().T  # exact: |acc| < 2**53
    y = acc.float() * (x_scale[..., None] * scale.float())
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


def lstm_layer(x, w_ih, s_ih, w_hh, s_hh, bias, h0, c0):
    """One LSTM layer over ``x`` [T, B, I]; ``w_*`` int8 [4H, K] (gate order i, f, g, o) with
    fp32 per-channel scales [4H]; ``bias`` [4H] (b_ih + b_hh) or None; ``h0``, ``c0`` [B, H].
    Returns ``(out [T, B, H], h_T, c_T)``."""
    T, B, I = x.shape
    gx = linear_dynamic(x.reshape(T * B, I).float(), w_ih, s_ih, bias).reshape(T, B, -1)  # (T, B, 4H)
    h, c = h0.float(), c0.float()
    out = []
    for t in range(T):
        g = linear_dynamic(h, w_hh, s_hh) + gx[t]  # (B, 4H)
        i, f, u, o = g.chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(u)
        h = torch.sigmoid(o) * torch.tanh(c)
        out.append(h)
    return torch.stack(out), h, c
