"""A hand-made comparison (the schema of comparison.json) shared by the report tests (no lowbit run)."""
from __future__ import annotations


def row(strategy, method, family, quality, loss, size, bpw, speed, *, slow=False, needs=(), **extra):
    return {"strategy": strategy, "method": method, "family": family, "status": "ok", "quality": quality,
            "quality_loss": loss, "ppl": quality, "size_mb": size, "bpw_model": bpw, "speed": speed,
            "decode_tok_s": speed, "quant_s": 12.5, "peak_rss_mb": 812.0, "needs": list(needs),
            "train_minutes": 0, "kernels": ["reference.int4"] if slow else ["cpu.int8"],
            "reference_kernels": slow, **extra}


ROWS = [
    row("fp32", "fp32", "float", 20.0, 0.0, 538.0, 32.0, 30.0, reference=True),
    row("bf16", "bf16 autocast", "autocast", 20.02, 0.001, 269.0, 16.0, 25.0),
    row("dynamic:w8a8", "dynamic W8A8", "dynamic", 20.3, 0.015, 150.0, 8.9, 35.0, slow=True),
    row("rtn:w8", "RTN W8", "weight-only", 20.05, 0.0025, 150.0, 8.5, 20.0),
    row("rtn:w4g64", "RTN W4 g64", "weight-only", 28.4, 0.42, 90.0, 4.6, 40.0, slow=True),
    row("gptq:w4g64", "GPTQ W4 g64", "weight-only", 21.0, 0.05, 90.0, 4.6, 40.0, slow=True,
        needs=["calibration data"]),
    row("hqq:w3g64", "HQQ W3 g64", "weight-only", 26.0, 0.30, 75.0, 3.6, 38.0),
    row("nf4", "NF4", "llm", 21.5, 0.075, 88.0, 4.5, 12.0),
    {"strategy": "awq:w4g128", "method": "AWQ W4 g128", "family": "llm", "status": "failed",
     "error": "RuntimeError: out of memory | while calibrating layer 3"},
]

COMPARISON = {
    "model": "smollm2-135m", "kind": "causal-lm",
    "metric": {"name": "ppl", "label": "perplexity", "higher_is_better": False},
    "speed_metric": {"name": "decode_tok_s", "label": "decode tok/s (batch 1)"},
    "machine": {"cpu": "AMD EPYC 7B13", "cores": 2, "flags": ["avx2", "fma"], "cuda": None, "torch": "2.13.0"},
    "fast_kernels": {"int8 weight-only": True, "int4": False, "w8a8 dynamic": False},
    "budget": None, "quick": True, "notes": ["GPTQ calibrated on 16 sequences (quick mode)"],
    "data": {"eval": "first 4096 tokens of Pride and Prejudice", "calibration": "Emma, 16 x 512 tokens"},
    "started": "2025-01-01T12:00:00", "wall_s": 512.3, "lowbit_version": "0.1.0",
    "rows": ROWS,
    "future_key": {"kept": [1, 2]},
}


def by_strategy(comparison: dict, strategy: str) -> dict:
    return next(r for r in comparison["rows"] if r["strategy"] == strategy)
