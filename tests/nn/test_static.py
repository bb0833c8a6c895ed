"""Static int8: conv-BN folding, int8 Conv2d/Linear against references, StaticPTQ end to end."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lowbit
from lowbit.fold import fold_conv_bn
from lowbit.formats import int_format
from lowbit.nn.static import (Observed, QActivation, QConv2dStatic, QLinearStatic,
                              activation_format, convert_observed, dequantize_u8, quantize_u8)
from lowbit.observers import MinMax

from conformance.models import Net, _trained_stats
from lowbit.qtensor import QTensor
from lowbit.recipes.static import StaticPTQ

W8 = int_format(8)


def _bn(c, seed=0):
    g = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(c, eps=1e-3).eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(c, generator=g))
        bn.running_var.copy_(torch.rand(c, generator=g) + 0.1)
        bn.weight.copy_(torch.randn(c, generator=g))
        bn.bias.copy_(torch.randn(c, generator=g))
    return bn


@pytest.mark.parametrize("groups,stride,bias", [(1, 1, False), (8, 2, True), (2, 1, True)])
def test_fold_conv_bn_is_exact_in_float(groups, stride, bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16 if groups != 8 else 8, 3, stride, 1, groups=groups, bias=bias).eval()
    bn = _bn(conv.out_channels)
    x = torch.randn(2, 8, 13, 13)
    with torch.no_grad():
        diff = (fold_conv_bn(conv, bn)(x) - bn(conv(x))).abs().max().item()
    assert diff < 1e-5


def _reference_conv(q_x, x_scale, x_zp, w_q, w_scale, bias, stride, padding, groups):
    """Float conv on the dequantized integers: what the int8 kernel must compute."""
    x = (q_x.float() - x_zp) * x_scale
    w = w_q.float() * w_scale.reshape(-1, 1, 1, 1)
    return F.conv2d(x, w, bias, stride, padding, 1, groups)


@pytest.mark.parametrize("cin,cout,k,stride,padding,groups", [
    (8, 16, 3, 1, 1, 1), (16, 16, 5, 2, 2, 16), (8, 12, 1, 1, 0, 2), (3, 8, 3, 2, 0, 1)])
@pytest.mark.parametrize("activation", [None, "relu6"])
def test_int8_conv_matches_reference(cin, cout, k, stride, padding, groups, activation):
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, k, stride, padding, groups=groups, bias=True)
    weight = QTensor.from_float(conv.weight.detach(), W8)
    qmax = activation_format().qmax  # 127 on x86 without VNNI (vpmaddubsw saturates at 255)
    x_scale, x_zp, out_scale, out_zp = 0.02 * 255 / qmax, round(120 * qmax / 255), 0.05, 0 if activation else 128
    m = QConv2dStatic(conv, weight, activation, (x_scale, x_zp, qmax), (out_scale, out_zp))
    x = torch.randn(2, cin, 15, 15)
    q_x = quantize_u8(x, x_scale, x_zp, qmax)
    ref = _reference_conv(q_x, x_scale, x_zp, weight.int_values(), weight.scales(), conv.bias.detach(),
                          stride, padding, groups)
    if activation:
        ref = ref.clamp(0, 6)
    m.output_float = True                                       # fp32 out: exact up to fp32 sums
    assert (m(x) - ref).abs().max().item() < 1e-4
    m.output_float = False                                      # u8 out: within one step
    y = m(QActivation(q_x, x_scale, x_zp))
    assert isinstance(y, QActivation) and y.q.dtype == torch.uint8
    expected = quantize_u8(ref, out_scale, out_zp)
    assert (y.q.int() - expected.int()).abs().max().item() <= 1


def test_int8_linear_matches_reference():
    torch.manual_seed(0)
    linear = nn.Linear(64, 40)
    weight = QTensor.from_float(linear.weight.detach(), W8)
    qmax = activation_format().qmax
    x_scale, x_zp = 0.03 * 255 / qmax, (qmax + 1) // 2
    m = QLinearStatic(linear, weight, "relu", (x_scale, x_zp, qmax), (0.02, 0))
    m.output_float = True
    x = torch.randn(3, 5, 64)
    q_x = quantize_u8(x, x_scale, x_zp, qmax)
    ref = F.linear(dequantize_u8(q_x, x_scale, x_zp), weight.dequantize(), linear.bias.detach()).relu()
    assert (m(x) - ref).abs().max().item() < 1e-4


def test_grid_ops_are_exact_on_uint8():
    q = torch.randint(0, 256, (1, 4, 6, 6), dtype=torch.uint8)
    a = QActivation(q, 0.1, 100)
    ref = dequantize_u8(q, 0.1, 100)
    for op in (lambda t: F.pad(t, (1, 2, 0, 1)), lambda t: F.max_pool2d(t, 2), F.relu,
               lambda t: F.hardtanh(t, 0.0, 6.0)):
        out = op(a)
        assert isinstance(out, QActivation)
        assert torch.allclose(out.dequantize(), op(ref), atol=0.05 + 1e-6)
    summed = a + ref                                             # not exact on the grid: float
    assert isinstance(summed, torch.Tensor) and torch.allclose(summed, 2 * ref)


def test_not_calibrated_error_names_the_layer():
    conv = nn.Conv2d(3, 4, 3)
    obs = Observed(conv, QTensor.from_float(conv.weight.detach(), W8), None,
                   MinMax(name="stem input"), MinMax(name="stem output"))
    with pytest.raises(RuntimeError, match="'stem input' is not calibrated: run calibration data"):
        convert_observed(obs)


def test_static_ptq_end_to_end_int8_flows_and_matches_float():
    torch.manual_seed(0)
    model = _trained_stats(Net())
    calib = [torch.randn(8, 3, 16, 16) for _ in range(4)]
    q = lowbit.quantize(model, StaticPTQ(observer="minmax"), data=calib)
    assert isinstance(q.conv1, QConv2dStatic) and isinstance(q.fc, QLinearStatic)
    assert isinstance(q.bn1, nn.Identity)                         # folded
    rows = {r.name: r for r in q.lowbit_report.layers}
    assert "u8 in" in rows["conv2"].reason                         # uint8 from conv1 via max-pool
    assert "float in" in rows["conv1"].reason                      # the quantize step at the input
    assert "relu fused" in rows["conv1"].reason
    x = torch.randn(16, 3, 16, 16)
    with torch.no_grad():
        ref, out = model(x), q(x)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    assert (out - ref).abs().max().item() < 0.1 * ref.abs().max().item()


def test_unsupported_layer_stays_float_and_is_reported():
    torch.manual_seed(0)
    odd = nn.Conv2d(16, 16, 3, padding=1, padding_mode="reflect")
    model = _trained_stats(Net(odd))
    calib = [torch.randn(8, 3, 16, 16) for _ in range(2)]
    q = lowbit.quantize(model, StaticPTQ(observer="minmax", exclude=("fc",)), data=calib)
    rows = {r.name: r for r in q.lowbit_report.layers}
    assert type(q.odd) is nn.Conv2d and rows["odd"].status == "skipped"
    assert "padding_mode='reflect'" in rows["odd"].reason
    assert type(q.fc) is nn.Linear and rows["fc"].status == "excluded"
    assert rows["conv1"].status == "quantized"
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        ref, out = model(x), q(x)
    assert (out - ref).abs().max().item() < 0.1 * ref.abs().max().item()


def test_static_ptq_validates_its_config():
    with pytest.raises(ValueError, match="observer must be one of"):
        StaticPTQ(observer="entropy")
    with pytest.raises(ValueError, match="needs calibration data"):
        lowbit.quantize(Net(), StaticPTQ())
