"""Shared by the kernel tests: random weights in each op's layout, errors, a stand-in extension.

Tolerances (relative Frobenius error ||y - ref|| / ||ref||):
- exact-math kernels (int8 weight-only fp32 FMA, W8A8 integer dot, NF4 fp32 look-up) with fp32
  x: 1e-5;
- kernels that round x to bf16 (int4 / 2..7-bit bf16-dot) or run a bf16 GEMM (dense large-M
  paths), or any kernel with bf16 output: 1e-2, i.e. bf16's 2**-8 rounding ~ 4e-3 with margin.
  Their error is taken relative to ||(|x| @ |w|^T)|| (``bound_err``): bf16 rounding of x scales
  with it, not with ||y||, which can cancel to near zero for a small N.
"""
from __future__ import annotations

import types

import torch

from lowbit.algorithms.nf4 import quantize_nf4
from lowbit.kernels import dispatch, reference
from lowbit.primitives import pack

OPS = ("linear_int8_weight_only", "linear_int4", "linear_lowbit", "linear_w8a8_dynamic", "linear_nf4")
GROUPS = {"linear_int4": (32, 64, 128, 256), "linear_lowbit": (32, 64, 96, 128, 256), "linear_nf4": (32, 64, 128, 256)}


def rel_err(y, ref) -> float:
    return ((y.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-30)).item()


def bound_err(y, ref, x, w) -> float:
    bound = x.float().abs().reshape(-1, w.shape[1]) @ w.float().abs().T
    return ((y.float() - ref.float()).norm() / bound.norm().clamp_min(1e-30)).item()


def int8_weight(N, K, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(-127, 128, (N, K), dtype=torch.int8, generator=g)
    return q, torch.rand(N, generator=g) * 0.01 + 1e-4


def int4_weight(N, K, group_size, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (N, K), dtype=torch.uint8, generator=g)
    scale = (torch.rand(N, K // group_size, generator=g) * 0.01 + 1e-4).bfloat16()
    zero_point = torch.randint(0, 16, (N, K // group_size), generator=g).bfloat16()
    return reference.pack_int4(q), scale, zero_point


def lowbit_weight(N, K, group_size, bits, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 2 ** bits, (N, K), dtype=torch.uint8, generator=g)
    scale = (torch.rand(N, K // group_size, generator=g) * 0.01 + 1e-4).bfloat16()
    zero_point = torch.randint(0, 2 ** bits, (N, K // group_size), generator=g).bfloat16()
    return pack(q, bits), scale, zero_point, q


def nf4_weight(N, K, block_size, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = quantize_nf4(torch.randn(N, K, generator=g) * 0.02, block_size)
    return q.data, q.scale.data, q.scale.scale, q.offset


def weight_args(op, N, K, group=64, bits=3, seed=0) -> tuple:
    """The op's arguments between x and bias, random, for an N x K weight."""
    if op in ("linear_int8_weight_only", "linear_w8a8_dynamic"):
        return int8_weight(N, K, seed)
    if op == "linear_int4":
        return (*int4_weight(N, K, group, seed), group)
    if op == "linear_lowbit":
        return (*lowbit_weight(N, K, group, bits, seed)[:3], group, bits)
    return (*nf4_weight(N, K, group, seed), group)


def dequantize(op, args) -> torch.Tensor:
    """fp32 [N, K] weight of ``weight_args``' output."""
    from lowbit.kernels.ops import SPECS
    spec = next(s for s in SPECS if s.name == op)
    return spec.dequantize(*args[: spec.weights])


def inputs(M, K, N, dtype, with_bias, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, K, generator=g).to(dtype)
    return x, (torch.randn(N, generator=g) if with_bias else None)


# The C++ functions each kernel name stands for, as the reference computes them: lets the tests
# run the CPU registration's whole path (checks, kernel_for, the call) on any machine.
STAND_IN = {f: op for op, pair in dispatch.CPU_KERNELS.items() for f in (p.removeprefix("cpu.") for p in pair)}


def stand_in_extension(calls: list) -> types.SimpleNamespace:
    """A module like the built extension whose kernels record their name in ``calls``, check the
    contract the C++ relies on (x a contiguous [M, K]; every argument given), and return the
    reference's output (tensors that do not require grad, as C++ outputs do not)."""
    def make(function, op):
        arity = {"linear_int8_weight_only": 3, "linear_w8a8_dynamic": 4, "linear_int4": 5}.get(op, 6)

        def run(x, *args):
            assert x.dim() == 2 and x.is_contiguous() and len(args) == arity, (function, x.shape, len(args))
            calls.append(f"cpu.{function}")
            with torch.no_grad():
                return getattr(reference, op)(x, *args)
        return run
    return types.SimpleNamespace(**{f: make(f, op) for f, op in STAND_IN.items()})
