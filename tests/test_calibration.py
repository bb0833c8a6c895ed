"""The layer-by-layer runner on tiny random decoder LMs of several architectures."""
import pytest
import torch
from torch import nn
from transformers import (Gemma3ForCausalLM, Gemma3TextConfig, GPT2Config, GPT2LMHeadModel,
                          LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM)
from transformers.pytorch_utils import Conv1D

import lowbit
from lowbit.blocks import LinearGroup, block_linears, find_blocks, linear_weight, run_block
from lowbit.calibration import BlockRunner, capture_inputs
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


ALTERNATING = ["sliding_attention", "full_attention"] * 2   # a window of 4 < 16 tokens


def sliding_qwen2():
    return Qwen2ForCausalLM(Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                        num_attention_heads=4, num_key_value_heads=2,
                                        use_sliding_window=True, sliding_window=4,
                                        layer_types=ALTERNATING, **TINY))


def sliding_gemma3():  # also its rotary embedding differs per layer type
    return Gemma3ForCausalLM(Gemma3TextConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                              num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                              sliding_window=4, layer_types=ALTERNATING, **TINY))


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


def first_block(model, find_producers=False):
    """The runner's plan of block 0: its linear groups, names relative to the block."""
    step = next(iter(BlockRunner(model, data(), batch_size=2, find_producers=find_producers)))
    cut = len(step.name) + 1
    return [(tuple(n[cut:] for n in g.names), g.producer and g.producer[cut:]) for g in step.groups]


@pytest.mark.parametrize("arch", ARCHS)
def test_block_finder_and_linear_groups(arch):
    build, prefix, groups = ARCHS[arch]
    torch.manual_seed(0)
    model = build().eval()
    name, blocks = find_blocks(model)
    assert name == prefix and len(blocks) == 2
    linears = block_linears(blocks[0])
    assert all(linear_weight(m).shape[1] in (64, 128, 256) for m in linears.values())
    plan = first_block(model, find_producers=arch in PRODUCERS)
    assert [names for names, _ in plan] == groups
    if arch in PRODUCERS:
        assert [producer for _, producer in plan] == PRODUCERS[arch]


def true_block_io(model, ids):
    """Each block's input hidden state and output in the model's own forward pass."""
    ins, outs = {}, {}
    _, blocks = find_blocks(model)

    def record(i):
        def hook(module, args, kwargs, out):
            ins[i] = args[0] if args else kwargs["hidden_states"]
            outs[i] = out[0] if isinstance(out, tuple) else out
        return hook

    handles = [b.register_forward_hook(record(i), with_kwargs=True) for i, b in enumerate(blocks)]
    with torch.no_grad():
        model(ids, use_cache=False)
    for h in handles:
        h.remove()
    return ins, outs


@pytest.mark.parametrize("build", [sliding_qwen2, sliding_gemma3])
def test_each_block_runs_on_its_own_mask_and_position_embeddings(build):
    torch.manual_seed(0)
    model = build().eval()
    ids = data(4, 16)
    true_in, true_out = true_block_io(model, ids)
    runner = BlockRunner(model, ids, batch_size=2)
    walked = []
    with torch.no_grad():
        for block in runner:
            module = model.get_submodule(block.name)
            fed = torch.cat([inp[0] for inp in runner.inputs])
            out = torch.cat([run_block(module, inp) for inp in runner.inputs])
            torch.testing.assert_close(fed, true_in[block.index], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(out, true_out[block.index], rtol=1e-5, atol=1e-5)
            if block.index == 0:
                first = list(runner.inputs)
            elif ALTERNATING[block.index] != ALTERNATING[0]:   # block 0's mask and rotary: wrong
                wrong = torch.cat([run_block(module, (inp[0], *f[1:]))
                                   for inp, f in zip(runner.inputs, first)])
                assert (wrong - out).norm() / out.norm() > 1e-3, block.name
            walked.append(block.index)
    assert walked == [0, 1, 2, 3] and not runner.inputs


def test_a_mask_shared_by_blocks_is_held_once():
    model = sliding_qwen2().eval()
    _, blocks = find_blocks(model)
    captured = capture_inputs(model, blocks, data(4, 16), batch_size=2)
    masks = [[kwargs["attention_mask"] for _, kwargs in per_block] for per_block in captured.extra]
    assert len(captured.hidden) == 2 and all(len(m) == 2 for m in masks)
    assert masks[0][0] is masks[2][0] and masks[1][1] is masks[3][1]   # same layer type
    assert isinstance(masks[0][0], torch.Tensor) and masks[1][0] is not masks[0][0]
    rotary = [per_block[0][1]["position_embeddings"] for per_block in captured.extra]
    assert all(r is rotary[0] for r in rotary)


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_calibrated_methods_on_sliding_window_model(method):
    torch.manual_seed(0)
    model = sliding_qwen2().eval()
    recipe = WeightOnly(num_bits=4, group_size=32, method=method, exclude=("lm_head",),
                        calib_batch_size=2)
    q = lowbit.quantize(model, recipe, data=data(4, 16))
    assert sum(isinstance(m, QLinear) for m in q.modules()) == 4 * 7
    ids = data(2, 16)
    with torch.no_grad():
        ref, out = model(ids).logits, q(ids).logits
    assert (out - ref).norm() / ref.norm() < 0.5


def test_gpt2_conv1d_weight_is_read_as_out_by_in():
    model = gpt2()
    c_fc = model.transformer.h[0].mlp.c_fc
    assert isinstance(c_fc, Conv1D) and linear_weight(c_fc).shape == (256, 64)


def test_mha_llama_folds_o_proj_scale_into_v_proj():
    plan = first_block(llama(heads=4, kv_heads=4).eval(), find_producers=True)
    assert plan[1][1] == "self_attn.v_proj"


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


class TwoBlocks(nn.Module):
    """A toy LM whose forward calls its blocks in a given order, scaling between them."""

    def __init__(self, order=(0, 1), between=1.0):
        super().__init__()
        self.embed = nn.Embedding(96, 16)
        self.layers = nn.ModuleList(nn.Sequential(nn.Linear(16, 16)) for _ in range(2))
        self.order, self.between = order, between

    def forward(self, input_ids, use_cache=False):
        h = self.embed(input_ids)
        for i in self.order:
            h = self.layers[i](h)
            h = h * self.between if self.between != 1 else h
        return h


def test_blocks_called_out_of_order_are_refused():
    with pytest.raises(ValueError, match=r"calls its decoder blocks in the order \[1\]; .*once, in order"):
        list(BlockRunner(TwoBlocks(order=(1, 0)), data()))


def test_a_hidden_state_changed_between_blocks_is_warned_about(caplog):
    steps = list(BlockRunner(TwoBlocks(between=2.0), data(), batch_size=2))
    assert [s.groups for s in steps] == [(LinearGroup(("layers.0.0",)),), (LinearGroup(("layers.1.0",)),)]
    assert "changes the hidden state between its blocks 0 and 1" in caplog.text
    caplog.clear()
    list(BlockRunner(TwoBlocks(), data(), batch_size=2))
    assert "changes the hidden state" not in caplog.text
