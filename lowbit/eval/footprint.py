"""Model size and bits per weight, counted from the tensors a model really holds.

What is counted
- Every parameter and buffer once: tensors that share memory (tied embeddings) are counted
  once, keyed by (storage pointer, offset, shape, dtype).
- A module that defines ``lowbit_footprint(self) -> (bytes, logical_weights)`` (lowbit's
  quantized layers) reports itself: its packed weights, scales, zero points and bias. Its
  own tensors and those of its children are not counted again.
- Weights (for bits per weight) = parameters + lowbit modules. Buffers that are not part of a
  lowbit module (rotary tables, BatchNorm running stats) add to ``size_mb`` only, so an fp32
  model has ``bpw_model == 32`` exactly.

Which layers are "linears" (``bpw_linears``)
- every ``nn.Linear`` (weight and bias), and every lowbit module that has ``in_features`` and
  ``out_features``, *except* the output head given by ``model.get_output_embeddings()``.
  For a decoder LM that is the decoder's projections (q, k, v, o, gate, up, down: 106,168,320
  weights in SmolLM2-135M). An untied head is reported apart as ``bpw_head``; a tied head is
  the input embedding, counted in ``bpw_model`` only. Other layer types (convolutions,
  embeddings, norms) count in ``bpw_model`` only.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lowbit.eval._util import Result

logger = logging.getLogger(__name__)

MB = 1_000_000  # size_mb is in decimal megabytes


@dataclass(frozen=True)
class Footprint(Result):
    """Size of a model in memory and its bits per logical weight."""

    size_mb: float  # all parameters and buffers, each stored tensor once
    bpw_model: float  # 8 * weight bytes / logical weights, embeddings included
    bpw_linears: float | None  # over the linear layers (see module docstring); None if none
    bpw_head: float | None  # untied output head; None if tied or absent
    num_params: int  # logical weights, tied ones once
    num_linear_weights: int
    weight_bytes: int
    buffer_bytes: int
    linear_bytes: int


def _is_lowbit(module: nn.Module) -> bool:
    return callable(getattr(module, "lowbit_footprint", None))


def _lowbit_counts(module: nn.Module) -> tuple[int, int]:
    nbytes, weights = module.lowbit_footprint()
    if nbytes < 0 or weights < 0:
        raise ValueError(
            f"{type(module).__name__}.lowbit_footprint() returned ({nbytes}, {weights}); "
            f"expected (bytes, logical_weights), both >= 0"
        )
    return int(nbytes), int(weights)


def _key(t: torch.Tensor) -> tuple:
    """Identity of a tensor's memory, so that tied or aliased tensors count once."""
    try:
        ptr = t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError, TypeError):  # tensor subclasses, meta tensors
        ptr = 0
    if ptr == 0:
        return ("id", id(t))
    return (ptr, t.storage_offset(), tuple(t.shape), t.dtype)


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _modules(model: nn.Module) -> Iterator[nn.Module]:
    """Modules of ``model`` depth first, not descending into lowbit modules."""
    stack, visited = [model], set()
    while stack:
        module = stack.pop()
        if id(module) in visited:
            continue
        visited.add(id(module))
        yield module
        if not _is_lowbit(module):
            stack.extend(reversed(list(module.children())))


def _output_head(model: nn.Module) -> tuple[nn.Module | None, bool]:
    """(output head module or None, whether it is tied to the input embedding)."""
    try:
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    except NotImplementedError:
        return None, False
    head_w, embed_w = getattr(head, "weight", None), getattr(embed, "weight", None)
    tied = isinstance(head_w, torch.Tensor) and isinstance(embed_w, torch.Tensor) and (
        _key(head_w) == _key(embed_w)
    )
    return head, tied


def _layer_counts(module: nn.Module, seen: set) -> tuple[int, int]:
    """(bytes, weights) of a linear layer's not-yet-seen tensors, or of a lowbit module."""
    if _is_lowbit(module):
        return _lowbit_counts(module)
    nbytes = weights = 0
    for p in module.parameters():
        if _key(p) not in seen:
            seen.add(_key(p))
            nbytes, weights = nbytes + _nbytes(p), weights + p.numel()
    return nbytes, weights


def _is_linear(module: nn.Module) -> bool:
    if _is_lowbit(module):
        return hasattr(module, "in_features") and hasattr(module, "out_features")
    return isinstance(module, nn.Linear)


def footprint(model: nn.Module) -> Footprint:
    """Count ``model``'s bytes and logical weights; see the module docstring for the rules."""
    modules = list(_modules(model))
    seen: set = set()
    weight_bytes = weights = buffer_bytes = 0
    for module in modules:  # lowbit modules first, so their tensors are never counted twice
        if _is_lowbit(module):
            seen.update(_key(t) for t in (*module.parameters(), *module.buffers()))
            nbytes, count = _lowbit_counts(module)
            weight_bytes, weights = weight_bytes + nbytes, weights + count
    for module in modules:
        if _is_lowbit(module):
            continue
        for p in module.parameters(recurse=False):
            if _key(p) not in seen:
                seen.add(_key(p))
                weight_bytes, weights = weight_bytes + _nbytes(p), weights + p.numel()
        for b in module.buffers(recurse=False):
            if _key(b) not in seen:
                seen.add(_key(b))
                buffer_bytes += _nbytes(b)

    head, tied = _output_head(model)
    linear_seen: set = set()
    linear_bytes = linear_weights = 0
    for module in modules:
        if _is_linear(module) and module is not head:
            nbytes, count = _layer_counts(module, linear_seen)
            linear_bytes, linear_weights = linear_bytes + nbytes, linear_weights + count
    bpw_head = None
    if head is not None and not tied:
        head_bytes, head_weights = _layer_counts(head, set())
        bpw_head = 8 * head_bytes / head_weights if head_weights else None

    result = Footprint(
        size_mb=(weight_bytes + buffer_bytes) / MB,
        bpw_model=8 * weight_bytes / weights if weights else 0.0,
        bpw_linears=8 * linear_bytes / linear_weights if linear_weights else None,
        bpw_head=bpw_head,
        num_params=weights,
        num_linear_weights=linear_weights,
        weight_bytes=weight_bytes,
        buffer_bytes=buffer_bytes,
        linear_bytes=linear_bytes,
    )
    logger.info("footprint: %s", result)
    return result


def size_on_disk(path: str | os.PathLike) -> int:
    """Bytes of a file, or of every file under a folder (links followed, hard links once)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"size_on_disk: {path} does not exist")
    if path.is_file():
        return path.stat().st_size
    total, inodes = 0, set()
    for file in path.rglob("*"):
        if file.is_file():
            stat = file.stat()
            if (stat.st_dev, stat.st_ino) not in inodes:
                inodes.add((stat.st_dev, stat.st_ino))
                total += stat.st_size
    return total
