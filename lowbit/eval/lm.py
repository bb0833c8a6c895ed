"""Language-model quality: perplexity, KL to a reference and top-1 agreement, in one pass.

The protocol (shared/DATA.md): cut the evaluation tokens into non-overlapping windows of
``window`` tokens; in each window every position but the last predicts the next token, so
32768 tokens in 512-token windows give 64 windows and 32704 predicted tokens. Perplexity is
``exp(mean next-token NLL)`` over all predicted tokens.

All models run window by window in lock-step, so the reference's log-probabilities for one
batch of windows are the only ones held (32768 x 49152 fp32 logits would be 6 GB).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from lowbit.eval._util import Result, accepts_kwarg, device_of, eval_mode, output_logits
from lowbit.eval.metrics import token_kl

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LMResult(Result):
    """Quality of one language model on one token stream.

    ``kl`` is the mean per-token KL(reference || model) in nats and ``top1_agreement`` the
    fraction of positions where the two argmax tokens agree; both are None when no reference
    was given. The reference itself gets kl 0 and agreement 1. ``forward_s`` is the wall time
    of this model's forward passes alone.
    """

    ppl: float
    nll: float
    kl: float | None
    top1_agreement: float | None
    num_tokens: int
    num_windows: int
    window: int
    forward_s: float


@dataclass
class _Sums:
    nll: float = 0.0
    kl: float = 0.0
    agree: int = 0
    forward_s: float = 0.0


def _check_tokens(tokens: torch.Tensor, window: int, batch_size: int) -> torch.Tensor:
    is_tensor = isinstance(tokens, torch.Tensor)
    if not is_tensor or tokens.dtype.is_floating_point or tokens.is_complex():
        raise TypeError(f"tokens must be an integer (Long) tensor of token ids, got {tokens!r:.80}")
    if tokens.dim() == 2 and tokens.shape[0] == 1:
        tokens = tokens[0]
    if tokens.dim() != 1:
        raise ValueError(f"tokens must have shape (T,) or (1, T), got {tuple(tokens.shape)}")
    if window < 2:
        raise ValueError(f"window must be at least 2 tokens (one input, one target), got {window}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if tokens.numel() < 2:
        raise ValueError(f"need at least 2 tokens to predict one, got {tokens.numel()}")
    return tokens.long()


def _window_batches(num_tokens: int, window: int, batch_size: int) -> list[list[int]]:
    """Start offsets of the windows, grouped into batches of equal-length windows.

    Full windows come first, ``batch_size`` at a time; a shorter last window (2 tokens or
    more) forms a batch of its own, and a single leftover token is dropped.
    """
    full = list(range(0, num_tokens - window + 1, window))
    batches = [full[i : i + batch_size] for i in range(0, len(full), batch_size)]
    tail = len(full) * window
    if num_tokens - tail >= 2:
        batches.append([tail])
    return batches


def _log_probs(model: nn.Module, ids: torch.Tensor, use_cache_kwarg: bool) -> torch.Tensor:
    """fp32 next-token log-probabilities ``(B, W-1, V)`` for the first W-1 positions."""
    kwargs = {"use_cache": False} if use_cache_kwarg else {}
    logits = output_logits(model(ids.to(device_of(model)), **kwargs))  # (B, W, V)
    if logits.dim() != 3 or logits.shape[:2] != ids.shape:
        raise ValueError(
            f"expected logits of shape (B, W, vocab) = ({ids.shape[0]}, {ids.shape[1]}, V), "
            f"got {tuple(logits.shape)}; the model must be a causal LM with per-position logits"
        )
    return torch.log_softmax(logits[:, :-1].float(), dim=-1)


def evaluate_lm(
    models: dict[str, nn.Module],
    tokens: torch.Tensor,
    reference: str | None = "fp32",
    window: int = 512,
    batch_size: int = 1,
) -> dict[str, LMResult]:
    """Perplexity of every model, and KL / top-1 agreement against ``models[reference]``.

    ``models`` maps a name to a causal LM whose output is a logits tensor ``(B, W, V)`` or
    has ``.logits`` (Hugging Face models); ``tokens`` is a 1-D tensor of token ids. Windows
    are non-overlapping, ``batch_size`` of them per forward. Runs under ``inference_mode``
    with ``use_cache=False`` where the model accepts it; log-softmax in fp32, sums in float64.
    Returns ``{name: LMResult}`` in the order of ``models``.
    """
    if not models:
        raise ValueError("evaluate_lm: models is empty; pass {'name': model, ...}")
    if reference is not None and reference not in models:
        raise ValueError(
            f"evaluate_lm: reference {reference!r} is not one of the models {list(models)}; "
            f"name the full-precision model, or pass reference=None to skip KL and agreement"
        )
    tokens = _check_tokens(tokens, window, batch_size)
    order = ([reference] if reference is not None else []) + [n for n in models if n != reference]
    use_cache_kwarg = {n: accepts_kwarg(m, "use_cache") for n, m in models.items()}
    sums = {name: _Sums() for name in order}
    batches = _window_batches(tokens.numel(), window, batch_size)
    num_windows = sum(len(b) for b in batches)
    num_predicted = 0

    progress = tqdm(total=num_windows, desc="evaluate_lm", unit="window", disable=None)
    with eval_mode(models.values()), torch.inference_mode(), progress:
        for starts in batches:
            length = min(window, tokens.numel() - starts[0])
            ids = torch.stack([tokens[s : s + length] for s in starts])  # (B, W)
            targets = ids[:, 1:].unsqueeze(-1)  # (B, W-1, 1)
            num_predicted += targets.numel()
            ref_logp = ref_top1 = None
            for name in order:
                start = time.perf_counter()
                logp = _log_probs(models[name], ids, use_cache_kwarg[name])  # (B, W-1, V)
                sums[name].forward_s += time.perf_counter() - start
                sums[name].nll -= logp.gather(-1, targets.to(logp.device)).double().sum().item()
                if name == reference:
                    ref_logp, ref_top1 = logp, logp.argmax(-1)
                elif ref_logp is not None:
                    logp = _match_reference(logp, ref_logp, name, reference)
                    sums[name].kl += token_kl(ref_logp, logp).double().sum().item()
                    sums[name].agree += (logp.argmax(-1) == ref_top1).sum().item()
            progress.update(len(starts))

    results = {}
    for name in models:
        s, has_ref = sums[name], reference is not None
        nll = s.nll / num_predicted
        agreement = 1.0 if name == reference else s.agree / num_predicted
        results[name] = LMResult(
            ppl=math.exp(nll),
            nll=nll,
            kl=(s.kl / num_predicted) if has_ref else None,
            top1_agreement=agreement if has_ref else None,
            num_tokens=num_predicted,
            num_windows=num_windows,
            window=window,
            forward_s=s.forward_s,
        )
        logger.info("evaluate_lm %s: %s", name, results[name])
    return results


def _match_reference(
    logp: torch.Tensor, ref_logp: torch.Tensor, name: str, reference: str
) -> torch.Tensor:
    if logp.shape != ref_logp.shape:
        raise ValueError(
            f"evaluate_lm: model {name!r} gives log-probabilities of shape {tuple(logp.shape)} but "
            f"the reference {reference!r} gives {tuple(ref_logp.shape)}; KL needs one vocabulary"
        )
    return logp.to(ref_logp.device)


def perplexity(model: nn.Module, tokens: torch.Tensor, window: int = 512) -> float:
    """Perplexity of one causal LM on ``tokens`` under the same protocol as ``evaluate_lm``."""
    return evaluate_lm({"model": model}, tokens, reference=None, window=window)["model"].ppl
