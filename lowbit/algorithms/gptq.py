"""GPTQ and SparseGPT: one OBS column sweep that quantizes, prunes, or both.

GPTQ: Frantar, Ashkboos, Hoefler, Alistarh, "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers" (ICLR 2023), Algorithm 1. SparseGPT: Frantar, Alistarh,
"SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot" (ICML 2023),
Algorithm 1, including its joint sparsify-and-quantize mode.

Columns of W are visited one at a time; each column's values are replaced by what is stored
(the quantized value, zero where pruned, or both) and the error is spread over the columns not
yet visited through the inverse Hessian of the layer's reconstruction loss, ``H = 2 X X^T``,
taken as its upper Cholesky factor. Updates are applied lazily in batches of ``lazy_batch``
columns (the paper's B = 128). SparseGPT chooses its mask inside the sweep: at the start of
every lazy batch (unstructured: the ``sparsity`` fraction of the batch with the smallest
``w^2 / [H^-1]_jj^2``, the OBS saliency, over all rows) or of every M columns (N:M: per row,
the M - N smallest), from the weights as already updated by the columns before.

Groups: with ``act_order`` columns are visited by decreasing ``diag(H)``; the (scale, zero_point)
of every group are then fixed up front on the original column order ("static groups"), so the
stored groups stay contiguous and act-order costs nothing at inference. Without act-order each
group's qparams are chosen when its first column is reached, from the updated weights (pruned
entries as zeros). N:M patterns need the natural column order: act-order is off for them.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .. import primitives as P
from ..formats import QFormat
from .rtn import QWeight, clip_search


class Pruned(NamedTuple):
    """A pruning sweep's result: the kept entries ``keep`` (bool ``[N, K]``) and either the
    updated float weight ``W`` (zeros where pruned) or, in joint mode, its quantization ``q``."""

    keep: torch.Tensor
    W: torch.Tensor | None = None
    q: QWeight | None = None


def gptq(W: torch.Tensor, H: torch.Tensor, fmt: QFormat, *, damp: float = 0.01,
         lazy_batch: int = 128, act_order: bool = True, mse_clip: bool = True,
         keep: torch.Tensor | None = None) -> QWeight:
    """Quantize ``W`` [N, K] given ``H`` [K, K] (any positive multiple of ``X X^T``).

    ``damp`` adds ``damp * mean(diag H)`` to the diagonal; ``mse_clip`` picks each group's range
    with a clipping search weighted by H's diagonal blocks (:func:`rtn.clip_search`). ``keep``
    (bool [N, K]) fixes a sparsity mask: the other entries are stored as zeros and their error
    is compensated like a quantization error (GPTQ on an already-pruned weight).

    A grouped convolution gives ``H`` [G, K, K], one per group of ``N / G`` output rows (a
    depthwise conv: one per channel); each group is swept on its own.
    """
    if H.dim() == 3:
        rows = W.reshape(H.shape[0], W.shape[0] // H.shape[0], -1)
        parts = [gptq(rows[g], H[g], fmt, damp=damp, lazy_batch=lazy_batch, act_order=act_order,
                      mse_clip=mse_clip, keep=None if keep is None else keep.reshape(rows.shape)[g])
                 for g in range(H.shape[0])]
        cat = lambda ts: None if ts[0] is None else torch.cat(ts)  # noqa: E731
        return QWeight(cat([p.q for p in parts]), cat([p.scale for p in parts]), cat([p.zero_point for p in parts]))
    return _sweep(W, H, fmt, damp=damp, lazy_batch=lazy_batch, act_order=act_order,
                  mse_clip=mse_clip, keep=keep).q


def sparsegpt(W: torch.Tensor, H: torch.Tensor, *, sparsity: float = 0.0,
              pattern: tuple[int, int] | None = None, fmt: QFormat | None = None,
              damp: float = 0.01, lazy_batch: int = 128, act_order: bool = False,
              mse_clip: bool = True) -> Pruned:
    """Prune ``W`` [N, K] to ``sparsity`` (a fraction) or an N:M ``pattern`` (N kept of every M
    consecutive inputs), compensating the error through H; with ``fmt``, quantize the kept
    values in the same sweep (joint mode)."""
    if pattern is not None and act_order:
        raise ValueError("SparseGPT with an N:M pattern visits columns in their natural order: "
                         "use act_order=False")
    return _sweep(W, H, fmt, damp=damp, lazy_batch=lazy_batch, act_order=act_order,
                  mse_clip=mse_clip, sparsity=sparsity, pattern=pattern)


def _sweep(W, H, fmt: QFormat | None, *, damp, lazy_batch, act_order, mse_clip,
           keep=None, sparsity=0.0, pattern=None) -> Pruned:
    N, K = W.shape
    W, H = W.detach().float().clone(), H.detach().float().clone()
    if fmt is not None:
        g = fmt.group_size if fmt.granularity == "group" else K
        P.as_groups(W, fmt)                                # raise early if g does not divide K
    else:
        g = K
    fixed = keep is not None                               # a mask given (GPTQ on a pruned weight)
    choose = not fixed and (sparsity > 0 or pattern is not None)
    if pattern is not None and lazy_batch % pattern[1]:
        lazy_batch = lazy_batch // pattern[1] * pattern[1] or pattern[1]
    keep = torch.ones(N, K, dtype=torch.bool) if keep is None else keep.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0

    def qparams(Wcols, kcols, Hblock) -> tuple[torch.Tensor, torch.Tensor | None]:
        sub = fmt.replace(group_size=None) if fmt.granularity == "group" else fmt
        if not mse_clip and not choose:
            return P.choose_qparams(Wcols * kcols, sub)
        return clip_search(Wcols, sub, H=Hblock if mse_clip else None, grid=20 if mse_clip else 1,
                           keep=kcols)

    static = fmt is not None and (act_order or fmt.granularity != "group")
    scale = zero = None
    if static:                                             # all groups fixed up front
        if mse_clip:
            scale, zero = clip_search(W, fmt, H=H, keep=keep if fixed else None)
        else:
            scale, zero = P.choose_qparams(W, fmt)
    elif fmt is not None:
        scale = torch.empty(N, K // g, dtype=fmt.torch_scale_dtype)
        zero = None if not fmt.has_zero_point else torch.empty_like(scale)

    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(K)
    W, H, keep = W[:, perm], H[perm][:, perm], keep[:, perm]
    H += damp * torch.mean(torch.diag(H)) * torch.eye(K)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)

    zfix = float(P.fixed_zero_point(fmt)) if fmt is not None and zero is None else 0.0
    Q = torch.zeros(N, K)
    B = max(g, lazy_batch // g * g) if fmt is not None and not static else lazy_batch
    for i1 in range(0, K, B):
        i2 = min(i1 + B, K)
        W1, Err1 = W[:, i1:i2].clone(), torch.zeros(N, i2 - i1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        if choose and pattern is None:                     # SparseGPT: this batch's mask
            saliency = W1 ** 2 / torch.diag(Hinv1).reshape(1, -1) ** 2
            keep[:, i1:i2] = _keep_largest(saliency.reshape(1, -1), sparsity).reshape(N, -1)
        for i in range(i2 - i1):
            col = int(perm[i1 + i])
            if choose and pattern is not None and i % pattern[1] == 0:
                n, m = pattern
                cols = slice(i, min(i + m, i2 - i1))
                saliency = W1[:, cols] ** 2 / torch.diag(Hinv1)[cols].reshape(1, -1) ** 2
                keep[:, i1 + cols.start:i1 + cols.stop] = _keep_top(saliency, n)
            if fmt is not None and not static and col % g == 0:   # a group starts
                s, z = qparams(W1[:, i:i + g], keep[:, i1 + i:i1 + i + g], H[i1 + i:i1 + i + g, i1 + i:i1 + i + g])
                scale[:, col // g] = s[:, 0]
                if zero is not None:
                    zero[:, col // g] = z[:, 0]
            w, d, kept = W1[:, i], Hinv1[i, i], keep[:, i1 + i]
            if fmt is None:
                Q[:, i1 + i] = stored = w * kept
            else:
                s = scale[:, col // g].float()
                z = zero[:, col // g].float() if zero is not None else zfix
                q = torch.clamp(torch.round(w / s + z), fmt.qmin, fmt.qmax)
                q = torch.where(kept, q, torch.as_tensor(z).expand_as(q).round().clamp(fmt.qmin, fmt.qmax))
                Q[:, i1 + i] = q
                stored = s * (q - z) * kept
            err = (w - stored) / d
            W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]

    out, kept = torch.empty_like(Q), torch.empty_like(keep)
    out[:, perm], kept[:, perm] = Q, keep                  # back to the original column order
    if fmt is None:
        return Pruned(kept, W=out)
    q = out.to(torch.int8 if fmt.signed else torch.uint8)
    return Pruned(kept, q=QWeight(q, scale, zero))


def _keep_largest(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Per row of ``score``, True for all but the ``sparsity`` fraction with the smallest score."""
    drop = int(score.shape[1] * sparsity)
    keep = torch.ones_like(score, dtype=torch.bool)
    if drop:
        idx = torch.topk(score, drop, dim=1, largest=False).indices
        keep.scatter_(1, idx, False)
    return keep


def _keep_top(score: torch.Tensor, n: int) -> torch.Tensor:
    """Per row, True for the ``n`` largest entries of ``score`` [rows, m]."""
    keep = torch.zeros_like(score, dtype=torch.bool)
    keep.scatter_(1, torch.topk(score, min(n, score.shape[1]), dim=1).indices, True)
    return keep
