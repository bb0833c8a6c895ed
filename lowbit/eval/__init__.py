"""Measure models: LM quality against a reference, speed, size, memory, classification.

    evaluate_lm(models, tokens)      -> {name: LMResult}  ppl, KL and top-1 vs the reference
    perplexity(model, tokens)        -> float
    decode_speed(model, tokenizer)   -> SpeedResult       batch-1 greedy prefill/decode tok/s
    footprint(model)                 -> Footprint         size_mb, bpw_model, bpw_linears
    accuracy(model, data)            -> AccuracyResult
    kl_divergence, top1_agreement, cosine_agreement       pure functions on tensors -> float
    timed(), track_peak_rss(), peak_rss_mb(), size_on_disk(path)

Every result is a frozen dataclass with ``as_dict()`` for a results row.
"""
from lowbit.eval.footprint import Footprint, footprint, size_on_disk
from lowbit.eval.lm import LMResult, evaluate_lm, perplexity
from lowbit.eval.metrics import (
    AccuracyResult,
    accuracy,
    cosine_agreement,
    kl_divergence,
    top1_agreement,
)
from lowbit.eval.resources import peak_rss_mb, timed, track_peak_rss
from lowbit.eval.speed import SpeedResult, decode_speed

__all__ = [
    "AccuracyResult",
    "Footprint",
    "LMResult",
    "SpeedResult",
    "accuracy",
    "cosine_agreement",
    "decode_speed",
    "evaluate_lm",
    "footprint",
    "kl_divergence",
    "peak_rss_mb",
    "perplexity",
    "size_on_disk",
    "timed",
    "top1_agreement",
    "track_peak_rss",
]
