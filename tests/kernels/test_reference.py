"""The pure-PyTorch references against hand-written dequantization: the specification itself."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from kernel_cases import inputs, int4_weight, int8_weight, lowbit_weight

from lowbit.algorithms.nf4 import quantize_nf4
from lowbit.formats import NF4_CODEBOOK
from lowbit.kernels import reference
from lowbit.primitives import unpack


def test_int4_pack_roundtrip_and_nibble_order():
    q = torch.tensor([[1, 2, 15, 0]], dtype=torch.uint8)
    packed = reference.pack_int4(q)
    assert packed.tolist() == [[1 | 2 << 4, 15]]
    assert torch.equal(unpack(packed, 4, 4), q)


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
    torch.testing.assert_close(reference.linear_int4(x, packed, scale, zero_point, gs, bias), F.linear(x, w, bias))


def test_int8_and_w8a8_reference_match_hand_math():
    q, scale = int8_weight(6, 48)
    x, bias = inputs(4, 48, 6, torch.float32, True)
    w = q.float() * scale[:, None]
    torch.testing.assert_close(reference.linear_int8_weight_only(x, q, scale, bias), F.linear(x, w, bias))
    amax = x.abs().amax(1, keepdim=True)
    x_q = torch.round(x * (127 / amax)).clamp(-127, 127)
    y = (x_q @ q.float().T) * (amax / 127) * scale + bias
    torch.testing.assert_close(reference.linear_w8a8_dynamic(x, q, scale, bias), y, rtol=1e-4, atol=1e-4)


def test_w8a8_reference_zero_token_and_one_group_equals_per_token():
    q, scale = int8_weight(4, 128)
    assert torch.equal(reference.linear_w8a8_dynamic(torch.zeros(2, 128), q, scale, torch.ones(4)), torch.ones(2, 4))
    x, bias = inputs(4, 128, 4, torch.float32, with_bias=True)
    torch.testing.assert_close(reference.linear_w8a8_dynamic(x, q, scale, bias, act_group_size=128),
                               reference.linear_w8a8_dynamic(x, q, scale, bias), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("bits", [2, 3, 5, 6, 7])
def test_lowbit_reference_matches_hand_dequantization(bits):
    packed, scale, zero_point, q = lowbit_weight(6, 128, 32, bits)
    assert torch.equal(unpack(packed, bits, 128), q)
    w = (q.float().reshape(6, 4, 32) - zero_point.float()[..., None]) * scale.float()[..., None]
    torch.testing.assert_close(reference.dequantize_lowbit(packed, scale, zero_point, 32, bits), w.reshape(6, 128))


def test_nf4_reference_is_codebook_times_double_quantized_absmax():
    torch.manual_seed(0)
    q = quantize_nf4(torch.randn(3, 128), 64)
    codes, s8, s2, offset = q.data, q.scale.data, q.scale.scale, q.offset
    w = torch.empty(3, 128)
    for n in range(3):
        for k in range(128):
            b = n * 2 + k // 64
            absmax = float(s8.reshape(-1)[b]) * float(s2.reshape(-1)[b // 256]) + float(offset)
            byte = int(codes[n, k // 2])
            w[n, k] = NF4_CODEBOOK[(byte >> 4) if k % 2 else (byte & 15)] * absmax
    torch.testing.assert_close(reference.dequantize_nf4(codes, s8, s2, offset, 64), w)
    assert torch.equal(reference.dequantize_nf4(codes, s8, s2, offset, 64), q.dequantize())
