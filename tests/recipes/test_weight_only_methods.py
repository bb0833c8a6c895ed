"""WeightOnly's data-free methods (HQQ, RTN-MSE) and its validation of method options."""
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
