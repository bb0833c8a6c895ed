"""``make demo``: quantize the bundled SmolLM2-135M three ways and measure each against fp32.

Protocol of DATA.md: perplexity, KL and top-1 agreement in 512-token windows of Pride and
Prejudice; decode speed at batch 1, 2 threads, 32-token prompt + 128 new tokens.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

import torch

from .comparison import compare_lm, table
from .data import eval_tokens
from .models import DEFAULT_LM, load_model
from .recipes import DynamicPTQ, WeightOnly


def demo_recipes(group_size: int = 64) -> dict:
    """The demo's recipes. The tied embedding/output head is quantized with the linears."""
    return {
        "W8 per-channel RTN": WeightOnly(num_bits=8, group_size=None, embeddings=True),
        f"W4 g{group_size} RTN": WeightOnly(num_bits=4, group_size=group_size, embeddings=True),
        "W8A8 dynamic": DynamicPTQ(),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default=DEFAULT_LM)
    p.add_argument("--tokens", type=int, default=32768, help="evaluation tokens (protocol: 32768)")
    p.add_argument("--group-size", type=int, default=64,
                   help="SmolLM2's width 576 is not a multiple of 128, so g64 (DATA.md)")
    p.add_argument("--json", default=None, help="also write the rows to this file")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    model, tokenizer = load_model(args.model)
    tokens = eval_tokens(tokenizer, num_tokens=args.tokens)
    rows = compare_lm(model, tokenizer, tokens, demo_recipes(args.group_size), model_name=args.model)
    print(f"\n{args.model}: first {args.tokens} tokens of Pride and Prejudice, 512-token windows\n")
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
