"""GPTQ: Frantar, Ashkboos, Hoefler, Alistarh, "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers" (ICLR 2023), Algorithm 1.

Columns of W are quantized one at a time; the error of each is spread over the columns not yet
quantized through the inverse Hessian of the layer's reconstruction loss, ``H = 2 X X^T``, taken
as its upper Cholesky factor. Updates are applied lazily in batches of ``lazy_batch`` columns (the paper's lazy batch-updates, B = 128).

Groups: with ``act_order`` columns are visited by decreasing ``diag(H)``; the (scale, zero_point)
of every group are then fixed up front on the original column order ("static groups"), so the
stored groups stay contiguous and act-order costs nothing at inference. Without act-order each
group's qparams are chosen when its first column is reached, from the updated weights.
"""
from __future__ import annotations

import torch

from .. import primitives as P
from ..formats import QFormat
from .rtn import QWeight, clip_search


def gptq(W: torch.Tensor, H: torch.Tensor, fmt: QFormat, *, damp: float = 0.01,
         lazy_batch: int = 128, act_order: bool = True, mse_clip: bool = True) -> QWeight:
    """Quantize ``W`` [N, K] given ``H`` [K, K] (any positive multiple of ``X X^T``).

    ``damp`` adds ``damp * mean(diag H)`` to the diagonal; ``mse_clip`` picks each group's range
    with a clipping search weighted by H's diagonal blocks (:func:`rtn.clip_search`).
    """
    N, K = W.shape
    W, H = W.detach().float().clone(), H.detach().float().clone()
    g = fmt.group_size if fmt.granularity == "group" else K
    P.as_groups(W, fmt)                                    # raise early if g does not divide K
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0

    def qparams(Wcols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        sub = fmt.replace(group_size=None) if fmt.granularity == "group" else fmt
        if not mse_clip:
            return P.choose_qparams(Wcols, sub)
        return clip_search(Wcols, sub, H=None)

    static = act_order or fmt.granularity != "group"
    if static:                                             # all groups fixed up front
        if mse_clip:
            scale, zero = clip_search(W, fmt, H=H)
        else:
            scale, zero = P.choose_qparams(W, fmt)
    else:
        scale = torch.empty(N, K // g, dtype=fmt.torch_scale_dtype)
        zero = None if not fmt.has_zero_point else torch.empty_like(scale)

    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(K)
    W, H = W[:, perm], H[perm][:, perm]
    H += damp * torch.mean(torch.diag(H)) * torch.eye(K)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)

    zfix = float(P.fixed_zero_point(fmt)) if zero is None else 0.0
    Q = torch.zeros(N, K)
    B = max(g, lazy_batch // g * g) if not static else lazy_batch
    for i1 in range(0, K, B):
        i2 = min(i1 + B, K)
        W1, Err1 = W[:, i1:i2].clone(), torch.zeros(N, i2 - i1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = int(perm[i1 + i])
            if not static and col % g == 0:                # a group starts: choose its qparams
                s, z = qparams(W1[:, i : i + g])
                scale[:, col // g] = s[:, 0]
                if zero is not None:
                    zero[:, col // g] = z[:, 0]
            w, d = W1[:, i], Hinv1[i, i]
            s = scale[:, col // g].float()
            z = zero[:, col // g].float() if zero is not None else zfix
            q = torch.clamp(torch.round(w / s + z), fmt.qmin, fmt.qmax)
            Q[:, i1 + i] = q
            err = (w - s * (q - z)) / d
            W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]

    q = torch.empty_like(Q)
    q[:, perm] = Q                                         # back to the original column order
    return QWeight(q.to(torch.int8 if fmt.signed else torch.uint8), scale, zero)
