"""``make demo``: quantize the bundled SmolLM2-135M three ways and measure each against fp32.

Protocol of DATA.md: perplexity and KL on the first 32768 tokens of Pride and Prejudice in
512-token windows; decode speed at batch 1, 2 threads, 32-token prompt + 128 new tokens.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

import torch

import lowbit

from .data import eval_tokens
from .eval import decode_speed, evaluate_lm, footprint, timed
from .models import load_model
from .recipes import DynamicPTQ, WeightOnly

log = logging.getLogger("lowbit")


def variants(group_size: int) -> dict[str, lowbit.recipes.Recipe]:
    """The demo's recipes. The tied embedding/output head is quantized with the linears."""
    return {
        "W8 per-channel (RTN)": WeightOnly(num_bits=8, group_size=None, embeddings=True),
        f"W4 g{group_size} (RTN)": WeightOnly(num_bits=4, group_size=group_size, embeddings=True),
        "W8A8 dynamic": DynamicPTQ(),
    }


def run(model_spec: str = "smollm2-135m", num_tokens: int = 32768, group_size: int = 64,
        repeats: int = 3) -> list[dict]:
    model, tokenizer = load_model(model_spec)
    tokens = eval_tokens(tokenizer, num_tokens=num_tokens)
    models, quant_s = {"fp32": model}, {"fp32": None}
    for name, recipe in variants(group_size).items():
        with timed() as t:
            models[name] = lowbit.quantize(model, recipe)
        quant_s[name] = t.seconds
    quality = evaluate_lm(models, tokens, reference="fp32")
    rows = []
    for name, m in models.items():
        fp = footprint(m)
        speed = decode_speed(m, tokenizer, repeats=repeats)
        rows.append({"method": name, "ppl": quality[name].ppl, "kl": quality[name].kl,
                     "size_mb": fp.size_mb, "bpw_model": fp.bpw_model,
                     "decode_tok_s": speed.decode_tok_s, "quant_s": quant_s[name]})
    return rows


def table(rows: list[dict]) -> str:
    out = ["| method | perplexity | KL vs fp32 | size MB | bits/weight | decode tok/s | quantize s |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        q = "-" if r["quant_s"] is None else f"{r['quant_s']:.1f}"
        out.append(f"| {r['method']} | {r['ppl']:.3f} | {r['kl']:.4f} | {r['size_mb']:.1f} | "
                   f"{r['bpw_model']:.2f} | {r['decode_tok_s']:.1f} | {q} |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--tokens", type=int, default=32768)
    p.add_argument("--group-size", type=int, default=64, help="576 = SmolLM2's width: g128 does not tile it")
    p.add_argument("--json", default=None, help="also write the rows to this file")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    rows = run(args.model, args.tokens, args.group_size)
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
