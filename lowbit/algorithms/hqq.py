"""HQQ: Badri & Shaji, "Half-Quadratic Quantization of Large Machine Learning Models" (2023).

No calibration data. With the scale S fixed from the group's range, the zero point Z is fitted
to minimise the sparsity-promoting loss ``||W - S (W_q - Z)||_p^p`` (p < 1) by half-quadratic
splitting: an auxiliary error W_e is solved by the generalised soft-threshold (lp shrinkage)

    W_e   <- shrink_p(W - S (W_q - Z), beta)
    Z     <- mean(W_q - (W - W_e) / S)                       (closed form, per group)
    beta  <- kappa * beta

Unlike the reference implementation, S and Z are stored in ``fmt.scale_dtype`` (bf16 for
groups), so a 4-bit g64 weight costs 4.5 bits, not 5. Each Z iterate is therefore rounded to
the stored dtype before it is used, and each group keeps its own best iterate (the reference
keeps one iterate for the whole tensor). Rounding Z to bf16 after the fact (Z in [8, 16) has a
bf16 spacing of 1/16) alone costs SmolLM2-135M W4 g64 2% of its KL to fp32.

Then, on the grid HQQ chose, S and Z are refitted by least squares (``refit`` rounds, each
kept per group only where it lowers the squared error): the first round the scale alone for
HQQ's zero points, ``S <- <W, W_q - Z> / <W_q - Z, W_q - Z>``, the later rounds both, as the
line ``W ~ a W_q + b`` through the group (S = a, Z = -b / a), with W_q re-rounded in between;
every fit is rounded to the stored dtype. KL to fp32 on 8,192 tokens of SmolLM2-135M W4 g64:
0.1868 with one scale refit of the tensor-wide best Z; 0.1778 with the per-group, stored-dtype
Z iterates, the scale round and 4 joint rounds; 0.1772 with 8 (the default ``refit=9``); the
reference's fp32-stored S and Z (5 bits) give 0.1881. Full protocol (32,768 tokens): ppl 30.41,
KL 0.1763 at 4.5 bits, where hqq 0.2.8 gives 30.61 / 0.1843 at 5.
"""
from __future__ import annotations

import torch

from .. import primitives as P
from ..formats import QFormat
from .rtn import QWeight


def _stored(x: torch.Tensor, fmt: QFormat) -> torch.Tensor:
    """``x`` rounded to the dtype scales and zero points are stored in, back in fp32."""
    return x.to(fmt.torch_scale_dtype).float()


def _grid(Wg: torch.Tensor, S: torch.Tensor, Z: torch.Tensor, fmt: QFormat) -> torch.Tensor:
    """W_q = clamp(round(W / S + Z)) of the groups ``Wg`` (N, G, g) for S, Z (N, G, 1)."""
    return torch.round(Wg / S + Z).clamp(fmt.qmin, fmt.qmax)


def shrink_lp(x: torch.Tensor, beta: float, p: float) -> torch.Tensor:
    """Generalised soft-thresholding: the proximal operator of ``|x|^p / beta``."""
    return torch.sign(x) * torch.relu(x.abs() - x.abs().clamp_min(1e-12).pow(p - 1) / beta)


def hqq_objective(W: torch.Tensor, qw: QWeight, fmt: QFormat, p: float = 0.7) -> float:
    """``mean |W - dequantize(qw)|^p``, the loss HQQ minimises."""
    R = P.dequantize(qw.q, qw.scale, qw.zero_point, fmt)
    return (W.float() - R).abs().pow(p).mean().item()


def hqq(W: torch.Tensor, fmt: QFormat, *, iters: int = 20, p: float = 0.7, beta: float = 10.0,
        kappa: float = 1.01, refit: int = 9) -> QWeight:
    """Fit the zero points of ``W`` [N, K] by half-quadratic optimisation (asymmetric formats).

    ``iters=0`` is round-to-nearest with the min-max range. ``refit`` is the number of
    least-squares rounds on the stored grid that follow; ``refit=0`` is the paper's HQQ alone.
    """
    if fmt.kind != "int" or not fmt.has_zero_point:
        raise ValueError(f"HQQ fits zero points, so it needs an asymmetric integer format "
                         f"(e.g. int_format(4, signed=False, symmetric=False)); got {fmt.label()}")
    if refit < 0:
        raise ValueError(f"hqq: refit is a number of least-squares rounds (>= 0); got {refit}")
    scale, zero_point = P.choose_qparams(W, fmt)
    Wg = P.as_groups(W, fmt).float()                        # (N, G, g)
    S = scale.float().unsqueeze(-1)                         # (N, G, 1)
    Z = zero_point.float().unsqueeze(-1)                    # (N, G, 1)

    def loss(S: torch.Tensor, Z: torch.Tensor, p: float) -> torch.Tensor:  # per group (N, G, 1)
        return (Wg - S * (_grid(Wg, S, Z, fmt) - Z)).abs().pow(p).mean(-1, keepdim=True)

    best_Z, best = Z, loss(S, Z, p)
    for _ in range(iters):
        Wq = _grid(Wg, S, Z, fmt)
        We = shrink_lp(Wg - S * (Wq - Z), beta, p)
        Z = _stored(torch.mean(Wq - (Wg - We) / S, dim=-1, keepdim=True), fmt)
        beta *= kappa
        current = loss(S, Z, p)
        best_Z, best = torch.where(current < best, Z, best_Z), torch.minimum(current, best)
    Z = best_Z
    if iters > 0 and refit > 0:
        S, Z = refit_least_squares(Wg, S, Z, fmt, refit)
    return QWeight(P.quantize(W, S.squeeze(-1), Z.squeeze(-1), fmt),
                   S.squeeze(-1).to(fmt.torch_scale_dtype), Z.squeeze(-1).to(fmt.torch_scale_dtype))


def refit_least_squares(Wg: torch.Tensor, S: torch.Tensor, Z: torch.Tensor, fmt: QFormat,
                        rounds: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares S and Z (each (N, G, 1)) of the groups ``Wg`` (N, G, g) on their rounded
    grid: round 1 the scale alone for the given zero points, later rounds the line
    ``W ~ a W_q + b`` (S = a, Z = -b / a). Fits are rounded to the stored dtype; a group keeps
    a round only where it lowers its squared error, and a degenerate fit (a <= 0) keeps S, Z."""
    def sq_err(S: torch.Tensor, Z: torch.Tensor) -> torch.Tensor:
        return (Wg - S * (_grid(Wg, S, Z, fmt) - Z)).pow(2).mean(-1, keepdim=True)

    best_S, best_Z, best = S, Z, sq_err(S, Z)
    for r in range(rounds):
        Wq = _grid(Wg, S, Z, fmt)                                # (N, G, g)
        if r == 0:                                           # the scale for the given Z
            D = Wq - Z
            a = _stored((Wg * D).sum(-1, keepdim=True) / (D * D).sum(-1, keepdim=True).clamp_min(1e-12), fmt)
            Z_new = Z
        else:                                                # the line W ~ a W_q + b
            Dq, Dw = Wq - Wq.mean(-1, keepdim=True), Wg - Wg.mean(-1, keepdim=True)
            a = _stored((Dq * Dw).sum(-1, keepdim=True) / (Dq * Dq).sum(-1, keepdim=True).clamp_min(1e-12), fmt)
            b = Wg.mean(-1, keepdim=True) - a * Wq.mean(-1, keepdim=True)
            Z_new = _stored(-b / a.clamp_min(torch.finfo(torch.float32).tiny), fmt)
        ok = a > 0                                           # a constant group keeps its S, Z
        S, Z = torch.where(ok, a, S), torch.where(ok, Z_new, Z)
        current = sq_err(S, Z)
        better = current < best
        best_S, best_Z = torch.where(better, S, best_S), torch.where(better, Z, best_Z)
        best = torch.minimum(current, best)
    return best_S, best_Z
