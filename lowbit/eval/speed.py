"""Batch-1 greedy generation speed, with prefill and decode timed apart.

The loop is written out here rather than calling ``generate`` so that nothing (generation
configs, eos stops, minimum lengths) changes what is timed:

    prefill: one forward over the prompt, then the argmax of its last position = new token 1
    decode:  ``new_tokens - 1`` single-token forwards with the KV cache = new tokens 2..N

so ``decode_tok_s = (new_tokens - 1) / decode_s`` and ``prefill_tok_s = prompt_len / prefill_s``.

The KV cache goes back in through ``cache=`` (transformers >= 5.2x) or ``past_key_values=``
(older versions and other models), whichever the forward names.
"""
from __future__ import annotations

import contextlib
import logging
import os
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from lowbit.eval._util import Result, accepts_kwarg, device_of, eval_mode, output_logits

logger = logging.getLogger(__name__)

# Public-domain text to tokenise for the prompt when a tokenizer is given.
_PROMPT_TEXT = (
    "It is a truth universally acknowledged, that a single man in possession of a good "
    "fortune, must be in want of a wife. However little known the feelings or views of such a "
    "man may be on his first entering a neighbourhood, this truth is so well fixed in the minds "
    "of the surrounding families, that he is considered the rightful property of some one or "
    "other of their daughters."
)


@dataclass(frozen=True)
class SpeedResult(Result):
    """Median batch-1 generation speed over ``repeats`` runs after one warm-up run."""

    decode_tok_s: float
    prefill_tok_s: float
    latency_ms: float  # median decode time per new token
    prefill_s: float
    decode_s: float
    prompt_len: int
    new_tokens: int
    repeats: int
    threads: int


@contextlib.contextmanager
def num_threads(threads: int | None) -> Iterator[None]:
    """``torch.set_num_threads(threads)`` for the block (None leaves it), restored after."""
    saved = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def prompt_ids(model: nn.Module, tokenizer: Any | None, prompt_len: int) -> torch.Tensor:
    """A ``(1, prompt_len)`` prompt: the tokenised fixed text, or seeded random ids without one."""
    if tokenizer is not None:
        ids = tokenizer(_PROMPT_TEXT)["input_ids"]
        ids = (list(ids) * (prompt_len // max(len(ids), 1) + 1))[:prompt_len]
        return torch.tensor([ids], dtype=torch.long)
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab is None and hasattr(model, "get_input_embeddings"):
        vocab = model.get_input_embeddings().num_embeddings
    if vocab is None:
        raise ValueError("decode_speed: cannot tell the model's vocabulary size; pass a tokenizer")
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab, (1, prompt_len), generator=gen)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _warn_if_busy() -> None:
    """Timings on a machine that other processes keep busy are not worth comparing."""
    if hasattr(os, "getloadavg") and os.getloadavg()[0] > (os.cpu_count() or 1):
        logger.warning(
            "decode_speed: load average %.1f exceeds the %d cores; other processes will slow "
            "the timings down", os.getloadavg()[0], os.cpu_count() or 1,
        )


def cache_kwarg(model: nn.Module) -> str:
    """The keyword that passes a KV cache back into ``model.forward``."""
    for name in ("cache", "past_key_values"):
        if accepts_kwarg(model, name, through_var_kwargs=False):
            return name
    raise TypeError(
        f"decode_speed: {type(model).__name__}.forward takes neither cache= nor past_key_values=; "
        f"it needs a causal LM with a KV cache (a Hugging Face *ForCausalLM model)"
    )


def _cache_of(output: Any) -> Any:
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)


def greedy_generate(
    model: nn.Module, prompt: torch.Tensor, new_tokens: int
) -> tuple[torch.Tensor, float, float]:
    """Greedy batch-1 generation with a KV cache; returns (new token ids, prefill_s, decode_s).

    No eos stop: exactly ``new_tokens`` ids come back, shape ``(1, new_tokens)``.
    """
    device, cache_name = device_of(model), cache_kwarg(model)
    extra = {"logits_to_keep": 1} if accepts_kwarg(model, "logits_to_keep", False) else {}
    prompt = prompt.to(device)
    _sync(device)
    start = time.perf_counter()
    out = model(prompt, use_cache=True, **extra)
    next_id = output_logits(out)[:, -1].argmax(-1, keepdim=True)  # (1, 1)
    _sync(device)
    prefilled = time.perf_counter()
    generated = [next_id]
    for _ in range(new_tokens - 1):
        out = model(next_id, use_cache=True, **{cache_name: _cache_of(out)}, **extra)
        next_id = output_logits(out)[:, -1].argmax(-1, keepdim=True)  # (1, 1)
        generated.append(next_id)
    _sync(device)
    done = time.perf_counter()
    return torch.cat(generated, dim=1), prefilled - start, done - prefilled


def decode_speed(
    model: nn.Module,
    tokenizer: Any | None = None,
    prompt_len: int = 32,
    new_tokens: int = 128,
    repeats: int = 3,
    threads: int | None = 2,
) -> SpeedResult:
    """Batch-1 greedy speed of a Hugging Face-style causal LM (KV cache, ``use_cache``).

    Runs one warm-up generation, then ``repeats`` timed ones, under ``inference_mode`` with
    ``torch.set_num_threads(threads)`` (restored after; None keeps the current setting), and
    reports the median prefill and decode times.
    """
    if prompt_len < 1 or new_tokens < 2 or repeats < 1:
        raise ValueError(
            f"decode_speed needs prompt_len >= 1, new_tokens >= 2 and repeats >= 1, "
            f"got {prompt_len}, {new_tokens}, {repeats}"
        )
    cache_kwarg(model)  # fail early on a model without a KV cache
    _warn_if_busy()
    prompt = prompt_ids(model, tokenizer, prompt_len)
    prefill, decode = [], []
    with num_threads(threads), eval_mode(model), torch.inference_mode():
        used_threads = torch.get_num_threads()
        for run in tqdm(range(repeats + 1), desc="decode_speed", unit="run", disable=None):
            _, prefill_s, decode_s = greedy_generate(model, prompt, new_tokens)
            if run > 0:  # run 0 is the warm-up
                prefill.append(prefill_s)
                decode.append(decode_s)
    prefill_s, decode_s = statistics.median(prefill), statistics.median(decode)
    result = SpeedResult(
        decode_tok_s=(new_tokens - 1) / decode_s,
        prefill_tok_s=prompt_len / prefill_s,
        latency_ms=1000 * decode_s / (new_tokens - 1),
        prefill_s=prefill_s,
        decode_s=decode_s,
        prompt_len=prompt_len,
        new_tokens=new_tokens,
        repeats=repeats,
        threads=used_threads,
    )
    logger.info("decode_speed: %s", result)
    return result
