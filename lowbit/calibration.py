"""Layer-by-layer calibration of decoder language models, for GPTQ- and AWQ-style algorithms.

:class:`BlockRunner` finds the decoder blocks (the ``nn.ModuleList`` of repeated layers),
captures the hidden state entering block 0 and EACH block's own other inputs (masks and position
embeddings differ between sliding-window and full-attention blocks), then walks the blocks in
order, holding one block's activations at a time. For each block it yields the groups of linears
that share one input, in forward order (q/k/v, o, gate/up, down); the caller takes a group's
input statistics with the groups before it already quantized ("true-sequential", Frantar et al.,
2022), quantizes its linears and writes them back; the runner then re-runs the block, as now
written, to give the next block its inputs (GPTQ's sequential mode). For AWQ, ``fold_scale``
folds an input-channel scale into the op that produces the group's input, where a numerical
check showed the fold is exact (a norm, or a linear feeding the group through a channel-wise op
such as ``act(gate) * up``).
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from ._memory import release_freed_memory
from .blocks import (LinearGroup, StopForward, block_linears, find_blocks, linear_weight, plan_block,
                     run_block, scale_output_channels, set_linear_weight)

log = logging.getLogger("lowbit")


@dataclass
class InputStats:
    """Statistics of one linear group's inputs x (rows of ``[tokens, K]``).

    ``H = E[x x^T]`` [K, K] and ``x_abs_mean = E|x|`` [K], in float32, over ``tokens`` rows.
    """

    H: torch.Tensor
    x_abs_mean: torch.Tensor
    tokens: int


# --- capturing each block's inputs ------------------------------------------------------
@dataclass
class BlockInputs:
    """Per batch b: ``hidden[b]`` [B, T, D] enters block 0; ``extra[i][b] = (args, kwargs)`` are
    block i's other inputs (a tensor that several blocks receive, such as a mask, is held once)."""

    hidden: list[torch.Tensor]
    extra: list[list[tuple[tuple, dict]]]


@torch.no_grad()
def capture_inputs(model: nn.Module, blocks: nn.ModuleList, data: torch.Tensor,
                   batch_size: int) -> BlockInputs:
    """Each block's own inputs for each batch of ``data`` [n, seq_len].

    One forward pass per batch in which every block's forward is a stub that records its call
    and passes the hidden state through (shaped as block 0's output, learnt from one real call),
    ending at the last block. Blocks the pass never reaches get no inputs.
    """
    captured = BlockInputs([], [[] for _ in blocks])
    order, template, passed = [], [], []   # blocks called in this batch; block 0's output;
    #                                        the hidden state the previous stub passed on

    def stub(i: int, forward):
        def call(*args, **kwargs):
            rest = dict(kwargs)
            hidden = args[0] if args else rest.pop("hidden_states")
            if order and hidden is not passed[-1] and len(captured.hidden) == 1:
                log.warning("lowbit: %s changes the hidden state between its blocks %d and %d; "
                            "calibration feeds each block the previous block's output as is",
                            type(model).__name__, order[-1], i)
            order.append(i)
            if i == 0:
                captured.hidden.append(hidden)
            captured.extra[i].append((tuple(args[1:]), rest))
            if i == len(blocks) - 1:
                raise StopForward
            if not template:
                template.append(forward(*args, **kwargs))
            passed[:] = [hidden]
            return hidden if isinstance(template[0], torch.Tensor) else (hidden, *template[0][1:])
        return call

    own = [block.__dict__.get("forward") for block in blocks]   # an instance-level forward, kept
    for i, block in enumerate(blocks):
        block.forward = stub(i, block.forward)
    device = next(model.parameters()).device
    try:
        for start in range(0, data.shape[0], batch_size):
            order.clear()
            try:
                model(input_ids=data[start : start + batch_size].to(device), use_cache=False)
            except StopForward:
                pass
            _check_order(model, order)
    finally:
        for block, forward in zip(blocks, own):
            if forward is None:
                del block.forward
            else:
                block.forward = forward
    return captured


def _check_order(model: nn.Module, order: list[int]) -> None:
    if not order:
        raise ValueError(f"the forward pass of {type(model).__name__} never reached its first "
                         f"decoder block; check that data holds token ids the model accepts")
    if order != list(range(len(order))):
        raise ValueError(f"{type(model).__name__} calls its decoder blocks in the order "
                         f"{order[:8]}; layer-by-layer calibration needs each block called once, "
                         f"in order; use method='rtn' or 'hqq', which need no calibration")


@contextmanager
def watch_inputs(modules: dict[str, nn.Module], update: Callable[[str, torch.Tensor], None], *,
                 stop: bool = False, flatten: bool = True):
    """The one activation-statistics hook: while active, every forward of a watched module calls
    ``update(name, x)`` with its input as ``x [tokens, K]`` (detached; as it came with
    ``flatten=False``); with ``stop`` the forward pass then ends (:class:`StopForward`, for the
    caller to catch)."""
    def make_hook(name):
        def hook(module, args):
            x = args[0].detach()
            update(name, x.reshape(-1, x.shape[-1]) if flatten else x)
            if stop:
                raise StopForward
        return hook

    handles = [m.register_forward_pre_hook(make_hook(n)) for n, m in modules.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def collect_stats(block: nn.Module, inputs: list, firsts: list[nn.Module],
                  stop: bool) -> list[InputStats]:
    """Input statistics of each group over all calibration batches, from its first linear's
    input (``firsts``); with ``stop`` the forward ends there (for one group only)."""
    sums = [[None, None, 0] for _ in firsts]

    def update(i: str, x: torch.Tensor) -> None:
        acc, x = sums[int(i)], x.float()                                   # (tokens, K)
        xtx, xabs = x.t() @ x, x.abs().sum(0)
        acc[0] = xtx if acc[0] is None else acc[0].add_(xtx)
        acc[1] = xabs if acc[1] is None else acc[1].add_(xabs)
        acc[2] += x.shape[0]

    with watch_inputs({str(i): m for i, m in enumerate(firsts)}, update, stop=stop):
        for inp in inputs:
            try:
                run_block(block, inp)
            except StopForward:
                pass
    return [InputStats(H / n, xabs / n, n) for H, xabs, n in sums]


# --- the runner ----------------------------------------------------------------------------
@dataclass(frozen=True)
class BlockStep:
    """One decoder block as :class:`BlockRunner` yields it: its linear groups (full names) in
    forward order."""

    index: int
    name: str
    groups: tuple[LinearGroup, ...]


class BlockRunner:
    """Walks a decoder LM's blocks in order for layer-by-layer calibration::

        runner = BlockRunner(model, data)               # data: token ids [n, seq_len]
        for block in runner:                             # a BlockStep
            for group, stats in zip(block.groups, runner.input_stats(block.groups)):
                for name in group.names:
                    runner.set_weight(name, algorithm(runner.weight(name), stats.H))

    Asking for the next block first runs this one, as now written, on its inputs. ``inputs``
    holds the current block's ``(hidden, args, kwargs)`` per batch; ``unreached`` names the
    linears the calibration forward never reaches (they are left alone), with the reason.
    """

    def __init__(self, model: nn.Module, data: torch.Tensor, *, batch_size: int = 8,
                 find_producers: bool = False, desc: str = "calibrate") -> None:
        if not isinstance(data, torch.Tensor) or data.dim() != 2 or data.is_floating_point():
            raise TypeError(f"calibration data must be a LongTensor of token ids [n, seq_len] (e.g. "
                            f"lowbit.data.calibration_batches(tokenizer)), got {data!r:.80}")
        self.model, self.data, self.batch_size = model, data, batch_size
        self.find_producers, self.desc = find_producers, desc
        self.prefix, self.blocks = find_blocks(model)
        self.unreached: dict[str, str] = {}
        self.inputs: list[tuple[torch.Tensor, tuple, dict]] = []
        self._block: nn.Module | None = None

    @torch.no_grad()
    def __iter__(self) -> Iterator[BlockStep]:
        was_training = self.model.training
        self.model.eval()
        try:
            captured = capture_inputs(self.model, self.blocks, self.data, self.batch_size)
            hidden = captured.hidden
            for i, block in enumerate(tqdm(self.blocks, desc=self.desc, unit="block", disable=None)):
                if not captured.extra[i]:
                    self._leave(f"{self.prefix}.{i}", block_linears(block))
                    continue
                self._block = block
                self.inputs = [(h, *extra) for h, extra in zip(hidden, captured.extra[i])]
                hidden.clear()                      # the inputs alone hold the activations
                yield self._plan(i, block)
                hidden, captured.extra[i] = self._run(block), []
                release_freed_memory()
        finally:
            self.model.train(was_training)
            self._block, self.inputs = None, []

    def _plan(self, i: int, block: nn.Module) -> BlockStep:
        name = f"{self.prefix}.{i}"
        groups = plan_block(block, self.inputs[0], find_producers=self.find_producers)
        called = {n for g in groups for n in g.names}
        self._leave(name, [n for n in block_linears(block) if n not in called])
        if i == 0:
            log.info("lowbit: %d blocks under %s, linear groups %s", len(self.blocks), self.prefix,
                     [(g.names, g.producer) for g in groups])
        return BlockStep(i, name, tuple(
            LinearGroup(tuple(f"{name}.{n}" for n in g.names), g.producer and f"{name}.{g.producer}")
            for g in groups))

    def _run(self, block: nn.Module) -> list[torch.Tensor]:
        """The block's output for each batch; each input is let go once used."""
        inputs, self.inputs = self.inputs, []
        return [run_block(block, inputs.pop(0)) for _ in range(len(inputs))]

    def _leave(self, block_name: str, linears) -> None:
        for n in linears:
            self.unreached[f"{block_name}.{n}"] = "not reached by the calibration forward pass"

    def input_stats(self, groups) -> list[InputStats]:
        """Statistics of each group's input over all batches, from one pass of the current block
        as now written (cut short at the group when there is one)."""
        if self._block is None:
            raise RuntimeError("BlockRunner.input_stats reads the current block: call it inside "
                               "`for block in runner:`")
        firsts = [self.model.get_submodule(g.names[0]) for g in groups]
        with torch.no_grad():
            return collect_stats(self._block, self.inputs, firsts, stop=len(groups) == 1)

    def weight(self, name: str) -> torch.Tensor:
        """The float weight ``[out, in]`` (float32) of the linear ``name``."""
        return linear_weight(self.model.get_submodule(name))

    def set_weight(self, name: str, W: torch.Tensor) -> None:
        """Write ``W`` [out, in] into the linear ``name`` (e.g. its dequantized weight)."""
        set_linear_weight(self.model.get_submodule(name), W)

    def fold_scale(self, group: LinearGroup, s: torch.Tensor, stats: InputStats) -> None:
        """W <- W diag(s) for the group, its producer's output channels <- / s, and ``stats``
        to those of the new input x / s."""
        if group.producer is None:
            raise ValueError(f"{group.names[0]}: no op produces this group's input channel-wise, "
                             f"so an input scale cannot be folded; fold only groups with a producer")
        for name in group.names:
            self.set_weight(name, self.weight(name) * s)
        scale_output_channels(self.model.get_submodule(group.producer), 1 / s)
        stats.H = stats.H / (s[:, None] * s[None, :])
        stats.x_abs_mean = stats.x_abs_mean / s


def layer_patches(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input rows a layer's weight multiplies, ``[groups, tokens, in_per_group]``: a
    Linear's input flattened to tokens (one group), a Conv2d's input unfolded to its kernel's
    patches, per group of channels (a depthwise conv: one group per channel). ``X^T X`` of each
    group is that layer's GPTQ Hessian."""
    if not isinstance(module, nn.Conv2d):
        return x.reshape(1, -1, x.shape[-1])
    g = module.groups
    cols = torch.nn.functional.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)
    B, CK, L = cols.shape                                      # (B, Cin * kh * kw, L)
    cols = cols.reshape(B, g, CK // g, L).permute(1, 0, 3, 2)  # (g, B, L, Cin / g * kh * kw)
    return cols.reshape(g, B * L, CK // g)
