"""The ``lowbit`` command: a thin layer over the Python API.

    lowbit quantize MODEL --recipe rtn --bits 4 --group-size 64 -o out/
    lowbit eval out/ --perplexity austen [--kl-against smollm2-135m]
    lowbit generate out/ "What is the capital of France?"
    lowbit doctor MODEL [--recipe rtn --bits 4 --group-size 64]
    lowbit compare [MODEL] [--data austen] [--strategies w8a8,gptq:w4g64] [--budget size=60]
                   [--quick] [--workers N | --ray ADDRESS] --report DIR

Errors print one line and exit with status 2; no traceback.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

RECIPES = ("rtn", "gptq", "awq", "hqq", "dynamic", "nf4", "llm-int8", "smoothquant")
CALIBRATED = ("gptq", "awq", "smoothquant")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, no usage dump
        raise CliError(f"{message} (see `lowbit {self.prog.split()[-1]} --help`)"
                       if " " in self.prog else message)


class CliError(Exception):
    pass


def make_recipe(args):
    from . import recipes

    if ":" in args.recipe or "+" in args.recipe or args.recipe not in RECIPES:
        return recipes.from_spec(args.recipe)  # a full spec, e.g. gptq:w4g64 or static:histogram
    exclude = tuple(args.exclude)
    if args.recipe == "dynamic":
        return recipes.DynamicPTQ(exclude=exclude, act_group_size=args.act_group_size)
    head = exclude or ("lm_head",)  # the LLM recipes keep the output head float by default
    if args.recipe == "nf4":
        return recipes.NF4(block_size=64 if args.group_size in (None, "auto") else args.group_size,
                           exclude=head)
    if args.recipe == "llm-int8":
        return recipes.LLMInt8(threshold=args.threshold, exclude=head)
    if args.recipe == "smoothquant":
        return recipes.SmoothQuant(alpha=args.alpha, act_mode="dynamic", exclude=head)
    return recipes.WeightOnly(num_bits=args.bits, group_size=args.group_size, method=args.recipe,
                              symmetric=False if args.recipe == "hqq" else None,
                              exclude=exclude, embeddings=args.embeddings)


def calibration_data(args, recipe, tokenizer):
    """Token ids for the calibrated recipes: --calib sequences of 512 tokens (DATA.md's set)."""
    if not recipe.needs_data:
        return None
    if tokenizer is None:
        raise CliError(f"--recipe {args.recipe} calibrates on text and {args.model} has no tokenizer")
    from .data import calibration_batches

    return calibration_batches(tokenizer, n=args.calib, seq_len=512, seed=0)


def load_any(spec: str):
    """A lowbit checkpoint folder or anything :func:`lowbit.models.load_model` accepts."""
    from . import io
    from .models import load_model

    path = Path(spec)
    if (path / io.checkpoint.META).is_file():
        from .models.hf import load_checkpoint_tokenizer

        model = io.load(path)
        return model.eval(), load_checkpoint_tokenizer(path)
    return load_model(spec)


def cmd_quantize(args) -> int:
    import lowbit

    from .eval import timed

    model, tokenizer = load_any(args.model)
    recipe = make_recipe(args)
    data = calibration_data(args, recipe, tokenizer)
    with timed() as t:
        q = lowbit.quantize(model, recipe, data=data, inplace=True)
    lowbit.save(q, args.output, tokenizer=tokenizer)
    print(q.lowbit_report.table())
    print(f"\nquantized in {t.seconds:.1f} s -> {args.output}")
    return 0


def cmd_eval(args) -> int:
    from .data import eval_tokens
    from .eval import evaluate_lm, footprint

    model, tokenizer = load_any(args.model)
    if tokenizer is None:
        raise CliError(f"{args.model} has no tokenizer; perplexity needs a language model")
    if args.perplexity != "austen":
        raise CliError(f"--perplexity {args.perplexity!r}: only 'austen' (Pride and Prejudice, "
                       "DATA.md protocol) is bundled")
    tokens = eval_tokens(tokenizer, num_tokens=args.tokens)
    models = {"model": model}
    reference = None
    if args.kl_against:
        models = {"reference": load_any(args.kl_against)[0], "model": model}
        reference = "reference"
    results = evaluate_lm(models, tokens, reference=reference)
    row = {**results["model"].as_dict(), **footprint(model).as_dict()}
    print(json.dumps(row, indent=1, default=str))
    return 0


def cmd_generate(args) -> int:
    import torch

    model, tokenizer = load_any(args.model)
    if tokenizer is None:
        raise CliError(f"{args.model} has no tokenizer to encode the prompt")
    if getattr(tokenizer, "chat_template", None) and not args.raw:
        text = tokenizer.apply_chat_template([{"role": "user", "content": args.prompt}],
                                             tokenize=False, add_generation_prompt=True)
    else:
        text = args.prompt
    ids = tokenizer(text, return_tensors="pt").input_ids
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=args.max_new_tokens, do_sample=False)
    print(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip())
    return 0


def cmd_doctor(args) -> int:
    from .doctor import diagnose

    model, _ = load_any(args.model)
    recipe = make_recipe(args) if args.recipe else None
    print(diagnose(model, recipe))
    return 0


def cmd_compare(args) -> int:
    from .comparison import Budget, compare
    from .models import DEFAULT_LM

    budget = Budget.parse(args.budget) if args.budget else None  # a bad budget fails before any work
    model = args.model or DEFAULT_LM
    result = compare(model, args.data, args.strategies, budget, quick=args.quick,
                     train_minutes=args.train_minutes, workers=args.workers, ray=args.ray,
                     report=args.report, command="lowbit " + " ".join(args.argv))
    failed = [r for r in result.rows if r["status"] != "ok"]
    print(f"\n{model} ({result.data['kind']}), {len(result.rows)} strategies in "
          f"{result.data['wall_s'] / 60:.1f} min\n")
    print(result.table())
    for row in failed:
        print(f"lowbit: strategy {row['strategy']!r} failed: {row.get('error')}", file=sys.stderr)
    print("\n" + result.recommend()["text"])
    if args.report:
        print(f"\nreport: {Path(args.report) / 'report.html'} (and report.md, comparison.json)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="lowbit", description="Quantize models and measure the result.")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = p.add_subparsers(dest="command", parser_class=_Parser, required=True)

    def recipe_args(sp, required: bool):
        sp.add_argument("--recipe", required=required,
                        help="weight-only rtn | gptq | awq | hqq (--bits, --group-size); dynamic: "
                             "W8A8 dynamic; nf4 (QLoRA, double quant); llm-int8; smoothquant (W8A8); "
                             "or any recipe spec, e.g. gptq:w4g64, nf4:b64, w8a8:pertoken, static:histogram")
        sp.add_argument("--calib", type=int, default=128,
                        help=f"calibration sequences of 512 tokens for {', '.join(CALIBRATED)} (default 128)")
        sp.add_argument("--act-group-size", type=_group, default=64,
                        help="dynamic: activation scale per token and this many inputs, or 'none' for per token")
        sp.add_argument("--threshold", type=float, default=6.0, help="llm-int8 outlier threshold")
        sp.add_argument("--alpha", type=float, default=0.5, help="smoothquant migration strength")
        sp.add_argument("--bits", type=int, default=4, help="weight bits for rtn (2..8)")
        sp.add_argument("--group-size", type=_group, default="auto",
                        help="elements per scale, or 'none' for per channel (default: 128 below 8 "
                             "bits, per channel at 8 bits: the formats with kernels)")
        sp.add_argument("--exclude", action="append", default=[], help="layer name pattern to keep float")
        sp.add_argument("--embeddings", action="store_true", help="also quantize embedding tables")

    q = sub.add_parser("quantize", help="quantize a model and save it")
    q.add_argument("model")
    recipe_args(q, required=True)
    q.add_argument("-o", "--output", required=True, help="checkpoint folder to write")
    q.set_defaults(func=cmd_quantize)

    e = sub.add_parser("eval", help="measure perplexity, KL and size")
    e.add_argument("model")
    e.add_argument("--perplexity", default="austen")
    e.add_argument("--tokens", type=int, default=32768, help="evaluation tokens (DATA.md: 32768)")
    e.add_argument("--kl-against", default=None, help="reference model for KL and top-1 agreement")
    e.set_defaults(func=cmd_eval)

    g = sub.add_parser("generate", help="greedy text generation")
    g.add_argument("model")
    g.add_argument("prompt")
    g.add_argument("--max-new-tokens", type=int, default=48)
    g.add_argument("--raw", action="store_true", help="do not apply the chat template")
    g.set_defaults(func=cmd_generate)

    d = sub.add_parser("doctor", help="what would run where, before anything runs")
    d.add_argument("model")
    recipe_args(d, required=False)
    d.set_defaults(func=cmd_doctor)

    c = sub.add_parser("compare", help="quantize every way, measure each, recommend one")
    c.add_argument("model", nargs="?", default=None,
                   help="bundled name, HF folder, .gguf file or module:factory (default: the bundled LM)")
    c.add_argument("--data", default=None,
                   help="austen (text), photos or fashion (images), or a .txt or .jsonl ({\"text\": ...} per line) file (default: by model kind)")
    c.add_argument("--strategies", default=None,
                   help="comma-separated recipe specs, e.g. w8a8,rtn:w4g64,gptq:w4g64 (default: every "
                        "family lowbit has for the model's kind)")
    c.add_argument("--budget", default=None, help="size=MB, bpw=BITS or max-loss=FRACTION (e.g. 2%%)")
    c.add_argument("--quick", action="store_true", help="less data and fewer timing runs (the demo)")
    c.add_argument("--train-minutes", type=float, default=0,
                   help="also run QAT/distillation, each with this training budget")
    c.add_argument("--workers", type=int, default=None, help="run trials in parallel on a local Ray")
    c.add_argument("--ray", default=None, help="run trials on the Ray cluster at this address")
    c.add_argument("--report", default=None, help="write report.md, report.html, comparison.json here")
    c.set_defaults(func=cmd_compare)
    return p


def _group(text: str):
    if text.lower() in ("none", "channel", "0"):
        return None
    if text.lower() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'none', got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    try:
        argv = sys.argv[1:] if argv is None else argv
        args = build_parser().parse_args(argv)
        args.argv = argv
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                            format="%(message)s")
        return args.func(args)
    except (CliError, ValueError, TypeError, FileNotFoundError, ImportError, OSError) as err:
        print(f"lowbit: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lowbit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
