"""lowbit's CPU kernels: C++ (AVX-512 VNNI/BF16, AMX-INT8) in this folder, and their Python entry points.

Each function takes x as a contiguous 2-D [M, K] fp32 or bf16 tensor, the canonical weight
layouts of ``lowbit.kernels.reference``, and returns [M, N] in x's dtype.
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


@functools.cache
def extension_status() -> tuple[object | None, str]:
    """(extension module or None, why). Builds on first use; never raises."""
    missing = missing_cpu_flags()
    if missing:
        return None, f"CPU lacks {', '.join(missing)}"
    try:
        from lowbit.kernels import build

        module = build.load()
    except Exception as error:  # a failed build falls back to the reference kernels
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return None, f"C++ extension not built: {type(error).__name__}: {first_line}"
    return module, "C++ extension built (AVX-512 VNNI + BF16)"


def _ext():
    module, why = extension_status()
    if module is None:
        raise RuntimeError(f"lowbit CPU kernels unavailable: {why}")
    return module


def _bias32(bias):
    return None if bias is None else bias.float().contiguous()


def int8_gemv(x, qweight, scale, bias=None):
    """int8 weight-only, small M: int8 -> fp32 per 16 weights, fp32 FMA (x not rounded)."""
    return _ext().int8_linear(x, qweight, scale, _bias32(bias))


def int8_dense(x, qweight, scale, bias=None):
    """int8 weight-only, large M: rows dequantized to bf16 in ~8 MiB chunks, a bf16 GEMM each."""
    return _ext().int8_dense_linear(x, qweight, scale, _bias32(bias))


def int4_gemv(x, packed, scale, zero_point, group_size, bias=None):
    """int4 group-wise, small M: nibbles -> bf16 (0x4300 | q), AVX512-BF16 dot with bf16 x."""
    return _ext().int4_linear(x, packed, scale, zero_point, group_size, _bias32(bias))


def int4_dense(x, packed, scale, zero_point, group_size, bias=None):
    """int4 group-wise, large M: rows dequantized to bf16 in ~8 MiB chunks, a bf16 GEMM each."""
    return _ext().int4_dense_linear(x, packed, scale, zero_point, group_size, _bias32(bias))


def lowbit_gemv(x, packed, scale, zero_point, group_size, bits, bias=None):
    """2..7-bit group-wise, small M: fields OR-ed into bf16 lanes, AVX512-BF16 dot. 3 and 2 bits with
    power-of-two groups unpack a whole block per load (128 / 256 values, activations pre-permuted
    and pre-scaled once per call); other widths unpack 32 values by vpermb + vpsrlvw."""
    return _ext().lowbit_linear(x, packed, scale, zero_point, group_size, bits, _bias32(bias))


def lowbit_dense(x, packed, scale, zero_point, group_size, bits, bias=None):
    """2..7-bit group-wise, large M: rows dequantized to bf16 in ~8 MiB chunks, a bf16 GEMM each."""
    return _ext().lowbit_dense_linear(x, packed, scale, zero_point, group_size, bits, _bias32(bias))


@functools.cache
def vbmi_status() -> tuple[bool, str]:
    """(usable, why) for the 2..7-bit kernels, which unpack with AVX512-VBMI's vpermb."""
    module, why = extension_status()
    if module is None:
        return False, why
    missing = missing_cpu_flags(flags=("avx512vbmi",))
    return (False, f"CPU lacks {missing[0]}") if missing else (True, "AVX512-VBMI available")


def w8a8_vnni(x, qweight, scale, bias=None, act_group_size=None):
    """W8A8 dynamic: fused per-token (or token-group) int8 quantization, AVX512-VNNI u8 x s8 -> int32."""
    return _ext().w8a8_linear(x, qweight, scale, _bias32(bias), act_group_size or 0)


def w8a8_amx(x, qweight, scale, bias=None, act_group_size=None):
    """W8A8 dynamic on AMX-INT8: weight rows as tile A (canonical layout), x_q as tile B."""
    return _ext().w8a8_linear_amx(x, qweight, scale, _bias32(bias), act_group_size or 0)


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
    x_q, x_scale = _ext().quantize_activations(x, group_size or 0)
    return x_q, x_scale
