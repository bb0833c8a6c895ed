"""LLM.int8(): the mixed decomposition equals its float + int8 reference."""
import pytest
import torch
from torch import nn

from lowbit.algorithms.llm_int8 import decompose, outlier_columns
from lowbit.kernels import kernel_for, reference
from lowbit.nn.llm_int8 import LLMInt8Linear
from lowbit.recipes import LLMInt8


def _layer(N=48, K=96, threshold=6.0):
    torch.manual_seed(0)
    lin = nn.Linear(K, N)
    return lin, LLMInt8Linear.from_float(lin, threshold)


def test_outlier_columns_and_decompose():
    X = torch.tensor([[1.0, -7.0, 2.0, 0.5], [0.0, 1.0, 6.5, 6.0]])
    O = outlier_columns(X, 6.0)
    assert O.tolist() == [1, 2]  # 6.0 itself is not an outlier
    X_int8, X_fp = decompose(X, O)
    assert X_int8.tolist() == [[1.0, 0.0, 0.0, 0.5], [0.0, 0.0, 0.0, 6.0]]
    assert torch.equal(X_fp, X[:, [1, 2]])


@pytest.mark.parametrize("M", [1, 5])
def test_forward_equals_decomposition_reference(M):
    lin, q = _layer()
    x = torch.randn(M, 96)
    x[:, [3, 40]] *= 30  # two outlier features
    W = q.weight.dequantize()  # (N, K) int8 * scale
    O = torch.tensor([3, 40])
    x_int8 = x.clone()
    x_int8[:, O] = 0
    y_ref = (reference.linear_w8a8_dynamic(x_int8, q.weight.data, q.weight.scale.reshape(-1), lin.bias)
             + x[:, O] @ W[:, O].T)
    torch.testing.assert_close(q(x), y_ref, rtol=1e-5, atol=1e-4)


def test_outlier_columns_are_exact_in_float():
    """With only outlier features, the output is the float product with the int8 weight."""
    lin, q = _layer()
    x = torch.zeros(4, 96)
    x[:, [7, 8]] = torch.randn(4, 2) * 100
    W = q.weight.dequantize()
    torch.testing.assert_close(q(x), x @ W.T + lin.bias, rtol=1e-6, atol=1e-5)


def test_outliers_do_not_spoil_the_other_features():
    lin, q = _layer()
    x = torch.randn(8, 96)
    x[:, 5] = 500.0
    exact = x @ q.weight.dequantize().T + lin.bias  # the error left is the activations'
    err_int8 = (q(x) - exact).abs().max()
    naive = reference.linear_w8a8_dynamic(x, q.weight.data, q.weight.scale.reshape(-1), lin.bias)
    assert err_int8 < (naive - exact).abs().max() / 10


def test_recipe_keeps_head_float_and_reports_kernel():
    from lowbit import quantize
    model = nn.ModuleDict({"fc": nn.Linear(32, 32), "lm_head": nn.Linear(32, 10)})
    q = quantize(model, LLMInt8())
    assert isinstance(q["fc"], LLMInt8Linear) and isinstance(q["lm_head"], nn.Linear)
    assert q.lowbit_report.quantized[0].kernel == kernel_for("linear_w8a8_dynamic", "cpu", torch.float32, (1, 32))
    with pytest.raises(ValueError, match="threshold"):
        LLMInt8(threshold=0)


@pytest.mark.parametrize("M", [1, 5])
def test_token_group_scales_equal_grouped_reference(M):
    torch.manual_seed(1)
    lin = nn.Linear(128, 48)
    q = LLMInt8Linear.from_float(lin, 6.0, act_group_size=64)
    x = torch.randn(M, 128)
    x[:, 70] *= 30  # an outlier in the second group
    O = torch.tensor([70])
    x_int8 = x.clone()
    x_int8[:, O] = 0
    y_ref = (reference.linear_w8a8_dynamic(x_int8, q.weight.data, q.weight.scale.reshape(-1), lin.bias,
                                           act_group_size=64)
             + x[:, O] @ q.weight.dequantize()[:, O].T)
    torch.testing.assert_close(q(x), y_ref, rtol=1e-5, atol=1e-4)
    assert q.act_group_size == 64 and q.kernel(x) == kernel_for("linear_w8a8_dynamic", x.device, x.dtype, x.shape)


def test_group_fallback_and_bad_group():
    from lowbit import quantize
    model = nn.ModuleDict({"a": nn.Linear(128, 16), "b": nn.Linear(96, 16), "lm_head": nn.Linear(16, 4)})
    q = quantize(model, LLMInt8(act_group_size=64))
    assert q["a"].act_group_size == 64
    assert q["b"].act_group_size is None  # 96 is not a multiple of 64: per token
    with pytest.raises(ValueError, match="multiple of 64"):
        LLMInt8(act_group_size=48)
    with pytest.raises(ValueError, match="must divide in_features 96"):
        LLMInt8Linear.from_float(nn.Linear(96, 8), act_group_size=64)
