"""lowbit's kernel ops: each declared once, checked once, dispatched in one visible place.

``kernel_for(op, x)`` is the only place that decides which kernel runs; ``available()`` shows
its decisions for this machine. Kernels live in ``reference.py`` (pure PyTorch, any device,
the specification) and ``cpu/`` (C++: AVX-512 VNNI/BF16, AMX-INT8).
"""
from __future__ import annotations

import torch

from lowbit.kernels import checks, cpu, cuda, reference

OPS = ("linear_int8_weight_only", "linear_int4", "linear_lowbit", "linear_w8a8_dynamic", "linear_dequant")

# Batch size (rows of x) from which a GEMM-style kernel replaces the streaming (GEMV-style) one,
# measured with benchmarks/kernels.py: the weight-only ops dequantize row chunks to bf16 for a
# bf16 GEMM; W8A8 moves from AVX512-VNNI to AMX-INT8 tiles (where the CPU has AMX).
DENSE_FROM_M = {"linear_int8_weight_only": 16, "linear_int4": 16, "linear_lowbit": 16,
                "linear_w8a8_dynamic": 4}

KERNELS = {
    "reference.linear_int8_weight_only": reference.linear_int8_weight_only,
    "reference.linear_int4": reference.linear_int4,
    "reference.linear_lowbit": reference.linear_lowbit,
    "reference.linear_w8a8_dynamic": reference.linear_w8a8_dynamic,
    "reference.linear_dequant": reference.linear_dequant,
    "cpu.int8_gemv": cpu.int8_gemv,
    "cpu.int8_dense_bf16": cpu.int8_dense,
    "cpu.int4_gemv": cpu.int4_gemv,
    "cpu.int4_dense_bf16": cpu.int4_dense,
    "cpu.lowbit_gemv": cpu.lowbit_gemv,
    "cpu.lowbit_dense_bf16": cpu.lowbit_dense,
    "cpu.w8a8_vnni": cpu.w8a8_vnni,
    "cpu.w8a8_amx": cpu.w8a8_amx,
    "cuda.int8_gemv": cuda.int8_gemv,
    "cuda.int8_dense": cuda.int8_dense,
    "cuda.int4_gemv": cuda.int4_gemv,
    "cuda.int4_dense": cuda.int4_dense,
}


def kernel_for(op: str, x: torch.Tensor) -> str:
    """Name of the kernel that ``op`` runs for input ``x`` (by device, then by batch size)."""
    if op not in OPS:
        raise ValueError(f"lowbit.kernels.kernel_for: op must be one of {OPS}, got {op!r}")
    if op == "linear_dequant":
        return f"reference.{op}"
    M = x.numel() // max(x.shape[-1], 1)
    if x.device.type == "cuda":
        if op in ("linear_w8a8_dynamic", "linear_lowbit") or cuda.extension_status()[0] is None:
            return f"reference.{op}"
        if op == "linear_int4":
            return "cuda.int4_gemv" if M <= cuda.GEMV_MAX_M else "cuda.int4_dense"
        gemv = M <= cuda.GEMV_MAX_M and x.shape[-1] % 16 == 0
        return "cuda.int8_gemv" if gemv else "cuda.int8_dense"
    if x.device.type != "cpu" or cpu.extension_status()[0] is None:
        return f"reference.{op}"
    if op == "linear_int8_weight_only":
        return "cpu.int8_gemv" if M < DENSE_FROM_M[op] else "cpu.int8_dense_bf16"
    if op == "linear_int4":
        return "cpu.int4_gemv" if M < DENSE_FROM_M[op] else "cpu.int4_dense_bf16"
    if op == "linear_lowbit":
        if not cpu.vbmi_status()[0]:
            return f"reference.{op}"
        return "cpu.lowbit_gemv" if M < DENSE_FROM_M[op] else "cpu.lowbit_dense_bf16"
    return "cpu.w8a8_amx" if M >= DENSE_FROM_M[op] and cpu.amx_status()[0] else "cpu.w8a8_vnni"


def available(device: str = "cpu") -> list[dict]:
    """For each op on ``device``: {"op", "kernel" (name, by batch size), "path"
    ("real" or "reference"), "reason" (why: extension built, or the build/ISA error)}."""
    module, why = (cuda if str(device).startswith("cuda") else cpu).extension_status()
    rows = []
    for op in OPS:
        small = kernel_for(op, torch.empty(1, 16, device=device))
        large = kernel_for(op, torch.empty(512, 16, device=device))
        path = "reference" if small.startswith("reference.") else "real"
        reason = why if op != "linear_dequant" else "dense F.linear on an already dequantized weight"
        if op == "linear_w8a8_dynamic" and path == "real" and str(device) == "cpu":
            reason = f"{why}; {cpu.amx_status()[1]}"
        switch = cuda.GEMV_MAX_M + 1 if str(device).startswith("cuda") else DENSE_FROM_M.get(op)
        kernel = small if small == large else f"{small} (M < {switch}), {large} (M >= {switch})"
        rows.append({"op": op, "kernel": kernel, "path": path, "reason": reason})
    return rows


def _run(op: str, x: torch.Tensor, *weights, bias=None, **options) -> torch.Tensor:
    """Flatten x to [M, K], run the chosen kernel, restore the leading dims."""
    name = kernel_for(op, x)
    if x.dim() == 2 and x.is_contiguous():  # the common case; skips two reshapes (~3 us)
        return KERNELS[name](x, *weights, bias=bias, **options)
    x2 = x.reshape(-1, x.shape[-1]).contiguous()  # (M, K)
    y = KERNELS[name](x2, *weights, bias=bias, **options)  # (M, N)
    return y.reshape(*x.shape[:-1], y.shape[-1])


def linear_int8_weight_only(x, qweight, scale, bias=None):
    """y = x @ (scale[:, None] * qweight).T + bias; int8 [N, K] weight, fp32 [N] scale."""
    checks.int8_weight("linear_int8_weight_only", x, qweight, scale, bias)
    return _run("linear_int8_weight_only", x, qweight.contiguous(), scale.contiguous(), bias=bias)


def linear_int4(x, packed, scale, zero_point, group_size, bias=None):
    """y = x @ w.T + bias, w = scale * (q - zero_point) per group; see reference.py for layout."""
    checks.int4_weight("linear_int4", x, packed, scale, zero_point, group_size, bias)
    return _run("linear_int4", x, packed.contiguous(), scale.contiguous(), zero_point.contiguous(),
                group_size, bias=bias)


def linear_lowbit(x, packed, scale, zero_point, group_size, bits, bias=None):
    """y = x @ w.T + bias for 2..7-bit group-wise weights, w = scale * (q - zero_point), q packed
    as a little-endian bit string per row (lowbit.primitives.pack); see reference.linear_lowbit."""
    checks.lowbit_weight("linear_lowbit", x, packed, scale, zero_point, group_size, bits, bias)
    return _run("linear_lowbit", x, packed.contiguous(), scale.contiguous(), zero_point.contiguous(),
                group_size, bits, bias=bias)


def linear_w8a8_dynamic(x, qweight, scale, bias=None, act_group_size=None):
    """W8A8: x quantized per token, or per token and group of ``act_group_size`` inputs
    (symmetric int8, reference.quantize_activations), int32 dots, fp32 rescale."""
    checks.int8_weight("linear_w8a8_dynamic", x, qweight, scale, bias)
    checks.act_group("linear_w8a8_dynamic", act_group_size, qweight.shape[1])
    return _run("linear_w8a8_dynamic", x, qweight.contiguous(), scale.contiguous(), bias=bias,
                act_group_size=act_group_size)


def linear_dequant(x, weight, bias=None):
    """Linear with an already dequantized weight (formats with no fast kernel)."""
    return reference.linear_dequant(x, weight, bias)
