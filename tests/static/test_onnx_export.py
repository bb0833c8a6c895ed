"""QDQ ONNX export of a StaticPTQ model runs in ONNX Runtime and matches lowbit's int8 model."""
import pytest
import torch

import lowbit
from lowbit.recipes.static import StaticPTQ

from .test_static import Net, _trained_stats

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


def test_qdq_export_matches_int8_model(tmp_path):
    import onnx

    from lowbit.io.onnx import export_onnx

    torch.manual_seed(0)
    model = _trained_stats(Net())
    q = lowbit.quantize(model, StaticPTQ(observer="minmax"), data=[torch.randn(8, 3, 16, 16)])
    x = torch.randn(6, 3, 16, 16)
    path = export_onnx(q, x[:1], tmp_path / "net.onnx")
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "Gemm"} <= ops
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    with torch.no_grad():
        ref = q(x)
    assert (got - ref).abs().max().item() < 0.05 * ref.abs().max().item()
