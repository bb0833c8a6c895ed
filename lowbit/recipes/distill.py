"""Distill a shallower student from a model, and chain recipes: ``Sequence(Distill(...), WeightOnly(...))``.

``Distill`` keeps a subset of the model's repeated blocks (the student starts from the teacher's
own weights, as in DistilBERT, Sanh et al. 2019, and the layer-dropping of Sajjad et al. 2023),
then trains the student on the KL divergence to the original model's next-token distributions
(Hinton et al. 2015), optionally plus the MSE between the kept blocks' hidden states and the
teacher's blocks they came from. It changes the model in place, like every recipe; the teacher
is a frozen copy taken before any block is dropped, freed when training ends.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import math
from dataclasses import dataclass

import torch
from torch import nn

from .._memory import release_freed_memory
from ..blocks import find_blocks
from ..nn.swap import LayerReport, QuantReport
from ..qat import distillation_loss, fit
from .base import LayerPlan, Plan, Recipe
from .registry import register

log = logging.getLogger("lowbit")


def evenly_spaced(num_blocks: int, keep: int) -> tuple[int, ...]:
    """``keep`` block indices out of ``num_blocks``, evenly spaced, first and last included."""
    if not 1 <= keep <= num_blocks:
        raise ValueError(f"Distill: num_layers must be between 1 and the model's {num_blocks} "
                         f"blocks, got {keep}")
    if keep == 1:
        return (num_blocks - 1,)
    return tuple(sorted({round(i * (num_blocks - 1) / (keep - 1)) for i in range(keep)}))


def drop_blocks(model: nn.Module, keep: tuple[int, ...]) -> tuple[str, list[int]]:
    """Keep only the blocks ``keep`` of the model's repeated-block list (in place); fix the
    Hugging Face config's layer count and each attention's ``layer_idx`` (its KV-cache slot).
    Returns the block list's name and the dropped indices."""
    name, blocks = find_blocks(model)
    bad = [i for i in keep if not 0 <= i < len(blocks)]
    if bad or len(set(keep)) != len(keep) or list(keep) != sorted(keep):
        raise ValueError(f"Distill: keep_layers must be distinct increasing indices into {name} "
                         f"(0..{len(blocks) - 1}), got {list(keep)}")
    dropped = [i for i in range(len(blocks)) if i not in keep]
    kept = nn.ModuleList([blocks[i] for i in keep])
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, kept)
    for new_idx, block in enumerate(kept):
        for m in block.modules():
            if hasattr(m, "layer_idx") and isinstance(m.layer_idx, int):
                m.layer_idx = new_idx
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "num_hidden_layers"):
        config.num_hidden_layers = len(kept)
        if getattr(config, "layer_types", None) is not None:
            config.layer_types = [config.layer_types[i] for i in keep]
    return name, dropped


def _logits_and_hidden(model: nn.Module, ids: torch.Tensor, hidden: bool):
    out = model(input_ids=ids, use_cache=False, output_hidden_states=hidden)
    return out.logits, (out.hidden_states if hidden else None)


@register("distill")
@dataclass(frozen=True)
class Distill(Recipe):
    """Train a shallower copy of the model by distillation from the model itself.

    Args:
        num_layers: blocks the student keeps, evenly spaced (first and last kept).
        keep_layers: or exactly which block indices to keep.
        minutes: training time budget (the loop stops at the first step past it).
        max_steps: or a step budget (whichever comes first; one of the two is needed).
        batch_size: windows per step, taken in order from ``data`` ([n, seq_len] token ids).
        lr: AdamW learning rate; every student parameter trains.
        temperature: softening of both distributions in the KL.
        hidden_weight: weight of the hidden-state MSE between each kept block's output and the
            teacher's block it came from (0 = logits only).
    """

    num_layers: int | None = None
    keep_layers: tuple[int, ...] | None = None
    minutes: float | None = 10.0
    max_steps: int | None = None
    batch_size: int = 4
    lr: float = 1e-4
    temperature: float = 1.0
    hidden_weight: float = 0.0
    seed: int = 0

    needs_data = True

    def __post_init__(self) -> None:
        if (self.num_layers is None) == (self.keep_layers is None):
            raise ValueError("Distill needs exactly one of num_layers (how many blocks to keep, "
                             "evenly spaced) or keep_layers (which block indices), got "
                             f"num_layers={self.num_layers!r}, keep_layers={self.keep_layers!r}")
        if self.keep_layers is not None:
            object.__setattr__(self, "keep_layers", tuple(int(i) for i in self.keep_layers))
        if self.minutes is None and self.max_steps is None:
            raise ValueError("Distill needs a budget: minutes=... or max_steps=...")
        if (self.minutes is not None and not self.minutes > 0) or (self.max_steps is not None and self.max_steps < 1):
            raise ValueError(f"Distill budget must be positive, got minutes={self.minutes!r}, "
                             f"max_steps={self.max_steps!r}")
        if self.batch_size < 1 or not self.lr > 0 or not self.temperature > 0 or self.hidden_weight < 0:
            raise ValueError("Distill: batch_size >= 1, lr > 0, temperature > 0 and hidden_weight >= 0 "
                             f"are needed, got {self.batch_size}, {self.lr}, {self.temperature}, "
                             f"{self.hidden_weight}")

    def describe(self) -> str:
        which = f"{self.num_layers} blocks" if self.num_layers else f"blocks {list(self.keep_layers)}"
        budget = " or ".join(b for b in (f"{self.minutes:g} min" if self.minutes else "",
                                         f"{self.max_steps} steps" if self.max_steps else "") if b)
        return f"Distill to {which} ({budget})"

    def plan(self, model: nn.Module) -> Plan:
        """The blocks the student drops (its other layers stay as they are, trained)."""
        name, blocks = find_blocks(model)
        keep = self.keep_layers or evenly_spaced(len(blocks), self.num_layers)
        plan = Plan(self.describe())
        for i, block in enumerate(blocks):
            if i not in keep:
                size = sum(p.numel() * p.element_size() for p in block.parameters())
                plan.layers.append(LayerPlan(f"{name}.{i}", type(block).__name__, (), "remove",
                                             float_bytes=size, reason="dropped by Distill"))
        return plan

    def apply(self, model: nn.Module, data) -> QuantReport:
        ids = _token_windows(data)
        _, blocks = find_blocks(model)
        keep = self.keep_layers or evenly_spaced(len(blocks), self.num_layers)
        teacher = copy.deepcopy(model).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        name, dropped = drop_blocks(model, keep)
        log.info("lowbit: Distill keeps %s[%s] (%d of %d blocks)", name, ",".join(map(str, keep)),
                 len(keep), len(keep) + len(dropped))
        hidden = self.hidden_weight > 0
        torch.manual_seed(self.seed)
        losses = self._train(model, teacher, ids, keep, hidden)
        del teacher
        release_freed_memory()
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        report = QuantReport(self.describe())
        for i in dropped:
            report.layers.append(LayerReport(f"{name}.{i}", "block", "removed",
                                             reason="dropped by Distill (student keeps the rest)"))
        model.lowbit_distill = {"kept": list(keep), "dropped": dropped, "steps": len(losses),
                                "first_loss": losses[0] if losses else None,
                                "last_loss": sum(losses[-20:]) / max(1, len(losses[-20:]))}
        return report

    def _train(self, student, teacher, ids, keep, hidden) -> list[float]:
        return train_on_teacher(student, teacher, ids, minutes=self.minutes, max_steps=self.max_steps,
                                batch_size=self.batch_size, lr=self.lr, temperature=self.temperature,
                                hidden_weight=self.hidden_weight, keep=keep if hidden else None,
                                desc="Distill")


def train_on_teacher(student: nn.Module, teacher: nn.Module, ids: torch.Tensor, *,
                     minutes: float | None, max_steps: int | None, batch_size: int, lr: float,
                     temperature: float = 1.0, hidden_weight: float = 0.0,
                     keep: tuple[int, ...] | None = None, desc: str = "Distill") -> list[float]:
    """Train every parameter of ``student`` on the KL to ``teacher``'s next-token distributions
    over the windows ``ids`` [n, seq_len] (in order, ``batch_size`` per step) with AdamW, for
    ``minutes`` or ``max_steps`` (whichever ends first). With ``keep`` (the teacher block each
    student block came from) and ``hidden_weight`` > 0, plus the hidden-state MSE. Returns the
    per-step losses."""
    hidden = keep is not None and hidden_weight > 0
    params = list(student.parameters())
    for p in params:
        p.requires_grad_(True)
    batches = list(ids.split(batch_size))
    if max_steps:  # the windows in order, cycled to exactly max_steps
        batches = [batches[i % len(batches)] for i in range(max_steps)]
        epochs = 1
    else:  # the time budget ends it
        epochs = math.ceil(1e6 / len(batches))

    def loss_fn(model, batch):
        with torch.no_grad():
            t_logits, t_hidden = _logits_and_hidden(teacher, batch, hidden)
        s_logits, s_hidden = _logits_and_hidden(model, batch, hidden)
        pairs = {}
        if hidden:  # hidden_states[0] is the embedding; block j's output is [j + 1]
            pairs = dict(student_hidden=[s_hidden[j + 1] for j in range(len(keep))],
                         teacher_hidden=[t_hidden[k + 1] for k in keep])
        return distillation_loss(s_logits, t_logits, temperature=temperature,
                                 hidden_weight=hidden_weight if hidden else 0.0, **pairs)

    losses = fit(student, loss_fn, batches, optimizer=torch.optim.AdamW(params, lr=lr, weight_decay=0.0),
                 epochs=epochs, desc=desc, freeze_observers_at=None, freeze_bn_at=None,
                 max_seconds=minutes * 60 if minutes else None)
    log.info("lowbit: %s trained %d steps, KL %.4f -> %.4f", desc, len(losses),
             losses[0] if losses else math.nan, losses[-1] if losses else math.nan)
    return losses


def _token_windows(data) -> torch.Tensor:
    ids = data["input_ids"] if isinstance(data, dict) else data
    if isinstance(ids, (list, tuple)):
        ids = torch.cat([torch.as_tensor(x).reshape(-1, torch.as_tensor(x).shape[-1]) for x in ids])
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.dtype not in (torch.int64, torch.int32):
        got = f"{type(ids).__name__} {getattr(ids, 'dtype', '')} {tuple(getattr(ids, 'shape', ()))}"
        raise ValueError(f"Distill trains on token windows: pass data= a [n, seq_len] integer tensor "
                         f"(lowbit.data.calibration_batches(tokenizer, n, seq_len)), got {got}")
    return ids.long()


def _renumbered(name: str, removed: list[str]) -> str | None:
    """``name`` after the blocks ``removed`` ("layers.3") are dropped from their list: None if
    inside one, else its block index lowered by the removed blocks before it."""
    for block in removed:
        if name.startswith(block + "."):
            return None
    for block in removed:
        prefix, _, _ = block.rpartition(".")
        if name.startswith(prefix + "."):
            index, _, rest = name[len(prefix) + 1:].partition(".")
            if index.isdigit():
                gone = sum(int(b.rpartition(".")[2]) < int(index) for b in removed if b.startswith(prefix + "."))
                return f"{prefix}.{int(index) - gone}" + (f".{rest}" if rest else "")
    return name


class PerStep(tuple):
    """Data for a :class:`Sequence`, one entry per step (``None`` for steps that need none)."""


@dataclass(frozen=True)
class Sequence(Recipe):
    """Apply recipes one after another to the same model:
    ``Sequence(Distill(num_layers=24), WeightOnly(num_bits=4, method="gptq"))``.

    Every step gets the same ``data``, unless it is ``Sequence.per_step(d1, d2, ...)`` (e.g.
    long training windows for Distill, 128 calibration sequences for GPTQ). The report holds
    every step's layers, the recipe names joined by " -> ".
    """

    steps: tuple[Recipe, ...]

    def __init__(self, *steps: Recipe) -> None:
        if not steps:
            raise ValueError("Sequence needs at least one recipe")
        bad = [type(s).__name__ for s in steps if not isinstance(s, Recipe)]
        if bad:
            raise TypeError(f"Sequence takes lowbit recipes (Distill, WeightOnly, ...), got {bad}")
        object.__setattr__(self, "steps", tuple(steps))

    @property
    def needs_data(self) -> bool:  # type: ignore[override]
        return any(s.needs_data for s in self.steps)

    def describe(self) -> str:
        return " -> ".join(s.describe() for s in self.steps)

    def plan(self, model: nn.Module) -> Plan:
        """Each step's plan on the given model; a later step's row replaces an earlier one, and
        layers inside blocks a step removes are dropped."""
        rows: dict[str, LayerPlan] = {}
        removed: list[str] = []  # blocks a step drops; later names are renumbered past them
        for step in self.steps:
            for row in step.plan(model).layers:
                if row.status == "remove":
                    removed.append(row.name)
                    rows = {k: v for k, v in rows.items() if not k.startswith(row.name + ".")}
                    rows[row.name] = row
                    continue
                name = _renumbered(row.name, removed)
                if name is not None:
                    rows[name] = dataclasses.replace(row, name=name)
        return Plan(self.describe(), list(rows.values()))

    @staticmethod
    def per_step(*data) -> PerStep:
        return PerStep(data)

    def apply(self, model: nn.Module, data) -> QuantReport:
        if isinstance(data, PerStep) and len(data) != len(self.steps):
            raise ValueError(f"Sequence.per_step got {len(data)} data entries for {len(self.steps)} "
                             f"steps ({self.describe()}); give one per step, None where none is needed")
        report = QuantReport(self.describe())
        for i, step in enumerate(self.steps):
            step_data = data[i] if isinstance(data, PerStep) else data
            if step.needs_data and step_data is None:
                raise ValueError(f"{step.describe()} (in {self.describe()}) needs data: pass data=...")
            report.layers.extend(step.apply(model, step_data).layers)
        return report
