"""Which kernel runs: kernel_for's rules, available(), and every layer's kernel(x) naming the
kernel its forward then runs (the stand-in extension records it)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import lowbit.kernels as lk
from lowbit.formats import INT8, NF4, ActivationQuant, int_format
from lowbit.kernels import cpu, dispatch
from lowbit.nn import QLinear
from lowbit.nn.llm_int8 import LLMInt8Linear
from lowbit.nn.nf4 import NF4Linear

W4 = int_format(4, signed=False, symmetric=False, group_size=64)


def test_kernel_for_rejects_unknown_ops():
    with pytest.raises(ValueError, match="op must be one of"):
        lk.kernel_for("linear_int5", "cpu", torch.float32, (1, 64))


def test_kernel_for_chooses_by_batch_size(stand_in):
    for op, (small, large) in dispatch.CPU_KERNELS.items():
        switch = dispatch.DENSE_FROM_M[op]
        assert lk.kernel_for(op, "cpu", torch.float32, (switch - 1, 64)) == small
        assert lk.kernel_for(op, torch.device("cpu"), torch.bfloat16, (1, switch, 64)) == large
    assert lk.kernel_for("linear_dequant", "cpu", torch.float32, (1, 64)) == "reference.linear_dequant"


def test_kernel_for_falls_back_to_the_reference(stand_in, monkeypatch):
    assert lk.kernel_for("linear_int4", "meta", torch.float32, (1, 64)) == "reference.linear_int4"
    assert lk.kernel_for("linear_int4", "cpu", torch.float16, (1, 64)) == "reference.linear_int4"
    assert lk.kernel_for("linear_int4", "cuda", torch.float32, (1, 64)) in ("cuda.int4_gemv", "reference.linear_int4")
    monkeypatch.setattr(cpu, "amx_status", lambda: (False, "no AMX"))
    assert lk.kernel_for("linear_w8a8_dynamic", "cpu", torch.float32, (64, 64)) == "cpu.w8a8_vnni"
    monkeypatch.setattr(cpu, "vbmi_status", lambda: (False, "CPU lacks avx512vbmi"))
    assert lk.kernel_for("linear_lowbit", "cpu", torch.float32, (1, 64)) == "reference.linear_lowbit"
    monkeypatch.setattr(cpu, "extension_status", lambda: (None, "C++ extension not built: test"))
    assert all(lk.kernel_for(op, "cpu", torch.float32, (1, 64)) == f"reference.{op}" for op in lk.OPS)


def test_available_lists_every_op_with_its_kernels(stand_in):
    rows = lk.available()
    assert [r["op"] for r in rows] == list(lk.OPS)
    for row in rows:
        small, large = dispatch.CPU_KERNELS.get(row["op"], (f"reference.{row['op']}",) * 2)
        assert row["kernel"].startswith(small) and large in row["kernel"] and row["reason"]
        assert row["path"] == ("reference" if row["op"] == "linear_dequant" else "real")


def test_available_says_why_without_the_extension(monkeypatch):
    monkeypatch.setattr(cpu, "extension_status", lambda: (None, "C++ extension not built: test"))
    rows = {r["op"]: r for r in lk.available()}
    assert rows["linear_nf4"]["kernel"] == "reference.linear_nf4"
    assert all(r["path"] == "reference" and "not built" in r["reason"] for op, r in rows.items() if op != "linear_dequant")
    assert all(r["path"] == "reference" for r in lk.available("meta"))


def layers() -> dict[str, nn.Module]:
    from lowbit.algorithms.nf4 import quantize_nf4
    torch.manual_seed(0)
    lin = nn.Linear(128, 40)
    return {
        "w4 g64": QLinear.from_float(lin, W4),
        "w8": QLinear.from_float(lin, INT8),
        "w3 g64": QLinear.from_float(lin, int_format(3, signed=False, symmetric=False, group_size=64)),
        "w3 symmetric (no kernel)": QLinear.from_float(lin, int_format(3, group_size=64)),
        "w8a8": QLinear.from_float(lin, INT8, activation=ActivationQuant("dynamic", "token", 64)),
        "nf4": NF4Linear(quantize_nf4(lin.weight.detach(), 64), lin.bias),
        "nf4 in a QLinear": QLinear.from_float(lin, NF4),
        "llm.int8": LLMInt8Linear.from_float(lin),
    }


@pytest.mark.parametrize("name", list(layers()))
@pytest.mark.parametrize("M", [1, 4, 20])
def test_layer_kernel_is_the_kernel_its_forward_runs(name, M, stand_in):
    layer = layers()[name]
    x = torch.randn(2, M, 128)
    with torch.no_grad():
        layer(x)
    assert stand_in == ([] if layer.kernel(x).startswith("reference.") else [layer.kernel(x)])
    assert layer.kernel(x) == lk.kernel_for(getattr(layer, "op", "linear_w8a8_dynamic"), x.device, x.dtype, x.shape)
    assert layer.kernel() == layer.kernel(torch.zeros(1, 128))


def test_plans_name_the_kernel_the_layer_runs(stand_in):
    import warnings

    import lowbit
    from lowbit.recipes import from_spec
    net = nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 8))
    for spec in ("rtn:w4g64", "rtn:w8", "rtn:w3g64", "nf4", "w8a8", "llm-int8", "rtn:w3g64,sym"):
        plan = from_spec(spec).plan(net)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q = lowbit.quantize(net, spec)
        assert plan.layers[0].kernel == q[0].kernel(), spec
        assert plan.layers[0].reference == (spec == "rtn:w3g64,sym"), spec