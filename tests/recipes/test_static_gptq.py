"""Static int8 with weights below 8 bits: GPTQ on each layer's unfolded input Hessian."""
import pytest
import torch
from torch import nn

import lowbit
from lowbit.algorithms.gptq import gptq
from lowbit.calibration import layer_patches
from lowbit.formats import int_format
from lowbit.recipes import StaticPTQ


def cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU(),
                         nn.Conv2d(16, 32, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(32, 10)).eval()


def test_layer_patches_are_the_rows_the_weight_multiplies():
    conv = nn.Conv2d(4, 6, 3, padding=1, stride=2)
    x = torch.randn(2, 4, 9, 9)
    X = layer_patches(conv, x)                                # (1, B*L, 4*9)
    y = X[0] @ conv.weight.reshape(6, -1).T + conv.bias       # (B*L, 6)
    ref = conv(x).permute(0, 2, 3, 1).reshape(-1, 6)
    assert torch.allclose(y, ref, atol=1e-5)
    dw = nn.Conv2d(4, 8, 3, padding=1, groups=4, bias=False)
    Xg = layer_patches(dw, x)                                 # (4, B*L, 9)
    yg = torch.einsum("gti,goi->tgo", Xg, dw.weight.reshape(4, 2, 9)).reshape(-1, 8)
    assert torch.allclose(yg, dw(x).permute(0, 2, 3, 1).reshape(-1, 8), atol=1e-5)


def test_gptq_with_grouped_hessians_sweeps_each_group():
    W, H = torch.randn(8, 9), torch.randn(4, 9, 30)
    H = H @ H.transpose(1, 2)
    fmt = int_format(4).replace(granularity="channel")
    whole = gptq(W, H, fmt)
    parts = [gptq(W[2 * g:2 * g + 2], H[g], fmt) for g in range(4)]
    assert torch.equal(whole.q, torch.cat([p.q for p in parts]))


def test_static_gptq_lowers_the_error_of_4_bit_weights():
    model = cnn()
    data = [torch.randn(8, 3, 12, 12) for _ in range(4)]
    x = torch.cat(data)
    with torch.no_grad():
        ref = model(x)
    errs = {}
    for method in ("rtn", "gptq"):
        q = lowbit.quantize(model, StaticPTQ(weight_bits=(("*", 4),), weight_method=method), data=data)
        with torch.no_grad():
            errs[method] = float((q(x) - ref).pow(2).mean())
        assert all(m.weight.format.num_bits == 4 for m in q.modules() if hasattr(m, "w_int8"))
        ints = torch.cat([m.weight.int_values().flatten().float() for m in q.modules() if hasattr(m, "w_int8")])
        assert ints.min() >= -8 and ints.max() <= 7
    assert errs["gptq"] < errs["rtn"]


def test_weight_method_is_checked():
    with pytest.raises(ValueError, match="weight_method must be 'rtn' or 'gptq'"):
        StaticPTQ(weight_method="awq")
