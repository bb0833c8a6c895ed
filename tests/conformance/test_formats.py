"""Every named format: quantize -> stored tensors -> QTensor round-trips bit-exactly, validates,
and validation rejects a stored tensor that contradicts the format."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

from lowbit.formats import NAMED_FORMATS
from lowbit.qtensor import QTensor


def _fmt_for(name: str, cols: int):
    fmt = NAMED_FORMATS[name]
    if fmt.granularity == "group":
        fmt = fmt.replace(group_size=32)
    return fmt


@pytest.mark.parametrize("name", sorted(NAMED_FORMATS))
@settings(max_examples=8, deadline=None)
@given(rows=st.integers(1, 9), groups=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_round_trip_is_bit_exact(name, rows, groups, seed):
    cols = 32 * groups
    fmt = _fmt_for(name, cols)
    x = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))
    q = QTensor.from_float(x, fmt)
    q.validate()
    back = QTensor.from_tensors({k: v.clone() for k, v in q.tensors().items()}, q.layout())
    back.validate()
    assert torch.equal(back.dequantize(), q.dequantize())
    assert all(torch.equal(a, b) for a, b in zip(q.tensors().values(), back.tensors().values()))


@pytest.mark.parametrize("name", sorted(NAMED_FORMATS))
def test_validate_rejects_contradicting_tensors(name):
    q = QTensor.from_float(torch.randn(4, 64), _fmt_for(name, 64))
    tensors, desc = q.tensors(), q.layout()
    bad = dict(tensors, data=tensors["data"][:, :-1].clone())  # a column short
    with pytest.raises(ValueError, match="data: a .* stores"):
        QTensor.from_tensors(bad, desc).validate()
    key = "scale.scale" if "scale.scale" in tensors else "scale"
    nan = tensors[key].clone()
    nan.view(-1)[0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        QTensor.from_tensors(dict(tensors, **{key: nan}), desc).validate()
    other = torch.float32 if tensors[key].dtype != torch.float32 else torch.bfloat16
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        QTensor.from_tensors(dict(tensors, **{key: tensors[key].to(other)}), desc).validate()
