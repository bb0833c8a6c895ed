"""Which kernel runs: ``kernel_for(op, device, dtype, shape)``, the one place it is decided.

Every op's CPU and CUDA registration (ops.py) runs the kernel this function names for its input,
and ``available()``, ``lowbit doctor`` and each layer's ``kernel(x)`` report the same answer.
Kernel names are ``<where>.<function>``: ``reference.<op>`` (reference.py, any device),
``cpu.<f>`` (the C++ extension's function ``f``, cpu/), ``cuda.<f>`` (cuda/__init__.py's ``f``).
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import torch

from lowbit.kernels import cpu, cuda, reference
from lowbit.kernels.checks import ACTIVATION_DTYPES

OP_NAMES = ("linear_int8_weight_only", "linear_int4", "linear_lowbit", "linear_w8a8_dynamic", "linear_nf4",
            "linear_dequant")

# Batch size (rows of x) from which a GEMM-style kernel replaces the streaming (GEMV-style) one,
# measured with benchmarks/kernel_speed.py: the weight-only ops dequantize row chunks to bf16 for a
# bf16 GEMM (NF4: the whole weight to fp32, one GEMM); W8A8 moves from AVX512-VNNI to AMX-INT8
# tiles (where the CPU has AMX).
DENSE_FROM_M = {"linear_int8_weight_only": 16, "linear_int4": 16, "linear_lowbit": 16,
                "linear_w8a8_dynamic": 4, "linear_nf4": 16}

_REFERENCE = {op: f"reference.{op}" for op in OP_NAMES}
_CPU = torch.device("cpu")

# Each op's CPU kernels: (small M, large M).
CPU_KERNELS = {
    "linear_int8_weight_only": ("cpu.int8_gemv", "cpu.int8_dense_bf16"),
    "linear_int4": ("cpu.int4_gemv", "cpu.int4_dense_bf16"),
    "linear_lowbit": ("cpu.lowbit_gemv", "cpu.lowbit_dense_bf16"),
    "linear_w8a8_dynamic": ("cpu.w8a8_vnni", "cpu.w8a8_amx"),
    "linear_nf4": ("cpu.nf4_gemv", "cpu.nf4_dense_fp32"),
}
# Each op's CUDA kernels: (M <= cuda.GEMV_MAX_M, larger M); other ops run the reference on CUDA.
CUDA_KERNELS = {
    "linear_int8_weight_only": ("cuda.int8_gemv", "cuda.int8_dense"),
    "linear_int4": ("cuda.int4_gemv", "cuda.int4_dense"),
}


def kernel_for(op: str, device: torch.device | str, dtype: torch.dtype, shape: Sequence[int]) -> str:
    """Name of the kernel ``op`` runs for an input x of ``shape`` [..., K] and ``dtype`` on
    ``device``: by device, what this machine built, then by batch size M (rows of x)."""
    if op not in _REFERENCE:
        raise ValueError(f"lowbit.kernels.kernel_for: op must be one of {OP_NAMES}, got {op!r}")
    if isinstance(device, str):
        device = torch.device(device)
    if op == "linear_dequant" or dtype not in ACTIVATION_DTYPES:
        return _REFERENCE[op]
    M = shape[0] if len(shape) == 2 else math.prod(shape[:-1])
    if device == _CPU or device.type == "cpu":
        if cpu.extension_status()[0] is None or (op == "linear_lowbit" and not cpu.vbmi_status()[0]):
            return _REFERENCE[op]
        small, large = CPU_KERNELS[op]
        dense = M >= DENSE_FROM_M[op] and (op != "linear_w8a8_dynamic" or cpu.amx_status()[0])
        return large if dense else small
    if device.type == "cuda" and op in CUDA_KERNELS and cuda.extension_status()[0] is not None:
        small, large = CUDA_KERNELS[op]
        gemv = M <= cuda.GEMV_MAX_M and (op == "linear_int4" or shape[-1] % 16 == 0)
        return small if gemv else large
    return _REFERENCE[op]


@functools.cache
def kernel(name: str) -> Callable:
    """The function behind a kernel name; it takes the op's arguments with x as [M, K]. (Cached:
    after patching ``cpu.extension_status`` in a test, call ``kernel.cache_clear()``.)"""
    where, _, function = name.partition(".")
    if where == "cpu":
        module, why = cpu.extension_status()
        if module is None:
            raise RuntimeError(f"lowbit.kernels: {name} is unavailable: {why}")
        return getattr(module, function)
    return getattr(cuda if where == "cuda" else reference, function)


def available(device: str | torch.device = "cpu") -> list[dict]:
    """For each op on ``device``: {"op", "kernel" (name, by batch size), "path" ("real" or
    "reference"), "reason" (why: extension built, or the build/ISA error)}."""
    kind = torch.device(device).type
    rows = []
    for op in OP_NAMES:
        small = kernel_for(op, device, torch.float32, (1, 64))
        large = kernel_for(op, device, torch.float32, (512, 64))
        switch = cuda.GEMV_MAX_M + 1 if kind == "cuda" else DENSE_FROM_M.get(op)
        kernel = small if small == large else f"{small} (M < {switch}), {large} (M >= {switch})"
        path = "reference" if small.startswith("reference.") else "real"
        rows.append({"op": op, "kernel": kernel, "path": path, "reason": _reason(op, kind)})
    return rows


def _reason(op: str, kind: str) -> str:
    if op == "linear_dequant":
        return "dense F.linear on an already dequantized weight"
    if kind == "cuda":
        why = cuda.extension_status()[1]
        return why if op in CUDA_KERNELS else f"no CUDA kernel for {op}: the reference runs"
    if kind != "cpu":
        return f"no {kind} kernels: the reference runs"
    why = cpu.extension_status()[1]
    if op == "linear_lowbit" and cpu.extension_status()[0] is not None:
        return cpu.vbmi_status()[1]
    if op == "linear_w8a8_dynamic" and cpu.extension_status()[0] is not None:
        return f"{why}; {cpu.amx_status()[1]}"
    return why
