"""QLinear and QEmbedding against float modules holding the dequantized weight."""
import pytest
import torch
from torch import nn

from lowbit.formats import FP8_E4M3, INT3, INT4, INT8, NF4, ActivationQuant, int_format
from lowbit.nn import QEmbedding, QLinear

CASES = [  # (format, activation, op, relative tolerance)
    (INT8, None, "linear_int8_weight_only", 1e-2),
    (INT4.replace(group_size=64), None, "linear_int4", 1e-2),
    (INT4, None, "linear_int4", 1e-2),
    (INT8, ActivationQuant("dynamic", "token"), "linear_w8a8_dynamic", 3e-2),
    (INT3.replace(group_size=64), None, "linear_lowbit", 1e-2),
    (int_format(2, signed=False, symmetric=False, group_size=64), None, "linear_lowbit", 1e-2),
    (int_format(3, group_size=64), None, "linear_dequant", 1e-5),  # symmetric: no kernel
    (NF4, None, "linear_nf4", 1e-5),
    (FP8_E4M3, None, "linear_dequant", 1e-5),
]


@pytest.mark.parametrize("fmt,activation,op,tol", CASES, ids=lambda c: c.label() if hasattr(c, "label") else str(c))
@pytest.mark.parametrize("batch", [1, 7])
def test_qlinear_matches_float_linear_with_dequantized_weight(fmt, activation, op, tol, batch):
    torch.manual_seed(0)
    lin = nn.Linear(256, 96)
    q = QLinear.from_float(lin, fmt, activation=activation)
    assert q.op == op
    ref = nn.Linear(256, 96)
    ref.weight.data = q.weight.dequantize()
    ref.bias.data = lin.bias.data
    x = torch.randn(batch, 5, 256)
    with torch.no_grad():
        y, y_ref = q(x), ref(x)
    assert y.shape == (batch, 5, 96) and y.dtype == torch.float32
    rel = (y - y_ref).norm() / y_ref.norm()
    assert rel < tol, f"{op}: relative error {rel:.2e}"
    assert q.kernel()  # names the kernel that runs


def test_qlinear_weight_is_packed_and_small():
    lin = nn.Linear(1024, 1024, bias=False)
    q = QLinear.from_float(lin, INT4)
    assert q.weight.data.dtype == torch.uint8 and q.weight.data.shape == (1024, 512)
    nbytes, n = q.lowbit_footprint()
    assert n == 1024 * 1024 and nbytes * 8 / n == pytest.approx(4.25)
    assert not any(p.numel() == 1024 * 1024 for p in q.parameters())


def test_w8a8_needs_int8_channel_weights():
    with pytest.raises(ValueError, match="W8A8 dynamic needs int8 symmetric per-channel"):
        QLinear.from_float(nn.Linear(64, 8), INT4.replace(group_size=32),
                           activation=ActivationQuant("dynamic", "token"))


def test_qlinear_takes_only_dynamic_per_token_activations():
    with pytest.raises(TypeError, match="ActivationQuant"):
        QLinear.from_float(nn.Linear(64, 8), INT8, activation="int8_dynamic")
    with pytest.raises(ValueError, match="use LLMInt8Linear for outlier columns"):
        QLinear.from_float(nn.Linear(64, 8), INT8, activation=ActivationQuant("dynamic", "token", None, 6.0))


def test_qembedding_lookup_equals_dequantized_table():
    emb = nn.Embedding(100, 64)
    for fmt in (INT8, INT4.replace(group_size=32)):
        q = QEmbedding.from_float(emb, fmt)
        ids = torch.tensor([[3, 99, 0], [5, 5, 7]])
        assert torch.equal(q(ids), q.weight.dequantize()[ids])


def test_module_to_keeps_packed_dtypes():
    q = QLinear.from_float(nn.Linear(128, 32), INT4)
    q.to(torch.float32)
    assert q.weight.data.dtype == torch.uint8 and q.weight.scale.dtype == torch.bfloat16


def test_quantized_weights_are_in_state_dict_and_load_strictly():
    import lowbit

    net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    q = lowbit.quantize(net, "rtn:w4g32")
    state = q.state_dict()
    assert {"0.weight.data", "0.weight.scale", "0.weight.zero_point", "0.bias"} <= set(state)
    other = lowbit.quantize(torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(),
                                                torch.nn.Linear(32, 8)), "rtn:w4g32")
    other.load_state_dict(state, strict=True)                      # packed tensors copied in
    x = torch.randn(3, 64)
    assert torch.equal(other(x), q(x))
    missing = {k: v for k, v in state.items() if k != "2.weight.scale"}
    with pytest.raises(RuntimeError, match="2.weight.scale"):
        other.load_state_dict(missing, strict=True)
    bad = dict(state, **{"0.weight.data": state["0.weight.data"][:, :-1]})
    with pytest.raises(RuntimeError, match="0.weight.data: this uint4 asym g32 layer stores"):
        other.load_state_dict(bad, strict=True)
