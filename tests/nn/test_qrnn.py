"""QLSTM: C++ kernel vs its PyTorch reference, closeness to nn.LSTM, checkpoints, the recipe."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import lowbit
from lowbit.kernels import rnn
from lowbit.kernels.rnn import reference as rnn_ref
from lowbit.nn import QLSTM
from lowbit.recipes import from_spec

needs_kernel = pytest.mark.skipif(rnn.extension_status()[0] is None,
                                  reason=f"recurrent C++ kernel unavailable: {rnn.extension_status()[1]}")


def _lstm(input_size=12, hidden=16, layers=2, seed=0, **kw) -> nn.LSTM:
    torch.manual_seed(seed)
    return nn.LSTM(input_size, hidden, layers, **kw).eval()


class TinyLM(nn.Module):
    def __init__(self, vocab=11, hidden=16):
        super().__init__()
        self.embed = nn.Embedding(vocab, 8)
        self.lstm = nn.LSTM(8, hidden, 2, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, ids):
        return self.head(self.lstm(self.embed(ids))[0])


@needs_kernel
@pytest.mark.parametrize("M,K,N", [(1, 16, 8), (5, 33, 24), (32, 64, 40), (7, 1, 64), (70, 130, 200), (3, 1023, 16)])
def test_cpp_gemm_is_bit_exact_with_reference(M, K, N):
    torch.manual_seed(M + K + N)
    x = torch.randn(M, K) * torch.rand(M, 1) * 3
    x[0, : K // 2] = 0.0
    w = torch.randint(-128, 128, (N, K), dtype=torch.int8)
    w[0] = -128  # the largest vpmaddubsw pair sums: 2 * 127 * -128, no saturation
    x[-1] = -x[-1].abs() - 0.1  # every activation at the bottom of the unsigned range
    s = torch.rand(N) * 0.01
    bias = torch.randn(N)
    got = rnn.extension_status()[0].w8a8_gemm(x, rnn.pack_weight(w), s, bias)
    assert torch.equal(got, rnn_ref.linear_dynamic(x, w, s, bias))


def test_reference_activations_are_7_bit():
    x = torch.tensor([[1.0, -2.0, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0]])
    x_q, x_scale = rnn_ref.quantize_rows_7bit(x)
    assert x_q.tolist() == [[32, -63, 16, 0], [0, 0, 0, 0]]  # 31.5 -> 32 (half to even), 15.75 -> 16
    assert torch.equal(x_scale, torch.tensor([2.0 / 63, 0.0]))


def test_pack_weight_layout():
    w = torch.arange(8 * 6, dtype=torch.int8).reshape(8, 6)
    p = rnn.pack_weight(w)  # (1, 2, 8, 4): quads w[n, 0:4], then (w[n, 4], w[n, 5], 0, 0)
    assert p.shape == (1, 2, 8, 4)
    assert torch.equal(p[0, 0], w[:, :4]) and torch.equal(p[0, 1, :, :2], w[:, 4:])
    assert not p[0, 1, :, 2:].any()
    with pytest.raises(ValueError, match="multiple of 8"):
        rnn.pack_weight(torch.zeros(12, 4, dtype=torch.int8))


@needs_kernel
@pytest.mark.parametrize("T,B", [(1, 1), (9, 1), (6, 5)])
def test_cpp_lstm_layer_matches_reference(T, B):
    q = QLSTM.from_float(_lstm(12, 24, 1))
    torch.manual_seed(1)
    x, h0, c0 = torch.randn(T, B, 12), torch.randn(B, 24) * 0.5, torch.randn(B, 24)
    args = (x, q.weight_ih[0].data, q.weight_ih[0].scale.reshape(-1), q.weight.data,
            q.weight.scale.reshape(-1), q.bias[0], h0, c0)
    got = rnn.lstm_layer("rnn.lstm_layer", *args)
    want = rnn.lstm_layer("reference.lstm_layer", *args)
    for g, w in zip(got, want):  # gates: the kernel's exp vs PyTorch's differ in the last bits
        torch.testing.assert_close(g, w, atol=2e-5, rtol=0)


@pytest.mark.parametrize("batch_first", [False, True])
def test_qlstm_close_to_float_lstm(batch_first):
    lstm = _lstm(12, 32, 2, batch_first=batch_first)
    q = QLSTM.from_float(lstm)
    torch.manual_seed(2)
    x = torch.randn(4, 7, 12)
    hx = (torch.randn(2, 4, 32) * 0.3, torch.randn(2, 4, 32))
    if not batch_first:
        x = x.transpose(0, 1)
    with torch.no_grad():
        (out, (h, c)), (fout, (fh, fc)) = q(x, hx), lstm(x, hx)
    assert out.shape == fout.shape and h.shape == fh.shape and c.shape == fc.shape
    for a, b in ((out, fout), (h, fh), (c, fc)):
        assert (a - b).abs().max() < 0.03
    assert (out - fout).abs().mean() < 3e-3


def test_qlstm_zero_state_and_unbatched_input():
    lstm = _lstm(12, 16, 1)
    q = QLSTM.from_float(lstm)
    x = torch.randn(5, 12)
    with torch.no_grad():
        out, (h, c) = q(x)
        batched, (hb, _) = q(x.unsqueeze(1), (torch.zeros(1, 1, 16), torch.zeros(1, 1, 16)))
    assert out.shape == (5, 16) and h.shape == (1, 16)
    assert torch.equal(out, batched.squeeze(1)) and torch.equal(h, hb.squeeze(1))


def test_reference_path_when_extension_missing(monkeypatch):
    q = QLSTM.from_float(_lstm(12, 16, 1))
    x = torch.randn(4, 2, 12)
    monkeypatch.setattr(rnn, "extension_status", lambda: (None, "CPU lacks avx2"))
    assert q.kernel() == "reference.lstm_layer"
    with torch.no_grad():
        out = q(x)[0]
    assert out.shape == (4, 2, 16)


def test_odd_hidden_size_runs_reference():
    q = QLSTM.from_float(_lstm(5, 7, 1))
    assert q.kernel() == "reference.lstm_layer"
    assert q(torch.randn(3, 2, 5))[0].shape == (3, 2, 7)


@pytest.mark.parametrize("kw,what", [({"bidirectional": True}, "bidirectional=True"),
                                     ({"proj_size": 4}, "proj_size=4")])
def test_unsupported_lstm_raises_naming_the_layer(kw, what):
    with pytest.raises(ValueError, match=f"enc.rnn: QLSTM supports unidirectional.*{what}.*exclude"):
        QLSTM.from_float(_lstm(12, 16, 1, **kw), name="enc.rnn")


def test_recipe_plans_and_swaps_the_lstm(tmp_path):
    model = TinyLM().eval()
    recipe = from_spec("w8a8")
    plan = {p.name: p for p in recipe.plan(model).layers}
    assert plan["lstm"].status == "quantize" and plan["lstm"].module_type == "LSTM"
    assert plan["lstm"].kernel == rnn.lstm_kernel(16)
    ids = torch.randint(0, 11, (3, 9))
    with torch.no_grad():
        want = model(ids)
        q = lowbit.quantize(model, "w8a8")
        got = q(ids)
    assert isinstance(q.lstm, QLSTM)
    assert plan["lstm"].bytes == q.lstm.lowbit_footprint()[0]
    report = {r.name: r for r in q.lowbit_report.layers}
    assert report["lstm"].status == "quantized" and report["lstm"].kernel == plan["lstm"].kernel
    assert (got - want).abs().max() < 0.05

    lowbit.save(q, tmp_path / "ckpt")
    loaded = lowbit.load(tmp_path / "ckpt", model=TinyLM())
    assert isinstance(loaded.lstm, QLSTM)
    for key, t in q.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], t), key
    with torch.no_grad():
        assert torch.equal(loaded(ids), got)


def test_recipe_plan_reports_unsupported_lstm_as_error():
    model = nn.Sequential(nn.LSTM(4, 8, bidirectional=True))
    row = from_spec("w8a8").plan(model).layers[0]
    assert row.status == "error" and "bidirectional" in row.reason


def test_two_lstms_are_two_layers_in_the_plan():
    model = nn.Sequential(nn.LSTM(8, 16), nn.LSTM(16, 16))
    rows = {r.name: r for r in from_spec("w8a8").plan(model).layers}
    assert rows["0"].status == rows["1"].status == "quantize"
    assert "tied" not in rows["1"].reason and rows["1"].bytes > 0
