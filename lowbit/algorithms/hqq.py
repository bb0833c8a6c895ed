"""HQQ: Badri & Shaji, "Half-Quadratic Quantization of Large Machine Learning Models" (2023).

No calibration data. With the scale S fixed from the group's range, the zero point Z is fitted
to minimise the sparsity-promoting loss ``||W - S (W_q - Z)||_p^p`` (p < 1) by half-quadratic
splitting: an auxiliary error W_e is solved by the generalised soft-threshold (lp shrinkage)

    W_e   <- shrink_p(W - S (W_q - Z), beta)
    Z     <- mean(W_q - (W - W_e) / S)                       (closed form, per group)
    beta  <- kappa * beta

and the iterate with the lowest loss is kept. Unlike the reference implementation, S and Z are
then stored in ``fmt.scale_dtype`` (bf16 for groups), and W_q is recomputed with the stored
values, so a 4-bit g64 weight costs 4.5 bits, not 5.
"""
from __future__ import annotations

import torch

from .. import primitives as P
from ..formats import QFormat
from .rtn import QWeight


def shrink_lp(x: torch.Tensor, beta: float, p: float) -> torch.Tensor:
    """Generalised soft-thresholding: the proximal operator of ``|x|^p / beta``."""
    return torch.sign(x) * torch.relu(x.abs() - x.abs().clamp_min(1e-12).pow(p - 1) / beta)


def hqq_objective(W: torch.Tensor, qw: QWeight, fmt: QFormat, p: float = 0.7) -> float:
    """``mean |W - dequantize(qw)|^p``, the loss HQQ minimises."""
    R = P.dequantize(qw.q, qw.scale, qw.zero_point, fmt)
    return (W.float() - R).abs().pow(p).mean().item()


def hqq(W: torch.Tensor, fmt: QFormat, *, iters: int = 20, p: float = 0.7, beta: float = 10.0,
        kappa: float = 1.01) -> QWeight:
    """Fit the zero points of ``W`` [N, K] by half-quadratic optimisation (asymmetric formats).

    ``iters=0`` is round-to-nearest with the min-max range.
    """
    if fmt.kind != "int" or not fmt.has_zero_point:
        raise ValueError(f"HQQ fits zero points, so it needs an asymmetric integer format "
                         f"(e.g. int_format(4, signed=False, symmetric=False)); got {fmt.label()}")
    scale, zero_point = P.choose_qparams(W, fmt)
    Wg = P.as_groups(W, fmt).float()                        # (N, G, g)
    S = scale.float().unsqueeze(-1)                         # (N, G, 1)
    Z = zero_point.float().unsqueeze(-1)                    # (N, G, 1)

    def loss(Z: torch.Tensor) -> torch.Tensor:
        Wq = torch.round(Wg / S + Z).clamp(fmt.qmin, fmt.qmax)
        return (Wg - S * (Wq - Z)).abs().pow(p).mean()

    best_Z, best = Z, loss(Z)
    for _ in range(iters):
        Wq = torch.round(Wg / S + Z).clamp(fmt.qmin, fmt.qmax)
        We = shrink_lp(Wg - S * (Wq - Z), beta, p)
        Z = torch.mean(Wq - (Wg - We) / S, dim=-1, keepdim=True)
        beta *= kappa
        current = loss(Z)
        if current < best:
            best_Z, best = Z, current
    zero_point = best_Z.squeeze(-1).to(fmt.torch_scale_dtype)       # stored (bf16) zero points
    return QWeight(P.quantize(W, scale, zero_point, fmt), scale, zero_point)
