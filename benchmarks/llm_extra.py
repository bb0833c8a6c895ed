"""LLM.int8, NF4 (+ double quant), SmoothQuant W8A8 and naive static W8A8 on SmolLM2-135M,
under the protocol of shared/DATA.md; rows merged into results/llm.json.

    python benchmarks/llm_extra.py [--tokens 32768] [--calib 128] [--methods nf4,rtn4,...]
                                   [--alphas 0.5,0.6,0.7,0.8] [--no-decode] [--kernels]

    python benchmarks/llm_extra.py --kernels --methods ''   # the NF4 kernel timing alone

Only the decoder linears are quantized: the tied embedding / output head stays fp32 ("head":
"fp32" in every row). All models are evaluated in one lock-step pass against fp32. Rows with
the same (method, num_bits, group_size) in results/llm.json are replaced, others kept; the file
is written atomically. ``--alphas`` first runs a quick SmoothQuant alpha sweep (static, 4096
tokens, 32 calibration sequences) and reports it in results/llm_extra_alpha.json. ``--kernels``
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

import lowbit
import results  # benchmarks/results.py
from lowbit.data import calibration_batches, eval_tokens
from lowbit.doctor import machine
from lowbit.eval import decode_speed, evaluate_lm, footprint, timed, track_peak_rss
from lowbit.models import load_model
from lowbit.recipes import WeightOnly
from lowbit.recipes.llm import NF4, LLMInt8, SmoothQuant, StaticW8A8

MODEL = "smollm2-135m"
HEAD = ("lm_head",)


def recipes(alpha: float) -> dict[str, tuple[object, dict]]:
    """name -> (recipe, the row's method/num_bits/group_size)."""
    return {
        "llm_int8": (LLMInt8(threshold=6.0, exclude=HEAD),
                     {"method": "llm_int8 (threshold 6)", "num_bits": 8, "group_size": None}),
        "nf4": (NF4(block_size=64, double_quant=True, exclude=HEAD),
                {"method": "nf4 + double quant", "num_bits": 4, "group_size": 64}),
        "rtn4": (WeightOnly(num_bits=4, group_size=64, symmetric=True, exclude=HEAD),
                 {"method": "rtn sym", "num_bits": 4, "group_size": 64}),
        "smoothquant": (SmoothQuant(alpha=alpha, activation="static", exclude=HEAD),
                        {"method": f"smoothquant w8a8 static per-tensor (alpha {alpha:g})",
                         "num_bits": 8, "group_size": None}),
        "smoothquant_dynamic": (SmoothQuant(alpha=alpha, activation="dynamic", exclude=HEAD),
                                {"method": f"smoothquant w8a8 dynamic per-token (alpha {alpha:g})",
                                 "num_bits": 8, "group_size": None}),
        "w8a8_static": (StaticW8A8(exclude=HEAD),
                        {"method": "w8a8 static per-tensor (naive)", "num_bits": 8, "group_size": None}),
    }


def alpha_sweep(model, tokenizer, alphas: list[float], out: Path) -> float:
    calib = calibration_batches(tokenizer, n=32, seq_len=512, seed=0)
    tokens = eval_tokens(tokenizer, num_tokens=4096)
    models = {"fp32": model}
    for a in alphas:
        models[f"alpha {a:g}"] = lowbit.quantize(model, SmoothQuant(alpha=a, exclude=HEAD), data=calib)
    models["naive static"] = lowbit.quantize(model, StaticW8A8(exclude=HEAD), data=calib)
    res = evaluate_lm(models, tokens, reference="fp32")
    rows = [{"setting": n, "ppl": r.ppl, "kl": r.kl, "tokens": 4096, "calib": "32 x 512"} for n, r in res.items()]
    out.write_text(json.dumps(rows, indent=1))
    for r in rows:
        logging.info("alpha sweep: %s", r)
    best = min(alphas, key=lambda a: res[f"alpha {a:g}"].ppl)
    return best


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
    models, rows = {"fp32": model}, {}
    for name in args.methods.split(","):
        recipe, row = table[name]
        with track_peak_rss() as rss, timed() as t:
            models[name] = lowbit.quantize(model, recipe, data=calib if recipe.needs_data else None)
        fp = footprint(models[name])
        rows[name] = {**row, "tool": "lowbit", "model": "SmolLM2-135M-Instruct", "head": "fp32",
                      "bpw_model": fp.bpw_model, "bpw_linears": fp.bpw_linears,
                      "quant_s": t.seconds, "peak_rss_mb": rss.peak_mb,
                      # the process also holds fp32 and the models quantized before this one
                      "peak_rss_increase_mb": rss.increase_mb,
                      "kernel": models[name].lowbit_report.quantized[0].kernel,
                      "eval_tokens": args.tokens, "calibration": f"{args.calib} x 512 seed 0"}
        logging.info("%s: quantized in %.1f s, %.3f bpw linears", name, t.seconds, fp.bpw_linears)
    evals = evaluate_lm(models, tokens, reference="fp32")
    logging.info("fp32 ppl %.3f", evals["fp32"].ppl)
    for name, row in rows.items():
        r = evals[name]
        row.update(ppl=r.ppl, kl=r.kl, top1_agreement=r.top1_agreement,
                   ppl_vs_fp32=r.ppl / evals["fp32"].ppl - 1)
        if not args.no_decode:
            row["decode_tok_s"] = decode_speed(models[name], tokenizer).decode_tok_s
        row.update(machine=machine(), lowbit_version=lowbit.__version__, loadavg=os.getloadavg()[0])
        logging.info("%s", {k: v for k, v in row.items() if k != "machine"})
    results.merge(args.out, list(rows.values()), key=("method", "num_bits", "group_size"))


if __name__ == "__main__":
    main()
