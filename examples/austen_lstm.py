"""A character-level LSTM language model trained by lowbit on Jane Austen (all novels but Pride
and Prejudice), evaluated on the first 32,768 characters of Pride and Prejudice.

It is the recurrent model of lowbit's comparisons (benchmarks/lstm.py: dynamic int8 LSTM vs
torch.ao's ``quantize_dynamic``). The code lives in ``lowbit.models.austen_lstm`` so that
``lowbit.models.load_model("austen-lstm")`` finds it; this script trains it (~7 minutes on 2
cores, deterministic) or reuses the cached checkpoint (safetensors + JSON, never git)::

    python examples/austen_lstm.py            # train (or reuse the cached checkpoint), evaluate
    python examples/austen_lstm.py --retrain  # train again
"""
from __future__ import annotations

import argparse
import logging

import torch

from lowbit.eval.lm import evaluate_lm
from lowbit.models.austen_lstm import (AustenLSTM, CharTokenizer, checkpoint_path, eval_ids,
                                       load_austen_lstm, train)

__all__ = ["AustenLSTM", "CharTokenizer", "checkpoint_path", "load_austen_lstm", "train", "main"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--retrain", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(2)
    model, tokenizer = load_austen_lstm(retrain=args.retrain)
    result = evaluate_lm({"fp32": model}, eval_ids(tokenizer), window=512, batch_size=8)["fp32"]
    print(f"austen-lstm fp32 held-out perplexity (Pride and Prejudice, {result.num_tokens} "
          f"characters): {result.ppl:.3f}  ({checkpoint_path()})")
    sample = torch.tensor([tokenizer.encode("It is a truth universally acknowledged")])
    with torch.inference_mode():
        for _ in range(80):
            sample = torch.cat([sample, model(sample)[:, -1:].argmax(-1)], dim=1)
    print(repr(tokenizer.decode(sample[0])))


if __name__ == "__main__":
    main()
