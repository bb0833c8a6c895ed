"""Every C++ CPU kernel against its op's pure-PyTorch reference, on random shapes (hypothesis:
ragged batches around the GEMV/dense switch, several K, N, groups, bit widths, dtypes, bias).

Skipped where the extension is not built (a CPU without AVX-512 VNNI/BF16): there the CPU
registration runs the reference itself, which test_ops.py checks with a stand-in extension.
Tolerances: kernel_cases.py.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st
from kernel_cases import GROUPS, OPS, bound_err, dequantize, inputs, int8_weight, rel_err, weight_args

import lowbit.kernels as lk
from lowbit.kernels import cpu, dispatch, reference

pytestmark = pytest.mark.skipif(cpu.extension_status()[0] is None,
                                reason=f"CPU kernels unavailable: {cpu.extension_status()[1]}")
DTYPES = [torch.float32, torch.bfloat16]
# Kernels whose math is exact up to the order of fp32 sums when x is fp32.
EXACT = {"cpu.int8_gemv", "cpu.w8a8_vnni", "cpu.w8a8_amx", "cpu.nf4_gemv", "cpu.nf4_dense_fp32"}


def kernels_of(op):
    names = dispatch.CPU_KERNELS[op]
    if op == "linear_lowbit" and not cpu.vbmi_status()[0]:
        return ()
    if op == "linear_w8a8_dynamic" and not cpu.amx_status()[0]:
        return names[:1]
    return names


def assert_close(name, y, ref, x, W):
    assert y.dtype == x.dtype and y.shape == ref.shape, name
    if x.dtype == torch.float32 and name in EXACT:
        assert rel_err(y, ref) < 1e-5, name
    else:
        assert bound_err(y, ref, x, W) < 1e-2, name


@st.composite
def cases(draw, op):
    """(op arguments after x, with bias and options, and x) for a random shape."""
    group = draw(st.sampled_from(GROUPS.get(op, (None,))))
    if group is None:  # int8 weights: any K, tails included
        K = draw(st.integers(1, 40)) * 16 + draw(st.sampled_from([0, 4]))
    else:
        K = draw(st.integers(1, max(1, 640 // group))) * group
    M, N, seed = draw(st.integers(1, 40)), draw(st.integers(1, 70)), draw(st.integers(0, 2**16))
    dtype = draw(st.sampled_from(DTYPES))
    x, bias = inputs(M, K, N, dtype, with_bias=draw(st.booleans()), seed=seed)
    args = weight_args(op, N, K, group or 64, bits=draw(st.integers(2, 7)), seed=seed)
    options = ()
    if op == "linear_w8a8_dynamic":
        options = (draw(st.sampled_from([None] + [g for g in (64, 128) if K % g == 0])),)
    return x, args, (bias, *options)


@pytest.mark.parametrize("op", OPS)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_each_kernel_matches_reference(op, data):
    x, args, rest = data.draw(cases(op))
    ref = getattr(reference, op)(x, *args, *rest)
    for name in kernels_of(op):
        assert_close(name, dispatch.kernel(name)(x, *args, *rest), ref, x, dequantize(op, args))


@pytest.mark.parametrize("op", OPS)
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_op_runs_the_kernel_kernel_for_names(op, data):
    x, args, rest = data.draw(cases(op))
    name = lk.kernel_for(op, x.device, x.dtype, x.shape)
    assert name in kernels_of(op) or (op == "linear_lowbit" and name == f"reference.{op}")
    y = lk.OPS[op](x.reshape(1, *x.shape), *args, *rest)  # (1, M, K): leading dims kept
    assert_close(name, y[0], getattr(reference, op)(x, *args, *rest), x, dequantize(op, args))


@pytest.mark.parametrize("M", [1, 3, 17])
def test_bf16_dot_kernels_are_exact_up_to_the_rounding_of_x(M):
    x, bias = inputs(M, 512, 33, torch.float32, with_bias=True)
    xb = x.bfloat16().float()
    args = weight_args("linear_int4", 33, 512, 64)
    ref = reference.linear_int4(xb, *args, bias)
    assert rel_err(dispatch.kernel("cpu.int4_gemv")(x, *args, bias), ref) < 1e-5
    if cpu.vbmi_status()[0]:
        for bits, group in ((3, 128), (2, 512), (5, 64), (3, 96)):  # block paths and the generic one
            args = weight_args("linear_lowbit", 33, 512 if group != 96 else 384, group, bits)
            xg = x[:, : group * args[1].shape[1]]
            ref = reference.linear_lowbit(xg.bfloat16().float(), *args, bias)
            assert rel_err(dispatch.kernel("cpu.lowbit_gemv")(xg.contiguous(), *args, bias), ref) < 5e-5


@pytest.mark.parametrize("group", [None, 64, 128])
@pytest.mark.parametrize("dtype", DTYPES)
def test_w8a8_activation_quantization_is_the_reference(group, dtype):
    x, _ = inputs(17, 256, 1, dtype, with_bias=False)
    x[:, 3] *= 50  # an outlier channel: only its own group's scale grows
    x_q, x_scale = cpu.quantize_activations(x, group)
    ref_q, ref_scale = reference.quantize_activations(x, group)
    assert torch.equal(x_q, ref_q) and torch.equal(x_scale, ref_scale)


def test_w8a8_token_groups_beat_per_token_scales_on_an_outlier():
    x, bias = inputs(5, 512, 40, torch.float32, with_bias=True)
    x[:, 3] *= 50
    q, scale = int8_weight(40, 512)
    exact = torch.nn.functional.linear(x, reference.dequantize_int8(q, scale), bias)
    grouped = lk.linear_w8a8_dynamic(x, q, scale, bias, 64)
    assert rel_err(grouped, exact) < rel_err(lk.linear_w8a8_dynamic(x, q, scale, bias), exact)


def test_lowbit_layer_runs_the_lowbit_kernel():
    if not cpu.vbmi_status()[0]:
        pytest.skip(cpu.vbmi_status()[1])
    from lowbit.formats import int_format
    from lowbit.nn import QLinear
    lin = torch.nn.Linear(128, 24)
    for bits in (3, 2):
        q = QLinear.from_float(lin, int_format(bits, signed=False, symmetric=False, group_size=64))
        x = torch.randn(2, 128)
        assert q.op == "linear_lowbit" and q.kernel(x) == "cpu.lowbit_gemv"
        assert rel_err(q(x), reference.linear_dequant(x, q.weight.dequantize(), lin.bias)) < 1e-2


@pytest.mark.parametrize("op", OPS)
def test_kernels_take_weights_of_any_strides(op):
    args = weight_args(op, 24, 256, 64)
    strided = [a.t().contiguous().t() if isinstance(a, torch.Tensor) and a.dim() == 2 else a for a in args]
    rest = (None, None) if op == "linear_w8a8_dynamic" else (None,)
    x = torch.randn(3, 256)
    for name in kernels_of(op):
        assert torch.equal(dispatch.kernel(name)(x, *strided, *rest), dispatch.kernel(name)(x, *args, *rest)), name
