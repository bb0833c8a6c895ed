"""NF4 kernels: the look-up of QLoRA's 16 NormalFloat values fused with the dot product.

A separate small extension (``linear_nf4.cpp`` + ``bindings_nf4.cpp``, built like
``lowbit.kernels.build`` with ``cpu/common.h``) until it joins ``lowbit/kernels/cpu``.

Layout (what :class:`~lowbit.qtensor.QTensor` stores for NF4 with double quantization):

- ``codes`` uint8 [N, K // 2]: byte j of a row = element 2j (low nibble) | 2j + 1 (high nibble);
- ``s8`` int8 [P] (P >= N * K // block_size, padded to 256): block absmax minus ``offset``,
  quantized per 256 with ``s2`` fp32 [P // 256];  absmax[b] = s8[b] * s2[b // 256] + offset;
- ``w[n, k] = NF4[codes[n, k]] * absmax[n * K // block_size + k // block_size]``.

Kernels: ``nf4_lut_fp32`` (M < DENSE_FROM_M: vpermps table look-up + fp32 FMA, the weight never
written out, the fp32 scales recovered per block on the fly so nothing extra stays resident) and
``nf4_dense_fp32`` (M >= DENSE_FROM_M: dequantize to fp32 once, then one GEMM).
"""
from __future__ import annotations

import functools
from pathlib import Path

import torch
import torch.nn.functional as F

from lowbit.formats import NF4_CODEBOOK
from lowbit.kernels import cpu as _cpu
from lowbit.kernels.build import compile_extension

NAME = "lowbit_nf4_kernels"
SOURCE_DIR = Path(__file__).parent
COMMON_DIR = Path(__file__).parent.parent / "cpu"
DENSE_FROM_M = 16  # rows of x from which one dense GEMM on a dequantized weight wins


def load(verbose: bool = False):
    """Compile (if not cached) and import the NF4 extension; raises on build failure."""
    return compile_extension(NAME, SOURCE_DIR, include_dirs=(COMMON_DIR,), verbose=verbose)


@functools.cache
def extension_status() -> tuple[object | None, str]:
    """(extension module or None, why). Builds on first use; never raises."""
    missing = _cpu.missing_cpu_flags()
    if missing:
        return None, f"CPU lacks {', '.join(missing)}"
    try:
        module = load()
    except Exception as error:  # a failed build falls back to the reference kernel
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return None, f"NF4 C++ extension not built: {type(error).__name__}: {first}"
    return module, "NF4 C++ extension built (AVX-512)"


# --- the op ---------------------------------------------------------------------------------
def kernel_for(x: torch.Tensor, block_size: int = 64) -> str:
    """Name of the kernel ``linear_nf4`` runs for ``x``."""
    K = x.shape[-1]
    if (x.device.type != "cpu" or x.dtype not in (torch.float32, torch.bfloat16)
            or K % 32 or block_size % 32 or extension_status()[0] is None):
        return "reference.linear_nf4"
    M = x.numel() // max(K, 1)
    return "cpu.nf4_lut_fp32" if M < DENSE_FROM_M else "cpu.nf4_dense_fp32"


def dequantize_nf4(codes, s8, s2, offset, block_size) -> torch.Tensor:
    """fp32 [N, K] weight from the NF4 + double-quant layout (the specification)."""
    N, K = codes.shape[0], codes.shape[1] * 2
    q = torch.stack((codes & 15, codes >> 4), dim=-1).reshape(N, K).long()  # (N, K)
    G = K // block_size
    s = s8.reshape(-1, 256).float() * s2.reshape(-1, 1).float()  # (P / 256, 256)
    absmax = s.reshape(-1)[: N * G] + float(offset)                # (N * G,)
    table = torch.tensor(NF4_CODEBOOK, dtype=torch.float32, device=codes.device)
    w = table[q].reshape(N, G, block_size) * absmax.reshape(N, G, 1)  # (N, G, bs)
    return w.reshape(N, K)


def reference_linear_nf4(x, codes, s8, s2, offset, block_size, bias=None):
    """y = x @ dequantize_nf4(...).T + bias, in fp32, returned in x's dtype."""
    w = dequantize_nf4(codes, s8, s2, offset, block_size)
    y = F.linear(x.float(), w, None if bias is None else bias.float())
    return y.to(x.dtype)


def linear_nf4(x, codes, s8, s2, offset, block_size, bias=None):
    """NF4 Linear on ``x [..., K]`` with the kernel :func:`kernel_for` names."""
    name = kernel_for(x, block_size)
    if name == "reference.linear_nf4":
        return reference_linear_nf4(x, codes, s8, s2, offset, block_size, bias)
    module = extension_status()[0]
    x2 = x.reshape(-1, x.shape[-1]).contiguous()  # (M, K)
    b32 = None if bias is None else bias.float().contiguous()
    s8, s2 = s8.reshape(-1).contiguous(), s2.reshape(-1).contiguous()
    if name == "cpu.nf4_lut_fp32":
        y = module.nf4_linear(x2, codes.contiguous(), s8, s2, float(offset), block_size, b32)
    else:
        w = module.nf4_dequant(codes.contiguous(), s8, s2, float(offset), block_size)
        y = F.linear(x2, w.to(x2.dtype), None if b32 is None else b32.to(x2.dtype))
    return y.reshape(*x.shape[:-1], y.shape[-1])
