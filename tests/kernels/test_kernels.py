"""lowbit.kernels: every real kernel against its pure-PyTorch reference, the reference against a
hand-dequantized F.linear, the dispatch table, and input errors.

Tolerances (relative Frobenius error ||y - ref|| / ||ref||):
- exact-math kernels (int8 weight-only fp32 FMA, W8A8 integer dot) with fp32 x: 1e-5;
- kernels that round x to bf16 (int4 bf16-dot) or run a bf16 GEMM (dense large-M paths), or any
  kernel with bf16 output: 1e-2, i.e. bf16's 2**-8 rounding ~ 4e-3 with margin; the int4 kernel
  is also checked at 1e-5 against the reference fed the bf16-rounded x.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import lowbit.kernels as lk
from lowbit.kernels import cpu, ops, reference
from lowbit.primitives import pack

BUILT = cpu.extension_status()[0] is not None
needs_ext = pytest.mark.skipif(not BUILT, reason=f"CPU kernels unavailable: {cpu.extension_status()[1]}")
DTYPES = [torch.float32, torch.bfloat16]
SHAPES = [(1, 576, 576), (3, 576, 1536), (8, 1536, 40), (17, 256, 33), (64, 512, 72), (5, 96, 7)]


def rel_err(y, ref):
    return ((y.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-30)).item()


def bound_err(y, ref, x, w):
    """Error relative to the size of the summed terms, ||(|x| @ |w|^T)||: bf16 rounding of x
    scales with it, not with ||y|| (which can cancel to near zero for a small N)."""
    bound = x.float().abs().reshape(-1, w.shape[1]) @ w.float().abs().T
    return ((y.float() - ref.float()).norm() / bound.norm().clamp_min(1e-30)).item()


def tol(dtype, exact):
    return 1e-5 if (exact and dtype == torch.float32) else 1e-2


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


def inputs(M, K, N, dtype, with_bias, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, K, generator=g).to(dtype)
    return x, (torch.randn(N, generator=g) if with_bias else None)


# --- reference against hand-written dequantization -------------------------------------------

def test_int4_pack_roundtrip_and_nibble_order():
    q = torch.tensor([[1, 2, 15, 0]], dtype=torch.uint8)
    packed = reference.pack_int4(q)
    assert packed.tolist() == [[1 | 2 << 4, 15]]
    assert torch.equal(reference.unpack_int4(packed), q)


def test_int4_reference_matches_hand_dequantized_linear():
    N, K, gs = 5, 64, 32
    packed, scale, zero_point = int4_weight(N, K, gs)
    w = torch.empty(N, K)
    for n in range(N):
        for k in range(K):
            byte = int(packed[n, k // 2])
            q = (byte >> 4) if k % 2 else (byte & 15)
            w[n, k] = float(scale[n, k // gs]) * (q - float(zero_point[n, k // gs]))
    x, bias = inputs(3, K, N, torch.float32, True)
    y = reference.linear_int4(x, packed, scale, zero_point, gs, bias)
    torch.testing.assert_close(y, F.linear(x, w, bias))


def test_int8_and_w8a8_reference_match_hand_math():
    q, scale = int8_weight(6, 48)
    x, bias = inputs(4, 48, 6, torch.float32, True)
    w = q.float() * scale[:, None]
    torch.testing.assert_close(reference.linear_int8_weight_only(x, q, scale, bias), F.linear(x, w, bias))
    amax = x.abs().amax(1, keepdim=True)
    x_q = torch.round(x * (127 / amax)).clamp(-127, 127)
    y = (x_q @ q.float().T) * (amax / 127) * scale + bias
    torch.testing.assert_close(reference.linear_w8a8_dynamic(x, q, scale, bias), y, rtol=1e-4, atol=1e-4)


def test_w8a8_reference_zero_token():
    q, scale = int8_weight(4, 32)
    y = reference.linear_w8a8_dynamic(torch.zeros(2, 32), q, scale, torch.ones(4))
    assert torch.equal(y, torch.ones(2, 4))


# --- real kernels against the reference --------------------------------------------------------

@needs_ext
@pytest.mark.parametrize("M,K,N", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("name", ["cpu.int8_gemv", "cpu.int8_dense_bf16"])
def test_int8_weight_only_kernels(name, M, K, N, dtype, with_bias):
    x, bias = inputs(M, K, N, dtype, with_bias)
    q, scale = int8_weight(N, K)
    y = ops.KERNELS[name](x, q, scale, bias=bias)
    assert y.dtype == dtype and y.shape == (M, N)
    exact = name == "cpu.int8_gemv"
    assert rel_err(y, reference.linear_int8_weight_only(x, q, scale, bias)) < tol(dtype, exact)


@needs_ext
@pytest.mark.parametrize("M,K,N", SHAPES)
@pytest.mark.parametrize("group_size", [32, 64, 128, 256])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["cpu.int4_gemv", "cpu.int4_dense_bf16"])
def test_int4_kernels(name, M, K, N, group_size, dtype):
    if K % group_size:
        pytest.skip("group_size must divide K")
    x, bias = inputs(M, K, N, dtype, with_bias=N % 2 == 1)
    packed, scale, zero_point = int4_weight(N, K, group_size)
    y = ops.KERNELS[name](x, packed, scale, zero_point, group_size, bias=bias)
    assert y.dtype == dtype and y.shape == (M, N)
    assert rel_err(y, reference.linear_int4(x, packed, scale, zero_point, group_size, bias)) < 1e-2
    if name == "cpu.int4_gemv" and dtype == torch.float32:  # exact up to x's bf16 rounding
        ref = reference.linear_int4(x.bfloat16().float(), packed, scale, zero_point, group_size, bias)
        assert rel_err(y, ref) < 1e-5


@needs_ext
@pytest.mark.parametrize("M,K,N", SHAPES + [(2, 100, 9), (33, 200, 50), (16, 64, 16)])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_w8a8_kernel(M, K, N, dtype, with_bias):
    x, bias = inputs(M, K, N, dtype, with_bias)
    q, scale = int8_weight(N, K)
    x_q, x_scale = cpu.quantize_activations(x)
    ref_q, ref_scale = reference.quantize_per_token(x)
    assert torch.equal(x_q, ref_q) and torch.equal(x_scale, ref_scale)
    ref = reference.linear_w8a8_dynamic(x, q, scale, bias)
    for name in ["cpu.w8a8_vnni"] + (["cpu.w8a8_amx"] if cpu.amx_status()[0] else []):
        y = ops.KERNELS[name](x, q, scale, bias=bias)
        assert y.dtype == dtype and y.shape == (M, N), name
        assert rel_err(y, ref) < tol(dtype, exact=True), name


@needs_ext
@pytest.mark.parametrize("M,K,N,group", [(1, 576, 576, 64), (3, 576, 1536, 64), (8, 1536, 40, 128),
                                         (17, 256, 33, 64), (64, 512, 72, 256), (33, 128, 50, 64),
                                         (16, 64, 16, 64), (5, 192, 7, 192)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_w8a8_kernel_token_groups(M, K, N, group, dtype):
    x, bias = inputs(M, K, N, dtype, with_bias=N % 2 == 1)
    x[:, 3] *= 50  # an outlier channel: only its own group's scale should grow
    q, scale = int8_weight(N, K)
    x_q, x_scale = cpu.quantize_activations(x, group)
    ref_q, ref_scale = reference.quantize_activations(x, group)
    assert x_scale.shape == (M, K // group)
    assert torch.equal(x_q, ref_q) and torch.equal(x_scale, ref_scale)
    ref = reference.linear_w8a8_dynamic(x, q, scale, bias, act_group_size=group)
    for name in ["cpu.w8a8_vnni"] + (["cpu.w8a8_amx"] if cpu.amx_status()[0] else []):
        y = ops.KERNELS[name](x, q, scale, bias=bias, act_group_size=group)
        assert y.dtype == dtype and y.shape == (M, N), name
        assert rel_err(y, ref) < tol(dtype, exact=True), name
    exact = F.linear(x.float(), reference.dequantize_int8(q, scale), None if bias is None else bias.float())
    per_token = reference.linear_w8a8_dynamic(x, q, scale, bias)
    if K > group:  # finer activation scales: closer to the unquantized activations
        assert rel_err(ref, exact) < rel_err(per_token, exact)


def test_w8a8_reference_groups_equal_per_token_when_one_group():
    x, bias = inputs(4, 128, 9, torch.float32, with_bias=True)
    q, scale = int8_weight(9, 128)
    torch.testing.assert_close(reference.linear_w8a8_dynamic(x, q, scale, bias, act_group_size=128),
                               reference.linear_w8a8_dynamic(x, q, scale, bias), rtol=1e-6, atol=1e-6)


@needs_ext
@settings(max_examples=20, deadline=None)
@given(M=st.integers(1, 20), K32=st.integers(1, 24), N=st.integers(1, 70),
       gs=st.sampled_from([32, 64, 128, 256]), bf16=st.booleans(), seed=st.integers(0, 2**16))
def test_public_ops_random_shapes(M, K32, N, gs, bf16, seed):
    K = K32 * 32
    dtype = torch.bfloat16 if bf16 else torch.float32
    x, bias = inputs(M, K, N, dtype, with_bias=seed % 2 == 0, seed=seed)
    q, scale = int8_weight(N, K, seed)
    exact = lk.kernel_for("linear_int8_weight_only", x) == "cpu.int8_gemv"  # not the bf16 GEMM
    assert rel_err(lk.linear_int8_weight_only(x, q, scale, bias),
                   reference.linear_int8_weight_only(x, q, scale, bias)) < tol(dtype, exact)
    assert rel_err(lk.linear_w8a8_dynamic(x, q, scale, bias),
                   reference.linear_w8a8_dynamic(x, q, scale, bias)) < tol(dtype, exact=True)
    if K % gs == 0:
        w4 = int4_weight(N, K, gs, seed)
        err = bound_err(lk.linear_int4(x, *w4, gs, bias), reference.linear_int4(x, *w4, gs, bias),
                        x, reference.dequantize_int4(*w4, gs))
        assert err < 1e-2


def test_public_ops_keep_leading_dims_and_accept_non_contiguous_x():
    q, scale = int8_weight(24, 64)
    x = torch.randn(2, 3, 128)[..., ::2]  # (2, 3, 64), non-contiguous
    y = lk.linear_int8_weight_only(x, q, scale)
    assert y.shape == (2, 3, 24)
    torch.testing.assert_close(y, reference.linear_int8_weight_only(x, q, scale), rtol=1e-4, atol=1e-4)
    w = torch.randn(24, 64)
    torch.testing.assert_close(lk.linear_dequant(x, w), F.linear(x, w))


# --- 2..7-bit weights ---------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [2, 3, 5, 6, 7])
def test_lowbit_reference_matches_hand_dequantization(bits):
    packed, scale, zero_point, q = lowbit_weight(6, 128, 32, bits)
    assert torch.equal(reference.unpack_bits(packed, bits, 128), q)
    w = (q.float().reshape(6, 4, 32) - zero_point.float()[..., None]) * scale.float()[..., None]
    torch.testing.assert_close(reference.dequantize_lowbit(packed, scale, zero_point, 32, bits), w.reshape(6, 128))


needs_vbmi = pytest.mark.skipif(not cpu.vbmi_status()[0], reason=f"2..7-bit kernels: {cpu.vbmi_status()[1]}")


@needs_ext
@needs_vbmi
@pytest.mark.parametrize("bits", [2, 3, 5, 6, 7])
@pytest.mark.parametrize("M,K,N,group", [(1, 576, 1536, 64), (3, 1536, 576, 64), (5, 256, 33, 32),
                                         (20, 128, 7, 128), (17, 512, 40, 256),
                                         # 3/2 bits: a group wider than a block; one not a power of two
                                         (2, 1024, 12, 512), (4, 384, 9, 96)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_lowbit_kernels(bits, M, K, N, group, dtype):
    packed, scale, zero_point, _ = lowbit_weight(N, K, group, bits)
    x, bias = inputs(M, K, N, dtype, with_bias=N % 2 == 1)
    ref = reference.linear_lowbit(x, packed, scale, zero_point, group, bits, bias)
    ref_bf16_x = reference.linear_lowbit(x.bfloat16().float(), packed, scale, zero_point, group, bits, bias)
    for name in ("cpu.lowbit_gemv", "cpu.lowbit_dense_bf16"):
        y = ops.KERNELS[name](x, packed, scale, zero_point, group, bits, bias=bias)
        assert y.dtype == dtype and y.shape == (M, N), name
        w = reference.dequantize_lowbit(packed, scale, zero_point, group, bits)
        assert bound_err(y, ref, x, w) < 1e-2, name
        if name == "cpu.lowbit_gemv" and dtype == torch.float32:  # exact up to x's bf16 rounding
            assert rel_err(y, ref_bf16_x) < 5e-5


@needs_ext
@needs_vbmi
def test_qlinear_runs_3_and_2_bit_weights_on_the_lowbit_kernel():
    from lowbit.formats import int_format
    from lowbit.nn import QLinear
    lin = torch.nn.Linear(128, 24)
    for bits in (3, 2):
        q = QLinear.from_float(lin, int_format(bits, signed=False, symmetric=False, group_size=64))
        x = torch.randn(2, 128)
        assert q.op == "linear_lowbit" and q.kernel(x) == "cpu.lowbit_gemv"
        ref = reference.linear_dequant(x, q.weight.dequantize(), lin.bias)
        assert rel_err(q(x), ref) < 1e-2


# --- which kernel runs ------------------------------------------------------------------------

def test_available_lists_every_op():
    rows = lk.available()
    assert [r["op"] for r in rows] == list(lk.OPS)
    for row in rows:
        assert row["path"] in ("real", "reference") and row["kernel"] and row["reason"]


@needs_ext
def test_available_reports_real_kernels_when_built():
    paths = {r["op"]: r["path"] for r in lk.available()}
    assert paths == {"linear_int8_weight_only": "real", "linear_int4": "real",
                     "linear_lowbit": "real" if cpu.vbmi_status()[0] else "reference",
                     "linear_w8a8_dynamic": "real", "linear_dequant": "reference"}


@needs_ext
def test_kernel_for_chooses_by_batch_size():
    small, large = torch.zeros(1, 64), torch.zeros(ops.DENSE_FROM_M["linear_int4"], 64)
    assert lk.kernel_for("linear_int4", small) == "cpu.int4_gemv"
    assert lk.kernel_for("linear_int4", large) == "cpu.int4_dense_bf16"
    assert lk.kernel_for("linear_int8_weight_only", small) == "cpu.int8_gemv"
    assert lk.kernel_for("linear_w8a8_dynamic", small) == "cpu.w8a8_vnni"
    assert lk.kernel_for("linear_w8a8_dynamic", large) == ("cpu.w8a8_amx" if cpu.amx_status()[0] else "cpu.w8a8_vnni")
    assert lk.kernel_for("linear_dequant", small) == "reference.linear_dequant"


def test_kernel_for_uses_reference_off_cpu():
    assert lk.kernel_for("linear_int4", torch.zeros(1, 64, device="meta")) == "reference.linear_int4"


def test_reference_fallback_when_extension_missing(monkeypatch):
    monkeypatch.setattr(cpu, "extension_status", lambda: (None, "C++ extension not built: test"))
    assert lk.kernel_for("linear_w8a8_dynamic", torch.zeros(1, 64)) == "reference.linear_w8a8_dynamic"
    assert all(r["path"] == "reference" and "not built" in r["reason"]
               for r in lk.available() if r["op"] != "linear_dequant")
    q, scale = int8_weight(8, 64)
    x = torch.randn(2, 64)
    torch.testing.assert_close(lk.linear_w8a8_dynamic(x, q, scale), reference.linear_w8a8_dynamic(x, q, scale))


# --- input errors -------------------------------------------------------------------------------

def test_missing_cpu_flags_reads_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor : 0\nflags : fpu avx512f avx512bw\n")
    assert cpu.missing_cpu_flags(info) == ["avx512vl", "avx512_vnni", "avx512_bf16"]


@pytest.mark.parametrize("call,match", [
    (lambda x, q, s, p, s4, z4: lk.linear_int4(x, p, s4, z4, 48), r"group_size must be one of"),
    (lambda x, q, s, p, s4, z4: lk.linear_int4(x[:, :64], p[:, :32], s4[:, :1], z4[:, :1], 128),
     r"group_size must be a divisor of K = 64, got 128"),
    (lambda x, q, s, p, s4, z4: lk.linear_int4(x, p, s4.float(), z4, 64), r"scale.dtype must be torch.bfloat16"),
    (lambda x, q, s, p, s4, z4: lk.linear_int4(x, p.to(torch.int8), s4, z4, 64), r"packed.dtype must be torch.uint8"),
    (lambda x, q, s, p, s4, z4: lk.linear_int4(x, p, s4[:, :1], z4, 64), r"scale.shape must be \[8, 2\], got \[8, 1\]"),
    (lambda x, q, s, p, s4, z4: lk.linear_int8_weight_only(x.double(), q, s), r"x.dtype must be torch.float32 or"),
    (lambda x, q, s, p, s4, z4: lk.linear_int8_weight_only(x[:, :100], q, s), r"x.shape must be \[..., 128\]"),
    (lambda x, q, s, p, s4, z4: lk.linear_w8a8_dynamic(x, q.float(), s), r"qweight.dtype must be torch.int8"),
    (lambda x, q, s, p, s4, z4: lk.linear_w8a8_dynamic(x, q, s.bfloat16()), r"scale.dtype must be torch.float32"),
    (lambda x, q, s, p, s4, z4: lk.linear_w8a8_dynamic(x, q, s, torch.zeros(3)), r"bias.shape must be \[8\]"),
    (lambda x, q, s, p, s4, z4: lk.linear_w8a8_dynamic(x, q, s, act_group_size=48), r"act_group_size must be None or a positive multiple of 64"),
    (lambda x, q, s, p, s4, z4: lk.linear_lowbit(x, p, s4, z4, 32, 8), r"bits must be 2..7, got 8"),
    (lambda x, q, s, p, s4, z4: lk.linear_lowbit(x, p, s4, z4, 32, 3), r"packed.shape must be \[8, 24\]"),
    (lambda x, q, s, p, s4, z4: lk.linear_int8_weight_only(x, q.to("meta"), s), r"qweight.device must be x's"),
])
def test_bad_inputs_raise_value_error(call, match):
    x = torch.randn(2, 128)
    q, s = int8_weight(8, 128)
    p, s4, z4 = int4_weight(8, 128, 64)
    with pytest.raises(ValueError, match=match):
        call(x, q, s, p, s4, z4)
