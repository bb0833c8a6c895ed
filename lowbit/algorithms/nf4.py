"""NF4 with double quantization (QLoRA: Dettmers, Pagnoni, Holtzman, Zettlemoyer, 2023, §3).

Each block of ``block_size`` consecutive weights of a row is scaled by its absmax c and every
value is stored as the index of the nearest of the 16 NormalFloat levels (quantiles of N(0, 1)
normalised to [-1, 1], :data:`lowbit.formats.NF4_CODEBOOK`):

    W_q = argmin_i | W / c - NF4_i |          W ≈ c * NF4[W_q]

Double quantization stores the fp32 absmaxes c themselves as int8 in blocks of 256 (after
removing their mean), one fp32 constant per 256 blocks: 8/64 + 32/(64*256) = 0.127 bits per
weight of scales instead of 32/64 = 0.5.
"""
from __future__ import annotations

import torch

from ..formats import NF4
from ..qtensor import QTensor

BLOCK_SIZES = (32, 64, 128, 256)


def quantize_nf4(W: torch.Tensor, block_size: int = 64, double_quant: bool = True,
                 *, name: str = "weight") -> QTensor:
    """NF4 QTensor of ``W [N, K]``; ``block_size`` must divide K (error names ``name`` if not)."""
    fmt = NF4.replace(group_size=block_size, double_quant=double_quant)
    return QTensor.from_float(W, fmt, name=name)
