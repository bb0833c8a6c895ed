"""decode_speed and its greedy loop on a tiny random Llama."""
from __future__ import annotations

import pytest
import torch

from lowbit.eval import decode_speed
from lowbit.eval.speed import greedy_generate, prompt_ids


def test_decode_speed_positive_and_threads_restored(tiny_llama):
    before = torch.get_num_threads()
    result = decode_speed(tiny_llama, None, prompt_len=8, new_tokens=6, repeats=2, threads=1)
    assert torch.get_num_threads() == before
    assert result.decode_tok_s > 0 and result.prefill_tok_s > 0 and result.latency_ms > 0
    assert result.threads == 1 and (result.prompt_len, result.new_tokens) == (8, 6)
    assert result.as_dict()["decode_tok_s"] == result.decode_tok_s


def test_greedy_loop_matches_no_cache_argmax(tiny_llama):
    prompt = prompt_ids(tiny_llama, None, 5)
    with torch.inference_mode():
        new, prefill_s, decode_s = greedy_generate(tiny_llama, prompt, 7)
        ids = prompt
        for _ in range(7):
            logits = tiny_llama(ids, use_cache=False).logits  # (1, T, V)
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert new.shape == (1, 7) and torch.equal(new, ids[:, 5:])
    assert prefill_s > 0 and decode_s > 0


def test_prompt_from_tokenizer(tiny_llama):
    def tokenizer(text):
        return {"input_ids": [ord(c) % 100 for c in text[:10]]}

    prompt = prompt_ids(tiny_llama, tokenizer, 25)
    assert prompt.shape == (1, 25) and prompt[0, :10].tolist() == prompt[0, 10:20].tolist()


def test_rejects_models_without_a_cache():
    with pytest.raises(TypeError, match="cache"):
        decode_speed(torch.nn.Linear(2, 2))
