"""QTensor: packing is real, dequantize inverts it, bits per weight are exact."""
import pytest
import torch

from lowbit.formats import INT4, INT8, NAMED_FORMATS, NF4, bits_per_weight, int_format
from lowbit.qtensor import QTensor


@pytest.mark.parametrize("name", sorted(NAMED_FORMATS))
def test_every_named_format_round_trips_through_packed_storage(name):
    fmt = NAMED_FORMATS[name]
    w = torch.randn(64, 256)
    q = QTensor.from_float(w, fmt)
    # stored bytes: packed values take num_bits each
    assert q.data.numel() == 64 * 256 * fmt.num_bits // 8
    again = QTensor.from_int(q.int_values(), q.scales(), q.zero_point, fmt)
    assert torch.equal(again.int_values(), q.int_values())
    assert q.bits_per_weight == pytest.approx(bits_per_weight(fmt, w.numel(), 64), abs=2e-3)
    err = (q.dequantize() - w).pow(2).mean().sqrt() / w.pow(2).mean().sqrt()
    assert err < {1: 0.7, 2: 0.6, 3: 0.3, 4: 0.15}.get(fmt.num_bits, 0.1 if name == "fp8_e5m2" else 0.05)


def test_bits_per_weight_targets():
    w = torch.randn(4096, 11008)
    assert round(QTensor.from_float(w, INT4).bits_per_weight, 3) == 4.25
    assert round(QTensor.from_float(w, NF4).bits_per_weight, 3) == 4.127
    assert QTensor.from_float(w, INT8).bits_per_weight == pytest.approx(8 + 32 / 11008)


def test_double_quantized_scales_are_close_to_fp32_absmax():
    w = torch.randn(128, 512)
    dq = QTensor.from_float(w, NF4)
    plain = QTensor.from_float(w, NF4.replace(double_quant=False, scale_dtype="float32"))
    assert isinstance(dq.scale, QTensor) and dq.scale.data.dtype == torch.int8
    rel = (dq.scales() - plain.scale).abs() / plain.scale
    assert rel.max() < 0.02
    assert torch.equal(dq.int_values(), plain.int_values()) or (dq.int_values() != plain.int_values()).float().mean() < 0.01


def test_signed_low_bit_values_survive_packing():
    fmt = int_format(3, signed=True, symmetric=True, group_size=32)
    w = torch.randn(8, 64)
    q = QTensor.from_float(w, fmt)
    v = q.int_values()
    assert v.dtype == torch.int8 and v.min() >= -4 and v.max() <= 3


def test_rejects_integer_input_with_a_clear_message():
    with pytest.raises(TypeError, match="layer.x: expected a floating-point tensor"):
        QTensor.from_float(torch.ones(2, 2, dtype=torch.int32), INT8, name="layer.x")
