"""What a comparison measures for each kind of model: its data, the float model's reference
outputs, the quality metric and the speed metric.

A task is built once in the parent process (:meth:`Task.prepare` runs the float model) and
shipped to every trial, which calls :meth:`Task.calibration`, :meth:`Task.quality` and
:meth:`Task.speed` on its quantized model. Quality is always measured against the float model
on held-out data that no recipe calibrated on.
"""
from __future__ import annotations

import logging
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..eval._util import accepts_kwarg, eval_mode, output_logits
from ..eval.lm import _log_probs, _window_batches
from ..eval.metrics import cosine_agreement, kl_divergence, token_kl, top1_agreement
from ..eval.speed import cache_kwarg, decode_speed

log = logging.getLogger("lowbit")

KINDS = ("causal-lm", "rnn-lm", "encoder", "cnn")
# Reference log-probabilities are kept in memory up to this size; beyond it every trial
# recomputes them from the float model, window by window (exact either way).
STORED_REFERENCE_BYTES = 1536 * 2**20


def _median_ms(fn: Callable[[], Any], repeats: int, warmup_s: float = 0.5,
               min_total_s: float = 1.0) -> tuple[float, float, float]:
    """Median, min and max wall time of ``fn()`` in ms: warm-up calls for ``warmup_s`` (caches,
    thread pools, lazily built kernels), then at least ``repeats`` calls and ``min_total_s``."""
    start = time.perf_counter()
    fn()
    while time.perf_counter() - start < warmup_s:
        fn()
    times: list[float] = []
    while len(times) < repeats or sum(times) < 1000 * min_total_s:
        begin = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - begin))
        if len(times) >= 1000:
            break
    return statistics.median(times), min(times), max(times)


@dataclass
class Task:
    """Base of the per-kind tasks. ``reference_quality`` is the float model's own row."""

    kind: ClassVar[str]
    metric: ClassVar[dict]
    speed_metric: ClassVar[dict]
    description: dict = field(default_factory=dict)
    repeats: int = 3
    reference_quality: dict | None = None

    def calibration(self, recipe) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def prepare(self, model: nn.Module) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def quality(self, model: nn.Module, float_model: nn.Module) -> dict:  # pragma: no cover
        raise NotImplementedError

    def speed(self, model: nn.Module) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def quality_loss(self, value: float) -> float:
        """Relative degradation of the primary metric vs the float model (> 0 is worse)."""
        ref = self.reference_quality["quality"]
        if self.metric["higher_is_better"]:
            return (ref - value) / abs(ref) if ref else 0.0
        return value / ref - 1


@dataclass
class LMTask(Task):
    """A language model on token ids: perplexity, KL and top-1 agreement against the float
    model in non-overlapping windows; speed = batch-1 decode with the KV cache, or for a model
    without one (a recurrent LM) the throughput of a 128-token forward at batch 1 and 32."""

    kind: ClassVar[str] = "causal-lm"
    metric: ClassVar[dict] = {"name": "ppl", "label": "perplexity", "higher_is_better": False}
    speed_metric: ClassVar[dict] = {"name": "decode_tok_s", "label": "decode tok/s (batch 1)"}
    tokens: torch.Tensor | None = None          # 1-D held-out token ids
    calib: torch.Tensor | None = None           # [n, seq_len] calibration ids
    tokenizer: Any = None
    window: int = 512
    new_tokens: int = 128
    ref_logp: list[torch.Tensor] | None = None

    def __post_init__(self) -> None:
        if self.tokens is None or self.tokens.dim() != 1 or self.tokens.is_floating_point():
            raise TypeError(f"a {self.kind} comparison evaluates on a 1-D tensor of token ids; "
                            f"got {_describe(self.tokens)}")
        self.window = min(self.window, self.tokens.numel())

    def _windows(self):
        for starts in _window_batches(self.tokens.numel(), self.window, 1):
            yield self.tokens[starts[0]:starts[0] + self.window][None]

    def calibration(self, recipe) -> torch.Tensor:
        return self.calib

    def prepare(self, model: nn.Module) -> None:
        num = sum(ids.shape[1] - 1 for ids in self._windows())
        vocab = None
        logps = []
        use_cache = accepts_kwarg(model, "use_cache")
        with eval_mode(model), torch.inference_mode():
            nll = 0.0
            for ids in tqdm(list(self._windows()), desc="reference", unit="window", disable=None):
                logp = _log_probs(model, ids, use_cache)[0]
                nll -= logp.gather(-1, ids[0, 1:, None]).double().sum().item()
                vocab = logp.shape[-1]
                if num * vocab * 4 <= STORED_REFERENCE_BYTES:
                    logps.append(logp)
        self.ref_logp = logps if len(logps) == math.ceil(self.tokens.numel() / self.window) else None
        self.reference_quality = {"ppl": math.exp(nll / num), "kl": 0.0, "top1_agreement": 1.0,
                                  "quality": math.exp(nll / num), "eval_tokens": int(self.tokens.numel())}

    def quality(self, model: nn.Module, float_model: nn.Module) -> dict:
        nll = kl = agree = num = 0.0
        use_cache = accepts_kwarg(model, "use_cache")
        with eval_mode([model, float_model]), torch.inference_mode():
            for i, ids in enumerate(tqdm(list(self._windows()), desc="evaluate", unit="window",
                                         disable=None)):
                logp = _log_probs(model, ids, use_cache)[0]
                ref = (self.ref_logp[i] if self.ref_logp is not None
                       else _log_probs(float_model, ids, accepts_kwarg(float_model, "use_cache"))[0])
                if logp.shape != ref.shape:
                    raise ValueError(f"the quantized model gives log-probabilities of shape "
                                     f"{tuple(logp.shape)}, the float one {tuple(ref.shape)}")
                nll -= logp.gather(-1, ids[0, 1:, None]).double().sum().item()
                kl += token_kl(ref, logp).double().sum().item()
                agree += (logp.argmax(-1) == ref.argmax(-1)).sum().item()
                num += ids.shape[1] - 1
        ppl = math.exp(nll / num)
        return {"ppl": ppl, "kl": kl / num, "top1_agreement": agree / num, "quality": ppl}

    def speed(self, model: nn.Module) -> dict:
        try:
            cache_kwarg(model)
        except TypeError:
            return self._forward_speed(model)
        s = decode_speed(model, self.tokenizer, new_tokens=self.new_tokens, repeats=self.repeats,
                         threads=None)
        return {"decode_tok_s": s.decode_tok_s, "prefill_tok_s": s.prefill_tok_s,
                "speed": s.decode_tok_s}

    def _forward_speed(self, model: nn.Module) -> dict:
        ids = self.tokens[:128]
        out = {}
        with eval_mode(model), torch.inference_mode():
            for batch in (1, 32):
                x = ids[None].expand(batch, -1).contiguous()
                med, lo, hi = _median_ms(lambda: model(x), self.repeats)
                out.update({f"latency_ms_b{batch}": med, f"latency_ms_b{batch}_min": lo,
                            f"latency_ms_b{batch}_max": hi, f"tok_s_b{batch}": batch * x.shape[1] / med * 1000})
        out["speed"] = out["tok_s_b1"]
        return out


@dataclass
class RNNTask(LMTask):
    """A recurrent language model (no KV cache): same quality metrics, forward throughput."""

    kind: ClassVar[str] = "rnn-lm"
    speed_metric: ClassVar[dict] = {"name": "tok_s_b1", "label": "tokens/s (batch 1, 128-step forward)"}
    window: int = 256


def _describe(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"a {x.dim()}-D {x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__


def _batched_latency(fn: Callable[[Any], Any], batch_of: Callable[[int], Any], repeats: int) -> dict:
    out = {}
    for batch in (1, 16):
        x = batch_of(batch)
        med, lo, hi = _median_ms(lambda: fn(x), repeats)
        out.update({f"latency_ms_b{batch}": med, f"latency_ms_b{batch}_min": lo,
                    f"latency_ms_b{batch}_max": hi})
    return out


@dataclass
class ImageTask(Task):
    """A CNN on images: top-1 agreement and KL against the float model's logits, and labelled
    accuracy when labels are given; speed = latency at batch 1 and 16, images/s at batch 16."""

    kind: ClassVar[str] = "cnn"
    metric: ClassVar[dict] = {"name": "top1_agreement", "label": "top-1 agreement with fp32",
                              "higher_is_better": True}
    speed_metric: ClassVar[dict] = {"name": "items_s_b16", "label": "images/s (batch 16)"}
    images: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    calib: torch.Tensor | None = None
    train: tuple[torch.Tensor, torch.Tensor] | None = None  # labelled (x, y) for training recipes
    batch_size: int = 64
    ref_logits: torch.Tensor | None = None

    def __post_init__(self) -> None:
        for name in ("images", "calib"):
            x = getattr(self, name)
            if x is None or x.dim() != 4 or not x.is_floating_point():
                raise TypeError(f"a cnn comparison needs {name} as a float (N, C, H, W) tensor; "
                                f"got {_describe(x)}")
        if self.labels is not None:
            self.metric = {"name": "accuracy", "label": "accuracy (labelled)", "higher_is_better": True}

    def calibration(self, recipe) -> list:
        from ..recipes.qat import QAT

        if isinstance(recipe, QAT) and self.train is not None:  # trains on labelled batches
            x, y = self.train
            return [(x[i:i + self.batch_size], y[i:i + self.batch_size]) for i in range(0, len(x), self.batch_size)]
        return list(self.calib.split(self.batch_size))

    def _logits(self, model: nn.Module) -> torch.Tensor:
        with eval_mode(model), torch.inference_mode():
            return torch.cat([output_logits(model(x)).float() for x in self.images.split(self.batch_size)])

    def _metrics(self, logits: torch.Tensor) -> dict:
        out = {"top1_agreement": top1_agreement(self.ref_logits, logits),
               "kl": kl_divergence(self.ref_logits, logits)}
        if self.labels is not None:
            out["accuracy"] = (logits.argmax(-1) == self.labels).double().mean().item()
        out["quality"] = out[self.metric["name"]]
        return out

    def prepare(self, model: nn.Module) -> None:
        self.ref_logits = self._logits(model)
        self.reference_quality = {**self._metrics(self.ref_logits), "eval_images": len(self.images)}

    def quality(self, model: nn.Module, float_model: nn.Module) -> dict:
        return self._metrics(self._logits(model))

    def speed(self, model: nn.Module) -> dict:
        with eval_mode(model), torch.inference_mode():
            out = _batched_latency(model, lambda b: self.images[:b].contiguous(), self.repeats)
        out["items_s_b16"] = out["speed"] = 16000 / out["latency_ms_b16"]
        return out


@dataclass
class EncoderTask(Task):
    """A sentence encoder: cosine agreement of its mean-pooled, L2-normalised embeddings with
    the float model's, and, when labels are given, the held-out accuracy of a linear probe
    trained on the model's own embeddings; speed = latency at batch 1 and 16."""

    kind: ClassVar[str] = "encoder"
    metric: ClassVar[dict] = {"name": "cosine", "label": "embedding cosine with fp32",
                              "higher_is_better": True}
    speed_metric: ClassVar[dict] = {"name": "items_s_b16", "label": "sentences/s (batch 16)"}
    sentences: list[str] | None = None
    labels: torch.Tensor | None = None
    calib_sentences: list[str] | None = None
    tokenizer: Any = None
    max_length: int = 128
    ref_embeddings: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if not self.sentences or not all(isinstance(s, str) for s in self.sentences):
            raise TypeError(f"an encoder comparison evaluates on a list of sentences (str); got "
                            f"{_describe(self.sentences)}")
        if self.tokenizer is None:
            raise ValueError("an encoder comparison needs the model's tokenizer")

    def _encode(self, texts: list[str]) -> dict:
        return dict(self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                                   return_tensors="pt"))

    def calibration(self, recipe) -> torch.Tensor:
        """Token ids [n, 128]: the calibration sentences joined and cut into full windows (no
        padding, so the recipes that run ``model(ids)`` see no pad tokens)."""
        text = " ".join(self.calib_sentences or self.sentences[:64])
        ids = torch.tensor(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        n = max(1, ids.numel() // self.max_length)
        ids = ids[:n * self.max_length] if ids.numel() >= self.max_length else ids
        return ids.view(n, -1)

    def embed(self, model: nn.Module, texts: list[str], batch: int = 64) -> torch.Tensor:
        out = []
        with eval_mode(model), torch.inference_mode():
            for i in range(0, len(texts), batch):
                enc = self._encode(texts[i:i + batch])
                h = model(**enc).last_hidden_state.float()
                mask = enc["attention_mask"][..., None].float()
                out.append(F.normalize((h * mask).sum(1) / mask.sum(1), dim=-1))
        return torch.cat(out)

    def _metrics(self, emb: torch.Tensor) -> dict:
        out = {"cosine": cosine_agreement(self.ref_embeddings, emb)}
        if self.labels is not None:
            out["accuracy"] = linear_probe_accuracy(emb, self.labels)
        out["quality"] = out["cosine"]
        return out

    def prepare(self, model: nn.Module) -> None:
        self.ref_embeddings = self.embed(model, self.sentences)
        self.reference_quality = {**self._metrics(self.ref_embeddings), "eval_sentences": len(self.sentences)}

    def quality(self, model: nn.Module, float_model: nn.Module) -> dict:
        return self._metrics(self.embed(model, self.sentences))

    def speed(self, model: nn.Module) -> dict:
        with eval_mode(model), torch.inference_mode():
            out = _batched_latency(lambda enc: model(**enc), lambda b: self._encode(self.sentences[:b]),
                                   self.repeats)
        out["items_s_b16"] = out["speed"] = 16000 / out["latency_ms_b16"]
        return out


def linear_probe_accuracy(emb: torch.Tensor, labels: torch.Tensor, seed: int = 0) -> float:
    """Held-out accuracy of a logistic-regression probe: trained on an even split of ``emb``
    (seeded), tested on the odd one."""
    from sklearn.linear_model import LogisticRegression

    x, y = emb.double().numpy(), labels.numpy()
    probe = LogisticRegression(max_iter=2000, random_state=seed).fit(x[0::2], y[0::2])
    return float(probe.score(x[1::2], y[1::2]))
