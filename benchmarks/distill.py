"""Distill-then-quantize as one recipe on SmolLM2-135M -> results/qat.json.

    python benchmarks/distill.py [--layers 24] [--minutes 12] [--bits 4] [--lr 5e-5]
                                 [--tokens 32768] [--out results/qat.json]

``Sequence(Distill(num_layers=L), WeightOnly(num_bits=B, group_size=64, method="gptq"))``:
the student keeps L of the 30 decoder blocks (evenly spaced), trains for ``--minutes`` on the
KL to the fp32 model's next-token distributions over windows of emma + mansfieldpark (4 x 256
tokens per step, seed 3), then GPTQ quantizes it (128 x 512 calibration tokens, seed 0, as
results/llm.json). Evaluated under DATA.md's protocol in lock-step with fp32. The teacher's own
GPTQ W4/W3 points are copied beside it from results/llm.json (same protocol), with their source.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("lowbit.bench")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--minutes", type=float, default=12.0)
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--tokens", type=int, default=32768)
    ap.add_argument("--out", type=Path, default=ROOT / "results/qat.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

    import lowbit
    from lowbit.data import calibration_batches, eval_tokens
    from lowbit.doctor import machine
    from lowbit.eval import evaluate_lm, footprint
    from lowbit.models import load_model
    from lowbit.recipes import Sequence, from_spec

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import results  # noqa: E402

    teacher, tok = load_model("smollm2-135m")
    recipe = from_spec(f"distill:num_layers={args.layers},minutes={args.minutes!r},lr={args.lr!r},batch_size=4"
                       f"+gptq:w{args.bits}g64,exclude=lm_head")
    train = calibration_batches(tok, n=4096, seq_len=256, seed=3)
    calib = calibration_batches(tok, n=128, seq_len=512, seed=0)
    t0 = time.perf_counter()
    q = lowbit.quantize(teacher, recipe, data=Sequence.per_step(train, calib))
    total_s = time.perf_counter() - t0
    tokens = eval_tokens(tok, num_tokens=args.tokens)
    res = evaluate_lm({"fp32": teacher, "chain": q}, tokens, reference="fp32")
    fp = footprint(q)
    common = {"model": "SmolLM2-135M-Instruct", "tool": "lowbit", "machine": machine(),
              "lowbit_version": lowbit.__version__, "eval_tokens": int(tokens.numel()), "head": "fp32"}
    info = q.lowbit_distill
    rows = [{**common, "method": f"Distill {args.layers}/30 blocks + GPTQ W{args.bits} g64 (one Sequence recipe)",
             "recipe": recipe.describe(), "num_bits": args.bits, "group_size": 64,
             "ppl": res["chain"].ppl, "kl": res["chain"].kl, "size_mb": fp.size_mb,
             "bpw_linears": fp.bpw_linears, "bpw_model": fp.bpw_model, "train_steps": info["steps"],
             "train_tokens": info["steps"] * 4 * 256, "first_kl": info["first_loss"],
             "last_kl_mean_20": info["last_loss"], "total_s": round(total_s, 1), "lr": args.lr}]
    llm = json.loads((ROOT / "results/llm.json").read_text())
    for r in llm:
        if r.get("tool") == "lowbit" and r.get("method") in ("gptq", "fp32") and r.get("num_bits") in (32, 4, 3):
            rows.append({**common, "method": f"teacher {r['method']} W{r['num_bits']}"
                         + (" g64" if r.get("group_size") else ""),
                         "num_bits": r["num_bits"], "group_size": r.get("group_size"), "ppl": r["ppl"],
                         "kl": r.get("kl"), "size_mb": r.get("size_mb"), "bpw_linears": r.get("bpw_linears"),
                         "source": "results/llm.json (same protocol)"})
    for r in rows:
        log.info("%s", {k: v for k, v in r.items() if k != "machine"})
    results.merge(args.out, rows)


if __name__ == "__main__":
    main()
