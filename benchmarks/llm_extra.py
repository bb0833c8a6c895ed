"""LLM.int8, NF4 (+ double quant), SmoothQuant W8A8 and naive static W8A8 on SmolLM2-135M,
under the protocol of shared/DATA.md; rows merged into results/llm.json.

    python benchmarks/llm_extra.py [--tokens 32768] [--calib 128] [--methods nf4,rtn4,...]
                                   [--alphas 0.5,0.6,0.7,0.8] [--no-decode] [--kernels]

    python benchmarks/llm_extra.py --kernels --methods ''   # the NF4 kernel timing alone

Only the decoder linears are quantized: the tied embedding / output head stays fp32 ("head":
"fp32" in every row). All models are evaluated in one lock-step pass against fp32. Rows with
the same (method, num_bits, group_size) in results/llm.json are replaced, others kept; the file
is written atomically (the quantize / evaluate / footprint / decode loop is
``lowbit.comparison.compare_lm``). ``--alphas`` first picks SmoothQuant's alpha on CALIBRATION
data only (statistics from 32 calibration windows, perplexity on 8 other calibration windows of
emma + mansfieldpark; the evaluation novel is never seen) and reports the sweep in
results/llm_extra_alpha.json. ``--kernels``
times the NF4 kernel against bf16/fp32 F.linear at batch 1 -> results/nf4_kernel.json.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import results  # benchmarks/results.py
from lowbit.comparison import compare_lm
from lowbit.data import calibration_batches, eval_tokens
from lowbit.doctor import machine
from lowbit.models import load_model
from lowbit.recipes import from_spec

MODEL = "smollm2-135m"
HEAD = "exclude=lm_head"


def recipes(alpha: float) -> dict[str, tuple[str, dict]]:
    """name (for --methods) -> (recipe spec, the row's method/num_bits/group_size)."""
    return {
        "llm_int8": ("llm-int8", {"method": "llm_int8 (threshold 6)", "num_bits": 8, "group_size": None}),
        "nf4": ("nf4", {"method": "nf4 + double quant", "num_bits": 4, "group_size": 64}),
        "rtn4": (f"rtn:w4g64,sym,{HEAD}", {"method": "rtn sym", "num_bits": 4, "group_size": 64}),
        "smoothquant": (f"smoothquant:a{alpha!r}",
                        {"method": f"smoothquant w8a8 static per-tensor (alpha {alpha:g})",
                         "num_bits": 8, "group_size": None}),
        "smoothquant_dynamic": (f"smoothquant:a{alpha!r},dynamic",
                                {"method": f"smoothquant w8a8 dynamic per-token (alpha {alpha:g})",
                                 "num_bits": 8, "group_size": None}),
        "w8a8_static": ("static-w8a8",
                        {"method": "w8a8 static per-tensor (naive)", "num_bits": 8, "group_size": None}),
    }


def alpha_sweep(model, tokenizer, alphas: list[float], out: Path) -> float:
    """SmoothQuant's alpha chosen on calibration data alone, never on the evaluation tokens.

    40 windows of 512 tokens are drawn from the calibration novels (seed 0): the first 32 give
    the activation statistics, the other 8 (4096 tokens, not used for statistics) are the
    held-out text whose perplexity picks alpha.
    """
    draw = calibration_batches(tokenizer, n=40, seq_len=512, seed=0)
    stats, held_out = draw[:32], draw[32:].reshape(-1)
    candidates = {f"alpha {a:g}": from_spec(f"smoothquant:a{a!r}") for a in alphas}
    candidates["naive static"] = from_spec("static-w8a8")
    res = compare_lm(model, tokenizer, held_out, candidates, model_name="SmolLM2-135M-Instruct",
                     calibration=stats, speed=False)
    rows = [{"setting": r["method"], "ppl": r["ppl"], "kl": r["kl"], "tokens": int(held_out.numel()),
             "tokens_from": "held-out calibration windows (emma+mansfieldpark, seed 0, 8 x 512)",
             "calib": "32 x 512"} for r in res]
    out.write_text(json.dumps(rows, indent=1))
    for r in rows:
        logging.info("alpha sweep: %s", r)
    ppl = {r["setting"]: r["ppl"] for r in rows}
    return min(alphas, key=lambda a: ppl[f"alpha {a:g}"])


def nf4_kernel_rows(rounds: int = 100) -> list[dict]:
    from lowbit.algorithms.nf4 import quantize_nf4
    import lowbit.kernels as lk

    rows = []
    torch.set_num_threads(2)
    for K, N in [(576, 576), (576, 1536), (1536, 576), (576, 49152), (4096, 11008)]:
        W = torch.randn(N, K) * 0.02
        q = quantize_nf4(W)
        args = (q.data, q.scale.data, q.scale.scale, q.offset, 64)
        x, Wb = torch.randn(1, K), W.bfloat16()
        xb = x.bfloat16()
        fns = {"bf16 F.linear": lambda: F.linear(xb, Wb), "fp32 F.linear": lambda: F.linear(x, W),
               lk.kernel_for("linear_nf4", x.device, x.dtype, x.shape): lambda: lk.linear_nf4(x, *args)}
        times = {k: [] for k in fns}
        with torch.inference_mode():
            for f in fns.values():
                f()
            for _ in range(rounds if K < 4096 else max(rounds // 4, 10)):
                for k, f in fns.items():  # round-robin: load elsewhere hits all alike
                    t = time.perf_counter()
                    f()
                    times[k].append(time.perf_counter() - t)
        med = {k: statistics.median(v) * 1e6 for k, v in times.items()}
        rows.append({"K": K, "N": N, "M": 1, "threads": 2, "median_us": med,
                     "nf4_speedup_vs_bf16": med["bf16 F.linear"] / med[lk.kernel_for("linear_nf4", x.device, x.dtype, x.shape)],
                     "loadavg": os.getloadavg()[0], "machine": machine()})
        logging.info("nf4 kernel: %s", rows[-1])
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=32768)
    p.add_argument("--calib", type=int, default=128)
    p.add_argument("--methods", default="llm_int8,nf4,rtn4,smoothquant,smoothquant_dynamic,w8a8_static")
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--alphas", default="", help="comma list: run the quick alpha sweep first")
    p.add_argument("--no-decode", action="store_true")
    p.add_argument("--kernels", action="store_true")
    p.add_argument("--out", default="results/llm.json")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.kernels:
        Path("results").mkdir(exist_ok=True)
        Path("results/nf4_kernel.json").write_text(json.dumps(nf4_kernel_rows(), indent=1))
        if not args.methods:
            return
    model, tokenizer = load_model(MODEL)
    if args.alphas:
        args.alpha = alpha_sweep(model, tokenizer, [float(a) for a in args.alphas.split(",")],
                                 Path("results/llm_extra_alpha.json"))
        logging.info("best alpha on the quick sweep: %g", args.alpha)
    calib = calibration_batches(tokenizer, n=args.calib, seq_len=512, seed=0)
    tokens = eval_tokens(tokenizer, num_tokens=args.tokens)
    table = recipes(args.alpha)
    names = [n for n in args.methods.split(",") if n]
    unknown = [n for n in names if n not in table]
    if unknown:
        raise SystemExit(f"unknown --methods {', '.join(unknown)}; known: {', '.join(table)}")
    rows = compare_lm(model, tokenizer, tokens, {n: from_spec(table[n][0]) for n in names},
                      model_name="SmolLM2-135M-Instruct", calibration=calib, speed=not args.no_decode,
                      fields={n: table[n][1] for n in names}, reference_row=False,
                      common={"tool": "lowbit", "head": "fp32", "eval_tokens": args.tokens,
                              "calibration": f"{args.calib} x 512 seed 0"})
    for row in rows:
        logging.info("%s", {k: v for k, v in row.items() if k != "machine"})
    results.merge(args.out, rows, key=("method", "num_bits", "group_size"))

if __name__ == "__main__":
    main()
