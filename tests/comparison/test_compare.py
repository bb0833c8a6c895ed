"""lowbit.compare: trials in child processes, in this process and on Ray give the same rows;
bad input is one clear line and the rest of the comparison still completes."""
from __future__ import annotations

import pytest
import torch

import lowbit
from conformance.models import cnn, decoder_lm
from lowbit.comparison import Budget, ImageTask, LMTask, compare, default_strategies
from lowbit.comparison.data import detect_kind, make_task
from lowbit.comparison.strategies import Strategy, group_size_for

QUALITY = ("ppl", "kl", "top1_agreement", "size_mb", "bpw_model", "quality_loss")


def lm_task(**kw) -> LMTask:
    g = torch.Generator().manual_seed(0)
    return LMTask(tokens=torch.randint(0, 128, (512,), generator=g),
                  calib=torch.randint(0, 128, (4, 64), generator=g), window=128, new_tokens=4,
                  repeats=1, **kw)


@pytest.fixture(scope="module")
def lm():
    return decoder_lm()[0]


@pytest.fixture(scope="module")
def in_process(lm):
    return compare(lm, lm_task(), "w8a8,rtn:w4g32,gptq:w4g32,calib_batch_size=2", isolate=False)


def test_rows_measure_every_axis(in_process):
    rows = {r["strategy"]: r for r in in_process.rows}
    assert list(rows) == ["fp32", "w8a8", "rtn:w4g32", "gptq:w4g32,calib_batch_size=2"]
    assert all(r["status"] == "ok" for r in rows.values()), [r.get("error") for r in rows.values()]
    ref = rows["fp32"]
    assert ref["reference"] and ref["quality_loss"] == 0 and ref["kl"] == 0
    for r in list(rows.values())[1:]:
        assert r["ppl"] == pytest.approx(ref["ppl"] * (1 + r["quality_loss"]))
        assert r["size_mb"] < ref["size_mb"] and r["speed"] > 0 and r["quant_s"] >= 0
        assert r["kernels"] and isinstance(r["reference_kernels"], bool)
    assert rows["gptq:w4g32,calib_batch_size=2"]["needs"] == ["calibration data"]
    assert rows["w8a8"]["needs"] == [] and rows["w8a8"]["family"] == "dynamic"
    assert in_process.data["kind"] == "causal-lm" and in_process.data["metric"]["name"] == "ppl"


def test_child_processes_give_the_same_quality(lm, in_process):
    isolated = compare(lm, lm_task(), "w8a8,rtn:w4g32,gptq:w4g32,calib_batch_size=2")
    for a, b in zip(in_process.rows, isolated.rows):
        assert a["strategy"] == b["strategy"] and b["status"] == "ok"
        assert {k: a[k] for k in QUALITY} == {k: b[k] for k in QUALITY}
        assert b["speed"] > 0


def test_ray_trials_give_the_same_rows(lm, in_process):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        on_ray = compare(lm, lm_task(), "w8a8,rtn:w4g32,gptq:w4g32,calib_batch_size=2", workers=2)
    finally:
        ray.shutdown()
    assert [r["strategy"] for r in on_ray.rows] == [r["strategy"] for r in in_process.rows]
    for a, b in zip(in_process.rows, on_ray.rows):
        assert b["status"] == "ok", b.get("error")
        assert {k: a[k] for k in QUALITY} == {k: b[k] for k in QUALITY}
        assert b["speed"] > 0 and "quant_s" in b
    assert any("parallel" in n for n in on_ray.data["notes"])


def test_unknown_and_crashing_strategies_are_failed_rows(lm, caplog):
    got = compare(lm, lm_task(), "bogus:w4,rtn:w4g48,w8a8", isolate=False)
    rows = {r["strategy"]: r for r in got.rows}
    assert rows["bogus:w4"]["status"] == "failed" and "unknown recipe 'bogus'" in rows["bogus:w4"]["error"]
    assert rows["rtn:w4g48"]["status"] == "failed" and "\n" not in rows["rtn:w4g48"]["error"]
    assert "48" in rows["rtn:w4g48"]["error"]
    assert rows["w8a8"]["status"] == "ok" and rows["fp32"]["status"] == "ok"
    assert "bogus" in caplog.text


class DiesWhenRun(torch.nn.Module):
    """A model whose forward ends its process, as a segfault or the OOM killer would."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 3)

    def forward(self, x):
        import os
        os._exit(3)


def test_a_trial_whose_process_dies_is_a_failed_row():
    from lowbit.comparison.runner import run_in_processes

    task = ImageTask(images=torch.zeros(16, 1, 8, 8), calib=torch.zeros(4, 1, 8, 8), repeats=1)
    task.reference_quality = {"quality": 1.0}
    rows = list(run_in_processes(DiesWhenRun(), task, ["fp32"], threads=1))
    assert rows[0]["status"] == "failed" and "process died: exit code 3" in rows[0]["error"]


def test_data_of_the_wrong_kind_is_refused():
    model = cnn()[0]
    with pytest.raises(ValueError, match="does not fit a cnn model: it needs images"):
        make_task("cnn", model, None, "austen", quick=True)
    with pytest.raises(ValueError, match="unknown image data 'cats'"):
        make_task("cnn", model, None, "cats", quick=True)
    with pytest.raises(ValueError, match="does not fit a causal-lm model"):
        make_task("causal-lm", decoder_lm()[0], object(), "photos", quick=True)
    with pytest.raises(TypeError, match="float \\(N, C, H, W\\)"):
        ImageTask(images=torch.zeros(3, 4), calib=torch.zeros(2, 1, 8, 8))


def test_budget_parsing():
    assert Budget.parse("size=60MB") == Budget("size_mb", 60.0)
    assert Budget.parse("bpw=4.5") == Budget("bpw", 4.5)
    assert Budget.parse("max-loss=2%") == Budget("max_loss", 0.02)
    with pytest.raises(ValueError, match="expected size=MB, bpw=BITS or max-loss"):
        Budget.parse("speed=fast")


def test_kind_detection_and_defaults(lm):
    assert detect_kind(lm) == "causal-lm"
    assert detect_kind(cnn()[0]) == "cnn"
    assert detect_kind(torch.nn.Sequential(torch.nn.Embedding(10, 8), torch.nn.LSTM(8, 8))) == "rnn-lm"
    with pytest.raises(ValueError, match="pass kind="):
        detect_kind(torch.nn.Linear(2, 2))
    assert group_size_for(lm) == 64
    specs = default_strategies("causal-lm", lm, quick=True)
    assert specs[0] == "fp32" and len(specs) >= 9 and any(s.startswith("gptq") for s in specs)
    for spec in default_strategies("causal-lm", lm, train_minutes=1) + default_strategies("cnn", lm, train_minutes=1):
        assert Strategy(spec).recipe() is None or spec == "fp32" or lowbit.recipes.from_spec(spec)
    assert {Strategy(s).family() for s in default_strategies("cnn", lm)} >= {"float", "autocast", "static", "dynamic"}


def test_a_budget_no_strategy_meets_is_said_and_the_rows_stay(lm, tmp_path):
    got = compare(lm, lm_task(), "rtn:w4g32", budget="size=0.001", isolate=False, report=tmp_path / "r")
    advice = got.recommend()
    assert not advice["met"] and "No strategy meets the budget (model size ≤ 0.001 MB)" in advice["text"]
    assert "The closest is" in advice["text"]
    assert [r["status"] for r in got.rows] == ["ok", "ok"]
    assert "No strategy meets the budget" in (tmp_path / "r" / "report.md").read_text()
