"""HQQ: Badri & Shaji, "Half-Quadratic Quantization of Large Machine Learning Models" (2023).

No calibration data. With the scale S fixed from the group's range, the zero point Z is fitted
to minimise the sparsity-promoting loss ``||W - S (W_q - Z)||_p^p`` (p < 1) by half-quadratic
splitting: an auxiliary error W_e is solved by the generalised soft-threshold (lp shrinkage)

    W_e   <- shrink_p(W - S (W_q - Z), beta)
    Z     <- mean(W_q - (W - W_e) / S)                       (closed form, per group)
    beta  <- kappa * beta

and the iterate with the lowest loss is kept. Unlike the reference implementation, S and Z are
then stored in ``fmt.scale_dtype`` (bf16 for groups), so a 4-bit g64 weight costs 4.5 bits, not
5. Rounding Z to bf16 moves it by up to 1/32 of a step (Z in [8, 16) has a bf16 spacing of
1/16), which alone costs SmolLM2-135M W4 g64 2% of its KL to fp32; so, with Z fixed at its
stored value, S is refitted per group by least squares,

    S <- <W, W_q - Z> / <W_q - Z, W_q - Z>,

rounded to bf16, and W_q recomputed. That recovers the loss and a little more (KL 0.1925 ->
0.1868 on 8,192 tokens; fp32-stored S and Z give 0.1881).
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
        kappa: float = 1.01, refit: bool = True) -> QWeight:
    """Fit the zero points of ``W`` [N, K] by half-quadratic optimisation (asymmetric formats).

    ``iters=0`` is round-to-nearest with the min-max range. ``refit=False`` skips the
    least-squares scale refit for the stored zero points (the paper's HQQ, bf16-rounded).
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
    if refit and iters > 0 and fmt.torch_scale_dtype != torch.float32:
        scale = refit_scale(Wg, scale, zero_point, fmt)
    return QWeight(P.quantize(W, scale, zero_point, fmt), scale, zero_point)


def refit_scale(Wg: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, fmt: QFormat) -> torch.Tensor:
    """Least-squares scales for the stored zero points: per group of ``Wg`` (N, G, g),
    ``argmin_S ||W - S (W_q - Z)||^2`` with W_q rounded at the current scale; stored dtype."""
    S = scale.float().unsqueeze(-1)                         # (N, G, 1)
    Z = zero_point.float().unsqueeze(-1)
    D = torch.round(Wg / S + Z).clamp(fmt.qmin, fmt.qmax) - Z
    S_ls = (Wg * D).sum(-1, keepdim=True) / (D * D).sum(-1, keepdim=True).clamp_min(1e-12)
    S = torch.where(S_ls > 0, S_ls, S)                      # a constant group keeps its scale
    return S.squeeze(-1).to(fmt.torch_scale_dtype)
