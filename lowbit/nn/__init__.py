"""Quantized modules (one base, :class:`QModule`) and the model walk that swaps them in."""
from .base import LAYER_TYPES, QModule, register_layer
from .qembedding import QEmbedding
from .qlinear import QLinear, kernel_op
from .qrnn import QLSTM
from .sparse import SparseQLinear
from .swap import LayerReport, QuantReport, Skip, swap_modules, walk

__all__ = ["LAYER_TYPES", "QModule", "register_layer", "QEmbedding", "QLinear", "QLSTM", "SparseQLinear", "kernel_op",
           "LayerReport", "QuantReport", "Skip", "swap_modules", "walk"]
