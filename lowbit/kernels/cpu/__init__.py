"""lowbit's CPU kernels: C++ (AVX-512 VNNI/BF16/VBMI, AMX-INT8) in this folder, one extension.

Each kernel is a function of the extension named as ``kernel_for`` names it without the
``cpu.`` prefix (``cpu.int4_gemv`` is ``extension_status()[0].int4_gemv``); it takes its op's
arguments (x as a contiguous [M, K] fp32 or bf16 tensor, the weight layouts of
``lowbit.kernels.reference``) and returns [M, N] in x's dtype. Kernels:

- ``int8_gemv`` (small M): int8 -> fp32 per 16 weights, fp32 FMA (x not rounded);
  ``int8_dense_bf16`` (large M): rows dequantized to bf16 in ~8 MiB chunks, a bf16 GEMM each.
- ``int4_gemv``: nibbles -> bf16 (0x4300 | q), AVX512-BF16 dot with bf16 x; ``int4_dense_bf16``.
- ``lowbit_gemv`` (2..7 bits): fields OR-ed into bf16 lanes (AVX512-VBMI vpermb), BF16 dot; 3 and
  2 bits with power-of-two groups unpack a whole block per load; ``lowbit_dense_bf16``.
- ``w8a8_vnni``: fused per-token (or token-group) int8 quantization, AVX512-VNNI u8 x s8 -> int32;
  ``w8a8_amx``: the same on AMX-INT8 tiles (weight rows as tile A, x_q as tile B).
- ``nf4_gemv``: vpermps look-up of NF4 * block scale fused with fp32 FMA, the block scales
  recovered from their double quantization on the fly; ``nf4_dense_fp32``: fp32 dequant, one GEMM.
"""
from __future__ import annotations

import functools
from pathlib import Path

REQUIRED_CPU_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16")


def missing_cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo"), flags=REQUIRED_CPU_FLAGS) -> list[str]:
    """The ISA extensions in ``flags`` (default: those every kernel here needs) this CPU lacks."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return ["(cannot read /proc/cpuinfo)"]
    present = next((line.split(":", 1)[1].split() for line in text.splitlines()
                    if line.startswith("flags")), [])
    return [flag for flag in flags if flag not in present]


def load_or_reason(missing: list[str], loader: str, what: str, built: str) -> tuple[object | None, str]:
    """(module or None, why) for the extension ``lowbit.kernels.build.<loader>()`` builds or
    loads, unless this CPU lacks ``missing``; never raises (the reference kernels take over)."""
    if missing:
        return None, f"CPU lacks {', '.join(missing)}"
    try:
        from lowbit.kernels import build

        module = getattr(build, loader)()
    except Exception as error:  # a failed build falls back to the reference kernels
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return None, f"{what} not built: {type(error).__name__}: {first_line}"
    return module, built


@functools.cache
def extension_status() -> tuple[object | None, str]:
    """(extension module or None, why). Builds on first use; never raises."""
    return load_or_reason(missing_cpu_flags(), "load", "C++ extension",
                          "C++ extension built (AVX-512 VNNI + BF16)")


@functools.cache
def vbmi_status() -> tuple[bool, str]:
    """(usable, why) for the 2..7-bit kernels, which unpack with AVX512-VBMI's vpermb."""
    module, why = extension_status()
    if module is None:
        return False, why
    missing = missing_cpu_flags(flags=("avx512vbmi",))
    return (False, f"CPU lacks {missing[0]}") if missing else (True, "AVX512-VBMI available")


@functools.cache
def amx_status() -> tuple[bool, str]:
    """(usable, why) for the AMX-INT8 kernel: CPU flags, then Linux's grant of the tile state."""
    module, why = extension_status()
    if module is None:
        return False, why
    missing = missing_cpu_flags(flags=("amx_tile", "amx_int8"))
    if missing:
        return False, f"CPU lacks {', '.join(missing)}"
    if not module.amx_available():
        return False, "Linux refused the AMX tile state (arch_prctl ARCH_REQ_XCOMP_PERM)"
    return True, "AMX-INT8 available"


def quantize_activations(x, group_size=None):
    """The W8A8 kernel's own activation quantization: (x_q int8 [M, K], x_scale fp32 [M], or
    [M, K // group_size] with token groups)."""
    module, why = extension_status()
    if module is None:
        raise RuntimeError(f"lowbit CPU kernels unavailable: {why}")
    x_q, x_scale = module.quantize_activations(x, group_size or 0)
    return x_q, x_scale
