"""The one training loop of lowbit (QAT, Distill, QLoRA): :func:`fit`."""
from __future__ import annotations

import math
import time
from typing import Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from .prepare import freeze_batchnorm, freeze_observers


def fit(model: nn.Module, loss_fn, batches: Iterable, *, optimizer: torch.optim.Optimizer,
        epochs: int = 1, desc: str = "QAT", freeze_observers_at: float | None = 0.8,
        freeze_bn_at: float | None = 0.5, max_seconds: float | None = None) -> list[float]:
    """A small training loop: ``loss_fn(model, batch) -> loss`` per batch, with observers and
    BatchNorm frozen at the given fractions of training, stopping early once ``max_seconds``
    have passed (a time budget). Returns the per-step losses."""
    batches = list(batches)
    total = epochs * len(batches)
    losses, step = [], 0
    deadline = time.perf_counter() + max_seconds if max_seconds is not None else math.inf
    model.train()
    bar = tqdm(total=None if max_seconds is not None else total, desc=desc, unit="step", disable=None)
    for _ in range(epochs):
        for batch in batches:
            if time.perf_counter() >= deadline:
                break
            if freeze_observers_at is not None and step == int(freeze_observers_at * total):
                freeze_observers(model)
            if freeze_bn_at is not None and step == int(freeze_bn_at * total):
                freeze_batchnorm(model)
            loss = loss_fn(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if time.perf_counter() >= deadline:
            break
    bar.close()
    return losses
