"""recommend(): the pick under each budget kind, its neighbours, the defaults, the nothing-meets case;
pareto_front() on hand-made points."""
from __future__ import annotations

import pytest
from report_data import by_strategy

from lowbit.report import pareto_front, recommend
from lowbit.report.recommend import DEFAULT_MAX_LOSS


def strategies(rows):
    return [r["strategy"] for r in rows]


def test_size_budget_picks_best_quality_within_it(comparison):
    comparison["budget"] = {"kind": "size_mb", "value": 100}
    r = recommend(comparison)
    assert r["met"] and r["pick"]["strategy"] == "gptq:w4g64"  # 21.0 beats NF4 21.5, HQQ 26, RTN W4 28.4
    assert r["cheaper"]["strategy"] == "nf4"  # the best quality below 90 MB (HQQ at 75 MB is worse)
    # better quality than 21.0: dynamic W8A8 and RTN W8 tie at 150 MB; RTN W8 has the better quality
    assert r["better"]["strategy"] == "rtn:w8"
    text = r["text"]
    assert "Budget: model size ≤ 100 MB." in text and "Recommended: GPTQ W4 g64 (gptq:w4g64)" in text
    assert "perplexity 21.00," in text and "loss +5.0% vs float" in text
    assert "reference (slow) kernel" in text  # its speed is not the format's real speed
    assert "size -2.2% vs the pick, 2.5 percentage points more quality loss" in text  # 88/90, 7.5% - 5%
    assert "Next better option: RTN W8 (rtn:w8)" in text and "size +66.7% vs the pick, speed -50.0%" in text


def test_size_budget_breaks_quality_ties_by_speed(comparison):
    comparison["budget"] = {"kind": "size_mb", "value": 100}
    by_strategy(comparison, "nf4").update(quality=21.0, speed=55.0)
    assert recommend(comparison)["pick"]["strategy"] == "nf4"


def test_bpw_budget_reads_bpw_model(comparison):
    comparison["budget"] = {"kind": "bpw", "value": 4.0}
    r = recommend(comparison)
    assert r["pick"]["strategy"] == "hqq:w3g64"  # the only row at <= 4 bits per weight
    assert r["cheaper"] is None and "Nothing smaller than the pick was measured." in r["text"]
    assert r["better"]["strategy"] == "nf4"  # the smallest row better than 26.0
    assert "≤ 4.00 bits per weight" in r["text"]


def test_max_loss_budget_picks_the_smallest_then_the_better_quality(comparison):
    comparison["budget"] = {"kind": "max_loss", "value": 0.02}
    r = recommend(comparison)
    # bf16 (269 MB), dynamic W8A8 and RTN W8 (150 MB each) are within 2%; RTN W8 has less loss
    assert r["pick"]["strategy"] == "rtn:w8"
    assert r["better"]["strategy"] == "bf16"
    assert r["cheaper"]["strategy"] == "gptq:w4g64"  # best quality under 150 MB
    by_strategy(comparison, "dynamic:w8a8")["size_mb"] = 149.0
    assert recommend(comparison)["pick"]["strategy"] == "dynamic:w8a8"


@pytest.mark.parametrize("kind, expected", [("causal-lm", "gptq:w4g64"), ("cnn", "rtn:w8"),
                                            ("encoder", "rtn:w8"), ("rnn-lm", "rtn:w8"), ("other", "rtn:w8")])
def test_no_budget_uses_the_kinds_default_max_loss(comparison, kind, expected):
    comparison["kind"] = kind
    r = recommend(comparison)
    assert r["budget"] == {"kind": "max_loss", "value": DEFAULT_MAX_LOSS.get(kind, 0.01), "default": True}
    assert r["pick"]["strategy"] == expected
    assert f"No budget was given, so lowbit applied its default for a {kind}" in r["text"]


def test_nothing_meets_the_budget(comparison):
    comparison["budget"] = {"kind": "size_mb", "value": 10}
    r = recommend(comparison)
    assert r["pick"] is None and not r["met"] and r["cheaper"] is None and r["better"] is None
    assert r["closest"]["strategy"] == "hqq:w3g64"
    assert "No strategy meets the budget (model size ≤ 10.0 MB)." in r["text"]
    assert "The closest is HQQ W3 g64 (hqq:w3g64), 65.0 MB (+650.0%) over the budget" in r["text"]


def test_only_the_reference_meets_a_loss_budget_and_the_text_says_so(comparison):
    comparison["budget"] = {"kind": "max_loss", "value": 0.0}
    r = recommend(comparison)
    assert r["met"] and r["pick"]["reference"]
    assert "Only the float reference meets this budget" in r["text"]
    assert "No quantization strategy met it." in r["text"]


def test_the_reference_is_not_picked_when_a_strategy_meets_the_budget(comparison):
    comparison["budget"] = {"kind": "size_mb", "value": 1000}
    pick = recommend(comparison)["pick"]
    assert not pick.get("reference") and pick["strategy"] == "bf16"  # 20.02, the best after fp32's 20.0


def test_a_failed_row_is_never_picked(comparison):
    failed = by_strategy(comparison, "awq:w4g128")
    failed.update(quality=1.0, quality_loss=-0.5, size_mb=1.0, bpw_model=1.0)  # even with numbers
    comparison["budget"] = {"kind": "size_mb", "value": 5}
    r = recommend(comparison)
    assert r["pick"] is None and r["closest"]["strategy"] == "hqq:w3g64"


def test_every_row_failed(comparison):
    comparison["rows"] = [by_strategy(comparison, "awq:w4g128")]
    r = recommend(comparison)
    assert r["pick"] is None and "Every strategy failed" in r["text"]


def test_higher_is_better_metric(comparison):
    comparison["metric"] = {"name": "score", "label": "score", "higher_is_better": True}
    comparison["budget"] = {"kind": "size_mb", "value": 100}
    # the same values read the other way: RTN W4 g64's 28.4 is now the best quality under 100 MB
    assert recommend(comparison)["pick"]["strategy"] == "rtn:w4g64"
    for r in comparison["rows"]:
        r.pop("quality", None)  # without the metric, quality_loss still orders the rows (lower is better)
    assert recommend(comparison)["pick"]["strategy"] == "gptq:w4g64"


@pytest.mark.parametrize("budget, message", [
    ({"kind": "size", "value": 1}, "comparison['budget']: expected None or"),
    ({"kind": "bpw", "value": -1}, "a number >= 0"),
])
def test_bad_budget(comparison, budget, message):
    comparison["budget"] = budget
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        recommend(comparison)


def test_bad_rows_say_what_is_wrong(comparison):
    comparison["rows"][1]["status"] = "done"
    with pytest.raises(ValueError, match="row 'bf16': expected status 'ok' or 'failed', got 'done'"):
        recommend(comparison)
    del comparison["metric"]["higher_is_better"]
    with pytest.raises(ValueError, match="higher_is_better"):
        recommend(comparison)


def _rows(points, hib=False):
    return [{"strategy": name, "status": "ok", "quality": q, "size_mb": s, "speed": v}
            for name, q, s, v in points]


def test_pareto_front_for_size_and_speed():
    rows = _rows([("fp32", 20.0, 500, 10), ("a", 21.0, 100, 30), ("b", 22.0, 120, 40),
                  ("c", 25.0, 60, 20), ("d", 21.0, 150, 25), ("e", 30.0, 60, 50)])
    # size: c (60, beats e at the same size), a (100), fp32 (500); b and d are dominated by a
    assert strategies(pareto_front(rows, "size_mb", x_higher_is_better=False, higher_is_better=False)) == \
        ["c", "a", "fp32"]
    # speed: fp32 (best quality), a (30), b (40), e (50, fastest); c and d are dominated by a
    assert strategies(pareto_front(rows, "speed", x_higher_is_better=True, higher_is_better=False)) == \
        ["fp32", "a", "b", "e"]
    # higher is better flips the quality axis: e (30) dominates everything at its size
    assert strategies(pareto_front(rows, "size_mb", x_higher_is_better=False, higher_is_better=True)) == ["e"]


def test_pareto_front_skips_failed_and_unmeasured_rows():
    rows = _rows([("a", 21.0, 100, 30), ("b", 22.0, None, 40)])
    rows.append({"strategy": "x", "status": "failed", "quality": 1.0, "size_mb": 1.0})
    assert strategies(pareto_front(rows, "size_mb", x_higher_is_better=False, higher_is_better=False)) == ["a"]
    rows.append({"strategy": "tie", "status": "ok", "quality": 21.0, "size_mb": 100})
    assert strategies(pareto_front(rows, "size_mb", x_higher_is_better=False, higher_is_better=False)) == ["a", "tie"]
