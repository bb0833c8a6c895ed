"""The ops (torch.ops.lowbit.*): their registrations, the CPU registration's path to the kernel
kernel_for names (run here with a stand-in extension, so on every machine), fake kernels,
autograd, and input errors raised before any kernel runs."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings, strategies as st
from kernel_cases import OPS, dequantize, inputs, int4_weight, int8_weight, nf4_weight, rel_err, weight_args

import lowbit.kernels as lk
from lowbit.kernels import reference

KEYS = ("CompositeExplicitAutograd", "CPU", "CUDA", "Meta", "Autograd")


def options(op, K):
    return (64 if K % 64 == 0 else None,) if op == "linear_w8a8_dynamic" else ()


@pytest.mark.parametrize("op", OPS)
def test_each_op_is_declared_once_with_every_registration(op):
    assert getattr(torch.ops.lowbit, op) is lk.OPS[op].overloadpacket is getattr(lk, op)
    assert lk.OPS[op].overloadpacket.overloads() == ["default"]
    for key in KEYS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"lowbit::{op}", key), key


@pytest.mark.parametrize("op", OPS)
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(M=st.integers(1, 40), lead=st.sampled_from([(), (2,)]), strided=st.booleans(),
       bf16=st.booleans(), bias=st.booleans(), seed=st.integers(0, 2**16))
def test_cpu_registration_runs_the_kernel_kernel_for_names(stand_in, op, M, lead, strided, bf16, bias, seed):
    stand_in.clear()
    K, N = 256, 24
    args = weight_args(op, N, K, 64, seed=seed)
    x, b = inputs(M * (2 if strided else 1), K, N, torch.bfloat16 if bf16 else torch.float32, bias, seed)
    x = x[::2] if strided else x  # (M, K), not contiguous
    x = x.expand(*lead, M, K)
    y = lk.OPS[op](x, *args, b, *options(op, K))
    assert stand_in == [lk.kernel_for(op, x.device, x.dtype, x.shape)]
    assert y.shape == (*lead, M, N) and y.dtype == x.dtype
    ref = getattr(reference, op)(x, *args, b, *options(op, K))
    assert rel_err(y, ref) < 1e-6


@pytest.mark.parametrize("path", ["this machine", "stand-in extension"])
@pytest.mark.parametrize("op", OPS)
def test_gradient_is_the_references(op, path, request):
    """dL/dx = dL/dy @ W and dL/dbias = sum dL/dy, W the reference's dequantized weight, on every
    path: the stand-in's kernels return outputs without grad, as the C++ ones do."""
    calls = request.getfixturevalue("stand_in") if path != "this machine" else []
    K, N = 128, 24
    args = weight_args(op, N, K, 64)
    x, bias = inputs(5, K, N, torch.float32, with_bias=True)
    x, bias = x.reshape(1, 5, K).requires_grad_(), bias.requires_grad_()
    grad = torch.randn(1, 5, N)
    (lk.OPS[op](x, *args, bias, *options(op, K)) * grad).sum().backward()
    x_ref, bias_ref = x.detach().clone().requires_grad_(), bias.detach().clone().requires_grad_()
    (F.linear(x_ref, dequantize(op, args), bias_ref) * grad).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bias.grad, bias_ref.grad, rtol=1e-5, atol=1e-6)
    if path != "this machine":
        assert calls == [lk.kernel_for(op, x.device, x.dtype, x.shape)]


@pytest.mark.parametrize("op", OPS)
def test_outputs_need_no_graph_without_grad_and_weights_get_none(op, stand_in):
    args = weight_args(op, 8, 64, 32)
    x = torch.randn(2, 64, requires_grad=True)
    with torch.no_grad():
        assert not lk.OPS[op](x, *args).requires_grad
    with torch.inference_mode():
        assert not lk.OPS[op](x.detach(), *args).requires_grad
    assert lk.OPS[op](x, *args).requires_grad  # through the kernel path
    i = next(i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.is_floating_point())
    trainable = [*args[:i], args[i].clone().requires_grad_(), *args[i + 1:]]  # e.g. the scales
    with pytest.raises(ValueError, match="gradients flow to x and bias only"):
        lk.OPS[op](x, *trainable)


@pytest.mark.parametrize("op", OPS)
def test_fake_kernels_give_the_shape_and_still_check(op):
    args = [a.to("meta") if isinstance(a, torch.Tensor) else a for a in weight_args(op, 24, 128, 64)]
    y = lk.OPS[op](torch.empty(2, 3, 128, device="meta"), *args)
    assert y.device.type == "meta" and y.shape == (2, 3, 24)
    with pytest.raises(ValueError, match=r"x.shape must be \[..., 128\]"):
        lk.OPS[op](torch.empty(2, 64, device="meta"), *args)


@pytest.mark.parametrize("op", OPS)
def test_weights_of_any_strides_are_accepted(op, stand_in):
    args = weight_args(op, 24, 128, 64)
    strided = [a.t().contiguous().t() if isinstance(a, torch.Tensor) and a.dim() == 2 else a for a in args]
    assert any(isinstance(a, torch.Tensor) and not a.is_contiguous() for a in strided)
    x = torch.randn(3, 128)
    torch.testing.assert_close(lk.OPS[op](x, *strided), getattr(reference, op)(x, *args))


def test_linear_dequant_is_f_linear_and_keeps_leading_dims():
    x, w = torch.randn(2, 3, 128)[..., ::2], torch.randn(24, 64)  # (2, 3, 64), not contiguous
    torch.testing.assert_close(lk.linear_dequant(x, w), F.linear(x, w))


@pytest.mark.parametrize("call,match", [
    (lambda x, q, s, p, s4, z4: lk.linear_int4(x, p, s4, z4, 48), r"group_size must be one of"),
    (lambda x, q, s, p, s4, z4: lk.linear_int4(x[:, :64], p[:, :32].contiguous(), s4[:, :1].contiguous(),
                                               z4[:, :1].contiguous(), 128), r"group_size must be a divisor of K = 64, got 128"),
    (lambda x, q, s, p, s4, z4: lk.linear_int4(x, p, s4.float(), z4, 64), r"scale.dtype must be torch.bfloat16"),
    (lambda x, q, s, p, s4, z4: lk.linear_int4(x, p.to(torch.int8), s4, z4, 64), r"packed.dtype must be torch.uint8"),
    (lambda x, q, s, p, s4, z4: lk.linear_int4(x, p, s4[:, :1], z4, 64), r"scale.shape must be \[8, 2\], got \[8, 1\]"),
    (lambda x, q, s, p, s4, z4: lk.linear_int8_weight_only(x.double(), q, s), r"x.dtype must be torch.float32 or"),
    (lambda x, q, s, p, s4, z4: lk.linear_int8_weight_only(x[:, :100], q, s), r"x.shape must be \[..., 128\]"),
    (lambda x, q, s, p, s4, z4: lk.linear_int8_weight_only(x, q[0], s), r"qweight must be a torch.int8 matrix"),
    (lambda x, q, s, p, s4, z4: lk.linear_w8a8_dynamic(x, q.float(), s), r"qweight.dtype must be torch.int8"),
    (lambda x, q, s, p, s4, z4: lk.linear_w8a8_dynamic(x, q, s.bfloat16()), r"scale.dtype must be torch.float32"),
    (lambda x, q, s, p, s4, z4: lk.linear_w8a8_dynamic(x, q, s, torch.zeros(3)), r"bias.shape must be \[8\]"),
    (lambda x, q, s, p, s4, z4: lk.linear_w8a8_dynamic(x, q, s, None, 48), r"act_group_size must be None or a positive multiple of 64"),
    (lambda x, q, s, p, s4, z4: lk.linear_w8a8_dynamic(x, q, s, None, 256), r"act_group_size must be a divisor of K = 128"),
    (lambda x, q, s, p, s4, z4: lk.linear_lowbit(x, p, s4, z4, 32, 8), r"bits must be 2..7, got 8"),
    (lambda x, q, s, p, s4, z4: lk.linear_lowbit(x, p, s4, z4, 48, 3), r"group_size must be a positive multiple of 32"),
    (lambda x, q, s, p, s4, z4: lk.linear_lowbit(x, p, s4, z4, 64, 3), r"packed.shape must be \[8, 48\]"),
    (lambda x, q, s, p, s4, z4: lk.linear_int8_weight_only(x, q.to("meta"), s), r"qweight.device must be x's"),
    (lambda x, q, s, p, s4, z4: lk.linear_int4(x, p, s4, z4, 64, torch.zeros(8, device="meta")), r"bias.device must be x's"),
])
def test_bad_inputs_raise_value_error_before_any_kernel(call, match, stand_in):
    x = torch.randn(2, 128)
    q, s = int8_weight(8, 128)
    p, s4, z4 = int4_weight(8, 128, 64)
    with pytest.raises(ValueError, match=match):
        call(x, q, s, p, s4, z4)
    assert stand_in == []


def _nf4_case(N=8, K=576, block=64):
    return nf4_weight(N, K, block)


@pytest.mark.parametrize("change,match", [
    (lambda x, c, s8, s2, o, b: (x[:, :32].contiguous(), c, s8, s2, o, b), r"x.shape must be \[..., 576\]"),
    (lambda x, c, s8, s2, o, b: (x, c, s8[:, :100].contiguous(), s2, o, b), r"s8.numel\(\) must be 256"),
    (lambda x, c, s8, s2, o, b: (x, c, s8.float(), s2, o, b), r"s8.dtype must be torch.int8"),
    (lambda x, c, s8, s2, o, b: (x, c, s8, s2.double(), o, b), r"s2.dtype must be torch.float32"),
    (lambda x, c, s8, s2, o, b: (x, c, s8, torch.cat([s2, s2], 1), o, b), r"s2.numel\(\) must be 1"),
    (lambda x, c, s8, s2, o, b: (x, c, s8, s2, torch.zeros(2), b), r"offset.numel\(\) must be 1"),
    (lambda x, c, s8, s2, o, b: (x, c, s8, s2, o, 48), r"block_size must be a positive multiple of 32"),
    (lambda x, c, s8, s2, o, b: (x, c, s8, s2, o, 256), r"block_size must be a divisor of K = 576"),
    (lambda x, c, s8, s2, o, b: (x, c.view(torch.int8), s8, s2, o, b), r"codes.dtype must be torch.uint8"),
    (lambda x, c, s8, s2, o, b: (x, c.reshape(-1), s8, s2, o, b), r"codes must be a torch.uint8 matrix"),
    (lambda x, c, s8, s2, o, b: (x, c, s8, s2.to("meta"), o, b), r"s2.device must be x's"),
])
def test_nf4_bad_inputs_raise_value_error(change, match, stand_in):
    x = torch.randn(3, 576)
    with pytest.raises(ValueError, match=match):
        lk.linear_nf4(*change(x, *_nf4_case(), 64))
    assert stand_in == []


def test_nf4_wrong_width_input_raises_at_any_size():
    """Once a NaN or a segfault (K = 2^20, x of width 32): now the width is checked first."""
    codes, s8, s2, offset = _nf4_case(N=1, K=2**20, block=64)
    with pytest.raises(ValueError, match=r"x.shape must be \[..., 1048576\]"):
        lk.linear_nf4(torch.randn(1, 32), codes, s8, s2, offset, 64)
    from lowbit.algorithms.nf4 import quantize_nf4
    from lowbit.nn.nf4 import NF4Linear
    layer = NF4Linear(quantize_nf4(torch.randn(16, 256), 64))
    assert layer.op == "linear_nf4"
    with pytest.raises(ValueError, match=r"lowbit.kernels.linear_nf4: x.shape must be \[..., 256\]"):
        layer(torch.randn(2, 32))


@pytest.mark.parametrize("grad_mode", [torch.no_grad, torch.enable_grad, torch.inference_mode])
def test_dispatch_modes_see_the_op_whatever_the_grad_mode(grad_mode):
    """The autograd kernel's shortcut to the CPU kernel must not skip a mode (profilers, fake
    tensors): it is taken only when the dispatcher would go there next."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(func)
            return func(*args, **(kwargs or {}))

    args = weight_args("linear_int4", 8, 64, 32)
    with grad_mode(), Record() as mode:
        lk.linear_int4(torch.randn(2, 64), *args)
    assert lk.OPS["linear_int4"] in mode.ops
