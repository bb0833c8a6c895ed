"""QAT: the straight-through estimator, LSQ's step-size gradient, prepare -> convert."""
import pytest
import torch
from torch import nn

from lowbit.formats import int_format
from lowbit.nn import QLinear
from lowbit.qat import (QAT, FakeQuantizer, QATLinear, convert, distillation_loss, fit,
                        freeze_observers, prepare_qat)


def test_ste_passes_gradient_inside_the_range_and_zero_outside():
    fq = FakeQuantizer(int_format(4, signed=True, symmetric=True).replace(granularity="tensor"))
    x = torch.tensor([[-3.0, -0.4, 0.2, 0.9, 1.0, 2.5]])
    fq(torch.tensor([[-1.0, 1.0]]))  # range [-1, 1]: scale 1/7, grid -8..7 -> [-8/7, 1]
    fq.freeze()
    x.requires_grad_(True)
    y = fq(x)
    y.sum().backward()
    assert torch.equal(x.grad, torch.tensor([[0.0, 1.0, 1.0, 1.0, 1.0, 0.0]]))
    assert torch.allclose(y.detach()[0, 1:5] * 7, torch.round(x.detach()[0, 1:5] * 7))


def test_lsq_scale_gradient_matches_finite_differences_of_the_surrogate():
    """LSQ's gradient is that of the step function with its rounding residual r = round(x/s) - x/s
    and its clipping decisions frozen: s (x/s + r) inside the grid, s * q_clip outside."""
    torch.manual_seed(0)
    fmt = int_format(3, signed=True, symmetric=True).replace(granularity="tensor")
    fq = FakeQuantizer(fmt, learn="lsq")
    x = torch.randn(1, 64) * 2
    fq(x)
    fq._grad_factor = 1.0  # compare the raw gradient
    with torch.no_grad():
        fq.scale.mul_(0.7)  # some inputs clipped
    upstream = torch.randn(1, 64)
    (fq(x) * upstream).sum().backward()
    s0 = fq.scale.detach().clone()
    r = torch.round(x / s0) - x / s0                          # frozen rounding residual
    inside = (torch.round(x / s0) >= fmt.qmin) & (torch.round(x / s0) <= fmt.qmax)
    clipped = torch.round(x / s0).clamp(fmt.qmin, fmt.qmax)
    assert inside.any() and (~inside).any()

    def surrogate(s):
        return (torch.where(inside, s * (x / s + r), s * clipped) * upstream).double().sum()

    h = 1e-3
    fd = (surrogate(s0 + h) - surrogate(s0 - h)) / (2 * h)
    assert fq.scale.grad.item() == pytest.approx(fd.item(), rel=1e-3, abs=1e-4)


def test_lsq_plus_learns_an_offset_and_rejects_symmetric_formats():
    with pytest.raises(ValueError, match="lsq\\+' learns a zero point"):
        FakeQuantizer(int_format(4), learn="lsq+")
    fq = FakeQuantizer(int_format(4, signed=False, symmetric=False), learn="lsq+")
    x = torch.rand(8, 32) + 0.5
    fq(x)
    assert isinstance(fq.zero_point, nn.Parameter) and isinstance(fq.scale, nn.Parameter)
    (fq(x * 3) ** 2).sum().backward()  # inputs beyond the range: the offset gets a gradient
    assert fq.zero_point.grad.abs().sum() > 0


@pytest.mark.parametrize("learn", [None, "lsq"])
@pytest.mark.parametrize("num_bits,group_size", [(8, None), (4, 64), (3, 64)])
def test_convert_reproduces_the_fake_quantized_model(learn, num_bits, group_size):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 96), nn.ReLU(), nn.Linear(96 if group_size is None else 128, 10))
    if group_size:
        model[2] = nn.Linear(96, 10)
        model = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 64))
    qat = prepare_qat(model, QAT(num_bits=num_bits, group_size=group_size, learn=learn))
    assert all(isinstance(qat[i], QATLinear) for i in (0, 2))
    x = torch.randn(16, 128)
    opt = torch.optim.SGD(qat.parameters(), lr=1e-3)
    fit(qat, lambda m, b: m(b).pow(2).mean(), [x] * 3, optimizer=opt, freeze_observers_at=0.5)
    qat.eval()
    q = convert(qat)
    assert all(isinstance(q[i], QLinear) for i in (0, 2))
    assert q[0].weight.format.num_bits == num_bits
    with torch.no_grad():
        ref, got = qat(x), q(x)
        w_fake = qat[0].weight_quant(qat[0].weight)
        w_real = q[0].weight.dequantize()
    step = qat[0].weight_quant.scale.abs().max().item()
    assert (w_fake - w_real).abs().max().item() <= step * 1.01  # within one quantization step
    assert ((got - ref).norm() / ref.norm()).item() < 0.02


def test_observers_follow_the_weights_until_frozen():
    model = nn.Sequential(nn.Linear(32, 8))
    qat = prepare_qat(model, QAT(num_bits=8, learn=None))
    fq = qat[0].weight_quant
    before = fq.scale.clone()
    with torch.no_grad():
        qat[0].weight.mul_(2)
    qat.train()
    qat(torch.randn(2, 32))
    assert torch.allclose(fq.scale, before * 2)
    freeze_observers(qat)
    with torch.no_grad():
        qat[0].weight.mul_(2)
    qat(torch.randn(2, 32))
    assert torch.allclose(fq.scale, before * 2)


def test_activation_quantization_needs_data_and_is_reported():
    model = nn.Sequential(nn.Linear(16, 8))
    with pytest.raises(ValueError, match="act_bits needs data"):
        prepare_qat(model, QAT(num_bits=4, act_bits=4))
    qat = prepare_qat(model, QAT(num_bits=4, act_bits=4), data=[torch.randn(4, 16)])
    assert qat[0].input_quant.initialized
    assert "A4" in qat.lowbit_report.recipe


def test_distillation_loss_is_zero_for_equal_logits_and_positive_otherwise():
    a = torch.randn(4, 7, 11)
    assert distillation_loss(a, a, temperature=2.0).item() == pytest.approx(0.0, abs=1e-6)
    assert distillation_loss(a, torch.randn(4, 7, 11), temperature=2.0).item() > 0
    with pytest.raises(ValueError, match="same shape"):
        distillation_loss(a, a[:, :3])


def test_qat_can_start_from_an_already_quantized_grid():
    from lowbit.qtensor import QTensor
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 64))
    fmt = QAT(num_bits=3, group_size=64).weight_format
    ptq = QTensor.from_float(model[0].weight.detach() * 1.1, fmt)  # some other grid
    qat = prepare_qat(model, QAT(num_bits=3, group_size=64), init={"0": ptq})
    with torch.no_grad():
        fake = qat[0].weight_quant(qat[0].weight)
    torch.testing.assert_close(fake, ptq.dequantize(), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="cannot start from"):
        qat[0].weight_quant.load_grid(QTensor.from_float(model[0].weight.detach(), QAT(num_bits=4, group_size=64).weight_format))


def test_activation_ranges_cover_every_calibration_batch():
    model = nn.Sequential(nn.Linear(8, 4))
    small, large = torch.randn(4, 8), torch.randn(4, 8) * 10
    qat = prepare_qat(model, QAT(num_bits=8, act_bits=8, learn=None), data=[small, large])
    fq = qat[0].input_quant
    hi = ((fq.fmt.qmax - fq.zero_point) * fq.scale).item()
    assert hi >= large.max().item() - 1e-4 * large.abs().max().item()


def test_frozen_batchnorm_stays_in_eval_and_the_model_still_copies():
    import copy
    from lowbit.qat import freeze_batchnorm
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    freeze_batchnorm(model)
    model.train()
    before = model[1].running_mean.clone()
    model(torch.randn(2, 1, 5, 5) + 3)
    assert torch.equal(model[1].running_mean, before)
    copy.deepcopy(model)(torch.randn(1, 1, 5, 5))


def _conv_bn_relu():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 6 * 6, 4))
    with torch.no_grad():  # non-trivial running statistics and affine parameters
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
        model[1].weight.uniform_(0.5, 1.5)
        model[1].bias.uniform_(-0.2, 0.2)
    return model.eval()


def test_conv_bn_pair_in_eval_equals_the_folded_conv_on_the_fake_quantized_grid():
    from lowbit.fold import fold_conv_bn
    from lowbit.qat import QATConvBn2d
    model = _conv_bn_relu()
    x = torch.randn(4, 3, 6, 6)
    q = prepare_qat(model, QAT(num_bits=4, learn=None), data=[x])
    assert isinstance(q[0], QATConvBn2d) and isinstance(q[1], nn.Identity)
    q.eval()
    folded = fold_conv_bn(q[0].module[0], q[0].module[1])
    with torch.no_grad():
        w = q[0].weight_quant(folded.weight)         # the grid the deployed conv will use
        expected = nn.functional.conv2d(x, w, folded.bias, padding=1)
        torch.testing.assert_close(q[0](x), expected, rtol=1e-5, atol=1e-5)


def test_conv_bn_pair_trains_with_batch_statistics_until_frozen():
    from lowbit.qat import freeze_batchnorm
    model = _conv_bn_relu()
    x = torch.randn(16, 3, 6, 6) * 2 + 1
    q = prepare_qat(model, QAT(num_bits=8, learn="lsq"), data=[x]).train()
    bn = q[0].module[1]
    before = bn.running_mean.clone()
    q(x).sum().backward()
    assert not torch.equal(bn.running_mean, before)              # batch statistics were used
    assert bn.weight.grad is not None and q[0].weight.grad is not None
    freeze_batchnorm(q)
    frozen = bn.running_mean.clone()
    q(x)
    assert torch.equal(bn.running_mean, frozen)


def test_conv_bn_simulation_needs_data_or_as_is():
    with pytest.raises(ValueError, match="batchnorm='as-is'"):
        prepare_qat(_conv_bn_relu(), QAT(num_bits=8))
    q = prepare_qat(_conv_bn_relu(), QAT(num_bits=8, batchnorm="as-is"))
    assert isinstance(q[1], nn.BatchNorm2d)
    with pytest.raises(ValueError, match="'simulate' or 'as-is'"):
        QAT(batchnorm="fold")
