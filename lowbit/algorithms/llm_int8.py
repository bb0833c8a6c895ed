"""LLM.int8() (Dettmers, Lewis, Belkada, Zettlemoyer, 2022): vector-wise int8 with a mixed-
precision decomposition of outlier features.

Weights are int8 with one scale per output row (vector-wise). At run time the input feature
columns O = { j : max_t |X_tj| > threshold } are taken out of the int8 product:

    Y = sum_{j in O} X_:j W_:j^T   (float)   +   s_X s_W * ( X_q[:, not O] W_q[:, not O]^T )  (int32)

where the int8 part quantizes X per token (row) with the outlier columns zeroed, so that a few
large features no longer set every token's scale.
"""
from __future__ import annotations

import torch


def outlier_columns(X: torch.Tensor, threshold: float) -> torch.Tensor:
    """Indices (LongTensor) of the columns of ``X [T, K]`` with any |X_tj| > threshold."""
    return (X.abs() > threshold).any(dim=0).nonzero().squeeze(1)


def decompose(X: torch.Tensor, O: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(X with columns O zeroed — the int8 part, X[:, O] — the float part)."""
    X_int8_part = X.index_fill(1, O, 0.0)  # (T, K)
    return X_int8_part, X.index_select(1, O)  # (T, |O|)
