"""NF4 with double quantization: storage size, the kernel against the reference dequant path."""
import pytest
import torch
from torch import nn

from lowbit.algorithms.nf4 import quantize_nf4
from lowbit.formats import NF4_CODEBOOK
import lowbit.kernels as lk
from lowbit.kernels import cpu, reference
from lowbit.nn.nf4 import NF4Linear
from lowbit.recipes import NF4


def _args(q):
    return q.data, q.scale.data, q.scale.scale, q.offset, q.format.group_size


def test_bits_per_weight_with_and_without_double_quant():
    W = torch.randn(1536, 576)
    assert quantize_nf4(W, 64, double_quant=True).bits_per_weight == pytest.approx(4.127, abs=1e-3)
    assert quantize_nf4(W, 64, double_quant=False).bits_per_weight == pytest.approx(4.5, abs=1e-3)


def test_values_are_codebook_times_block_absmax():
    torch.manual_seed(0)
    W = torch.randn(8, 128)
    Wd = quantize_nf4(W, 64, double_quant=False).dequantize()
    absmax = W.reshape(8, 2, 64).abs().amax(-1, keepdim=True)  # (8, 2, 1)
    levels = torch.tensor(NF4_CODEBOOK)
    ratio = (Wd.reshape(8, 2, 64) / absmax).reshape(-1)
    assert (ratio[:, None] - levels).abs().amin(1).max() < 1e-6  # every value is a level
    assert (Wd - W).abs().max() <= absmax.max() * 0.2  # the widest NF4 gap / 2 < 0.2


def test_spec_dequant_equals_qtensor_dequant():
    W = torch.randn(40, 256)
    q = quantize_nf4(W, 64)
    assert torch.equal(reference.dequantize_nf4(*_args(q)), q.dequantize())


@pytest.mark.parametrize("shape", [(96, 576), (13, 1536), (256, 64)])
@pytest.mark.parametrize("M", [1, 2, 3, 17])
@pytest.mark.parametrize("block_size", [32, 64, 128])
def test_kernel_matches_reference_dequant_path(shape, M, block_size):
    N, K = shape
    if K % block_size:
        pytest.skip("block does not tile K")
    torch.manual_seed(N + M)
    q = quantize_nf4(torch.randn(N, K) * 0.02, block_size)
    x, bias = torch.randn(M, K), torch.randn(N)
    y = lk.linear_nf4(x, *_args(q), bias)
    y_ref = reference.linear_nf4(x, *_args(q), bias)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    y16 = lk.linear_nf4(x.bfloat16(), *_args(q), bias)
    torch.testing.assert_close(y16.float(), y_ref, rtol=2e-2, atol=2e-2)


def test_kernel_is_real_on_this_machine_or_says_why():
    name = lk.kernel_for("linear_nf4", "cpu", torch.float32, (1, 64))
    module, why = cpu.extension_status()
    assert (module is None) == (name == "reference.linear_nf4"), why


def test_nf4_linear_and_recipe():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 32))
    x = torch.randn(3, 128)
    from lowbit import quantize
    q = quantize(model, NF4(block_size=64))
    assert all(isinstance(m, NF4Linear) for m in (q[0], q[2]))
    ref = nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 32))
    ref.load_state_dict(model.state_dict())
    for i in (0, 2):
        ref[i].weight.data = q[i].weight.dequantize()
    torch.testing.assert_close(q(x), ref(x), rtol=1e-5, atol=1e-5)


def test_recipe_validates_and_block_error_names_layer():
    with pytest.raises(ValueError, match="block_size"):
        NF4(block_size=48)
    from lowbit import quantize
    with pytest.raises(ValueError, match=r"0.*does not divide"):
        quantize(nn.Sequential(nn.Linear(96, 8)), NF4(block_size=64))
