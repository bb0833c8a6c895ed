"""lowbit.kernels.cuda: every CUDA kernel against lowbit's pure-PyTorch reference ops.

Skipped without a CUDA device. Tolerances (relative Frobenius error ||y - ref|| / ||ref||):
- int8 (exact q in the mma, fp32 sum): fp16/bf16 x: output rounding only (2**-11 / 2**-8, 1e-2
  for bf16); fp32 x (split into bf16 hi + lo, ~2**-17): 1e-4;
- int4: the GEMV dequantizes to fp16 (fp16 x) or bf16 (bf16, fp32 x) in registers, the dense
  path to x's dtype: 1e-2 (bf16's 2**-8 ~ 4e-3 with margin); fp16 x: 3e-3. Weight rounding
  errors scale with |x| @ |w|.T, not with y (a single output can cancel to ~0), so the int4 error
  is relative to ||(|x| @ |w|.T)||.
"""
from __future__ import annotations

import pytest
import torch

from lowbit.kernels import reference

cuda = pytest.importorskip("lowbit.kernels.cuda")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

DTYPES = [torch.float16, torch.bfloat16, torch.float32]
BATCHES = [1, 3, 8, 17]  # 17 > GEMV_MAX_M: dense path only
SHAPES = [(576, 1537), (4096, 333), (1024, 17), (256, 1)]  # (K, N), odd N


def rel_err(y, ref):
    return ((y.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-30)).item()


def weight_rounding_err(y, ref, x, w):
    return ((y.float() - ref.float()).norm() / (x.float().abs() @ w.abs().T).norm()).item()


def int4_tol(dtype):
    return 3e-3 if dtype == torch.float16 else 1e-2  # bf16 and fp32 x dequantize to bf16


def int8_tol(dtype):
    return {torch.float16: 2e-3, torch.bfloat16: 1e-2, torch.float32: 1e-4}[dtype]


def int4_weight(N, K, group_size, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (N, K), dtype=torch.uint8, generator=g)
    scale = (torch.rand(N, K // group_size, generator=g) * 0.01 + 1e-4).bfloat16()
    zero_point = torch.randint(0, 16, (N, K // group_size), generator=g).bfloat16()
    return reference.pack_int4(q).cuda(), scale.cuda(), zero_point.cuda()


def int8_weight(N, K, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(-128, 128, (N, K), dtype=torch.int8, generator=g)
    return q.cuda(), (torch.rand(N, generator=g) * 0.01 + 1e-4).cuda()


def inputs(M, K, N, dtype, with_bias, seed):
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(M, K, generator=g).to(dtype).cuda()
    return x, (torch.randn(N, generator=g).cuda() if with_bias else None)


def kernels(prefix, M):
    gemv = [getattr(cuda, f"{prefix}_gemv")] if M <= cuda.GEMV_MAX_M else []
    return gemv + [getattr(cuda, f"{prefix}_dense")]


def test_extension_builds():
    module, why = cuda.extension_status()
    assert module is not None, why


@pytest.mark.parametrize("K,N", SHAPES)
@pytest.mark.parametrize("M", BATCHES)
@pytest.mark.parametrize("group_size", [32, 64, 128, 256])
@pytest.mark.parametrize("dtype", DTYPES)
def test_int4_kernels_match_reference(K, N, M, group_size, dtype):
    if K % group_size:
        pytest.skip("group_size must divide K")
    seed = K + N + M + group_size
    w = int4_weight(N, K, group_size, seed)
    x, bias = inputs(M, K, N, dtype, with_bias=M % 2 == 1, seed=seed)
    ref = reference.linear_int4(x, *w, group_size, bias)
    dense_w = reference.dequantize_int4(*w, group_size)
    for kernel in kernels("int4", M):
        y = kernel(x, *w, group_size, bias=bias)
        assert y.dtype == dtype and y.shape == (M, N), kernel.__name__
        assert weight_rounding_err(y, ref, x, dense_w) < int4_tol(dtype), kernel.__name__


@pytest.mark.parametrize("K,N", SHAPES + [(48, 7), (96, 5)])
@pytest.mark.parametrize("M", BATCHES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_int8_kernels_match_reference(K, N, M, dtype):
    seed = K + N + M
    q, scale = int8_weight(N, K, seed)
    x, bias = inputs(M, K, N, dtype, with_bias=M % 2 == 1, seed=seed)
    ref = reference.linear_int8_weight_only(x, q, scale, bias)
    for kernel in kernels("int8", M):
        y = kernel(x, q, scale, bias=bias)
        assert y.dtype == dtype and y.shape == (M, N), kernel.__name__
        assert rel_err(y, ref) < int8_tol(dtype), kernel.__name__


def test_int8_dense_takes_any_k():
    q, scale = int8_weight(9, 100, seed=3)
    x, bias = inputs(5, 100, 9, torch.float32, with_bias=True, seed=3)
    ref = reference.linear_int8_weight_only(x, q, scale, bias)
    assert rel_err(cuda.int8_dense(x, q, scale, bias), ref) < 1e-5


def test_gemv_copies_misaligned_inputs():
    packed, scale, zero_point = int4_weight(40, 256, 64, seed=5)
    x = torch.randn(2 * 256 + 1, device="cuda", dtype=torch.float16)[1:].view(2, 256)  # 2-byte offset
    y = cuda.int4_gemv(x, packed, scale, zero_point, 64)
    ref = reference.linear_int4(x, packed, scale, zero_point, 64)
    assert weight_rounding_err(y, ref, x, reference.dequantize_int4(packed, scale, zero_point, 64)) < 3e-3


def test_gemv_refuses_large_batches():
    packed, scale, zero_point = int4_weight(8, 64, 32, seed=0)
    x = torch.randn(cuda.GEMV_MAX_M + 1, 64, device="cuda")
    with pytest.raises(ValueError, match="int4_dense"):
        cuda.int4_gemv(x, packed, scale, zero_point, 32)


def test_gemv_is_graph_capturable():
    packed, scale, zero_point = int4_weight(64, 128, 32, seed=1)
    x = torch.randn(4, 128, device="cuda", dtype=torch.bfloat16)
    cuda.int4_gemv(x, packed, scale, zero_point, 32)  # build and warm up outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = cuda.int4_gemv(x, packed, scale, zero_point, 32)
    graph.replay()
    torch.testing.assert_close(y, cuda.int4_gemv(x, packed, scale, zero_point, 32))


@pytest.mark.parametrize("M", [1, 17])
def test_ops_on_cuda_run_the_kernel_kernel_for_names_and_differentiate(M):
    import lowbit.kernels as lk
    w = int4_weight(24, 256, 64, seed=7)
    x, bias = inputs(M, 256, 24, torch.bfloat16, with_bias=True, seed=7)
    expected = "cuda.int4_gemv" if M <= cuda.GEMV_MAX_M else "cuda.int4_dense"
    assert lk.kernel_for("linear_int4", x.device, x.dtype, x.shape) == expected
    ref = reference.linear_int4(x, *w, 64, bias)
    y = lk.linear_int4(x.requires_grad_(), *w, 64, bias)
    assert weight_rounding_err(y, ref, x, reference.dequantize_int4(*w, 64)) < int4_tol(x.dtype)
    y.float().sum().backward()
    expected_grad = (torch.ones(M, 24, device="cuda") @ reference.dequantize_int4(*w, 64)).to(x.dtype)
    torch.testing.assert_close(x.grad, expected_grad)
