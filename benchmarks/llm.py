"""Weight-only LLM quantization on SmolLM2-135M under DATA.md's protocol -> results/llm.json.

    python benchmarks/llm.py [--methods rtn,rtn-mse,gptq,awq,hqq] [--bits 8,4,3,2]
                             [--tokens 32768] [--calib 128] [--speed] [--out results/llm.json]

Calibration: 128 x 512 tokens, seed 0, emma + mansfieldpark. Evaluation: perplexity and
KL(fp32 || quantized) on the first ``--tokens`` tokens of prideprejudice, each quantized model in
lock-step with the fp32 reference. Only the decoder linears are quantized; the tied embedding /
lm_head stays fp32 ("head": "fp32"), as in the peers' rows of DATA.md. W8 is per channel, lower
bit widths use asymmetric groups of 64 (SmolLM2's 576 is not a multiple of 128).

Each method is quantized in place on a fresh copy of the model, so ``quant_s`` is the quantizing
call alone and ``peak_rss_mb`` the process's peak while it ran (the fp32 reference stays resident
beside it; ``quant_extra_mb`` is the peak minus the RSS before the call). Rows are merged into the
existing results file by (method, num_bits, group_size): other benchmarks' rows are kept.
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import logging
import os
import tempfile
from pathlib import Path

import torch

import lowbit
from lowbit import __version__
from lowbit.data import calibration_batches, eval_tokens
from lowbit.doctor import machine
from lowbit.eval import decode_speed, evaluate_lm, footprint, timed, track_peak_rss
from lowbit.models import load_model
from lowbit.recipes import WeightOnly

log = logging.getLogger("lowbit.bench")
MODEL = "smollm2-135m"
FP32_BYTES_MB = 134_515_008 * 4 / 2**20
BITS_FOR = {"rtn": (8, 4, 3), "rtn-mse": (8, 4, 3), "gptq": (8, 4, 3, 2), "awq": (8, 4, 3),
            "hqq": (8, 4, 3, 2)}


def recipe(method: str, bits: int) -> WeightOnly:
    group = None if bits == 8 else 64
    kw = {"method": "rtn", "mse_clip": True} if method == "rtn-mse" else {"method": method}
    symmetric = False if method == "hqq" else None          # HQQ fits zero points
    return WeightOnly(num_bits=bits, group_size=group, symmetric=symmetric,
                      exclude=("lm_head",), **kw)


def merge(path: Path, rows: list[dict]) -> None:
    old = json.loads(path.read_text()) if path.exists() else []
    key = lambda r: (r.get("tool"), r.get("method"), r.get("num_bits"), r.get("group_size"))  # noqa: E731
    new_keys = {key(r) for r in rows}
    merged = [r for r in old if key(r) not in new_keys] + rows
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(merged, f, indent=1)
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--methods", default="rtn,gptq,awq,hqq")
    ap.add_argument("--bits", default="8,4,3,2")
    ap.add_argument("--tokens", type=int, default=32768)
    ap.add_argument("--calib", type=int, default=128, help="calibration sequences of 512 tokens")
    ap.add_argument("--speed", action="store_true", help="also measure batch-1 decode tok/s")
    ap.add_argument("--fp32-row", action="store_true", help="also write the fp32 row")
    ap.add_argument("--out", type=Path, default=Path("results/llm.json"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

    model, tokenizer = load_model(MODEL)
    model.eval()
    calib = calibration_batches(tokenizer, n=args.calib, seq_len=512, seed=0)
    tokens = eval_tokens(tokenizer, num_tokens=args.tokens)
    common = {"model": "SmolLM2-135M-Instruct", "tool": "lowbit", "lowbit_version": __version__,
              "machine": machine(), "eval_tokens": int(tokens.numel()),
              "calibration": f"{args.calib}x512 seed 0 emma+mansfieldpark", "head": "fp32"}
    bits = [int(b) for b in args.bits.split(",")]
    rows = []
    for method in args.methods.split(","):
        for b in bits:
            if b not in BITS_FOR[method]:
                continue
            r = recipe(method, b)
            work = copy.deepcopy(model)
            gc.collect()
            with timed() as t, track_peak_rss() as rss:
                q = lowbit.quantize(work, r, data=calib if r.needs_data else None, inplace=True)
            result = evaluate_lm({"fp32": model, method: q}, tokens, reference="fp32")[method]
            fp = footprint(q)
            row = {**common, "method": method, "num_bits": b, "group_size": r.group_size,
                   "format": r.format.label(), "ppl": result.ppl, "kl": result.kl,
                   "top1_agreement": result.top1_agreement, "bpw_model": fp.bpw_model,
                   "bpw_linears": fp.bpw_linears, "size_mb": fp.size_mb, "quant_s": t.seconds,
                   "peak_rss_mb": rss.peak_mb, "quant_extra_mb": rss.increase_mb,
                   "fp32_model_mb": FP32_BYTES_MB,
                   "kernels": sorted({x.kernel for x in q.lowbit_report.quantized})}
            if args.speed:
                s = decode_speed(q, tokenizer, repeats=3)
                row.update(decode_tok_s=s.decode_tok_s, prefill_tok_s=s.prefill_tok_s)
            log.info("%s W%d: ppl %.3f kl %.4f bpw %.3f quant %.1f s peak %.0f MB", method, b,
                     row["ppl"], row["kl"], row["bpw_linears"], row["quant_s"], row["peak_rss_mb"])
            rows.append(row)
            merge(args.out, rows)
            del q, work
    if args.fp32_row:
        ref = evaluate_lm({"fp32": model}, tokens, reference="fp32")["fp32"]
        fp = footprint(model)
        rows.append({**common, "method": "fp32", "num_bits": 32, "group_size": None,
                     "ppl": ref.ppl, "kl": 0.0, "bpw_model": fp.bpw_model,
                     "bpw_linears": fp.bpw_linears, "size_mb": fp.size_mb})
        merge(args.out, rows)
    print(json.dumps([{k: r.get(k) for k in ("method", "num_bits", "group_size", "ppl", "kl",
                                              "bpw_linears", "quant_s", "peak_rss_mb")}
                      for r in rows], indent=1))


if __name__ == "__main__":
    main()
