"""Input checks, one per op (named after it, arguments in the op's order).

Every registration of an op (reference, CPU, CUDA, fake) runs its check first, so nothing reaches
a kernel unchecked: a mistake raises ValueError saying what was expected and what came. The
schema has already checked the argument types (Tensor, int); these check dtypes, shapes,
devices and value ranges against the weight layouts of ``reference.py``. They run
on every call (~2 us), so they read each tensor attribute once.
"""
from __future__ import annotations

import torch

GROUP_SIZES = (32, 64, 128, 256)
ACTIVATION_DTYPES = (torch.float32, torch.bfloat16)
_INT8, _UINT8, _BF16, _FP32 = torch.int8, torch.uint8, torch.bfloat16, torch.float32


def _fail(op: str, what: str, expected: str, got) -> None:
    raise ValueError(f"lowbit.kernels.{op}: {what} must be {expected}, got {got}")


def _matrix(op, name, t, dtype, layout: str) -> torch.Size:
    """Shape of a 2-D ``dtype`` weight tensor; ``layout`` names its expected shape."""
    shape = t.shape
    if len(shape) != 2:
        _fail(op, name, f"a {dtype} matrix {layout}", f"shape {list(shape)}")
    _tensor(op, name, t, dtype)
    return shape


def _tensor(op, name, t, dtype, shape=None) -> None:
    """t is a ``dtype`` tensor (of ``shape``, unless None). Any strides: the C++ bindings make
    each tensor contiguous (a no-op for the layouts lowbit stores)."""
    if t.dtype != dtype:
        _fail(op, f"{name}.dtype", str(dtype), t.dtype)
    if shape is not None and t.shape != shape:
        _fail(op, f"{name}.shape", str(list(shape)), list(t.shape))


def _x_bias_devices(op, x, K: int, bias, N: int, names: tuple, *weights) -> None:
    """x is fp32/bf16 [..., K]; bias None or floating [N]; x, bias and ``weights`` (called
    ``names``) on one device."""
    if x.dtype not in ACTIVATION_DTYPES:
        _fail(op, "x.dtype", "torch.float32 or torch.bfloat16", x.dtype)
    if x.dim() < 1 or x.shape[-1] != K:
        _fail(op, "x.shape", f"[..., {K}] (K of the weight)", list(x.shape))
    if bias is not None:
        if not bias.is_floating_point():
            _fail(op, "bias.dtype", "a floating dtype", bias.dtype)
        if bias.shape != (N,):
            _fail(op, "bias.shape", f"[{N}]", list(bias.shape))
        names, weights = (*names, "bias"), (*weights, bias)
    on_cpu = x.is_cpu
    for t in weights:
        if not on_cpu or not t.is_cpu:  # the common case (all on the CPU) costs one flag each
            for name, w in zip(names, weights):
                if w.device != x.device:
                    _fail(op, f"{name}.device", f"x's device ({x.device})", w.device)
            return


def _group_size(op, name, group_size, K: int, allowed: str, ok: bool) -> None:
    if not ok:
        _fail(op, name, allowed, group_size)
    if K % group_size:
        _fail(op, name, f"a divisor of K = {K}", group_size)


_INT4_GROUPS = f"one of {GROUP_SIZES}"
_PACKED = ("packed", "scale", "zero_point")


def linear_int8_weight_only(x, qweight, scale, bias=None, op="linear_int8_weight_only") -> None:
    """qweight int8 [N, K], scale fp32 [N]."""
    N, K = _matrix(op, "qweight", qweight, _INT8, "[N, K]")
    _tensor(op, "scale", scale, _FP32, (N,))
    _x_bias_devices(op, x, K, bias, N, ("qweight", "scale"), qweight, scale)


def linear_w8a8_dynamic(x, qweight, scale, bias=None, act_group_size=None) -> None:
    """As linear_int8_weight_only; act_group_size None or a multiple of 64 dividing K."""
    linear_int8_weight_only(x, qweight, scale, bias, op="linear_w8a8_dynamic")
    act_group("linear_w8a8_dynamic", act_group_size, qweight.shape[1])


def act_group(op, group_size, K) -> None:
    """Activation groups of the W8A8 kernels: None (per token) or a multiple of 64 dividing K."""
    if group_size is None:
        return
    ok = isinstance(group_size, int) and group_size > 0 and group_size % 64 == 0
    if not ok:
        _fail(op, "act_group_size", "None or a positive multiple of 64", group_size)
    if K % group_size:
        _fail(op, "act_group_size", f"a divisor of K = {K} (or None for per-token scales)", group_size)


def linear_int4(x, packed, scale, zero_point, group_size, bias=None) -> None:
    """packed uint8 [N, K // 2], scale and zero_point bf16 [N, K // group_size]."""
    op = "linear_int4"
    N, half = _matrix(op, "packed", packed, _UINT8, "[N, K // 2]")
    K = 2 * half
    _group_size(op, "group_size", group_size, K, _INT4_GROUPS, group_size in GROUP_SIZES)
    _tensor(op, "scale", scale, _BF16, (N, K // group_size))
    _tensor(op, "zero_point", zero_point, _BF16, (N, K // group_size))
    _x_bias_devices(op, x, K, bias, N, _PACKED, packed, scale, zero_point)


def linear_lowbit(x, packed, scale, zero_point, group_size, bits, bias=None) -> None:
    """packed uint8 [N, ceil(K * bits / 8)], scale and zero_point bf16 [N, K // group_size]."""
    op = "linear_lowbit"
    if not 2 <= bits <= 7:
        _fail(op, "bits", "2..7", bits)
    N, row_bytes = _matrix(op, "packed", packed, _UINT8, "[N, ceil(K * bits / 8)]")
    if group_size <= 0 or group_size % 32:
        _fail(op, "group_size", "a positive multiple of 32", group_size)
    if scale.dim() != 2:
        _fail(op, "scale", "a bfloat16 matrix [N, K // group_size]", f"shape {list(scale.shape)}")
    G = scale.shape[1]
    K = G * group_size
    _tensor(op, "scale", scale, _BF16, (N, G))
    _tensor(op, "zero_point", zero_point, _BF16, (N, G))
    if row_bytes != (K * bits + 7) // 8:
        _fail(op, "packed.shape", str([N, (K * bits + 7) // 8]), list(packed.shape))
    _x_bias_devices(op, x, K, bias, N, _PACKED, packed, scale, zero_point)


def linear_nf4(x, codes, s8, s2, offset, block_size, bias=None) -> None:
    """codes uint8 [N, K // 2]; s8 int8 and s2 fp32 with P and P // 256 elements, P = the number
    of blocks N * K // block_size rounded up to 256; offset fp32 [1]."""
    op = "linear_nf4"
    N, half = _matrix(op, "codes", codes, _UINT8, "[N, K // 2]")
    K = 2 * half
    ok = block_size > 0 and block_size % 32 == 0
    _group_size(op, "block_size", block_size, K, "a positive multiple of 32", ok)
    P = -(-N * (K // block_size) // 256) * 256
    for name, t, dtype, numel in (("s8", s8, _INT8, P), ("s2", s2, _FP32, P // 256), ("offset", offset, _FP32, 1)):
        if t.numel() != numel:
            _fail(op, f"{name}.numel()", f"{numel} for {N} x {K} weights in blocks of {block_size}",
                  f"{t.numel()} (shape {list(t.shape)})")
        _tensor(op, name, t, dtype)
    _x_bias_devices(op, x, K, bias, N, ("codes", "s8", "s2", "offset"), codes, s8, s2, offset)
