"""lowbit's CUDA kernels: CUDA C++ in this folder (tensor-core GEMV), and their Python entry points.

Each function takes x as a 2-D [M, K] fp16, bf16 or fp32 CUDA tensor and the canonical weight
layouts of ``lowbit.kernels.reference``, and returns [M, N] in x's dtype.

- ``*_gemv``: decode, M <= ``GEMV_MAX_M``. One CTA streams 16 weight rows with 16-byte loads,
  its warps splitting K; weights are dequantized in registers to fp16 (fp16 x) or bf16 (bf16 and
  fp32 x; fp32 x is split into bf16 hi + lo) and fed to ``mma.sync`` with x as the 8-wide
  operand, so all M <= 8 rows reuse each loaded weight; fp32 accumulation.
- ``*_dense``: prefill, M > ``GEMV_MAX_M``: dequantize to x's dtype once, then cuBLAS.

Built on first use with ``torch.utils.cpp_extension.load`` into
``lowbit._cache.cache_dir("kernels-cuda", ...)``; ``extension_status()`` never raises.
"""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import torch
import torch.nn.functional as F

NAME = "lowbit_cuda_kernels"
SOURCE_DIR = Path(__file__).parent
CUDA_FLAGS = ["-O3", "--use_fast_math"]
GEMV_MAX_M = 8  # rows of x the GEMV takes (the mma's N); more rows go to the dense path
# K-steps each warp loads before it computes (benchmarks/kernels_cuda.py --sweep on an H100)
UNROLL = {"int4": 4, "int8": 2}


def arch() -> str:
    """Build target of the current device, e.g. 'sm_90a' (Hopper's arch-specific target)."""
    major, minor = torch.cuda.get_device_capability()
    return f"sm_{major}{minor}{'a' if major >= 9 else ''}"


def sources() -> list[Path]:
    return sorted(SOURCE_DIR.glob("*.cu")) + sorted(SOURCE_DIR.glob("*.cpp"))


def build_directory(target: str) -> Path:
    from lowbit._cache import cache_dir

    digest = hashlib.sha256(" ".join(CUDA_FLAGS + [target]).encode())
    for path in sources() + sorted(SOURCE_DIR.glob("*.h")) + sorted(SOURCE_DIR.glob("*.cuh")):
        digest.update(path.name.encode() + path.read_bytes())
    return cache_dir("kernels-cuda", f"torch-{torch.__version__}-{target}-{digest.hexdigest()[:16]}")


def load(verbose: bool = False):
    """Compile (if not cached) and import the extension for the current device; raises on failure."""
    from torch.utils import cpp_extension

    target = arch()
    code = target.removeprefix("sm_")
    gencode = f"-gencode=arch=compute_{code},code=sm_{code}"
    return cpp_extension.load(name=NAME, sources=[str(p) for p in sources()],
                              extra_cflags=["-O3"], extra_cuda_cflags=CUDA_FLAGS + [gencode],
                              build_directory=str(build_directory(target)), verbose=verbose)


@functools.cache
def extension_status() -> tuple[object | None, str]:
    """(extension module or None, why). Builds on first use; never raises."""
    if torch.version.cuda is None:
        return None, f"torch {torch.__version__} is built without CUDA"
    if not torch.cuda.is_available():
        return None, "no CUDA device (torch.cuda.is_available() is False)"
    try:
        module = load()
    except Exception as error:  # a failed build falls back to the reference kernels
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return None, f"CUDA extension not built: {type(error).__name__}: {first_line}"
    name = torch.cuda.get_device_name()
    return module, f"CUDA extension built for {arch()} ({name}): mma.sync GEMV, M <= {GEMV_MAX_M}"


def _ext():
    module, why = extension_status()
    if module is None:
        raise RuntimeError(f"lowbit CUDA kernels unavailable: {why}")
    return module


def _aligned(t: torch.Tensor) -> torch.Tensor:
    """Contiguous and 16-byte aligned (the kernels' vector loads), copying only when needed."""
    t = t.contiguous()
    return t if t.data_ptr() % 16 == 0 else t.clone()


def _bias32(bias):
    return None if bias is None else bias.float().contiguous()


def _check_gemv_rows(name: str, x2d: torch.Tensor) -> None:
    if x2d.shape[0] > GEMV_MAX_M:
        raise ValueError(f"lowbit.kernels.cuda.{name}: x must have at most {GEMV_MAX_M} rows, got "
                         f"{x2d.shape[0]}; use {name.replace('gemv', 'dense')} for larger batches")


def _dense(x2d, w, bias):
    """Large-M path: one cuBLAS GEMM on a weight dequantized (to x's dtype) for this call."""
    return F.linear(x2d, w, None if bias is None else bias.to(x2d.dtype))


def int8_gemv(x2d, qweight, scale, bias=None):
    """int8 weight-only, M <= 8, K % 16 == 0: exact q in the mma, row scale on the fp32 sum."""
    _check_gemv_rows("int8_gemv", x2d)
    return _ext().int8_gemv(_aligned(x2d), _aligned(qweight), scale.contiguous(), _bias32(bias),
                            0, UNROLL["int8"])


def int8_dense(x2d, qweight, scale, bias=None):
    """int8 weight-only, any M: dequantize to x's dtype once, then cuBLAS."""
    return _dense(x2d, _ext().int8_dequant(_aligned(qweight), scale.contiguous(), x2d), bias)


def int4_gemv(x2d, packed, scale, zero_point, group_size, bias=None):
    """int4 group-wise, M <= 8: nibbles -> fp16/bf16 (magic-number trick), (q - z) * s, mma."""
    _check_gemv_rows("int4_gemv", x2d)
    return _ext().int4_gemv(_aligned(x2d), _aligned(packed), _aligned(scale), _aligned(zero_point),
                            group_size, _bias32(bias), 0, UNROLL["int4"])


def int4_dense(x2d, packed, scale, zero_point, group_size, bias=None):
    """int4 group-wise, any M: dequantize to x's dtype once, then cuBLAS."""
    w = _ext().int4_dequant(_aligned(packed), _aligned(scale), _aligned(zero_point), group_size, x2d)
    return _dense(x2d, w, bias)
