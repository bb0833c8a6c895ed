"""The one model walk: every weight layer is reported, patterns select, Skip and errors surface."""
import pytest
import torch
from torch import nn

from lowbit.formats import INT8
from lowbit.nn import QLinear, QuantReport, Skip, swap_modules, walk


def _net():
    return nn.ModuleDict({"emb": nn.Embedding(10, 8), "a": nn.Linear(8, 8), "b": nn.Linear(8, 4),
                          "conv": nn.Conv2d(1, 2, 3), "norm": nn.LayerNorm(8)})


def test_walk_lists_every_weight_layer_with_why_not():
    rows = {name: (selected, why) for name, _, selected, why in walk(_net(), (nn.Linear,), exclude=("b",))}
    assert set(rows) == {"emb", "a", "b", "conv"}          # norms hold no weight matrix
    assert rows["a"] == (True, "")
    assert rows["b"] == (False, "excluded by pattern")
    assert rows["emb"][0] is False and "not handled by this recipe (it takes Linear)" in rows["emb"][1]


def test_a_bare_string_pattern_is_one_pattern():
    selected = [n for n, _, s, _ in walk(_net(), (nn.Linear,), exclude="a") if s]
    assert selected == ["b"]                                # not the characters 'a'


def test_walk_rejects_non_string_patterns():
    with pytest.raises(TypeError, match="fnmatch patterns"):
        list(walk(_net(), (nn.Linear,), exclude=[1]))


def test_swap_reports_skips_and_propagates_errors():
    def build(name, module):
        if name == "b":
            raise Skip("too small")
        return QLinear.from_float(module, INT8)

    net = _net()
    report = swap_modules(net, build, types=(nn.Linear,))
    assert isinstance(report, QuantReport)
    status = {r.name: r.status for r in report.layers}
    assert status == {"emb": "not-handled", "a": "quantized", "b": "skipped", "conv": "not-handled"}
    assert [r.reason for r in report.layers if r.name == "b"] == ["too small"]
    assert isinstance(net["a"], QLinear) and isinstance(net["b"], nn.Linear)

    def broken(name, module):
        raise ValueError(f"{name}: broken")

    with pytest.raises(ValueError, match="a: broken"):
        swap_modules(_net(), broken, types=(nn.Linear,))


def test_literal_include_must_exist_and_be_quantizable():
    with pytest.raises(ValueError, match="does not have"):
        list(walk(_net(), (nn.Linear,), include=("nope",)))
    with pytest.raises(ValueError, match="cannot quantize"):
        list(walk(_net(), (nn.Linear,), include=("norm",)))
