"""write_report(): every file written, JSON round trip, the Markdown/HTML content, atomic failure."""
from __future__ import annotations

import base64
import json
import re

import pytest
from report_data import by_strategy

import lowbit.report.write as write
from lowbit.report import table, write_report

SENSITIVITY = [{"layer": f"model.layers.{i}.mlp.down_proj", "strategy": "rtn:w4g64", "quality_loss": 0.01 * i}
               for i in range(5)]


def test_writes_every_file_and_the_json_round_trips(comparison, tmp_path):
    out = write_report(comparison, tmp_path / "a" / "report")
    folder = tmp_path / "a" / "report"
    assert out == {"json": folder / "comparison.json", "md": folder / "report.md", "html": folder / "report.html",
                   "plots": [folder / "quality_vs_size.png", folder / "quality_vs_speed.png"]}
    assert sorted(p.name for p in folder.iterdir()) == ["comparison.json", "quality_vs_size.png",
                                                       "quality_vs_speed.png", "report.html", "report.md"]
    assert json.loads(out["json"].read_text()) == comparison  # unknown keys ("future_key") kept too
    for plot in out["plots"]:
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000
    assert [p.name for p in tmp_path.joinpath("a").iterdir()] == ["report"]  # no staging folder left


def test_sensitivity_plot_only_when_measured(comparison, tmp_path):
    comparison["sensitivity"] = SENSITIVITY
    out = write_report(comparison, tmp_path)
    assert [p.name for p in out["plots"]] == ["quality_vs_size.png", "quality_vs_speed.png", "sensitivity.png"]
    del comparison["sensitivity"]
    (tmp_path / "mine.txt").write_text("user file")
    write_report(comparison, tmp_path)  # the older report's sensitivity plot goes, other files stay
    assert not (tmp_path / "sensitivity.png").exists() and (tmp_path / "mine.txt").read_text() == "user file"


def test_markdown_table_has_one_line_per_row(comparison):
    lines = table(comparison).splitlines()
    body = [line for line in lines[2:] if line.startswith("|")]
    assert lines[0].startswith("| method | strategy | perplexity ↓ |") and set(lines[1]) == {"|", "-"}
    assert len(body) == len(comparison["rows"])
    for line, row in zip(body, comparison["rows"]):
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        assert len(cells) == 11 and cells[1] == row["strategy"] and cells[0].startswith(row["method"])
        if row["status"] == "ok":  # the numbers are the row's own
            assert cells[4] == (f"{row['size_mb']:.0f}" if row["size_mb"] >= 100 else f"{row['size_mb']:.1f}")
            assert cells[5] == f"{row['bpw_model']:.2f}"
            assert cells[6].rstrip("†") == f"{row['speed']:.1f}"
            assert cells[6].endswith("†") == row["reference_kernels"]


def test_failed_rows_show_their_error(comparison, tmp_path):
    out = write_report(comparison, tmp_path)
    md, page = out["md"].read_text(), out["html"].read_text()
    assert "| AWQ W4 g128 | awq:w4g128 | failed: RuntimeError: out of memory \\| while calibrating layer 3 |" in md
    assert '<tr class="failed"><td>AWQ W4 g128</td><td>awq:w4g128</td>' \
           "<td>failed: RuntimeError: out of memory | while calibrating layer 3</td>" in page
    assert "† speed measured with at least one layer on a reference" in md


def test_report_order_and_header(comparison, tmp_path):
    comparison["machine"]["flags"] = ["avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "amx_tile"]
    comparison["machine"]["cuda"] = "NVIDIA H100"
    comparison["command"] = "lowbit compare --quick --report out"
    md = write_report(comparison, tmp_path)["md"].read_text()
    headings = re.findall(r"^#+ (.*)$", md, flags=re.M)
    assert headings == ["lowbit compare: smollm2-135m (causal-lm)", "Kernels on this machine", "Recommendation",
                        "All strategies", "Plots", "By strategy family", "Notes", "Data"]
    assert "CPU features that matter: AVX2 yes, AVX-512 yes (avx512f avx512bw avx512_vnni), VNNI yes, AMX yes" in md
    assert "CUDA device: NVIDIA H100" in md and "- Command: lowbit compare --quick --report out" in md
    assert "- int8 weight-only: fast kernel HERE\n- int4: reference path (slow) here" in md
    assert "![quality vs size](quality_vs_size.png)" in md
    assert "- eval: first 4096 tokens of Pride and Prejudice" in md and "lowbit version: 0.1.0" in md
    assert "Not in this comparison: static PTQ, QAT, distillation, mixed precision, pruning." in md


def test_family_view_reads_the_rows(comparison, tmp_path):
    md = write_report(comparison, tmp_path)["md"].read_text()
    # default budget (loss <= 5%): weight-only's pick is GPTQ, 90/538 of the size, 40/30 the speed (slow kernel)
    assert "| weight-only | GPTQ W4 g64 | 4 of 4 | +5.0% | calibration data; 12.5 s | 0.17× | 1.33×† | 812 MB | — |" in md
    assert "| LLM methods | NF4 (over budget) | 1 of 2 | +7.5% |" in md
    assert "| float / autocast | bf16 autocast | 2 of 2 | +0.10% |" in md


def test_html_is_self_contained(comparison, tmp_path):
    comparison["sensitivity"] = SENSITIVITY
    out = write_report(comparison, tmp_path)
    page = out["html"].read_text()
    assert "<script" not in page and "<link" not in page and "http://" not in page and "https://" not in page
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert [base64.b64decode(i) for i in images] == [p.read_bytes() for p in out["plots"]]
    assert page.count("<tr") == 1 + len(comparison["rows"]) + 1 + 4  # main table, family table (4 families)


def test_a_failing_plot_leaves_no_half_written_report(comparison, tmp_path, monkeypatch):
    def broken(comparison, path):
        raise RuntimeError("plot failed")

    monkeypatch.setattr(write, "draw_all", broken)
    with pytest.raises(RuntimeError, match="plot failed"):
        write_report(comparison, tmp_path / "new")
    assert list(tmp_path.iterdir()) == []  # neither the folder nor a staging folder

    monkeypatch.undo()
    old = write_report(comparison, tmp_path / "old")
    before = {p.name: p.read_bytes() for p in (tmp_path / "old").iterdir()}
    by_strategy(comparison, "nf4")["quality"] = 99.0
    monkeypatch.setattr("lowbit.report.plots.quality_vs_speed", broken)  # the second plot fails
    with pytest.raises(RuntimeError, match="plot failed"):
        write_report(comparison, tmp_path / "old")
    assert {p.name: p.read_bytes() for p in (tmp_path / "old").iterdir()} == before  # the old report, whole
    assert [p.name for p in tmp_path.iterdir()] == ["old"] and old["json"].exists()


def test_bad_input_says_what_to_fix(comparison, tmp_path):
    comparison["rows"][0]["quality"] = object()
    with pytest.raises(TypeError, match="must be JSON-serialisable"):
        write_report(comparison, tmp_path / "r")
    (tmp_path / "file").write_text("x")
    comparison["rows"][0]["quality"] = 20.0
    with pytest.raises(ValueError, match="expected a folder for the report, got the file"):
        write_report(comparison, tmp_path / "file")
    with pytest.raises(TypeError, match="expected a dict"):
        write_report([], tmp_path / "r")


def test_a_minimal_comparison_needs_only_metric_and_rows(tmp_path):
    minimal = {"metric": {"name": "accuracy", "higher_is_better": True},
               "rows": [{"strategy": "fp32", "status": "ok", "reference": True, "quality": 0.91, "quality_loss": 0.0},
                        {"strategy": "dynamic:w8a8", "status": "ok", "quality": 0.905, "quality_loss": 0.0055}]}
    out = write_report(minimal, tmp_path)
    assert json.loads(out["json"].read_text()) == minimal and len(out["plots"]) == 2
    md = out["md"].read_text()
    assert "CPU features: not recorded" in md and "lowbit version: not recorded" in md
    assert "| dynamic:w8a8 | dynamic:w8a8 | 0.9050 | +0.55% | — |" in md  # nothing measured is shown as a dash
    # no kind, no budget: the 1% default; without sizes the only row within it is the pick
    assert "Recommended: dynamic:w8a8: accuracy 0.9050, loss +0.55% vs float." in md
