"""Round to nearest, with an optional clipping search for each group's range.

Plain RTN takes each group's [min, max] as its range. The clipping search (the "MSE" range
of GPTQ's reference quantizer, Frantar et al., 2022, and AWQ's weight clipping, Lin et al.,
2023) shrinks the range by a factor ``p`` from a grid and keeps, per group, the ``p`` with the
smallest error: plain weight MSE ``||w - Q(w)||^2``, or, given the input second moment
``H = E[x x^T]``, the output error ``(w - Q(w)) H_gg (w - Q(w))^T`` of the group's columns.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .. import primitives as P
from ..formats import QFormat


class QWeight(NamedTuple):
    """An algorithm's result: ``q`` on the grid (unpacked, ``[N, K]``), ``scale`` and
    ``zero_point`` (``[N, groups]``, stored dtype; zero_point None for symmetric formats)."""

    q: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor | None


def rtn(W: torch.Tensor, fmt: QFormat, *, mse_clip: bool = False, H: torch.Tensor | None = None,
        grid: int = 20, max_shrink: float = 0.5) -> QWeight:
    """Round-to-nearest quantization of ``W`` [N, K], optionally with a clipping search."""
    if mse_clip or H is not None:
        scale, zero_point = clip_search(W, fmt, H=H, grid=grid, max_shrink=max_shrink)
    else:
        scale, zero_point = P.choose_qparams(W, fmt)
    return QWeight(P.quantize(W, scale, zero_point, fmt), scale, zero_point)


def fake_quant(W: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None,
               fmt: QFormat) -> torch.Tensor:
    """``dequantize(quantize(W))`` in float32 with the given qparams."""
    return P.dequantize(P.quantize(W, scale, zero_point, fmt), scale, zero_point, fmt)


def group_error(D: torch.Tensor, fmt: QFormat, H: torch.Tensor | None = None) -> torch.Tensor:
    """Per-group error ``[N, groups]`` of a weight error ``D`` [N, K].

    Without ``H`` the squared norm of each group; with ``H`` [K, K] the quadratic form
    ``d_g H_gg d_g^T`` on each group's diagonal block (cross-group terms ignored).
    """
    Dg = P.as_groups(D, fmt)                                       # (N, G, g)
    if H is None:
        return Dg.pow(2).sum(-1)
    G, g = Dg.shape[1], Dg.shape[2]
    Hb = H.reshape(G, g, G, g).diagonal(dim1=0, dim2=2).permute(2, 0, 1)  # (G, g, g)
    return torch.einsum("ngi,gij,ngj->ng", Dg, Hb, Dg)


def clip_search(W: torch.Tensor, fmt: QFormat, *, H: torch.Tensor | None = None, grid: int = 20,
                max_shrink: float = 0.5, keep: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scale and zero_point per group, each group's range shrunk by the best factor.

    Factors ``p = 1, 1 - 1/grid, ...`` down to ``1 - max_shrink``; the range ``[p min, p max]``
    with the smallest :func:`group_error` wins (p = 1 is plain RTN, so the error never grows).
    With ``keep`` (bool, W's shape) only the kept entries of a pruned weight count, for the
    range and for the error (the others are stored as zeros whatever the grid).
    """
    W = W.float()
    Wg = P.as_groups(W, fmt)                                       # (N, G, g)
    if keep is None:
        lo, hi = Wg.amin(-1), Wg.amax(-1)                          # (N, G)
    else:
        kg = P.as_groups(keep, fmt)
        lo = torch.where(kg, Wg, torch.inf).amin(-1).nan_to_num(0.0, posinf=0.0)
        hi = torch.where(kg, Wg, -torch.inf).amax(-1).nan_to_num(0.0, neginf=0.0)
    best_err = torch.full_like(lo, float("inf"))
    best_scale = best_zero = None
    for i in range(int(grid * max_shrink) + 1):
        p = 1 - i / grid
        scale, zero_point = P.choose_qparams(W, fmt, min_val=lo * p, max_val=hi * p)
        D = W - _fake_quant_int(Wg, scale, zero_point, fmt).reshape(W.shape)
        err = group_error(D if keep is None else D * keep, fmt, H)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_scale = scale if best_scale is None else torch.where(better, scale, best_scale)
        if zero_point is not None:
            best_zero = zero_point if best_zero is None else torch.where(better, zero_point, best_zero)
    return best_scale, best_zero


def _fake_quant_int(Wg: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None,
                    fmt: QFormat) -> torch.Tensor:
    """Quantize-dequantize of grouped ``Wg`` (N, G, g): the arithmetic of :func:`fake_quant`,
    without the layout checks (the clipping search calls it many times per weight)."""
    if fmt.kind != "int":
        return P.as_groups(fake_quant(Wg.reshape(Wg.shape[0], -1), scale, zero_point, fmt), fmt)
    s = scale.float().unsqueeze(-1)
    z = zero_point.float().unsqueeze(-1) if zero_point is not None else float(P.fixed_zero_point(fmt))
    return (torch.round(Wg / s + z).clamp_(fmt.qmin, fmt.qmax) - z) * s
