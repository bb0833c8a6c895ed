"""Each CLI subcommand once on the real SmolLM2-135M, and the error path."""
import json
import subprocess
import sys

import pytest

from lowbit.cli import main

pytestmark = pytest.mark.real


def run(*args):
    return subprocess.run([sys.executable, "-m", "lowbit.cli", *args], capture_output=True,
                          text=True, timeout=600)


def test_bad_argument_one_line_error_exit_2():
    r = run("quantize", "smollm2-135m", "--recipe", "rtn", "--bits", "4", "--group-size", "banana", "-o", "/tmp/x")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "lowbit: error:" in r.stderr
    assert "Traceback" not in r.stderr


def test_missing_model_one_line_error(capsys):
    assert main(["doctor", "/no/such/model"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lowbit: error: cannot load model '/no/such/model'") and "Traceback" not in err


def test_ragged_group_is_a_one_line_error(tmp_path, capsys):
    code = main(["quantize", "smollm2-135m", "--recipe", "rtn", "--bits", "4", "--group-size", "128",
                 "-o", str(tmp_path / "q")])
    assert code == 2
    assert "group_size=128 does not divide its input size 576" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()


def test_doctor_lists_layers_kernels_and_memory(capsys):
    assert main(["doctor", "smollm2-135m", "--recipe", "rtn", "--bits", "4", "--group-size", "64"]) == 0
    out = capsys.readouterr().out
    assert "model.layers.0.self_attn.q_proj" in out and "uint4 asym g64" in out
    assert "linear_int4" in out and "0 would fail" in out


def test_quantize_eval_generate(tmp_path, capsys):
    out = tmp_path / "w8"
    assert main(["quantize", "smollm2-135m", "--recipe", "rtn", "--bits", "8", "--group-size", "none",
                 "--embeddings", "-o", str(out)]) == 0
    assert (out / "lowbit.json").is_file() and (out / "tokenizer.json").is_file()
    capsys.readouterr()
    assert main(["eval", str(out), "--tokens", "1024"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert 5 < row["ppl"] < 100 and row["bpw_model"] < 8.2
    assert main(["generate", str(out), "What is the capital of France?", "--max-new-tokens", "20"]) == 0
    assert "Paris" in capsys.readouterr().out


def test_compare_bad_budget_and_wrong_data_are_one_line_errors(capsys):
    assert main(["compare", "fashion-cnn", "--budget", "speed=fast"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "expected size=MB, bpw=BITS or max-loss" in err
    assert main(["compare", "efficientnet-lite0", "--data", "austen"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not fit a cnn model: it needs images" in err


def test_compare_writes_the_report_and_names_failures(tmp_path, capsys):
    code = main(["compare", "fashion-cnn", "--strategies", "static:minmax,nosuch,rtn:w4g7",
                 "--budget", "max-loss=1%", "--report", str(tmp_path / "rep")])
    captured = capsys.readouterr()
    assert code == 0
    assert "| static" in captured.out and str(tmp_path / "rep" / "report.html") in captured.out
    assert "strategy 'nosuch' failed: unknown recipe 'nosuch'" in captured.err
    assert "strategy 'rtn:w4g7' failed" in captured.err
    data = json.loads((tmp_path / "rep" / "comparison.json").read_text())
    assert [r["strategy"] for r in data["rows"]] == ["fp32", "static:minmax", "nosuch", "rtn:w4g7"]
    assert data["kind"] == "cnn" and data["metric"]["name"] == "accuracy"
    assert data["command"].startswith("lowbit compare fashion-cnn")
