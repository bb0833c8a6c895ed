"""QAT as a recipe: ``quantize(model, QAT(num_bits=4, group_size=64, max_steps=200), data)``.

The same frozen settings drive the low-level path (``prepare_qat(model, QAT(...), data)``,
``fit``, ``convert`` in :mod:`lowbit.qat`) and :meth:`QAT.apply`, which runs the three in place
with a loss that fits the data: token ids ([n, seq_len] integers, a decoder LM) train on the KL
to the float model's next-token distributions (:func:`~lowbit.qat.distillation_loss`);
``(input, target)`` batches train on cross-entropy.
"""
from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..formats import QFormat, bits_per_weight, int_format
from ..nn import QLinear
from ..nn.swap import QuantReport
from ..qat.fake import LEARN
from ..qat.loss import distillation_loss
from ..qat.prepare import convert, prepare_qat
from ..qat.train import fit
from .base import LayerPlan, Recipe, float_bytes, patterns
from .registry import register

log = logging.getLogger("lowbit")
_LEARN_TOKENS = {None: "observe", "lsq+": "lsqplus"}  # spec words ("+" joins recipes in a spec)


@register("qat")
@dataclass(frozen=True)
class QAT(Recipe):
    """Quantization-aware training: what :func:`~lowbit.qat.prepare_qat` makes trainable, and the
    training budget :meth:`apply` spends before :func:`~lowbit.qat.convert`.

    Args:
        num_bits, group_size, symmetric: the weight format (group_size None = per channel;
            ``symmetric=None`` picks symmetric at 8 bits, asymmetric below, as WeightOnly does).
        act_bits: quantize each layer's input to this many bits (per tensor, asymmetric), or
            None to leave activations float (weight-only QAT, as for LLMs).
        learn: None (observers), "lsq" (learned scales) or "lsq+" (learned scales and offsets).
        include, exclude: fnmatch patterns on module names (e.g. exclude the output head).
        batchnorm: "simulate" trains each Conv2d -> BatchNorm2d pair as a ``QATConvBn2d``
            (found by running the first batch of ``data``); "as-is" leaves BatchNorms alone
            (fold them first with ``lowbit.fold`` if the deployed model has them folded).
        max_steps, minutes: :meth:`apply`'s budget (whichever ends first; one is needed).
        lr: AdamW learning rate (every parameter and learned scale trains).
        batch_size: token windows per step (LM data; ``(input, target)`` batches are used as given).
        temperature: of the distillation KL (LM data).
    """

    num_bits: int = 4
    group_size: int | None = None
    symmetric: bool | None = None
    act_bits: int | None = None
    learn: str | None = "lsq"
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    batchnorm: str = "simulate"
    max_steps: int | None = 100
    minutes: float | None = None
    lr: float = 1e-4
    batch_size: int = 4
    temperature: float = 1.0
    seed: int = 0

    layer_types = (nn.Linear, nn.Conv2d)
    needs_data = True

    def __post_init__(self) -> None:
        if not 2 <= self.num_bits <= 8:
            raise ValueError(f"QAT.num_bits must be 2..8, got {self.num_bits}")
        if self.batchnorm not in ("simulate", "as-is"):
            raise ValueError(f"QAT.batchnorm must be 'simulate' or 'as-is', got {self.batchnorm!r}")
        if self.act_bits is not None and not 2 <= self.act_bits <= 8:
            raise ValueError(f"QAT.act_bits must be None or 2..8, got {self.act_bits}")
        if self.learn not in LEARN:
            raise ValueError(f"QAT.learn must be one of {LEARN}, got {self.learn!r}")
        if self.max_steps is None and self.minutes is None:
            raise ValueError("QAT needs a training budget: max_steps=... or minutes=...")
        if (self.max_steps is not None and self.max_steps < 1) or (self.minutes is not None and not self.minutes > 0):
            raise ValueError(f"QAT budget must be positive, got max_steps={self.max_steps!r}, "
                             f"minutes={self.minutes!r}")
        if self.batch_size < 1 or not self.lr > 0 or not self.temperature > 0:
            raise ValueError(f"QAT: batch_size >= 1, lr > 0 and temperature > 0 are needed, got "
                             f"{self.batch_size}, {self.lr}, {self.temperature}")
        patterns(self, "include", "exclude")

    @property
    def weight_format(self) -> QFormat:
        symmetric = self.num_bits == 8 if self.symmetric is None else self.symmetric
        if self.learn == "lsq+":
            symmetric = False
        return int_format(self.num_bits, signed=symmetric, symmetric=symmetric,
                          group_size=self.group_size)

    @property
    def input_format(self) -> QFormat | None:
        if self.act_bits is None:
            return None
        return int_format(self.act_bits, signed=False, symmetric=False).replace(granularity="tensor")

    def describe(self) -> str:
        acts = f"A{self.act_bits}" if self.act_bits else "float activations"
        return f"QAT W{self.num_bits} ({self.weight_format.label()}), {acts}, learn={self.learn}"

    # --- spec: "qat:w4g64,a8,lsqplus,max_steps=20" -------------------------------------------
    @staticmethod
    def spec_option(token: str) -> dict | None:
        if token[:1] in "wa" and token[1:2].isdigit():
            bits, _, group = token[1:].partition("g")
            if token[0] == "a":
                return {"act_bits": int(token[1:])} if token[1:].isdigit() else None
            return {"num_bits": int(bits), "group_size": int(group) if group else None}
        learn = {v: k for k, v in _LEARN_TOKENS.items()}
        return {"learn": learn[token]} if token in learn else None

    def spec_tokens(self) -> tuple[list[str], set[str]]:
        tokens = [f"w{self.num_bits}" + (f"g{self.group_size}" if self.group_size else "")]
        if self.act_bits is not None:
            tokens.append(f"a{self.act_bits}")
        if self.learn != "lsq":
            tokens.append(_LEARN_TOKENS[self.learn])
        return tokens, {"num_bits", "group_size", "act_bits", "learn"}

    # --- plan and apply ------------------------------------------------------------------------
    def layer_plan(self, name: str, module: nn.Module) -> LayerPlan:
        """What :func:`~lowbit.qat.convert` makes of the layer after training."""
        shape, kind, fp = tuple(module.weight.shape), type(module).__name__, float_bytes(module)
        if isinstance(module, nn.Conv2d):
            return LayerPlan(name, kind, shape, "float", bytes=fp, float_bytes=fp,
                             reason="Conv2d trains fake-quantized and stays so (no weight-only conv "
                                    "kernel); StaticPTQ on the trained weights gives int8 conv")
        fmt, K = self.weight_format, shape[1]
        if self.group_size and K % self.group_size:
            return LayerPlan(name, kind, shape, "float", bytes=fp, float_bytes=fp,
                             reason=f"group_size {self.group_size} does not divide its input size {K}")
        bias = 0 if module.bias is None else module.bias.numel() * module.bias.element_size()
        nbytes = round(module.weight.numel() * bits_per_weight(fmt, module.weight.numel(), shape[0]) / 8)
        label = fmt.label() + (f" (A{self.act_bits} trained, float at run time)" if self.act_bits else "")
        return LayerPlan(name, kind, shape, "quantize", label, QLinear.planned_kernel(fmt, None, K),
                         nbytes + bias, fp)

    def apply(self, model: nn.Module, data) -> QuantReport:
        """prepare_qat -> fit (KL to the float model on token ids; cross-entropy on (x, y)
        batches) -> convert, all in place. ``model.lowbit_qat`` keeps the step count and losses."""
        torch.manual_seed(self.seed)
        tokens = _token_ids(data)
        teacher = None
        if tokens is not None:
            batches = list(tokens.split(self.batch_size))
            inputs = batches
            teacher = copy.deepcopy(model).eval().requires_grad_(False)
        else:
            batches = [tuple(b) for b in data]
            if not batches or any(len(b) != 2 for b in batches):
                raise ValueError("QAT.apply trains on token ids ([n, seq_len] integers, a decoder LM) "
                                 "or on (input, target) batches for cross-entropy; got "
                                 f"{type(data).__name__} of {type(batches[0]).__name__ if batches else 'nothing'}")
            inputs = [x for x, _ in batches]
        prepare_qat(model, self, inputs, inplace=True)
        prepared = model.lowbit_report
        losses = self._train(model, batches, teacher)
        del teacher
        report = convert(model, inplace=True).lowbit_report
        why = {r.name: r for r in prepared.layers if r.status != "quantized"}
        report.layers = [why.get(r.name, r) for r in report.layers]
        report.recipe = self.describe()
        model.requires_grad_(False)
        model.lowbit_qat = {"steps": len(losses), "first_loss": losses[0] if losses else None,
                            "last_loss": losses[-1] if losses else None}
        return report

    def _train(self, model: nn.Module, batches: list, teacher: nn.Module | None) -> list[float]:
        if teacher is not None:
            def loss_fn(m, ids):
                with torch.no_grad():
                    t_logits = teacher(input_ids=ids, use_cache=False).logits
                s_logits = m(input_ids=ids, use_cache=False).logits
                return distillation_loss(s_logits, t_logits, temperature=self.temperature)
        else:
            def loss_fn(m, batch):
                return F.cross_entropy(m(batch[0]), batch[1])
        if self.max_steps:  # the batches in order, cycled to exactly max_steps
            batches, epochs = [batches[i % len(batches)] for i in range(self.max_steps)], 1
        else:  # the time budget ends it
            epochs = math.ceil(1e6 / len(batches))
        model.requires_grad_(True)
        params = [p for p in model.parameters() if p.requires_grad]
        losses = fit(model, loss_fn, batches, optimizer=torch.optim.AdamW(params, lr=self.lr, weight_decay=0.0),
                     epochs=epochs, desc="QAT", max_seconds=self.minutes * 60 if self.minutes else None)
        log.info("lowbit: QAT trained %d steps, loss %.4f -> %.4f", len(losses),
                 losses[0] if losses else math.nan, losses[-1] if losses else math.nan)
        return losses


def _token_ids(data) -> torch.Tensor | None:
    """The [n, seq_len] token ids in ``data`` (a tensor or {"input_ids": ...}), else None."""
    ids = data.get("input_ids") if isinstance(data, dict) else data
    if isinstance(ids, torch.Tensor) and ids.dim() == 2 and not ids.is_floating_point():
        return ids.long()
    return None
