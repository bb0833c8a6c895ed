"""Input checks shared by every kernel: a mistake raises ValueError saying what was expected."""
from __future__ import annotations

import torch

GROUP_SIZES = (32, 64, 128, 256)
ACTIVATION_DTYPES = (torch.float32, torch.bfloat16)


def _fail(op: str, what: str, expected: str, got) -> None:
    raise ValueError(f"lowbit.kernels.{op}: {what} must be {expected}, got {got}")


def _dtype(op, name, t, dtype):
    if t.dtype != dtype:
        _fail(op, f"{name}.dtype", str(dtype), t.dtype)


def _shape(op, name, t, shape: tuple):
    if t.shape != shape:
        _fail(op, f"{name}.shape", str(list(shape)), list(t.shape))


def _activation(op, x, K):
    if not isinstance(x, torch.Tensor) or x.dtype not in ACTIVATION_DTYPES:
        _fail(op, "x.dtype", "torch.float32 or torch.bfloat16", getattr(x, "dtype", type(x).__name__))
    if x.dim() < 1 or x.shape[-1] != K:
        _fail(op, "x.shape", f"[..., {K}] (K of the weight)", list(x.shape))


def _same_device(op, x, **tensors):
    for name, t in tensors.items():
        if t is not None and t.device != x.device:
            _fail(op, f"{name}.device", f"x's device ({x.device})", t.device)


def _bias(op, bias, N):
    if bias is None:
        return
    if not bias.is_floating_point():
        _fail(op, "bias.dtype", "a floating dtype", bias.dtype)
    _shape(op, "bias", bias, (N,))


def int8_weight(op, x, qweight, scale, bias):
    if qweight.dim() != 2:
        _fail(op, "qweight", "an int8 matrix [N, K]", list(qweight.shape))
    _dtype(op, "qweight", qweight, torch.int8)
    N, K = qweight.shape
    _dtype(op, "scale", scale, torch.float32)
    _shape(op, "scale", scale, (N,))
    _activation(op, x, K)
    _bias(op, bias, N)
    _same_device(op, x, qweight=qweight, scale=scale, bias=bias)


def lowbit_weight(op, x, packed, scale, zero_point, group_size, bits, bias):
    if not isinstance(bits, int) or not 2 <= bits <= 7:
        _fail(op, "bits", "2..7", bits)
    if packed.dim() != 2:
        _fail(op, "packed", f"a uint8 matrix [N, ceil(K * {bits} / 8)]", list(packed.shape))
    _dtype(op, "packed", packed, torch.uint8)
    if not isinstance(group_size, int) or group_size <= 0 or group_size % 32:
        _fail(op, "group_size", "a positive multiple of 32", group_size)
    if scale.dim() != 2:
        _fail(op, "scale", "a bfloat16 matrix [N, K // group_size]", list(scale.shape))
    N, K = packed.shape[0], scale.shape[1] * group_size
    for name, t in (("scale", scale), ("zero_point", zero_point)):
        _dtype(op, name, t, torch.bfloat16)
        _shape(op, name, t, (N, K // group_size))
    _shape(op, "packed", packed, (N, (K * bits + 7) // 8))
    _activation(op, x, K)
    _bias(op, bias, N)
    _same_device(op, x, packed=packed, scale=scale, zero_point=zero_point, bias=bias)


def act_group(op, group_size, K):
    """Activation groups of the W8A8 kernels: None (per token) or a multiple of 64 dividing K."""
    if group_size is None:
        return
    if not isinstance(group_size, int) or group_size <= 0 or group_size % 64:
        _fail(op, "act_group_size", "None or a positive multiple of 64", group_size)
    if K % group_size:
        _fail(op, "act_group_size", f"a divisor of K = {K} (or None for per-token scales)", group_size)


def int4_weight(op, x, packed, scale, zero_point, group_size, bias):
    if packed.dim() != 2:
        _fail(op, "packed", "a uint8 matrix [N, K // 2]", list(packed.shape))
    _dtype(op, "packed", packed, torch.uint8)
    N, K = packed.shape[0], packed.shape[1] * 2
    if group_size not in GROUP_SIZES:
        _fail(op, "group_size", f"one of {GROUP_SIZES}", group_size)
    if K % group_size:
        _fail(op, "group_size", f"a divisor of K = {K}", group_size)
    for name, t in (("scale", scale), ("zero_point", zero_point)):
        _dtype(op, name, t, torch.bfloat16)
        _shape(op, name, t, (N, K // group_size))
    _activation(op, x, K)
    _bias(op, bias, N)
    _same_device(op, x, packed=packed, scale=scale, zero_point=zero_point, bias=bias)
