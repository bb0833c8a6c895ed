"""Every registered recipe, on a small model of each kind it applies to: it plans without
touching the model, quantizes, runs every layer on the kernel its plan named, reports every
planned layer, and saves and loads bit-exactly. A new recipe inherits all of it by registering
(and naming an example spec here)."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch

import lowbit
from lowbit.recipes import REGISTRY, from_spec

from .models import KINDS, output

# registry name -> (example spec, model kinds it applies to)
EXAMPLES = {
    "rtn": ("rtn:w4g32", ("lm", "cnn", "encoder")),
    "bf16": ("bf16", ("lm", "cnn", "encoder")),
    "fp16": ("fp16:exclude=lm_head", ("lm",)),
    "gptq": ("gptq:w4g32,calib_batch_size=4", ("lm",)),
    "awq": ("awq:w3g32,awq_grid=4", ("lm",)),
    "hqq": ("hqq:w3g32,emb", ("lm", "encoder")),
    "nf4": ("nf4:b32", ("lm", "encoder")),
    "w8a8": ("w8a8", ("lm", "cnn", "encoder", "rnn")),
    "llm-int8": ("llm-int8", ("lm", "encoder")),
    "smoothquant": ("smoothquant:dynamic", ("lm",)),
    "static-w8a8": ("static-w8a8", ("lm",)),
    "static": ("static:minmax", ("cnn",)),
    "distill": ("distill:num_layers=1,max_steps=1,batch_size=2+rtn:w8", ("lm",)),
    "qat": ("qat:w4g32,max_steps=2,batch_size=4", ("lm",)),
    "qlora": ("qlora:b32,rank=4,max_steps=1,batch_size=4", ("lm",)),
    "mixed": ("mixed:bpw=4.0,candidates=w2g32|w4g32|w8,proxy_samples=2,hessian_samples=4,"
              "calib_batch_size=4,embeddings=true", ("lm",)),
    "magnitude": ("magnitude:50%", ("lm", "cnn", "encoder")),
    "wanda": ("wanda:50%,calib_batch_size=4", ("lm", "cnn")),
    "sparsegpt": ("sparsegpt:50%,w4g32,calib_batch_size=4", ("lm",)),
}
CASES = [(name, kind) for name, (_, kinds) in EXAMPLES.items() for kind in kinds]


def test_every_registered_recipe_has_an_example():
    missing = sorted(set(REGISTRY) - set(EXAMPLES))
    assert not missing, f"add an example spec for {missing} to EXAMPLES in {__file__}"


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_spec_round_trip(name):
    recipe = from_spec(EXAMPLES[name][0])
    assert from_spec(recipe.to_spec()) == recipe
    assert isinstance(recipe.describe(), str) and recipe.describe()


@pytest.mark.parametrize("name,kind", CASES)
def test_plan_quantize_save_load(name, kind, tmp_path):
    model, data, inputs = KINDS[kind]()
    recipe = from_spec(EXAMPLES[name][0])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = recipe.plan(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "plan changed the model"
    assert not plan.by_status("error"), plan.table()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # reference kernels on CPUs without AVX-512
        q = lowbit.quantize(model, recipe, data=data)
    reported = {r.name: r for r in q.lowbit_report.layers}
    modules = dict(q.named_modules())
    planned = plan.by_status("quantize")
    assert planned, f"{name} planned to quantize nothing on the {kind} model"
    for row in planned:
        assert row.name in modules and row.name in reported, f"{row.name} planned but not in the model/report"
        if reported[row.name].status == "quantized" and hasattr(modules[row.name], "kernel"):
            kernel = modules[row.name].kernel()   # mixed precision plans one kernel per candidate
            assert kernel == row.kernel or f"{kernel} (" in row.kernel, f"{row.name}: plan said {row.kernel}"
    y = output(q, inputs)
    assert torch.isfinite(y).all()

    lowbit.save(q, tmp_path / "ckpt")
    fresh = copy.deepcopy(model) if kind != "lm" else None
    if name == "distill":
        fresh = None  # the student's config (fewer blocks) is in the folder
    loaded = lowbit.load(tmp_path / "ckpt", model=fresh) if fresh is not None else lowbit.load(tmp_path / "ckpt")
    assert torch.equal(output(loaded, inputs), y), "loaded model computes different outputs"
    a, b = q.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
