"""Small pure metrics on tensors, and classification accuracy of a model.

The tensor functions take logits (or embeddings) of matching shape ``(..., C)``, compute
in fp32, reduce in float64 and return a Python float: the mean over every leading position.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from lowbit.eval._util import Result, device_of, eval_mode, output_logits

logger = logging.getLogger(__name__)


def _check_pair(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{what}: the two tensors must have the same shape, got {tuple(a.shape)} and "
            f"{tuple(b.shape)}; pass the outputs of the two models on the same inputs"
        )
    if a.dim() == 0 or a.numel() == 0:
        raise ValueError(
            f"{what}: expected a non-empty tensor of shape (..., C), got {tuple(a.shape)}"
        )


def token_kl(logp_ref: torch.Tensor, logp_q: torch.Tensor) -> torch.Tensor:
    """Per-position KL(ref || q) = sum_c p_ref[c] * (log p_ref[c] - log q[c]) over the last dim.

    Both inputs are log-probabilities (``log_softmax`` outputs) of shape ``(..., C)``;
    returns shape ``(...)`` in the inputs' dtype.
    """
    return torch.nn.functional.kl_div(logp_q, logp_ref, reduction="none", log_target=True).sum(-1)


def kl_divergence(logits_ref: torch.Tensor, logits_q: torch.Tensor) -> float:
    """Mean over positions of KL(softmax(logits_ref) || softmax(logits_q)), in nats."""
    _check_pair(logits_ref, logits_q, "kl_divergence")
    logp_ref = torch.log_softmax(logits_ref.float(), dim=-1)
    logp_q = torch.log_softmax(logits_q.float(), dim=-1)
    return token_kl(logp_ref, logp_q).double().mean().item()


def top1_agreement(logits_a: torch.Tensor, logits_b: torch.Tensor) -> float:
    """Fraction of positions where the two argmax classes agree."""
    _check_pair(logits_a, logits_b, "top1_agreement")
    return (logits_a.argmax(-1) == logits_b.argmax(-1)).double().mean().item()


def cosine_agreement(emb_a: torch.Tensor, emb_b: torch.Tensor) -> float:
    """Mean cosine similarity between matching rows (last dim = embedding dim)."""
    _check_pair(emb_a, emb_b, "cosine_agreement")
    cos = torch.nn.functional.cosine_similarity(emb_a.float(), emb_b.float(), dim=-1)
    return cos.double().mean().item()


@dataclass(frozen=True)
class AccuracyResult(Result):
    """Top-1 accuracy of a classifier on a labelled set."""

    accuracy: float
    num_correct: int
    num_samples: int


def _batches(
    data: Iterable | tuple[torch.Tensor, torch.Tensor], batch_size: int
) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    is_pair = isinstance(data, tuple) and len(data) == 2
    if is_pair and all(isinstance(t, torch.Tensor) for t in data):
        inputs, labels = data
        if len(inputs) != len(labels):
            raise ValueError(
                f"accuracy: got {len(inputs)} inputs but {len(labels)} labels; they must match"
            )
        return [(inputs[i : i + batch_size], labels[i : i + batch_size])
                for i in range(0, len(inputs), batch_size)]
    return data


def accuracy(
    model: nn.Module,
    data: Iterable | tuple[torch.Tensor, torch.Tensor],
    batch_size: int = 256,
) -> AccuracyResult:
    """Top-1 accuracy of ``model`` on ``data``.

    ``data`` is either a ``(inputs, labels)`` pair of tensors, split into batches of
    ``batch_size``, or an iterable of ``(inputs, labels)`` batches such as a ``DataLoader``.
    The model's output (a tensor or an object with ``.logits``) has shape ``(B, num_classes)``.
    """
    correct = total = 0
    device = device_of(model)
    with eval_mode(model), torch.inference_mode():
        for inputs, labels in tqdm(_batches(data, batch_size), desc="accuracy", disable=None):
            logits = output_logits(model(inputs.to(device)))
            if logits.shape[0] != labels.shape[0]:
                raise ValueError(
                    f"accuracy: the model returned {logits.shape[0]} rows for a batch of "
                    f"{labels.shape[0]} labels; expected output shape (B, num_classes)"
                )
            correct += (logits.argmax(-1).cpu() == labels.cpu()).sum().item()
            total += labels.shape[0]
    if total == 0:
        raise ValueError("accuracy: the data held no samples")
    logger.info("accuracy %.4f (%d / %d)", correct / total, correct, total)
    return AccuracyResult(accuracy=correct / total, num_correct=int(correct), num_samples=total)

