"""Property tests of the numerics: every int format and granularity, packing, codebooks."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit import primitives as P
from lowbit.formats import NAMED_FORMATS, NF4, QFormat, int_format

GRANULARITIES = [("tensor", None), ("channel", None), ("token", None), ("group", 8), ("group", 16)]


def int_formats():
    return st.builds(
        lambda bits, signed, sym, gran: QFormat("int", bits, signed=signed, symmetric=sym,
                                                granularity=gran[0], group_size=gran[1]),
        st.integers(2, 8), st.booleans(), st.booleans(), st.sampled_from(GRANULARITIES))


@settings(max_examples=150, deadline=None)
@given(fmt=int_formats(), rows=st.integers(1, 5), groups=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_round_trip_error_within_half_a_step_and_zero_exact(fmt, rows, groups, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 16 * groups, generator=g) * torch.rand(1, generator=g) * 10
    x[0, 0] = 0.0
    scale, zp = P.choose_qparams(x, fmt)
    q = P.quantize(x, scale, zp, fmt)
    assert int(q.min()) >= fmt.qmin and int(q.max()) <= fmt.qmax
    r = P.dequantize(q, scale, zp, fmt)
    step = scale.float().reshape(P.as_groups(x, fmt).shape[0], -1, 1)
    err = (P.as_groups(r, fmt) - P.as_groups(x, fmt)).abs()
    # inside the range (symmetric signed grids clip at -qmax*S only on the negative end)
    tol = 1e-6 * (1 + P.as_groups(x, fmt).abs())  # fp32 rounding of r / S
    assert bool((err <= step / 2 + tol).all()), float((err - step / 2).max())
    assert r[0, 0].item() == 0.0  # zero exactly representable


@pytest.mark.parametrize("num_bits", range(1, 9))
@settings(max_examples=25, deadline=None)
@given(shape=st.tuples(st.integers(1, 4), st.integers(1, 70)), seed=st.integers(0, 999))
def test_pack_unpack_identity(num_bits, shape, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 2**num_bits, shape, generator=g, dtype=torch.int64).to(torch.uint8)
    packed = P.pack(q, num_bits)
    assert packed.dtype == torch.uint8
    assert packed.shape[-1] == math.ceil(shape[-1] * num_bits / 8)
    assert torch.equal(P.unpack(packed, num_bits, shape[-1]), q)


def test_pack_4bit_layout_low_nibble_first():
    q = torch.tensor([[1, 2, 3, 4]], dtype=torch.uint8)
    assert P.pack(q, 4).tolist() == [[0x21, 0x43]]
    assert P.pack(torch.tensor([[1, 2, 3, 4, 5, 6, 7, 0]], dtype=torch.uint8), 3).tolist() == [
        [1 | 2 << 3 | (3 & 0x3) << 6, 3 >> 2 | 4 << 1 | 5 << 4 | (6 & 1) << 7, 6 >> 1 | 7 << 2]]


def test_affine_formula_matches_design_doc():
    fmt = int_format(8, signed=False, symmetric=False)
    x = torch.tensor([[-1.0, 0.0, 2.0, 3.0]])
    scale, zp = P.choose_qparams(x, fmt)
    assert scale.item() == pytest.approx(4.0 / 255)
    assert zp.item() == round(0 - (-1.0) / (4.0 / 255))
    q = P.quantize(x, scale, zp, fmt)
    assert q.tolist() == [[0, 64, 192, 255]]  # 2 / S + Z = 191.5 rounds half to even


def test_granularity_shapes_one_code_path():
    x = torch.randn(6, 32)
    for gran, gs, shape in [("tensor", None, (1, 1)), ("channel", None, (6, 1)),
                            ("token", None, (6, 1)), ("group", 8, (6, 4))]:
        fmt = QFormat("int", 4, granularity=gran, group_size=gs)
        scale, _ = P.choose_qparams(x, fmt)
        assert tuple(scale.shape) == shape
    act = torch.randn(2, 3, 32)  # tokens: every leading axis is a row
    assert P.choose_qparams(act, QFormat("int", 8, granularity="token"))[0].shape == (6, 1)


def test_group_that_does_not_divide_names_the_layer():
    with pytest.raises(ValueError, match=r"model.layers.0.q_proj: group_size=128 does not divide its input size 576.*group_size=64"):
        P.as_groups(torch.randn(4, 576), int_format(4, group_size=128), name="model.layers.0.q_proj")


@pytest.mark.parametrize("name", ["nf4", "fp4_e2m1", "binary", "ternary", "fp8_e4m3", "fp8_e5m2"])
def test_codebook_and_float_formats_pick_nearest_representable(name):
    fmt = NAMED_FORMATS[name].replace(granularity="tensor", group_size=None, double_quant=False)
    x = torch.randn(4, 64)
    scale, zp = P.choose_qparams(x, fmt)
    r = P.dequantize(P.quantize(x, scale, zp, fmt), scale, zp, fmt)
    if fmt.kind == "codebook":
        grid = torch.tensor(fmt.codebook) * scale.float().reshape(())
        nearest = grid[(x.reshape(-1, 1) - grid).abs().argmin(-1)].reshape(x.shape)
        assert torch.allclose(r, nearest)
    else:
        assert torch.equal(r, (x / scale).to(fmt.float_dtype).float() * scale)


def test_nf4_codebook_is_qlora_table():
    assert NF4.codebook[0] == -1.0 and NF4.codebook[7] == 0.0 and NF4.codebook[-1] == 1.0
    assert len(NF4.codebook) == 16


def test_fake_quantize_straight_through_gradient():
    fmt = int_format(4, signed=True, symmetric=True).replace(granularity="tensor")
    x = torch.linspace(-2, 2, 41, requires_grad=True)
    scale = torch.tensor([[0.1]])
    y = P.fake_quantize(x, scale, None, fmt)
    y.sum().backward()
    inside = (x.detach() >= -0.8) & (x.detach() <= 0.7)
    assert torch.equal(x.grad, inside.float())
    assert torch.allclose(y, P.dequantize(P.quantize(x.detach(), scale, None, fmt), scale, None, fmt))
