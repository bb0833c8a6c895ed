"""lowbit's kernel ops, each declared once with torch.library in the namespace ``lowbit``.

Per op (``SPECS``): a schema; the pure-PyTorch reference (reference.py) as the default kernel
(CompositeExplicitAutograd: any device); CPU and CUDA kernels that run what ``kernel_for``
names for the input; a fake kernel (the output's shape) so torch.compile and torch.export trace
through; and autograd. Every one of them runs the op's check (checks.py) before anything else.

Autograd: dL/dx = dL/dy @ W with W dequantized by the reference, in fp32 (for W8A8 this passes
the activation rounding straight through); dL/dbias = dL/dy summed over tokens. The quantized
weight tensors get no gradient: asking for one raises ValueError.

Call an op as ``torch.ops.lowbit.linear_int4(x, packed, scale, zero_point, group_size, bias)``;
``lowbit.kernels.linear_int4`` is the same object. ``linear_dequant`` (a weight already
dequantized) is plain F.linear, registered as CompositeImplicitAutograd.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from lowbit.kernels import checks, reference
from lowbit.kernels.dispatch import OP_NAMES, kernel, kernel_for


@dataclass(frozen=True)
class OpSpec:
    """One op: ``name``, its ``schema`` (arguments and result, as torch.library reads them), how
    many arguments after x describe the weight (``weights``; then comes bias, then options), and
    ``dequantize(*weight arguments) -> fp32 [N, K]`` for the gradient."""

    name: str
    schema: str
    weights: int
    dequantize: Callable[..., torch.Tensor]


SPECS = (
    OpSpec("linear_int8_weight_only", "(Tensor x, Tensor qweight, Tensor scale, Tensor? bias=None) -> Tensor",
           2, reference.dequantize_int8),
    OpSpec("linear_int4", "(Tensor x, Tensor packed, Tensor scale, Tensor zero_point, int group_size, "
           "Tensor? bias=None) -> Tensor", 4, reference.dequantize_int4),
    OpSpec("linear_lowbit", "(Tensor x, Tensor packed, Tensor scale, Tensor zero_point, int group_size, "
           "int bits, Tensor? bias=None) -> Tensor", 5, reference.dequantize_lowbit),
    OpSpec("linear_w8a8_dynamic", "(Tensor x, Tensor qweight, Tensor scale, Tensor? bias=None, "
           "int? act_group_size=None) -> Tensor", 2, reference.dequantize_int8),
    OpSpec("linear_nf4", "(Tensor x, Tensor codes, Tensor s8, Tensor s2, Tensor offset, int block_size, "
           "Tensor? bias=None) -> Tensor", 5, reference.dequantize_nf4),
)

LIB = torch.library.Library("lowbit", "DEF")
_BELOW_AUTOGRAD = torch._C._after_autograd_keyset


@functools.cache
def _straight_to_device(raw_keyset: int) -> bool:
    """Whether the dispatcher would go from autograd straight to the CPU / CUDA kernel (no mode,
    tensor subclass or functionalization in between), for a keyset's raw bits."""
    below = torch._C.DispatchKeySet.from_raw_repr(raw_keyset) & torch._C._after_ADInplaceOrView_keyset
    return below.highestPriorityTypeId() in (torch._C.DispatchKey.CPU, torch._C.DispatchKey.CUDA)


def _device_kernel(op: str, check: Callable, arity: int) -> Callable:
    """The CPU / CUDA kernel of ``op``: check, ask kernel_for, run that kernel on x as [M, K]."""
    def device_kernel(x, *args):
        check(x, *args)
        if len(args) < arity:  # the dispatcher drops trailing arguments left at their default (None)
            args += (None,) * (arity - len(args))
        run = kernel(kernel_for(op, x.device, x.dtype, x.shape))
        if x.dim() == 2 and x.is_contiguous():  # the common case: no reshapes
            return run(x, *args)
        y = run(x.reshape(-1, x.shape[-1]).contiguous(), *args)  # (M, K) -> (M, N)
        return y.reshape(*x.shape[:-1], y.shape[-1])
    return device_kernel


def _reference_kernel(check: Callable, function: Callable) -> Callable:
    def reference_kernel(x, *args):
        check(x, *args)
        return function(x, *args)
    return reference_kernel


def _fake_kernel(check: Callable) -> Callable:
    def fake_kernel(x, *args):
        check(x, *args)
        return x.new_empty((*x.shape[:-1], args[0].shape[0]))  # (..., N)
    return fake_kernel


class _Linear(torch.autograd.Function):
    """Forward: the op below autograd. Backward: dL/dx = dL/dy @ W, dL/dbias = sum dL/dy."""

    @staticmethod
    def forward(ctx, spec: OpSpec, x, *args):
        weights = args[: spec.weights]
        ctx.save_for_backward(*(w for w in weights if isinstance(w, torch.Tensor)))
        ctx.spec, ctx.x_dtype = spec, x.dtype
        ctx.plain = [None if isinstance(w, torch.Tensor) else w for w in weights]
        bias = args[spec.weights]
        ctx.bias_dtype = None if bias is None else bias.dtype
        with torch._C._AutoDispatchBelowAutograd():
            return getattr(torch.ops.lowbit, spec.name).default(x, *args)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        tensors = iter(ctx.saved_tensors)
        weights = [next(tensors) if w is None else w for w in ctx.plain]
        W = ctx.spec.dequantize(*weights)  # (N, K) fp32
        needs = ctx.needs_input_grad
        grad_x = (grad.float() @ W).to(ctx.x_dtype) if needs[1] else None  # (..., K)
        bias_at = 2 + ctx.spec.weights
        grad_bias = None
        if needs[bias_at]:
            grad_bias = grad.float().reshape(-1, W.shape[0]).sum(0).to(ctx.bias_dtype)  # (N,)
        grads = [None] * len(needs)
        grads[1], grads[bias_at] = grad_x, grad_bias
        return tuple(grads)


def _wants_grad(spec: OpSpec, x, args) -> bool:
    for i, w in enumerate(args[: spec.weights]):
        if isinstance(w, torch.Tensor) and w.requires_grad:
            raise ValueError(
                f"lowbit.kernels.{spec.name}: gradients flow to x and bias only, but weight argument "
                f"{i + 1} (after x) requires grad; the quantized weight is frozen: detach it, or train "
                f"a float weight (lowbit.qat) or an adapter (lowbit.lora)")
    bias = args[spec.weights] if len(args) > spec.weights else None
    return x.requires_grad or (bias is not None and bias.requires_grad)


def _autograd_kernel(spec: OpSpec, device_kernel: Callable, arity: int) -> Callable:
    """Autograd for ``spec``: the graph node when a gradient is wanted; otherwise straight on to
    the CPU / CUDA kernel when that is what the dispatcher would pick next (no mode, subclass or
    functionalization in between), saving one dispatcher round trip per call."""
    overload = getattr(torch.ops.lowbit, spec.name).default

    def autograd_kernel(keyset, x, *args):
        if torch.is_grad_enabled() and _wants_grad(spec, x, args):
            return _Linear.apply(spec, x, *args, *(None,) * (arity - len(args)))
        if _straight_to_device(keyset.raw_repr()):
            return device_kernel(x, *args)
        return overload.redispatch(keyset & _BELOW_AUTOGRAD, x, *args)
    return autograd_kernel


def _declare(spec: OpSpec) -> None:
    check = getattr(checks, spec.name)
    LIB.define(spec.name + spec.schema)
    arity = len(getattr(torch.ops.lowbit, spec.name).default._schema.arguments) - 1  # after x
    LIB.impl(spec.name, _reference_kernel(check, getattr(reference, spec.name)), "CompositeExplicitAutograd")
    device_kernel = _device_kernel(spec.name, check, arity)
    LIB.impl(spec.name, device_kernel, "CPU")
    LIB.impl(spec.name, device_kernel, "CUDA")
    torch.library.register_fake(f"lowbit::{spec.name}", _fake_kernel(check), lib=LIB)
    LIB.impl(spec.name, _autograd_kernel(spec, device_kernel, arity), "Autograd", with_keyset=True)


for _spec in SPECS:
    _declare(_spec)
LIB.define("linear_dequant(Tensor x, Tensor weight, Tensor? bias=None) -> Tensor")
LIB.impl("linear_dequant", reference.linear_dequant, "CompositeImplicitAutograd")

# name -> the op (its one overload), for callers that hold the name (QLinear.op)
OPS = {name: getattr(torch.ops.lowbit, name).default for name in OP_NAMES}
linear_int8_weight_only = torch.ops.lowbit.linear_int8_weight_only
linear_int4 = torch.ops.lowbit.linear_int4
linear_lowbit = torch.ops.lowbit.linear_lowbit
linear_w8a8_dynamic = torch.ops.lowbit.linear_w8a8_dynamic
linear_nf4 = torch.ops.lowbit.linear_nf4
linear_dequant = torch.ops.lowbit.linear_dequant
