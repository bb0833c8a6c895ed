"""torch.compile and torch.export trace through the ops (their fake kernels) and keep each one a
single opaque call, so the compiled model runs the same kernels as the eager one."""
from __future__ import annotations

import pytest
import torch
from kernel_cases import rel_err
from torch import nn

import lowbit
from lowbit.nn import QLinear
from lowbit.recipes import NF4, DynamicPTQ, WeightOnly

RECIPES = {  # name: (recipe, the op its linears run)
    "W4 g64": (WeightOnly(num_bits=4, group_size=64), "linear_int4"),
    "W8": (WeightOnly(num_bits=8, group_size=None), "linear_int8_weight_only"),
    "NF4": (NF4(), "linear_nf4"),
    "W8A8": (DynamicPTQ(), "linear_w8a8_dynamic"),
}


class DecoderLayers(nn.Module):
    """The first ``n`` decoder layers of a Llama-style causal LM, on hidden states [B, T, D]."""

    def __init__(self, model: nn.Module, n: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(model.model.layers[:n])
        self.rotary = model.model.rotary_emb

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        position_ids = torch.arange(h.shape[1], device=h.device)[None]  # (1, T)
        cos_sin = self.rotary(h, position_ids)
        for layer in self.layers:
            h = layer(h, position_embeddings=cos_sin, position_ids=position_ids)
        return h


@pytest.fixture(scope="module")
def smollm2_layers():
    from lowbit.models.load import load_model
    model, _ = load_model("smollm2-135m")
    return DecoderLayers(model, 2)


@pytest.mark.real
@pytest.mark.parametrize("name", list(RECIPES))
def test_compiled_quantized_smollm2_layers_match_eager(smollm2_layers, name):
    recipe, op = RECIPES[name]
    q = lowbit.quantize(smollm2_layers, recipe)
    assert {m.op for m in q.modules() if isinstance(m, QLinear)} == {op}
    compiled = torch.compile(q, fullgraph=True)
    h = torch.randn(2, 7, 576, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        y, y_eager = compiled(h), q(h)
    assert rel_err(y, y_eager) < 1e-4, name


def small_model(recipe) -> nn.Module:
    torch.manual_seed(0)
    return lowbit.quantize(nn.Sequential(nn.Linear(128, 64), nn.GELU(), nn.Linear(64, 32)), recipe)


@pytest.mark.parametrize("name", list(RECIPES))
def test_compiled_model_calls_the_kernels_and_is_differentiable(name, stand_in):
    """Each linear stays one op call in the compiled graph (the stand-in kernel runs once per
    layer), and a compiled backward (AOTAutograd through the op's autograd) gives eager's
    gradient."""
    model = small_model(RECIPES[name][0])
    x = torch.randn(3, 128, requires_grad=True)
    model(x).square().sum().backward()
    grad, x.grad = x.grad, None
    stand_in.clear()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    compiled(x).square().sum().backward()
    assert len(stand_in) == 2 and all(k.startswith("cpu.") for k in stand_in)
    torch.testing.assert_close(x.grad, grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(RECIPES))
def test_export_keeps_the_ops(name):
    model = small_model(RECIPES[name][0])
    x = torch.randn(3, 128)
    program = torch.export.export(model, (x,))
    op = getattr(torch.ops.lowbit, RECIPES[name][1]).default
    assert [n.target for n in program.graph.nodes if n.op == "call_function"].count(op) == 2
    torch.testing.assert_close(program.module()(x), model(x))
