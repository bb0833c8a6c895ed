"""save -> load -> generate gives the same tokens for the LLM recipes (tiny random Llama)."""
import pytest
import torch

import lowbit
from lowbit.recipes import NF4, LLMInt8, SmoothQuant, StaticW8A8


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("recipe", [NF4(), LLMInt8(), SmoothQuant(alpha=0.5), StaticW8A8(),
                                    SmoothQuant(alpha=0.5, act_mode="dynamic")],
                         ids=lambda r: r.describe())
def test_save_load_generate_same_tokens(recipe, tmp_path):
    model = _tiny_llama()
    q = lowbit.quantize(model, recipe, data=torch.randint(0, 96, (4, 16)))
    prompt = torch.randint(0, 96, (1, 8))
    kw = dict(max_new_tokens=12, do_sample=False, pad_token_id=0)
    before = q.generate(prompt, **kw)
    lowbit.save(q, tmp_path / "ckpt")
    loaded = lowbit.load(tmp_path / "ckpt")
    assert [type(m).__name__ for m in loaded.modules()] == [type(m).__name__ for m in q.modules()]
    assert torch.equal(loaded.generate(prompt, **kw), before)
    x = torch.randint(0, 96, (2, 10))
    assert torch.equal(loaded(x).logits, q(x).logits)
