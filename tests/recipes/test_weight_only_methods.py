"""WeightOnly's data-free methods (HQQ, RTN-MSE), its validation of method options, and what its
calibrated methods (GPTQ, AWQ) report for layers they do not calibrate."""
import pytest
import torch
from torch import nn

import lowbit
from lowbit.nn import QLinear
from lowbit.recipes import WeightOnly


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 128))


def rel_error(model, q):
    x = torch.randn(64, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return ((q(x) - model(x)).norm() / model(x).norm()).item()


@pytest.mark.parametrize("bits", [4, 3])
def test_hqq_and_rtn_mse_beat_plain_rtn_on_weights(bits):
    model = mlp()
    errors = {}
    for name, kw in {"rtn": {}, "rtn-mse": {"mse_clip": True}, "hqq": {"method": "hqq"}}.items():
        q = lowbit.quantize(model, WeightOnly(num_bits=bits, group_size=32, **kw))
        assert all(isinstance(q[i], QLinear) for i in (0, 2))
        errors[name] = rel_error(model, q)
    assert errors["rtn-mse"] < errors["rtn"] and errors["hqq"] < errors["rtn"], errors


def test_hqq_keeps_bf16_scales_and_zero_points():
    q = lowbit.quantize(mlp(), WeightOnly(num_bits=4, group_size=64, method="hqq"))
    w = q[0].weight
    assert w.scale.dtype == torch.bfloat16 and w.zero_point.dtype == torch.bfloat16
    assert w.bits_per_weight == pytest.approx(4.5)


def test_invalid_method_options_raise():
    with pytest.raises(ValueError, match="method must be one of"):
        WeightOnly(method="smooth")
    with pytest.raises(ValueError, match="mse_clip applies to method='rtn'"):
        WeightOnly(method="gptq", mse_clip=True)
    with pytest.raises(ValueError, match="symmetric=False"):
        WeightOnly(num_bits=8, method="hqq")
    assert WeightOnly(method="gptq").needs_data and not WeightOnly(method="hqq").needs_data


# --- calibrated methods: what the report says about each layer ----------------------------------
def tiny_llama(intermediate=128):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=intermediate,
                                        num_hidden_layers=2, num_attention_heads=4,
                                        num_key_value_heads=2, vocab_size=96)).eval()


def tokens():
    return torch.randint(0, 96, (4, 16), generator=torch.Generator().manual_seed(0))


def layer(q, name):
    return next(r for r in q.lowbit_report.layers if r.name == name)


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_untied_head_is_rounded_to_nearest_and_reported_so(method):
    model = tiny_llama()
    q = lowbit.quantize(model, WeightOnly(num_bits=4, group_size=32, method=method,
                                          calib_batch_size=2), data=tokens())
    head = layer(q, "lm_head")
    assert head.status == "quantized" and head.format == "uint4 asym g32"
    assert head.reason == "outside the decoder blocks: round to nearest"
    rtn = lowbit.quantize(model, WeightOnly(num_bits=4, group_size=32, include=("lm_head",)))
    assert torch.equal(q.lm_head.weight.data, rtn.lm_head.weight.data)
    assert layer(q, "model.layers.1.mlp.down_proj").reason == ""


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_ragged_block_linears_are_skipped_or_named_in_the_error(method):
    model = tiny_llama(intermediate=96)        # down_proj reads 96 inputs: no group of 64
    kw = dict(num_bits=4, group_size=64, method=method, exclude=("lm_head",), calib_batch_size=2)
    q = lowbit.quantize(model, WeightOnly(skip_ragged=True, **kw), data=tokens())
    down = layer(q, "model.layers.0.mlp.down_proj")
    assert down.status == "skipped" and down.reason.startswith(
        "model.layers.0.mlp.down_proj: group_size=64 does not divide its input size 96")
    assert isinstance(q.model.layers[1].mlp.up_proj, QLinear)
    with pytest.raises(ValueError, match=r"^model\.layers\.0\.mlp\.down_proj: .*does not divide"):
        lowbit.quantize(model, WeightOnly(**kw), data=tokens())


def test_excluded_block_linears_are_left_as_they_were():
    model = tiny_llama()
    q = lowbit.quantize(model, WeightOnly(num_bits=4, group_size=32, method="awq", calib_batch_size=2,
                                          exclude=("lm_head", "*.mlp.down_proj")), data=tokens())
    for i in range(2):
        assert layer(q, f"model.layers.{i}.mlp.down_proj").status == "excluded"
        assert torch.equal(q.model.layers[i].mlp.down_proj.weight, model.model.layers[i].mlp.down_proj.weight)
    assert isinstance(q.model.layers[0].mlp.up_proj, QLinear)


def test_block_linears_the_forward_never_calls_are_reported():
    model = tiny_llama()
    for block in model.model.layers:
        block.unused = nn.Linear(64, 64)
    q = lowbit.quantize(model, WeightOnly(num_bits=4, group_size=32, method="gptq",
                                          exclude=("lm_head",), calib_batch_size=2), data=tokens())
    unused = layer(q, "model.layers.1.unused")
    assert unused.status == "skipped" and unused.reason == "not reached by the calibration forward pass"
    assert isinstance(q.model.layers[1].mlp.down_proj, QLinear)
