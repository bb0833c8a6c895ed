"""Shared plumbing for lowbit.eval: result base class, model calling, eval mode."""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn


class Result:
    """Base of the frozen result dataclasses: ``as_dict()`` gives a flat row for a report."""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]


def output_logits(output: Any) -> torch.Tensor:
    """The logits in a model's output: the output itself if a tensor, else its ``.logits``."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    raise TypeError(
        f"expected the model to return a tensor or an object with a .logits tensor, "
        f"got {type(output).__name__}; wrap the model so that it returns logits"
    )


def accepts_kwarg(model: nn.Module, name: str, through_var_kwargs: bool = True) -> bool:
    """Whether ``model.forward`` takes keyword ``name``: by name, or else via ``**kwargs``."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
    if name in params:
        return True
    return through_var_kwargs and any(p.kind is p.VAR_KEYWORD for p in params.values())


def device_of(model: nn.Module) -> torch.device:
    """Device of the model's first parameter (cpu for a model with none)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@contextlib.contextmanager
def eval_mode(models: nn.Module | Iterable[nn.Module]) -> Iterator[None]:
    """Put models in eval mode for the block, then restore each module's training flag."""
    models = [models] if isinstance(models, nn.Module) else list(models)
    saved = [(m, m.training) for model in models for m in model.modules()]
    for model in models:
        model.eval()
    try:
        yield
    finally:
        for module, training in saved:
            module.training = training
