"""Pruning as pure tensor functions: which weights to keep, and structured channel importance.

- :func:`magnitude_keep`: the textbook baseline, ``torch.nn.utils.prune.l1_unstructured`` on
  each layer: the smallest |w| of the whole tensor go.
- :func:`wanda_keep`: Sun, Liu, Bair, Kolter, "A Simple and Effective Pruning Approach for Large
  Language Models" (ICLR 2024): score ``|W_ij| * ||X_j||_2``, compared within each output row;
  no weight update.
- SparseGPT (the OBS sweep with weight updates) lives beside GPTQ: :func:`lowbit.algorithms.gptq.sparsegpt`.
- :func:`channel_importance`: for structured pruning of an MLP, each hidden channel's share of
  the output energy, ``||W_down[:, c]||^2 * E[x_c^2]`` (the Wanda score summed over a column).

A sparsity is a fraction in [0, 1); a pattern ``(n, m)`` keeps ``n`` of every ``m`` consecutive
inputs of each row ("2:4" keeps 2 of 4).
"""
from __future__ import annotations

import torch

from .gptq import _keep_largest, _keep_top


def parse_pattern(pattern: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """``"2:4"`` -> (2, 4); None stays None; anything else raises naming the expected form."""
    if pattern is None:
        return None
    if isinstance(pattern, str):
        n, sep, m = pattern.partition(":")
        if sep and n.strip().isdigit() and m.strip().isdigit():
            pattern = (int(n), int(m))
    if (not isinstance(pattern, tuple) or len(pattern) != 2
            or not all(isinstance(v, int) for v in pattern) or not 0 < pattern[0] < pattern[1]):
        raise ValueError(f"an N:M pattern keeps N of every M consecutive weights with 0 < N < M, "
                         f"written like '2:4' or '4:8'; got {pattern!r}")
    return pattern


def check_sparsity(sparsity) -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
        raise ValueError(f"sparsity is the fraction of weights removed, in [0, 1) (e.g. 0.5); "
                         f"got {sparsity!r}")
    return float(sparsity)


def check_pattern_fits(pattern: tuple[int, int] | None, in_features: int, name: str) -> None:
    if pattern is not None and in_features % pattern[1]:
        raise ValueError(f"{name}: an {pattern[0]}:{pattern[1]} pattern groups the inputs by "
                         f"{pattern[1]}, which does not divide this layer's {in_features} inputs; "
                         f"use a pattern whose M divides it, or exclude the layer")


def keep_by_score(score: torch.Tensor, sparsity: float = 0.0, pattern: tuple[int, int] | None = None,
                  *, per_row: bool = True) -> torch.Tensor:
    """Bool mask [N, K] of the entries to keep: the largest ``score`` values per row (or over
    the whole tensor when ``per_row=False``), or ``n`` of every ``m`` consecutive columns."""
    N, K = score.shape
    if pattern is not None:
        n, m = pattern
        if K % m:
            raise ValueError(f"{n}:{m} pattern: M={m} does not divide the {K} inputs")
        return _keep_top(score.reshape(N * K // m, m), n).reshape(N, K)
    if per_row:
        return _keep_largest(score, sparsity)
    return _keep_largest(score.reshape(1, -1), sparsity).reshape(N, K)


def magnitude_keep(W: torch.Tensor, sparsity: float = 0.0,
                   pattern: tuple[int, int] | None = None) -> torch.Tensor:
    """Keep the largest |w| of the tensor (or n of every m per row with a pattern); a conv
    weight is taken as rows of output channels."""
    score = W.detach().float().abs().reshape(W.shape[0], -1)
    return keep_by_score(score, sparsity, pattern, per_row=pattern is not None).reshape(W.shape)


def wanda_keep(W: torch.Tensor, x_sq: torch.Tensor, sparsity: float = 0.0,
               pattern: tuple[int, int] | None = None) -> torch.Tensor:
    """Keep the largest ``|W_ij| * ||X_j||`` per output row; ``x_sq`` [K] is ``E[x_j^2]`` (or
    any positive multiple: the diagonal of the layer's input Hessian)."""
    score = W.detach().float().abs() * x_sq.float().clamp_min(0).sqrt().reshape(1, -1)
    return keep_by_score(score, sparsity, pattern, per_row=True)


def channel_importance(W_down: torch.Tensor, x_sq: torch.Tensor) -> torch.Tensor:
    """Per hidden channel c of an MLP: ``||W_down[:, c]||^2 * E[x_c^2]`` [K]."""
    return W_down.detach().float().pow(2).sum(0) * x_sq.float().clamp_min(0)
