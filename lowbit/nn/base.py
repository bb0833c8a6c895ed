"""QModule: what every quantized layer shares.

A packed :class:`~lowbit.qtensor.QTensor` ``weight``, the kernel it runs (``kernel`` /
``planned_kernel``: the same answer before and after quantizing), its footprint, device moves
that never cast packed storage, and its own checkpoint entry: the weight's tensors appear in
``state_dict()`` as ``<name>.weight.data``, ``.weight.scale``, ... (validated against the
format when loaded), and ``config()`` / ``from_config()`` write and read the JSON that rebuilds
the layer. Nothing in a checkpoint names code: a layer type is looked up in :data:`LAYER_TYPES`.
"""
from __future__ import annotations

import torch
from torch import nn

from ..formats import QFormat
from ..qtensor import QTensor

LAYER_TYPES: dict[str, type] = {}


def register_layer(cls):
    """Make a quantized layer class loadable from checkpoints (by its class name)."""
    LAYER_TYPES[cls.__name__] = cls
    return cls


class QModule(nn.Module):
    """Base of lowbit's quantized layers (see the module docstring)."""

    weight: QTensor

    # --- what runs ------------------------------------------------------------------------
    def kernel(self, x: torch.Tensor | None = None) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def planned_kernel(cls, fmt: QFormat, activation, in_features: int,
                       device: str = "cpu") -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    # --- accounting -----------------------------------------------------------------------
    def lowbit_footprint(self) -> tuple[int, int]:
        """(bytes held, logical weights): the packed weight plus this layer's own tensors."""
        own = [t for t in (*self._parameters.values(), *self._buffers.values()) if t is not None]
        return self.weight.nbytes + sum(t.numel() * t.element_size() for t in own), self.weight.numel

    # --- device moves ---------------------------------------------------------------------
    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self.weight = apply_to_qtensor(self.weight, fn)
        return self

    # --- checkpoints ----------------------------------------------------------------------
    def config(self) -> dict:
        """JSON-able settings that rebuild this layer with :meth:`from_config` (not tensors)."""
        return {}

    @classmethod
    def from_config(cls, weight: QTensor, config: dict, bias: torch.Tensor | None) -> "QModule":
        """An empty-shell layer around ``weight`` (its buffers come from the state dict)."""
        raise NotImplementedError(f"{cls.__name__} does not load from checkpoints")  # pragma: no cover

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        for key, t in self.weight.tensors(prefix + "weight.").items():
            destination[key] = t if keep_vars else t.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        own = self.weight.tensors(prefix + "weight.")
        for key, t in own.items():
            if key not in state_dict:
                missing_keys.append(key)
                continue
            new = state_dict[key]
            if new.shape != t.shape or new.dtype != t.dtype:
                error_msgs.append(f"{key}: this {self.weight.format.label()} layer stores "
                                  f"{list(t.shape)} {t.dtype}, the state dict has {list(new.shape)} {new.dtype}")
                continue
            with torch.no_grad():
                t.copy_(new)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        unexpected_keys[:] = [k for k in unexpected_keys if k not in own]


def apply_to_qtensor(q: QTensor, fn) -> QTensor:
    """Apply a module ``_apply`` fn (``.to``, ``.cuda``) to the storage, never casting it."""
    def move(t):
        if t is None:
            return None
        moved = fn(t)
        return moved if moved.dtype == t.dtype else t.to(moved.device)  # never cast storage
    if hasattr(q, "map"):                                 # a SparseQTensor
        return q.map(move)
    scale = apply_to_qtensor(q.scale, fn) if isinstance(q.scale, QTensor) else move(q.scale)
    return QTensor(move(q.data), scale, move(q.zero_point), q.format, q.shape, move(q.offset))
