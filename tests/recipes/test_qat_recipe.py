"""QAT and QLoRA as recipes: specs round-trip, apply = prepare -> train -> convert as planned,
QLoRA = NF4 + trainable adapters that save and load bit-exactly."""
import math

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

import lowbit
from lowbit import qat as lq
from lowbit.lora import LoRALinear, lora_parameters
from lowbit.nn import QLinear
from lowbit.nn.nf4 import NF4Linear
from lowbit.recipes import QAT, QLoRA, from_spec


def tiny_llama():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def tokens():
    return torch.randint(0, 128, (8, 32), generator=torch.Generator().manual_seed(1))


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 8 * 8, 64)
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        return self.head(torch.relu(self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))))


@pytest.mark.parametrize("spec", ["qat:w4g64,max_steps=20", "qat:w8,a8,observe,lr=0.001",
                                  "qat:w3g32,lsqplus,max_steps=none,minutes=0.5", "qlora",
                                  "qlora:b128,nodq,rank=8,alpha=16.0,max_steps=3"])
def test_specs_round_trip(spec):
    r = from_spec(spec)
    assert from_spec(r.to_spec()) == r
    assert r.to_spec() == spec


def test_qat_is_one_class_and_validates():
    assert lq.QAT is QAT
    assert from_spec("qat:w4g64") == QAT(num_bits=4, group_size=64)
    with pytest.raises(ValueError, match="training budget"):
        QAT(max_steps=None, minutes=None)
    with pytest.raises(ValueError, match="num_bits must be 2..8"):
        QAT(num_bits=9)
    assert QAT(exclude="lm_head").exclude == ("lm_head",)


def test_qat_recipe_on_a_decoder_lm_distills_and_converts_as_planned():
    model, ids = tiny_llama(), tokens()
    recipe = QAT(num_bits=4, group_size=64, max_steps=6, lr=1e-3)
    plan = {p.name: p for p in recipe.plan(model).layers if p.status == "quantize"}
    assert plan  # every Linear, lm_head included
    q = lowbit.quantize(model, recipe, ids)
    layers = {n: m for n, m in q.named_modules() if isinstance(m, QLinear)}
    assert set(layers) == set(plan)
    for name, layer in layers.items():
        assert layer.kernel() == plan[name].kernel
        assert layer.weight.format.label() == plan[name].format
    assert not any(isinstance(m, lq.QATLinear) for m in q.modules())
    stats = q.lowbit_qat
    assert stats["steps"] == 6 and math.isfinite(stats["first_loss"]) and math.isfinite(stats["last_loss"])
    assert stats["first_loss"] >= 0
    assert len(q.lowbit_report.quantized) == len(plan)
    assert not any(p.requires_grad for p in q.parameters())
    with torch.no_grad():
        assert torch.isfinite(q(ids[:2]).logits).all()


def test_qat_recipe_on_a_cnn_trains_on_cross_entropy():
    g = torch.Generator().manual_seed(2)
    batches = [(torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 10, (4,), generator=g))
               for _ in range(3)]
    model, recipe = SmallCNN(), QAT(num_bits=8, max_steps=4, lr=1e-3)
    plan = {p.name: p for p in recipe.plan(model).layers}
    assert plan["conv"].status == "float" and "Conv2d" in plan["conv"].reason
    q = lowbit.quantize(model, recipe, batches)
    assert isinstance(q.fc, QLinear) and isinstance(q.head, QLinear)
    assert q.fc.kernel() == plan["fc"].kernel and q.head.kernel() == plan["head"].kernel
    assert isinstance(q.conv, lq.QATConvBn2d) and isinstance(q.bn, nn.Identity)  # Conv-BN simulated
    assert q.lowbit_qat["steps"] == 4 and math.isfinite(q.lowbit_qat["last_loss"])
    with pytest.raises(ValueError, match=r"\(input, target\) batches"):
        lowbit.quantize(SmallCNN(), recipe, [torch.randn(4, 3, 8, 8)])


def test_qat_recipe_leaves_ragged_layers_float_as_planned():
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    recipe = QAT(num_bits=4, group_size=64, max_steps=2)
    plan = {p.name: p.status for p in recipe.plan(model).layers}
    assert plan == {"0": "quantize", "2": "float"}
    batches = [(torch.randn(4, 64), torch.randint(0, 10, (4,)))]
    q = lowbit.quantize(model, recipe, batches)
    assert isinstance(q[0], QLinear) and isinstance(q[2], nn.Linear)
    row = {r.name: r for r in q.lowbit_report.layers}["2"]
    assert row.status == "skipped" and "does not divide" in row.reason


def test_qlora_recipe_adds_trainable_adapters_on_nf4_and_saves_bit_exactly(tmp_path):
    model, ids = tiny_llama(), tokens()
    recipe = QLoRA(rank=4, alpha=8.0, max_steps=2, lr=1e-2)
    plan = {p.name: p for p in recipe.plan(model).layers}
    assert "LoRA rank 4" in plan["model.layers.0.self_attn.q_proj"].format
    assert plan["lm_head"].status == "float"
    q = lowbit.quantize(model, recipe, ids)
    wrapped = {n: m for n, m in q.named_modules() if isinstance(m, LoRALinear)}
    assert len(wrapped) == 2 * 7 and all(isinstance(m.base, NF4Linear) for m in wrapped.values())
    assert {n for n, p in q.named_parameters() if p.requires_grad} == set(lora_parameters(q))
    assert any(m.lora_B.abs().sum() > 0 for m in wrapped.values())  # trained: B left zero
    assert q.lowbit_qlora["steps"] == 2 and math.isfinite(q.lowbit_qlora["last_loss"])
    lowbit.save(q, tmp_path / "ckpt")
    back = lowbit.load(tmp_path / "ckpt")
    sd, sd_back = q.state_dict(), back.state_dict()
    assert set(sd) == set(sd_back)
    for k, v in sd.items():
        assert torch.equal(v, sd_back[k]), k
    with torch.no_grad():
        assert torch.equal(q(ids[:2]).logits, back.eval()(ids[:2]).logits)


def test_qlora_without_steps_needs_no_data():
    model = tiny_llama()
    q = lowbit.quantize(model, from_spec("qlora:rank=2"))
    assert isinstance(q.model.layers[1].mlp.down_proj, LoRALinear)
    assert all(m.lora_B.abs().sum() == 0 for m in q.modules() if isinstance(m, LoRALinear))
