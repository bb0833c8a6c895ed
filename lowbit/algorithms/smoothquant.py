"""SmoothQuant (Xiao, Lin, Seznec, Wu, Demouth, Han, 2022, §4): migrate activation outliers
into the weights with a per-input-channel scale s, then quantize both to int8 (W8A8).

    s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)          Y = (X diag(s)^-1) (diag(s) W^T)

X / s is folded into what produces X — the preceding normalisation's weight (and bias), or the
rows of a preceding Linear whose output reaches X through a channel-wise op that commutes with a
positive scale (Llama's act(gate) * up, OPT's ReLU) — and W * s into every Linear that reads X,
so the float function is unchanged before rounding.
"""
from __future__ import annotations

import torch

_EPS = 1e-5


def smoothing_scales(act_absmax: torch.Tensor, weights: list[torch.Tensor],
                     alpha: float = 0.5) -> torch.Tensor:
    """s [K] from the per-channel max|X_j| [K] and the weights [N_i, K] that read X."""
    W_absmax = torch.stack([W.abs().amax(dim=0) for W in weights]).amax(dim=0)  # (K,)
    s = act_absmax.float().clamp_min(_EPS) ** alpha / W_absmax.float().clamp_min(_EPS) ** (1 - alpha)
    return s.clamp_min(_EPS)


def migrate(prev_weight: torch.Tensor, prev_bias: torch.Tensor | None,
            weights: list[torch.Tensor], s: torch.Tensor):
    """(prev_weight / s, prev_bias / s, [W * s]): the same function, outliers moved to W.

    ``prev_weight`` is a norm's weight [K] or a producing Linear's weight [K, in] (rows scaled).
    """
    s_prev = s.reshape(-1, *([1] * (prev_weight.dim() - 1)))  # (K,) or (K, 1)
    bias = None if prev_bias is None else prev_bias / s
    return prev_weight / s_prev, bias, [W * s[None, :] for W in weights]  # W: (N_i, K)


def static_scale(absmax: torch.Tensor) -> torch.Tensor:
    """Per-tensor symmetric int8 scale max|X| / 127 of a calibrated range (fp32 scalar)."""
    return (absmax.float().amax() / 127).clamp_min(1e-12).reshape(())
