"""The decoder-block structure of a language model: its repeated blocks, their linear layers,
and the groups of linears that read one input (with the op that can absorb a scale of it).

Found generically, from module types and one traced forward of a block, for layer-by-layer
calibration (:mod:`lowbit.calibration`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

try:  # GPT-2 style linears: weight stored transposed, [in, out]
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - transformers is optional
    Conv1D = ()
LINEAR_TYPES = (nn.Linear,) + ((Conv1D,) if Conv1D else ())


class StopForward(Exception):
    """Raised inside a hook to end a forward pass once what is needed was captured."""


@dataclass(frozen=True)
class LinearGroup:
    """Linears of one block that read the same input, in forward order; ``producer`` names the
    module whose output channels can absorb a scale of that input (None when none can)."""

    names: tuple[str, ...]
    producer: str | None = None


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """``(name, blocks)``: the ModuleList of repeated layers holding the most parameters."""
    best = None
    for name, module in model.named_modules():
        if (isinstance(module, nn.ModuleList) and len(module) >= 2
                and len({type(m) for m in module}) == 1
                and any(isinstance(m, LINEAR_TYPES) for m in module[0].modules())):
            size = sum(p.numel() for p in module.parameters())
            if best is None or size > best[2]:
                best = (name, module, size)
    if best is None:
        raise ValueError(
            f"layer-by-layer calibration needs a decoder LM with blocks, got "
            f"{type(model).__name__}, which has no ModuleList of repeated layers holding linears "
            f"(such as model.layers or transformer.h); "
            f"use method='rtn' or 'hqq', which need no calibration"
        )
    return best[0], best[1]


def block_linears(block: nn.Module) -> dict[str, nn.Module]:
    """The linear layers (``nn.Linear`` and transformers' ``Conv1D``) of a block, by name."""
    return {name: m for name, m in block.named_modules() if name and isinstance(m, LINEAR_TYPES)}


def linear_weight(module: nn.Module) -> torch.Tensor:
    """A linear's weight as ``[out, in]`` float32 (Conv1D stores it transposed)."""
    w = module.weight.detach()
    return (w.t() if Conv1D and isinstance(module, Conv1D) else w).float()


def set_linear_weight(module: nn.Module, W: torch.Tensor) -> None:
    """Write ``W`` [out, in] into a linear in its own layout and dtype."""
    w = W.t() if Conv1D and isinstance(module, Conv1D) else W
    module.weight.data.copy_(w.to(module.weight.dtype))


def scale_output_channels(module: nn.Module, factor: torch.Tensor) -> None:
    """Multiply a module's output channels by ``factor`` [C]: rows of a linear's weight (and its
    bias), or the elementwise weight and bias of a norm."""
    w = module.weight.data
    if Conv1D and isinstance(module, Conv1D):
        w.mul_(factor.to(w.dtype)[None, :])
    elif w.dim() == 2:
        w.mul_(factor.to(w.dtype)[:, None])
    else:
        w.mul_(factor.to(w.dtype))
    if getattr(module, "bias", None) is not None:
        module.bias.data.mul_(factor.to(module.bias.dtype))


def run_block(block: nn.Module, inputs: tuple[torch.Tensor, tuple, dict]) -> torch.Tensor:
    """The hidden state a block outputs for one batch's ``(hidden, args, kwargs)``."""
    hidden, args, kwargs = inputs
    out = block(hidden, *args, **kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


def plan_block(block: nn.Module, inputs: tuple, find_producers: bool) -> list[LinearGroup]:
    """Group the block's linears by shared input, in forward order, from one traced forward (of
    one sequence: groups follow tensor identity); with ``find_producers`` also find, for each
    group, a module that can absorb an input scale."""
    inputs = _slice_batch(inputs, 1)
    outputs, calls, keep = {}, [], []      # keep: hold traced tensors so ids stay unique

    def on_output(name):
        def hook(module, args, out):
            keep.append(out)
            outputs.setdefault(id(out), name)
        return hook

    def on_input(name):
        def hook(module, args):
            keep.append(args[0])
            calls.append((name, id(args[0])))
        return hook

    linears = block_linears(block)
    hooks = [m.register_forward_hook(on_output(name)) for name, m in block.named_modules() if name]
    hooks += [m.register_forward_pre_hook(on_input(name)) for name, m in linears.items()]
    try:
        with torch.no_grad():
            run_block(block, inputs)
    finally:
        for h in hooks:
            h.remove()
    by_input: dict[int, list[str]] = {}
    for name, key in calls:
        if name not in by_input.setdefault(key, []):
            by_input[key].append(name)
    groups, seen = [], set()
    for key, names in by_input.items():
        names = [n for n in names if n not in seen]
        if names:
            seen.update(names)
            producer = _find_producer(block, inputs, names, outputs.get(key), calls) if find_producers else None
            groups.append(LinearGroup(tuple(names), producer))
    return groups


def _find_producer(block, inputs, names, direct, calls) -> str | None:
    """The first candidate whose output channels, scaled by r, scale the group's input by r."""
    modules = dict(block.named_modules())
    first = min(i for i, (n, _) in enumerate(calls) if n in names)
    width = linear_weight(modules[names[0]]).shape[1]
    earlier = [n for n, _ in calls[:first] if linear_weight(modules[n]).shape[0] == width]
    candidates = ([direct] if direct else []) + list(dict.fromkeys(reversed(earlier)))
    base = _group_input(block, inputs, names[0])
    gen = torch.Generator().manual_seed(0)
    r = torch.rand(width, generator=gen) * 1.5 + 0.5
    for cand in candidates:
        module = modules[cand]
        w = getattr(module, "weight", None)
        if w is None or (w.dim() == 1 and w.shape[0] != width):
            continue
        saved = {k: v.detach().clone() for k, v in module.named_parameters(recurse=False)}
        try:
            scale_output_channels(module, r)
            ok = torch.allclose(_group_input(block, inputs, names[0]), base * r.to(base.dtype),
                                rtol=1e-3, atol=1e-5 * base.abs().max().item())
        except RuntimeError:
            ok = False
        finally:
            for k, v in module.named_parameters(recurse=False):
                v.data.copy_(saved[k])
        if ok:
            return cand
    return None


def _group_input(block, inputs, name) -> torch.Tensor:
    got = []
    module = dict(block.named_modules())[name]

    def hook(mod, args):
        got.append(args[0].detach().clone())
        raise StopForward

    handle = module.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            run_block(block, inputs)
    except StopForward:
        pass
    finally:
        handle.remove()
    return got[0]


def _slice_batch(obj, n: int, batch: int | None = None):
    """The first ``n`` sequences of a captured input (tensors whose first axis is the batch)."""
    if batch is None:
        batch = obj[0].shape[0]
    if isinstance(obj, torch.Tensor):
        return obj[:n] if obj.dim() and obj.shape[0] == batch else obj
    if isinstance(obj, (tuple, list)):
        return type(obj)(_slice_batch(o, n, batch) for o in obj)
    if isinstance(obj, dict):
        return {k: _slice_batch(v, n, batch) for k, v in obj.items()}
    return obj
