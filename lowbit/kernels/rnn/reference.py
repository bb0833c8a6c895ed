"""Pure-PyTorch reference of the dynamic int8 LSTM: the numerics the C++ kernel reproduces.

Activations are quantized per row (``reference.quantize_per_token``: symmetric int8, scale
amax / 127, round half to even), weights are int8 per output channel, every product is an
exact integer dot product rescaled in fp32 (``reference.linear_w8a8_dynamic``). Gates and the
cell state stay fp32. Runs anywhere, slowly: the C++ kernel is compared against it in tests.
"""
from __future__ import annotations

import torch

from lowbit.kernels.reference import linear_w8a8_dynamic


def lstm_layer(x, w_ih, s_ih, w_hh, s_hh, bias, h0, c0):
    """One LSTM layer over ``x`` [T, B, I]; ``w_*`` int8 [4H, K] (gate order i, f, g, o) with
    fp32 per-channel scales [4H]; ``bias`` [4H] (b_ih + b_hh) or None; ``h0``, ``c0`` [B, H].
    Returns ``(out [T, B, H], h_T, c_T)``."""
    T, B, I = x.shape
    gx = linear_w8a8_dynamic(x.reshape(T * B, I).float(), w_ih, s_ih, bias).reshape(T, B, -1)  # (T, B, 4H)
    h, c = h0.float(), c0.float()
    out = []
    for t in range(T):
        g = linear_w8a8_dynamic(h, w_hh, s_hh) + gx[t]  # (B, 4H)
        i, f, u, o = g.chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(u)
        h = torch.sigmoid(o) * torch.tanh(c)
        out.append(h)
    return torch.stack(out), h, c
