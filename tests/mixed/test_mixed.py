"""Mixed precision: the solver is exact, sensitivities are what they say, the recipe keeps its budget."""
import itertools
import math

import numpy as np
import pytest
import torch

import lowbit
from lowbit.mixed import Budget, parse_candidate, sensitivity, solve
from lowbit.mixed.sensitivity import HeldOut, select_layers
from lowbit.recipes import MixedPrecision, from_spec


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2,
                                        vocab_size=96)).eval()


def tokens(n=8):
    return torch.randint(0, 96, (n, 16), generator=torch.Generator().manual_seed(0))


# --- budget and solver ------------------------------------------------------------------------
def test_budget_takes_exactly_one_limit_and_parses_its_text():
    assert Budget.parse("bpw=4.0") == Budget(bpw=4.0)
    assert Budget.parse("size=12MB") == Budget(size_mb=12)
    assert Budget.parse("max_kl=0.05").kind == "max_kl"
    with pytest.raises(ValueError, match="exactly one of bpw=, size_mb=, max_kl="):
        Budget(bpw=4, size_mb=3)
    with pytest.raises(ValueError, match="exactly one"):
        Budget()
    with pytest.raises(ValueError, match="positive"):
        Budget(bpw=-1)
    with pytest.raises(ValueError, match="not understood"):
        Budget.parse("bits=4")


def brute_force(cost, bits, numel, budget):
    best = None
    for choice in itertools.product(range(cost.shape[1]), repeat=cost.shape[0]):
        b = sum(bits[i, j] * numel[i] for i, j in enumerate(choice))
        c = sum(cost[i, j] for i, j in enumerate(choice))
        if budget.kind == "bpw" and b <= budget.bpw * sum(numel) + 1e-9:
            key = c
        elif budget.kind == "max_kl" and c <= budget.max_kl + 1e-12:
            key = b
        else:
            continue
        if best is None or key < best[0] - 1e-12:
            best = (key, choice)
    return best


@pytest.mark.parametrize("seed", range(5))
def test_solve_finds_the_brute_force_optimum(seed):
    rng = np.random.default_rng(seed)
    bits = np.tile([2.5, 3.5, 4.5, 8.0625], (4, 1))
    cost = np.sort(rng.random((4, 4)) * 10.0 ** rng.integers(-4, 0, (4, 1)), axis=1)[:, ::-1].copy()
    numel = rng.integers(1, 5, 4) * 1000
    for budget in (Budget(bpw=3.6), Budget(bpw=5.0), Budget(max_kl=float(cost[:, 1].sum()))):
        got = solve(cost, bits, numel, budget)
        want = brute_force(cost, bits, numel, budget)
        value = got.estimate if budget.kind == "bpw" else got.bits
        assert value == pytest.approx(want[0], rel=1e-9)
        if budget.kind == "bpw":
            assert got.bpw <= budget.bpw + 1e-12


def test_solve_says_which_budget_or_layer_cannot_be_met():
    cost, bits, numel = np.ones((2, 2)), np.array([[4.5, 8.0], [4.5, 8.0]]), [10, 10]
    with pytest.raises(ValueError, match=r"budget bpw=3 is below the smallest .*4\.5 bpw"):
        solve(cost, bits, numel, Budget(bpw=3))
    with pytest.raises(ValueError, match="budget max_kl=0.5 is below the smallest estimated loss"):
        solve(cost, bits, numel, Budget(max_kl=0.5))
    bits[1] = math.inf
    with pytest.raises(ValueError, match="mlp.down: no candidate format fits"):
        solve(cost, bits, numel, Budget(bpw=8), layers=["attn.q", "mlp.down"])


def test_candidates_parse_or_say_what_is_expected():
    assert parse_candidate("w4g64").format.label() == "uint4 asym g64"
    assert parse_candidate("w8").format.granularity == "channel"
    assert parse_candidate("nf4").format.kind == "codebook"
    assert parse_candidate("fp32").format is None
    assert parse_candidate("w8", "hqq").algorithm == "rtn"    # HQQ fits zero points; 8 bits is symmetric
    with pytest.raises(ValueError, match="bf16 layers have no kernel"):
        parse_candidate("bf16")
    with pytest.raises(ValueError, match="num_bits must be 2..8"):
        parse_candidate("w9")


# --- sensitivity --------------------------------------------------------------------------------
def test_measured_sensitivity_equals_a_full_forward_with_that_one_layer_quantized():
    model, data = tiny_llama(), tokens()
    sens = sensitivity(model, data, ["w2g32", "w8"], method="rtn", measure=True, cache=False)
    assert sens.layers == list(select_layers(model, lm=True))
    assert len(sens.layers) == 14 and sens.samples["held_out"] == 2
    held = HeldOut(model, data[-2:], lm=True)
    for name in ("model.layers.0.self_attn.v_proj", "model.layers.1.mlp.down_proj"):
        module = model.get_submodule(name)
        original = module.weight.data.clone()
        module.weight.data = parse_candidate("w2g32", "rtn").quantize(name, original).dequantize()
        full = held.kl(0)                  # every block runs: no replay of stored outputs
        module.weight.data = original
        i = sens.layers.index(name)
        assert sens.measured[i][0] == pytest.approx(full, rel=1e-4)
        assert sens.measured[i][0] > sens.measured[i][1] > 0


def test_kl_estimate_ranks_layers_like_the_measurement_and_shares_its_units():
    sens = sensitivity(tiny_llama(), tokens(12), ["w2g32", "w4g32"], method="rtn", measure=True,
                       cache=False, proxy_samples=6)
    assert sens.spearman["kl_estimate"]["pooled"] > 0.8
    est, got = np.asarray(sens.proxies["kl_estimate"]), np.asarray(sens.measured)
    assert 0.2 < np.median(est / got) < 5                      # same units: KL per token
    assert set(sens.spearman) == {"kl_estimate", "fisher", "act_error", "weight_error"}


def test_sensitivity_is_cached_by_model_data_and_candidates(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path))
    model, data = tiny_llama(), tokens()
    first = sensitivity(model, data, ["w4g32", "w8"], method="rtn")
    assert list((tmp_path / "sensitivity").glob("*.json")) == [tmp_path / "sensitivity" / f"{first.key}.json"]
    again = sensitivity(model, data, ["w4g32", "w8"], method="rtn")
    assert again.proxies == first.proxies and again.key == first.key
    other = sensitivity(model, data, ["w4g32"], method="rtn")
    assert other.key != first.key and len(other.candidates) == 1


# --- the recipe ---------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_mixed_precision_keeps_its_bpw_budget_and_reports_each_choice(method):
    model, data = tiny_llama(), tokens(10)
    recipe = MixedPrecision(candidates=("w2g32", "w4g32", "w8"), budget=Budget(bpw=4.0), method=method,
                            proxy_samples=4, hessian_samples=4, calib_batch_size=4)
    q = lowbit.quantize(model, recipe, data=data)
    details = q.lowbit_report.details
    chosen = [r for r in q.lowbit_report.layers if r.status == "quantized"]
    assert len(chosen) == 14
    numel = {n: model.get_submodule(n).weight.numel() for n in details["choice"]}
    bpw = sum(r.bits_per_weight * numel[r.name] for r in chosen) / sum(numel.values())
    assert bpw == pytest.approx(details["bpw"], abs=1e-3) and bpw <= 4.0 + 1e-3
    assert len(details["counts"]) >= 2                        # a real mix at this budget
    for r in chosen:
        spec = details["choice"][r.name]
        assert r.format == parse_candidate(spec).format.label()
        assert r.reason.startswith("chosen by mixed precision: est. KL")
    assert details["measured_kl"] > 0 and details["rounds"][details["chosen_round"]]["bpw"] == details["bpw"]
    head = next(r for r in q.lowbit_report.layers if r.name == "lm_head")
    assert head.status == "excluded" and head.reason == "not a mixed-precision layer"


def test_mixed_precision_errors_name_the_budget_and_the_layer():
    model, data = tiny_llama(), tokens()
    with pytest.raises(ValueError, match="MixedPrecision needs a budget"):
        MixedPrecision()
    with pytest.raises(ValueError, match=r"budget bpw=2 is below the smallest"):
        lowbit.quantize(model, MixedPrecision(candidates=("w4g32", "w8"), budget=Budget(bpw=2), method="rtn"),
                        data=data)
    with pytest.raises(ValueError, match=r"model.layers.0.self_attn.q_proj: no candidate format fits"):
        lowbit.quantize(model, MixedPrecision(candidates=("w4g128",), budget=Budget(bpw=8), method="rtn"),
                        data=data)
    with pytest.raises(ValueError, match="bf16 layers have no kernel"):
        MixedPrecision(candidates=("bf16", "w4g64"), budget=Budget(bpw=8))


def test_mixed_spec_round_trips():
    recipe = from_spec("mixed:bpw=4.0,method=rtn,candidates=w3g64|w4g64|w8")
    assert recipe.budget == Budget(bpw=4.0) and recipe.candidates == ("w3g64", "w4g64", "w8")
    assert from_spec(recipe.to_spec()) == recipe
    assert from_spec("mixed:max_kl=0.05").budget.kind == "max_kl"


# --- CNN: static int8 activations with per-layer weight bits ------------------------------------
def tiny_cnn():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(32, 10)).eval()


def test_static_mixed_cnn_stores_chosen_bits_and_meets_the_size_budget():
    model, images = tiny_cnn(), torch.randn(24, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    layers = select_layers(model, lm=False)
    w8_mb = sum(parse_candidate("w8").bits(m) * m.weight.numel() for m in layers.values()) / 8 / 2**20
    recipe = MixedPrecision(candidates=("w4pcsym", "w8"), budget=Budget(size_mb=0.8 * w8_mb), method="rtn",
                            activations="static", holdout=8, proxy_samples=8, calib_batch_size=8)
    q = lowbit.quantize(model, recipe, data=images)
    details = q.lowbit_report.details
    assert details["activations"] == "static" and set(details["counts"]) == {"w4pcsym", "w8"}
    stored = 0
    for name, spec in details["choice"].items():
        w = q.get_submodule(name).weight
        assert w.format.num_bits == parse_candidate(spec).format.num_bits and w.format.symmetric
        stored += w.nbytes
    assert stored / 2**20 <= 0.8 * w8_mb + 1e-9
    four = next(r for r in q.lowbit_report.layers if r.status == "quantized" and "int4" in r.format)
    assert "4-bit weights stored packed, widened to int8 for the kernel" in four.reason
    with torch.no_grad():
        assert torch.isfinite(q(images[:2])).all()


def test_static_mixed_rejects_formats_the_int8_kernels_cannot_run():
    with pytest.raises(ValueError, match="candidate w4g64: static int8 kernels run signed symmetric"):
        MixedPrecision(candidates=("w4g64", "w8"), budget=Budget(bpw=6), activations="static")


# --- lowbit compare ---------------------------------------------------------------------------
def test_compare_runs_a_mixed_row_and_plots_its_sensitivity(tmp_path, monkeypatch):
    from lowbit.comparison import LMTask, compare

    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path / "cache"))
    g = torch.Generator().manual_seed(0)
    task = LMTask(tokens=torch.randint(0, 96, (256,), generator=g), calib=torch.randint(0, 96, (8, 32), generator=g),
                  window=64, new_tokens=2, repeats=1)
    got = compare(tiny_llama(), task, "rtn:w4g32,mixed:bpw=4.0,method=rtn,candidates=w2g32|w4g32|w8",
                  isolate=False, report=tmp_path / "r")
    rows = {r["strategy"]: r for r in got.rows}
    mixed = rows["mixed:bpw=4.0,method=rtn,candidates=w2g32|w4g32|w8"]
    assert mixed["status"] == "ok", mixed.get("error")
    assert mixed["family"] == "mixed precision"
    sens = got.data["sensitivity"]
    assert len(sens) == 14 * 3 and {e["strategy"] for e in sens} == {"w2g32", "w4g32", "w8"}
    assert all(e["metric"].startswith("KL") for e in sens)
    assert (tmp_path / "r" / "sensitivity.png").stat().st_size > 1000


def test_a_mixed_model_saves_and_loads_bit_exact(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path / "cache"))
    model, data = tiny_llama(), tokens(10)
    q = lowbit.quantize(model, MixedPrecision(candidates=("w2g32", "w4g32", "w8"), budget=Budget(bpw=4.0),
                                              method="rtn", proxy_samples=4), data=data)
    lowbit.save(q, tmp_path / "m")
    back = lowbit.load(tmp_path / "m")
    for name, spec in q.lowbit_report.details["choice"].items():
        a, b = q.get_submodule(name).weight, back.get_submodule(name).weight
        assert b.format == a.format == parse_candidate(spec).format
        assert torch.equal(a.dequantize(), b.dequantize())
    with torch.no_grad():
        assert torch.equal(q(data[:2]).logits, back(data[:2]).logits)


def test_the_tied_head_and_embedding_are_one_candidate():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, vocab_size=96,
                                         tie_word_embeddings=True)).eval()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    data = tokens(10)
    q = lowbit.quantize(model, MixedPrecision(candidates=("w2g32", "w4g32", "w8"), budget=Budget(bpw=5.0),
                                              embeddings=True, proxy_samples=4, hessian_samples=4,
                                              calib_batch_size=4), data=data)
    details = q.lowbit_report.details
    assert "lm_head" in details["choice"] and "model.embed_tokens" not in details["choice"]
    assert q.lm_head.weight is q.model.embed_tokens.weight          # one packed table
    assert q.lm_head.weight.format == parse_candidate(details["choice"]["lm_head"]).format
    emb = next(r for r in q.lowbit_report.layers if r.name == "model.embed_tokens")
    assert emb.status == "quantized" and emb.reason.startswith("tied to lm_head: chosen by mixed precision")
    numel = {n: model.get_submodule(n).weight.numel() for n in details["choice"]}
    assert sum(numel.values()) == sum(m.weight.numel() for n, m in model.named_modules()
                                               if n.endswith("_proj")) + 96 * 64
    with torch.no_grad():
        assert torch.isfinite(q(data[:2]).logits).all()


def test_refinement_is_bounded_and_keeps_the_best_measured_round():
    model, data = tiny_llama(), tokens(10)
    recipe = MixedPrecision(candidates=("w2g32", "w4g32", "w8"), budget=Budget(bpw=3.5), method="rtn",
                            tolerance=0.0, refine=2, proxy_samples=4)
    details = lowbit.quantize(model, recipe, data=data).lowbit_report.details
    rounds = details["rounds"]
    assert 1 <= len(rounds) <= 3
    kept = rounds[-1]["measured_kl"] <= rounds[-1]["estimate"]      # tolerance 0: the promise is the estimate
    assert all(r["measured_kl"] > r["estimate"] for r in rounds[:-1])  # it refined only on a miss
    assert details["refinement"] == ("promise kept" if kept else "round limit" if len(rounds) == 3 else
                                     "the corrected costs chose the same formats")
    best = min(rounds, key=lambda r: r["measured_kl"])
    assert details["chosen_round"] == best["round"] and details["measured_kl"] == best["measured_kl"]
    assert all(r["bpw"] <= 3.5 + 1e-9 for r in rounds)
