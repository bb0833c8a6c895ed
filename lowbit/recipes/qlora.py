"""QLoRA as a recipe: NF4 base weights plus trainable LoRA adapters (:mod:`lowbit.lora`).

``quantize(model, QLoRA(rank=16), data)`` quantizes like :class:`NF4`, wraps the target
linears with adapters (only those train), and with ``max_steps`` trains them on the data's
next-token loss. The model is left ready for further fine-tuning: the adapters require grad.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import logging
from dataclasses import dataclass

import torch
from torch import nn

from ..lora import LoRAConfig, add_lora
from ..nn.swap import QuantReport
from ..qat.train import fit
from .base import LayerPlan
from .nf4 import NF4
from .qat import _token_ids
from .registry import register

log = logging.getLogger("lowbit")


@register("qlora")
@dataclass(frozen=True)
class QLoRA(NF4):
    """NF4 (``block_size``, ``double_quant``, ``include``, ``exclude``) plus LoRA adapters.

    Args:
        rank, alpha, dropout, targets: the adapters (:class:`~lowbit.lora.LoRAConfig`; targets
            are fnmatch patterns on the last part of module names; ``exclude`` applies too).
        max_steps: AdamW steps on the adapters over ``data`` ([n, seq_len] token ids, next-token
            loss) in batches of ``batch_size``; 0 = add untrained adapters (no data needed).
        lr: the adapters' learning rate.
    """

    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    targets: tuple[str, ...] = LoRAConfig.targets
    max_steps: int = 0
    lr: float = 2e-4
    batch_size: int = 4
    seed: int = 0

    spec_names = ()  # not NF4's: this class registers its own

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "targets", (self.targets,) if isinstance(self.targets, str)
                           else tuple(self.targets))
        _ = self.lora_config  # validates rank and dropout
        if self.max_steps < 0 or not self.lr > 0 or self.batch_size < 1:
            raise ValueError(f"QLoRA: max_steps >= 0, lr > 0 and batch_size >= 1 are needed, got "
                             f"{self.max_steps}, {self.lr}, {self.batch_size}")

    @property
    def needs_data(self) -> bool:  # type: ignore[override]
        return self.max_steps > 0

    @property
    def lora_config(self) -> LoRAConfig:
        return LoRAConfig(rank=self.rank, alpha=self.alpha, dropout=self.dropout,
                          targets=self.targets, exclude=self.exclude)

    def describe(self) -> str:
        return f"QLoRA ({super().describe()}, LoRA rank {self.rank})"

    def layer_plan(self, name: str, module: nn.Module) -> LayerPlan:
        row = super().layer_plan(name, module)
        leaf = name.rpartition(".")[2]
        if not any(fnmatch.fnmatchcase(leaf, t) for t in self.targets):
            return row
        N, K = module.weight.shape
        return dataclasses.replace(row, format=f"{row.format} + LoRA rank {self.rank} (fp32)",
                                   bytes=row.bytes + 4 * self.rank * (N + K))

    def apply(self, model: nn.Module, data) -> QuantReport:
        report = super().apply(model, data)
        add_lora(model, self.lora_config)
        report.recipe = self.describe()
        if self.max_steps:
            self._train(model, data)
        return report

    def _train(self, model: nn.Module, data) -> None:
        ids = _token_ids(data)
        if ids is None:
            raise ValueError(f"QLoRA(max_steps={self.max_steps}) trains on token ids: pass data= a "
                             f"[n, seq_len] integer tensor, got {type(data).__name__}")
        torch.manual_seed(self.seed)
        batches = list(ids.split(self.batch_size))
        batches = [batches[i % len(batches)] for i in range(self.max_steps)]
        params = [p for p in model.parameters() if p.requires_grad]

        def loss_fn(m, batch):
            return m(input_ids=batch, labels=batch, use_cache=False).loss

        losses = fit(model, loss_fn, batches, optimizer=torch.optim.AdamW(params, lr=self.lr),
                     desc="QLoRA", freeze_observers_at=None, freeze_bn_at=None)
        model.eval()
        model.lowbit_qlora = {"steps": len(losses), "first_loss": losses[0], "last_loss": losses[-1]}
        log.info("lowbit: QLoRA trained %d steps, loss %.4f -> %.4f", len(losses), losses[0], losses[-1])
