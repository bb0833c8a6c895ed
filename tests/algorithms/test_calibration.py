"""The layer-by-layer runner on tiny random decoder LMs of several architectures."""
import pytest
import torch
from torch import nn
from transformers import (GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM,
                          OPTConfig, OPTForCausalLM, Qwen2Config, Qwen2ForCausalLM)
from transformers.pytorch_utils import Conv1D

import lowbit
from lowbit.calibration import block_linears, find_blocks, linear_weight, plan_block, capture_inputs
from lowbit.nn import QLinear
from lowbit.recipes import WeightOnly

TINY = dict(vocab_size=96)


def llama(heads=4, kv_heads=2):
    return LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=heads, num_key_value_heads=kv_heads, **TINY))


def qwen2():
    return Qwen2ForCausalLM(Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, **TINY))


def opt():
    return OPTForCausalLM(OPTConfig(hidden_size=64, ffn_dim=128, num_hidden_layers=2,
                                    num_attention_heads=4, word_embed_proj_dim=64, **TINY))


def gpt2():
    return GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=64, **TINY))


ARCHS = {
    "llama": (llama, "model.layers", [("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                                      ("self_attn.o_proj",), ("mlp.gate_proj", "mlp.up_proj"),
                                      ("mlp.down_proj",)]),
    "qwen2": (qwen2, "model.layers", [("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                                      ("self_attn.o_proj",), ("mlp.gate_proj", "mlp.up_proj"),
                                      ("mlp.down_proj",)]),
    "opt": (opt, "model.decoder.layers", [("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                                          ("self_attn.out_proj",), ("fc1",), ("fc2",)]),
    "gpt2": (gpt2, "transformer.h", [("attn.c_attn",), ("attn.c_proj",), ("mlp.c_fc",),
                                     ("mlp.c_proj",)]),
}
PRODUCERS = {  # which op can absorb each group's input scale (None: no exact fold)
    "llama": ["input_layernorm", None, "post_attention_layernorm", "mlp.up_proj"],
    "opt": ["self_attn_layer_norm", "self_attn.v_proj", "final_layer_norm", "fc1"],  # MHA; ReLU
    "gpt2": ["ln_1", None, "ln_2", None],                                  # GELU is not
}


def data(n=4, seq=16):
    return torch.randint(0, 96, (n, seq), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("arch", ARCHS)
def test_block_finder_and_linear_groups(arch):
    build, prefix, groups = ARCHS[arch]
    torch.manual_seed(0)
    model = build().eval()
    name, blocks = find_blocks(model)
    assert name == prefix and len(blocks) == 2
    linears = block_linears(blocks[0])
    assert all(linear_weight(m).shape[1] in (64, 128, 256) for m in linears.values())
    with torch.no_grad():
        inputs = capture_inputs(model, blocks[0], data(), batch_size=2)
        plan = plan_block(blocks[0], inputs[0], find_producers=arch in PRODUCERS)
    assert [g.names for g in plan] == groups
    if arch in PRODUCERS:
        assert [g.producer for g in plan] == PRODUCERS[arch]


def test_gpt2_conv1d_weight_is_read_as_out_by_in():
    model = gpt2()
    c_fc = model.transformer.h[0].mlp.c_fc
    assert isinstance(c_fc, Conv1D) and linear_weight(c_fc).shape == (256, 64)


def test_mha_llama_folds_o_proj_scale_into_v_proj():
    model = llama(heads=4, kv_heads=4).eval()
    _, blocks = find_blocks(model)
    with torch.no_grad():
        plan = plan_block(blocks[0], capture_inputs(model, blocks[0], data(), 2)[0], True)
    assert plan[1].producer == "self_attn.v_proj"


@pytest.mark.parametrize("arch", ["llama", "opt", "gpt2"])
@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_calibrated_methods_quantize_every_block_linear(arch, method):
    torch.manual_seed(0)
    model = ARCHS[arch][0]().eval()
    recipe = WeightOnly(num_bits=4, group_size=32, method=method, exclude=("lm_head",),
                        calib_batch_size=2)
    q = lowbit.quantize(model, recipe, data=data())
    blocks = q.get_submodule(ARCHS[arch][1])
    assert not any(isinstance(m, (nn.Linear, Conv1D)) for b in blocks for m in b.modules())
    assert sum(isinstance(m, QLinear) for m in q.modules()) == 2 * sum(map(len, ARCHS[arch][2]))
    ids = data(2, 12)
    with torch.no_grad():
        ref, out = model(ids).logits, q(ids).logits
    assert (out - ref).norm() / ref.norm() < 0.5


def test_calibration_is_deterministic():
    torch.manual_seed(0)
    model = llama().eval()
    recipe = WeightOnly(num_bits=3, group_size=32, method="gptq", exclude=("lm_head",), calib_batch_size=2)
    a, b = (lowbit.quantize(model, recipe, data=data()) for _ in range(2))
    for (n, ma), mb in zip(a.named_modules(), b.modules()):
        if isinstance(ma, QLinear):
            assert torch.equal(ma.weight.data, mb.weight.data), n


def test_calibrated_methods_need_data_and_a_decoder():
    with pytest.raises(ValueError, match="needs calibration data"):
        lowbit.quantize(llama(), WeightOnly(num_bits=4, group_size=32, method="gptq"))
    mlp = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32))
    with pytest.raises(ValueError, match="needs a decoder LM with blocks, got Sequential"):
        lowbit.quantize(mlp, WeightOnly(num_bits=4, group_size=32, method="awq"), data=data())
