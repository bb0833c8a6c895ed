"""QEmbedding: an embedding table stored packed; a lookup dequantizes only the rows it reads."""
from __future__ import annotations

import torch
from torch import nn

from ..formats import QFormat
from ..qtensor import QTensor
from .base import QModule, register_layer


@register_layer
class QEmbedding(QModule):
    """``nn.Embedding`` with a quantized ``[num_embeddings, embedding_dim]`` table.

    Scales run along each row (per channel, or per group of ``group_size`` elements of a row),
    so a lookup gathers packed rows and their scales and dequantizes just those. The table can
    be the very QTensor of a tied output head (:class:`QLinear`), so tying survives.
    """

    def __init__(self, weight: QTensor, padding_idx: int | None = None) -> None:
        super().__init__()
        fmt = weight.format
        if fmt.granularity not in ("channel", "group") or isinstance(weight.scale, QTensor):
            raise ValueError(
                f"QEmbedding needs per-row scales (per channel or per group, no double "
                f"quantization), got {fmt.label()}"
            )
        self.num_embeddings, self.embedding_dim = weight.shape
        self.weight = weight
        self.padding_idx = padding_idx

    @classmethod
    def from_float(cls, emb: nn.Embedding, fmt: QFormat, *, name: str = "embedding",
                   weight: QTensor | None = None) -> "QEmbedding":
        if weight is None:
            weight = QTensor.from_float(emb.weight.detach(), fmt, name=name)
        return cls(weight, emb.padding_idx)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        w = self.weight
        flat = ids.reshape(-1)
        rows = QTensor(
            w.data.index_select(0, flat), w.scale.index_select(0, flat),
            None if w.zero_point is None else w.zero_point.index_select(0, flat),
            w.format, torch.Size((flat.numel(), self.embedding_dim)), w.offset,
        )
        return rows.dequantize(torch.float32).reshape(*ids.shape, self.embedding_dim)

    def kernel(self, x: torch.Tensor | None = None) -> str:
        return self.planned_kernel(self.weight.format)

    @staticmethod
    def planned_kernel(fmt: QFormat) -> str:
        return "gather + dequantize (pure PyTorch)"

    def config(self) -> dict:
        return {"padding_idx": self.padding_idx}

    @classmethod
    def from_config(cls, weight: QTensor, config: dict, bias=None) -> "QEmbedding":
        return cls(weight, config.get("padding_idx"))

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, format={self.weight.format.label()}"
