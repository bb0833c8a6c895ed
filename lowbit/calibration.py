"""Layer-by-layer calibration of decoder language models, for GPTQ- and AWQ-style algorithms.

The runner finds the model's decoder blocks (the ``nn.ModuleList`` of repeated layers) and their
linear layers generically, captures the inputs of block 0 once, and then, block by block:

1. collects the input statistics of each group of linears that share one input (q/k/v, then
   o, then gate/up, then down: the order of the block's forward), with the linears before them
   already quantized ("true-sequential", Frantar et al., 2022);
2. hands each linear's float weight ``[out, in]`` and its statistics to an algorithm, writes the
   dequantized result back so later groups and blocks see the quantized model;
3. re-runs the block to give the next block its inputs (GPTQ's sequential mode).

Only one block's activations are held at a time. With a ``scale_search`` (AWQ), per-input-channel
scales are searched on the float block first and folded into the op that produces the group's
input, where a numerical check shows that fold is exact (a norm, or a linear whose output feeds
the group through a channel-wise op such as ``act(gate) * up``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from ._memory import release_freed_memory
from .qtensor import QTensor

log = logging.getLogger("lowbit")

try:  # GPT-2 style linears: weight stored transposed, [in, out]
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - transformers is optional
    Conv1D = ()
LINEAR_TYPES = (nn.Linear,) + ((Conv1D,) if Conv1D else ())


class _Stop(Exception):
    """Raised inside a hook to end a forward pass once what is needed was captured."""


@dataclass
class InputStats:
    """Statistics of one linear group's inputs x (rows of ``[tokens, K]``).

    ``H = E[x x^T]`` [K, K] and ``x_abs_mean = E|x|`` [K], in float32, over ``tokens`` rows.
    """

    H: torch.Tensor
    x_abs_mean: torch.Tensor
    tokens: int


@dataclass(frozen=True)
class LinearGroup:
    """Linears of one block that read the same input, in forward order; ``producer`` names the
    module whose output channels can absorb a scale of that input (None when none can)."""

    names: tuple[str, ...]
    producer: str | None = None


# --- model structure ---------------------------------------------------------------------
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


def is_linear(module: nn.Module) -> bool:
    return isinstance(module, LINEAR_TYPES)


def block_linears(block: nn.Module) -> dict[str, nn.Module]:
    """The linear layers (``nn.Linear`` and transformers' ``Conv1D``) of a block, by name."""
    return {name: m for name, m in block.named_modules() if name and is_linear(m)}


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


# --- running blocks ----------------------------------------------------------------------
def capture_inputs(model: nn.Module, block: nn.Module, data: torch.Tensor,
                   batch_size: int) -> list[tuple[torch.Tensor, tuple, dict]]:
    """Inputs of ``block`` (the first decoder block) for each batch of ``data`` [n, seq_len]:
    ``(hidden_states, other positional args, kwargs)`` such as the mask and position embeddings."""
    captured = []

    def hook(module, args, kwargs):
        kwargs = dict(kwargs)
        hidden = args[0] if args else kwargs.pop("hidden_states")
        captured.append((hidden, tuple(args[1:]), kwargs))
        raise _Stop

    device = next(model.parameters()).device
    handle = block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for i in range(0, data.shape[0], batch_size):
            try:
                model(input_ids=data[i : i + batch_size].to(device), use_cache=False)
            except _Stop:
                pass
    finally:
        handle.remove()
    if not captured:
        raise ValueError(f"the forward pass of {type(model).__name__} never reached its first "
                         f"decoder block; check that data holds token ids the model accepts")
    return captured


def run_block(block: nn.Module, inputs: tuple[torch.Tensor, tuple, dict]) -> torch.Tensor:
    hidden, args, kwargs = inputs
    out = block(hidden, *args, **kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


def collect_stats(block: nn.Module, inputs: list, groups: list[LinearGroup],
                  stop: bool) -> list[InputStats]:
    """Input statistics of each group over all calibration batches (one hook per group on its
    first linear); with ``stop`` the forward ends at that linear (for one group only)."""
    modules = dict(block.named_modules())
    sums = [[None, None, 0] for _ in groups]

    def make_hook(acc):
        def hook(module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()   # (tokens, K)
            xtx, xabs = x.t() @ x, x.abs().sum(0)
            acc[0] = xtx if acc[0] is None else acc[0].add_(xtx)
            acc[1] = xabs if acc[1] is None else acc[1].add_(xabs)
            acc[2] += x.shape[0]
            if stop:
                raise _Stop
        return hook

    handles = [modules[g.names[0]].register_forward_pre_hook(make_hook(acc))
               for g, acc in zip(groups, sums)]
    try:
        for inp in inputs:
            try:
                run_block(block, inp)
            except _Stop:
                pass
    finally:
        for h in handles:
            h.remove()
    return [InputStats(H / n, xabs / n, n) for H, xabs, n in sums]


def plan_block(block: nn.Module, inputs: tuple, find_producers: bool) -> list[LinearGroup]:
    """Group the block's linears by shared input, in forward order, from one traced forward;
    with ``find_producers`` also find, for each group, a module that can absorb an input scale."""
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
    missing = set(linears) - seen
    if missing:
        log.warning("lowbit: linears %s are not called in the block's forward pass", sorted(missing))
    return groups


def _find_producer(block, inputs, names, direct, calls) -> str | None:
    """The first candidate whose output channels, scaled by r, scale the group's input by r."""
    modules = dict(block.named_modules())
    first = min(i for i, (n, _) in enumerate(calls) if n in names)
    width = linear_weight(modules[names[0]]).shape[1]
    earlier = [n for n, _ in calls[:first] if linear_weight(modules[n]).shape[0] == width]
    candidates = ([direct] if direct else []) + list(dict.fromkeys(reversed(earlier)))
    probe = _slice_batch(inputs, 1)
    base = _group_input(block, probe, names[0])
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
            ok = torch.allclose(_group_input(block, probe, names[0]), base * r.to(base.dtype),
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
        raise _Stop

    handle = module.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            run_block(block, inputs)
    except _Stop:
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


# --- the runner ----------------------------------------------------------------------------
QuantizeFn = Callable[[str, torch.Tensor, InputStats], "QTensor | None"]
ScaleFn = Callable[[list[torch.Tensor], InputStats], torch.Tensor]


def quantize_blocks(model: nn.Module, data: torch.Tensor, quantize_linear: QuantizeFn, *,
                    scale_search: ScaleFn | None = None, true_sequential: bool = True,
                    batch_size: int = 8, desc: str = "calibrate") -> dict[str, QTensor]:
    """Quantize the linears of every decoder block in turn; returns ``{full name: QTensor}``.

    ``quantize_linear(name, W [out, in], stats)`` returns the QTensor of a linear (None leaves
    it float). ``scale_search(weights, stats)`` (AWQ) returns an input-channel scale s [K] for a
    group; the runner multiplies the group's weights by s and folds 1/s into its producer.
    """
    if not isinstance(data, torch.Tensor) or data.dim() != 2 or data.is_floating_point():
        raise TypeError(f"calibration data must be a LongTensor of token ids [n, seq_len] (e.g. "
                        f"lowbit.data.calibration_batches(tokenizer)), got {data!r:.80}")
    prefix, blocks = find_blocks(model)
    results: dict[str, QTensor] = {}
    was_training = model.training
    model.eval()
    with torch.no_grad():
        inputs = capture_inputs(model, blocks[0], data, batch_size)
        plan = plan_block(blocks[0], inputs[0], find_producers=scale_search is not None)
        log.info("lowbit: %d blocks under %s, linear groups %s", len(blocks), prefix,
                 [(g.names, g.producer) for g in plan])
        for i, block in enumerate(tqdm(blocks, desc=desc, unit="block", disable=None)):
            modules = dict(block.named_modules())
            stats = None
            if scale_search is not None or not true_sequential:
                stats = collect_stats(block, inputs, plan, stop=False)
            if scale_search is not None:
                for group, st in zip(plan, stats):
                    if group.producer is not None:
                        _fold_scale(modules, group, st, scale_search)
            for j, group in enumerate(plan):
                st = stats[j] if stats is not None else collect_stats(block, inputs, [group], stop=True)[0]
                for name in group.names:
                    full = f"{prefix}.{i}.{name}"
                    qt = quantize_linear(full, linear_weight(modules[name]), st)
                    if qt is not None:
                        set_linear_weight(modules[name], qt.dequantize())
                        results[full] = qt
            for k, inp in enumerate(inputs):
                inputs[k] = (run_block(block, inp), inp[1], inp[2])
            del stats
            release_freed_memory()
    model.train(was_training)
    return results


def _fold_scale(modules: dict, group: LinearGroup, st: InputStats, scale_search: ScaleFn) -> None:
    """W <- W diag(s) for the group, producer output channels <- / s, stats of x / s."""
    s = scale_search([linear_weight(modules[n]) for n in group.names], st)
    for name in group.names:
        set_linear_weight(modules[name], linear_weight(modules[name]) * s)
    scale_output_channels(modules[group.producer], 1 / s)
    st.H = st.H / (s[:, None] * s[None, :])
    st.x_abs_mean = st.x_abs_mean / s
