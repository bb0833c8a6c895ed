"""AWQ: Lin, Tang, Tang, Yang, Dang, Gan, Han, "AWQ: Activation-aware Weight Quantization for
LLM Compression and Acceleration" (MLSys 2024), section 3.

Salient input channels are those with large activations. Scaling input channel j of the weights
by ``s_j`` and its activation by ``1 / s_j`` leaves the float function unchanged,
``(W diag(s)) (diag(s)^-1 x) = W x``, but shrinks the relative rounding error of the salient
weights. The scale is ``s = mean|x|^alpha`` (normalised), with alpha chosen on a grid to minimise
the output error of the quantized layers. The error is measured exactly over all calibration
tokens through their second moment ``H = E[x x^T]``:

    err(s) = sum over layers of  tr( D H D^T ),   D = W - Q(W diag(s)) diag(s)^-1

Then the range of each group is clipped (:func:`lowbit.algorithms.rtn.clip_search` with H).
Folding ``1 / s`` into the op that produces x needs the model's structure: the caller does it.
"""
from __future__ import annotations

import torch

from ..formats import QFormat
from .rtn import QWeight, clip_search, fake_quant, rtn
from .. import primitives as P


def output_error(D: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """``tr(D H D^T)``: the summed squared output error of a weight error D [N, K]."""
    return torch.einsum("nk,nk->", D @ H, D)


def awq_scale(weights: list[torch.Tensor], x_abs_mean: torch.Tensor, H: torch.Tensor,
              fmt: QFormat, *, grid: int = 20) -> torch.Tensor:
    """Per-input-channel scale ``s`` [K] for layers sharing one input (weights each [N_i, K]).

    ``x_abs_mean`` [K] is ``E|x|`` per channel, ``H`` [K, K] is ``E[x x^T]``. alpha = 0 gives
    s = 1 (plain RTN), so the chosen scale never has a larger error than RTN on this loss.
    """
    Ws = [W.detach().float() for W in weights]
    best_err, best_s = float("inf"), torch.ones_like(x_abs_mean)
    for i in range(grid):
        alpha = i / grid
        s = x_abs_mean.float().pow(alpha).clamp_min(1e-4)
        s = s / (s.max() * s.min()).sqrt()
        err = 0.0
        for W in Ws:
            Ws_ = W * s                                        # (N, K) scaled weights
            scale, zero_point = P.choose_qparams(Ws_, fmt)
            err += output_error(W - fake_quant(Ws_, scale, zero_point, fmt) / s, H).item()
        if err < best_err:
            best_err, best_s = err, s
    return best_s


def awq_quantize(W: torch.Tensor, H: torch.Tensor, fmt: QFormat, *, clip: bool = True,
                 grid: int = 20, max_shrink: float = 0.5) -> QWeight:
    """Quantize already-scaled weights ``W`` [N, K] whose inputs have second moment ``H``,
    with AWQ's weight clipping search (``clip``) or plain min-max range."""
    if not clip:
        return rtn(W, fmt)
    scale, zero_point = clip_search(W, fmt, H=H, grid=grid, max_shrink=max_shrink)
    return QWeight(P.quantize(W, scale, zero_point, fmt), scale, zero_point)
