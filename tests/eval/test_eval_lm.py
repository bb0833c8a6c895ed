"""evaluate_lm / perplexity against hand computations on a bigram LM of vocab 7."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from lowbit.eval import LMResult, evaluate_lm, perplexity


def _hand_log_probs(model, token: int) -> list[float]:
    """log softmax(head(embed(token))) with explicit loops over Python floats."""
    emb = model.embed.weight[token].tolist()
    w, b = model.head.weight.tolist(), model.head.bias.tolist()
    logits = [sum(w[c][d] * emb[d] for d in range(len(emb))) + b[c] for c in range(len(b))]
    top = max(logits)
    lse = top + math.log(sum(math.exp(x - top) for x in logits))
    return [x - lse for x in logits]


def _hand_eval(ref, model, tokens: list[int], window: int) -> tuple[float, float, float, int]:
    """(ppl, kl, top1, predicted) the slow way: each window predicts its next tokens."""
    nll = kl = agree = 0.0
    count = 0
    for start in range(0, len(tokens), window):
        chunk = tokens[start : start + window]
        for i in range(len(chunk) - 1):
            logq = _hand_log_probs(model, chunk[i])
            logp = _hand_log_probs(ref, chunk[i])
            nll -= logq[chunk[i + 1]]
            kl += sum(math.exp(lp) * (lp - lq) for lp, lq in zip(logp, logq))
            agree += logq.index(max(logq)) == logp.index(max(logp))
            count += 1
    return math.exp(nll / count), kl / count, agree / count, count


@pytest.fixture
def tokens():
    return torch.randint(0, 7, (23,), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("batch_size", [1, 3, 10])
def test_matches_hand_computation(bigram_lm, tokens, batch_size):
    ref, quant = bigram_lm(seed=0), bigram_lm(seed=1)
    results = evaluate_lm({"fp32": ref, "q": quant}, tokens, window=5, batch_size=batch_size)
    ppl, kl, top1, count = _hand_eval(ref, quant, tokens.tolist(), window=5)
    assert count == 4 * 4 + 2  # four full windows of 5, then a tail of 3 tokens
    q = results["q"]
    assert q.num_tokens == count and q.num_windows == 5 and q.window == 5
    assert q.ppl == pytest.approx(ppl, rel=1e-5)
    assert q.kl == pytest.approx(kl, rel=1e-4) and q.kl > 0
    assert q.top1_agreement == pytest.approx(top1)
    ref_ppl, *_ = _hand_eval(ref, ref, tokens.tolist(), window=5)
    assert results["fp32"].ppl == pytest.approx(ref_ppl, rel=1e-5)
    assert results["fp32"].kl == 0 and results["fp32"].top1_agreement == 1.0


def test_identical_models_have_zero_kl_and_full_agreement(bigram_lm, tokens):
    results = evaluate_lm({"fp32": bigram_lm(seed=2), "copy": bigram_lm(seed=2)}, tokens, window=8)
    assert results["copy"].kl == pytest.approx(0.0, abs=1e-7)
    assert results["copy"].top1_agreement == 1.0
    assert results["copy"].ppl == results["fp32"].ppl


def test_perplexity_and_no_reference(bigram_lm, tokens):
    model = bigram_lm(seed=3)
    ppl, *_ = _hand_eval(model, model, tokens.tolist(), window=6)
    assert perplexity(model, tokens, window=6) == pytest.approx(ppl, rel=1e-5)
    result = evaluate_lm({"m": model}, tokens, reference=None, window=6)["m"]
    assert result.kl is None and result.top1_agreement is None
    assert set(result.as_dict()) == {f for f in LMResult.__dataclass_fields__}


def test_protocol_window_count(bigram_lm):
    tokens = torch.randint(0, 7, (32768,), generator=torch.Generator().manual_seed(0))
    result = evaluate_lm({"m": bigram_lm()}, tokens, reference=None, window=512, batch_size=4)["m"]
    assert (result.num_windows, result.num_tokens) == (64, 32704)


class _HFStyle(nn.Module):
    """Returns an object with .logits and records the use_cache it was called with."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.drop, self.calls = inner, nn.Dropout(0.5), []

    def forward(self, input_ids, use_cache=None):
        self.calls.append(use_cache)
        return SimpleNamespace(logits=self.drop(self.inner(input_ids)))


def test_hf_style_output_eval_mode_and_no_cache(bigram_lm, tokens):
    inner = bigram_lm(seed=4)
    wrapped = _HFStyle(inner).train()
    result = evaluate_lm({"fp32": inner, "hf": wrapped}, tokens, window=5)
    assert result["hf"].kl == pytest.approx(0.0, abs=1e-7)  # dropout was off during the pass
    assert wrapped.training and wrapped.drop.training  # and the training flag came back
    assert wrapped.calls and all(c is False for c in wrapped.calls)


def test_errors(bigram_lm, tokens):
    model = bigram_lm()
    with pytest.raises(ValueError, match="reference"):
        evaluate_lm({"q": model}, tokens)  # no "fp32" among the models
    with pytest.raises(ValueError, match="window"):
        perplexity(model, tokens, window=1)
    with pytest.raises(TypeError, match="integer"):
        perplexity(model, tokens.float())
    with pytest.raises(ValueError, match="vocabulary"):
        evaluate_lm({"fp32": model, "big": bigram_lm(vocab=9)}, tokens)
