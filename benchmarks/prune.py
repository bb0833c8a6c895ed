"""Pruning + quantization under the protocol of shared/DATA.md -> results/prune.json.

Stages:

    python benchmarks/prune.py llm [--rows a,b,...]   # SmolLM2-135M: magnitude / Wanda / SparseGPT
                                                     # 50%, joint and two-step with W4 g64, 2:4,
                                                     # llm-compressor's SparseGPT and Wanda (their
                                                     # pruned folders, made by prune_peers.py)
    python benchmarks/prune.py structured            # 25% of MLP channels + recovery distillation,
                                                     # perplexity and the smaller model's speed
    python benchmarks/prune.py cnn                   # EfficientNet-Lite0: 50% magnitude / Wanda +
                                                     # static int8, vs static int8 alone
    python benchmarks/prune.py table                 # the README tables from results/prune.json

SmolLM2: calibration = the protocol's 128 x 512 tokens (seed 0, emma + mansfieldpark) for
every method, the peers included; evaluation = perplexity and KL(fp32 || model) on the first
32768 tokens of prideprejudice, every model of a stage in ONE lock-step pass (one fp32
reference). Only the 210 decoder linears are pruned (the tied embedding / head stays dense
fp32, as in every LLM row of this project). bpw = over those linears, counted from the stored
tensors (values, bitmask, scales, zero points); a float pruned layer counts 32 bits.
Each built model is kept as a lowbit checkpoint under ``$LOWBIT_CACHE/bench-prune/`` so an
interrupted stage resumes; ``--fresh`` rebuilds.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.results import merge  # noqa: E402

log = logging.getLogger("prune")
OUT = ROOT / "results" / "prune.json"
MODEL = "smollm2-135m"
LINEARS = ("*.self_attn.q_proj", "*.self_attn.k_proj", "*.self_attn.v_proj", "*.self_attn.o_proj",
           "*.mlp.gate_proj", "*.mlp.up_proj", "*.mlp.down_proj")
KEY = ("mode", "setting")


def setup(n_calib: int = 128):
    import lowbit
    from lowbit.data import calibration_batches
    from lowbit.doctor import machine
    from lowbit.models import load_model

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    model, tokenizer = load_model(MODEL)
    model.eval()
    calib = calibration_batches(tokenizer, n=n_calib, seq_len=512, seed=0)
    common = {"model": "SmolLM2-135M-Instruct", "lowbit_version": lowbit.__version__, "machine": machine(),
              "calibration": f"{n_calib}x512 seed 0 emma+mansfieldpark", "head": "fp32"}
    return model, tokenizer, calib, common


def textbook_magnitude(model, data):
    """The textbook recipe: torch.nn.utils.prune.l1_unstructured(amount=0.5) on every decoder
    linear, made permanent with prune.remove."""
    from torch.nn.utils import prune

    from lowbit.nn.swap import matches

    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and matches(name, LINEARS):
            prune.l1_unstructured(m, "weight", amount=0.5)
            prune.remove(m, "weight")
    return model


def llm_rows() -> dict:
    from lowbit.recipes import Prune, WeightOnly

    inc = dict(include=LINEARS)
    gptq = lambda bits: WeightOnly(num_bits=bits, group_size=64, method="gptq", **inc)  # noqa: E731
    return {
        "magnitude 50% (torch l1_unstructured)": {"tool": "torch", "build": textbook_magnitude},
        "wanda 50%": {"tool": "lowbit", "build": Prune(method="wanda", sparsity=0.5, **inc)},
        "sparsegpt 50%": {"tool": "lowbit", "build": Prune(method="sparsegpt", sparsity=0.5, **inc)},
        "sparsegpt 50% (not true-sequential)": {"tool": "lowbit", "build": Prune(method="sparsegpt", sparsity=0.5,
                                                                               true_sequential=False, **inc)},
        "sparsegpt 50% + w4g64 joint": {"tool": "lowbit",
                                        "build": Prune(method="sparsegpt", sparsity=0.5, num_bits=4, **inc)},
        "sparsegpt 50% then gptq w4g64": {"tool": "lowbit", "base": "sparsegpt 50%", "build": gptq(4)},
        "sparsegpt 2:4 + w4g64 joint": {"tool": "lowbit",
                                        "build": Prune(method="sparsegpt", pattern="2:4", num_bits=4, **inc)},
        "wanda 2:4": {"tool": "lowbit", "build": Prune(method="wanda", pattern="2:4", **inc)},
        "sparsegpt 2:4": {"tool": "lowbit", "build": Prune(method="sparsegpt", pattern="2:4", **inc)},
        "gptq w3g64 (dense)": {"tool": "lowbit", "build": gptq(3)},
        "gptq w4g64 (dense)": {"tool": "lowbit", "build": gptq(4)},
        "llm-compressor sparsegpt 50%": {"tool": "llm-compressor", "peer": "llmc-sparsegpt-50"},
        "llm-compressor wanda 50%": {"tool": "llm-compressor", "peer": "llmc-wanda-50"},
    }


DEFAULT_ROWS = ("magnitude 50% (torch l1_unstructured),wanda 50%,sparsegpt 50%,sparsegpt 50% + w4g64 joint,"
                "sparsegpt 50% then gptq w4g64,sparsegpt 2:4 + w4g64 joint,llm-compressor sparsegpt 50%,"
                "llm-compressor wanda 50%")


def zeros_fraction(model) -> float:
    """Fraction of exact zeros over the decoder linears' (dequantized) weights."""
    from lowbit.nn.swap import matches

    zeros = total = 0
    for name, m in model.named_modules():
        if matches(name, LINEARS) and hasattr(m, "weight"):
            W = m.weight.dequantize() if hasattr(m.weight, "dequantize") else m.weight
            zeros += int((W == 0).sum())
            total += W.numel()
    return zeros / max(1, total)


def build(label: str, spec: dict, fp32, calib, built: dict, fresh: bool):
    """(model, quant_s, extra) of one row, from the cache when it is there."""
    import lowbit
    from lowbit._cache import cache_dir

    folder = cache_dir("bench-prune") / label.replace(" ", "_").replace("%", "pct").replace(":", "-").replace("(", "").replace(")", "")
    meta = folder / "bench.json"
    if "peer" in spec:
        from transformers import AutoModelForCausalLM

        src = cache_dir("peers") / spec["peer"]
        if not (src / "peer.json").exists():
            raise FileNotFoundError(f"{src}: run benchmarks/prune_peers.py in .venv-llmc first (make peers-llmc)")
        info = json.loads((src / "peer.json").read_text())
        model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
        return model, info.get("quant_s"), {"peer": {k: info.get(k) for k in ("version", "quant_s", "sparsity", "command")}}
    if meta.exists() and not fresh:
        info = json.loads(meta.read_text())
        return lowbit.load(folder, copy.deepcopy(fp32)), info["quant_s"], info.get("extra", {})
    base = built[spec["base"]][0] if spec.get("base") else fp32
    t = time.perf_counter()
    if callable(spec["build"]) and not isinstance(spec["build"], lowbit.recipes.Recipe):
        model = spec["build"](copy.deepcopy(base), calib)
    else:
        model = lowbit.quantize(base, spec["build"], data=calib)
    seconds = time.perf_counter() - t
    if spec.get("base"):
        seconds += built[spec["base"]][1]
    extra = {"details": getattr(getattr(model, "lowbit_report", None), "details", None) or None}
    lowbit.save(model, folder)
    meta.write_text(json.dumps({"quant_s": seconds, "extra": extra}))
    return model, seconds, extra


def stage_llm(args) -> None:
    from lowbit.data import eval_tokens
    from lowbit.eval import evaluate_lm, footprint

    fp32, tokenizer, calib, common = setup(args.calib)
    specs = llm_rows()
    wanted = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in wanted if r not in specs]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; known: {list(specs)}")
    built: dict = {}
    for label in wanted:
        if specs[label].get("base") and specs[label]["base"] not in built:
            built[specs[label]["base"]] = build(specs[label]["base"], specs[specs[label]["base"]], fp32, calib, built, args.fresh)
        try:
            built[label] = build(label, specs[label], fp32, calib, built, args.fresh)
        except FileNotFoundError as err:
            log.warning("skipping %s: %s", label, err)
            continue
        log.info("built %s in %.0f s", label, built[label][1] or 0)
    models = {"fp32": fp32, **{k: built[k][0] for k in wanted if k in built}}
    tokens = eval_tokens(tokenizer, num_tokens=args.tokens)
    results = evaluate_lm(models, tokens, reference="fp32")
    rows = []
    for label in [k for k in wanted if k in built]:
        model, seconds, extra = built[label]
        r, fp = results[label], footprint(model)
        rows.append({**common, "mode": "llm", "setting": label, "tool": specs[label]["tool"],
                     "method": label.split()[0], "num_bits": 4 if "w4" in label else (3 if "w3" in label else 32),
                     "group_size": 64 if "g64" in label else None,
                     "ppl": r.ppl, "kl": r.kl, "top1_agreement": r.top1_agreement,
                     "fp32_ppl": results["fp32"].ppl, "zeros": zeros_fraction(model),
                     "bpw_linears": fp.bpw_linears, "size_mb": fp.size_mb, "quant_s": seconds,
                     "eval_tokens": int(tokens.numel()), **extra})
        log.info("%s: ppl %.2f kl %.4f bpw %.3f zeros %.3f", label, r.ppl, r.kl, fp.bpw_linears,
                 rows[-1]["zeros"])
    merge(OUT, rows, KEY)


def stage_structured(args) -> None:
    """25% of MLP channels by Wanda-style importance, without and with recovery distillation,
    against the unpruned model: perplexity, and prefill/decode speed of the dense smaller model."""
    import lowbit
    from lowbit.data import eval_tokens
    from lowbit.eval import decode_speed, evaluate_lm, footprint
    from lowbit.recipes import Prune
    from lowbit.recipes.distill import train_on_teacher

    fp32, tokenizer, calib, common = setup(args.calib)
    recipe = Prune(method="wanda", structured="mlp", sparsity=0.25, recover_minutes=args.recover_minutes)
    t = time.perf_counter()
    pruned = lowbit.quantize(fp32, lowbit.recipes.base.replace(recipe, recover_minutes=0.0), data=calib)
    prune_s = time.perf_counter() - t
    # the recipe's recovery step, on a copy of the pruned model (one scoring pass for both rows)
    recovered = copy.deepcopy(pruned)
    t = time.perf_counter()
    losses = train_on_teacher(recovered, fp32, calib, minutes=recipe.recover_minutes, max_steps=None,
                              batch_size=recipe.recover_batch_size, lr=recipe.recover_lr,
                              desc="recovery distillation")
    recover_s = time.perf_counter() - t
    recovered.eval()
    for p in recovered.parameters():
        p.requires_grad_(False)
    recovered.lowbit_report.details["recovery"] = {"steps": len(losses), "first_loss": losses[0],
                                                   "last_loss": sum(losses[-20:]) / len(losses[-20:])}
    tokens = eval_tokens(tokenizer, num_tokens=args.tokens)
    labels = {"mlp 25% (no recovery)": pruned, f"mlp 25% + {args.recover_minutes:g} min distillation": recovered}
    results = evaluate_lm({"fp32": fp32, **labels}, tokens, reference="fp32")
    timed = {"fp32": fp32, f"mlp 25% + {args.recover_minutes:g} min distillation": recovered}
    speeds, sp512 = {}, {}
    for name, m in timed.items():   # the protocol's decode (32-token prompt, 128 new, median of 3)
        speeds[name] = decode_speed(m, tokenizer)
        sp512[name] = decode_speed(m, tokenizer, prompt_len=512, new_tokens=4)
    base = speeds["fp32"]
    rows = []
    for name, m in {"fp32 (unpruned)": fp32, **labels}.items():
        r = results["fp32" if name.startswith("fp32") else name]
        sp = speeds.get("fp32" if name.startswith("fp32") else name)
        row = {**common, "mode": "structured", "setting": name, "tool": "lowbit", "method": "wanda-structured",
               "num_bits": 32, "group_size": None, "ppl": r.ppl, "kl": r.kl,
               "params_m": sum(p.numel() for p in m.parameters()) / 1e6, "size_mb": footprint(m).size_mb,
               "details": getattr(getattr(m, "lowbit_report", None), "details", None) or None}
        if m is pruned:
            row["quant_s"] = prune_s
        if m is recovered:
            row["quant_s"], row["recover_s"] = prune_s + recover_s, recover_s
        if sp is not None:
            row.update(decode_tok_s=sp.decode_tok_s, prefill_tok_s=sp.prefill_tok_s,
                       prefill512_tok_s=sp512[name if not name.startswith("fp32") else "fp32"].prefill_tok_s,
                       decode_speedup=sp.decode_tok_s / base.decode_tok_s,
                       prefill_speedup=sp.prefill_tok_s / base.prefill_tok_s,
                       prefill512_speedup=(sp512[name if not name.startswith("fp32") else "fp32"].prefill_tok_s
                                           / sp512["fp32"].prefill_tok_s))
        rows.append(row)
        log.info("%s: ppl %.2f kl %.4f %s", name, r.ppl, r.kl, {k: row.get(k) for k in ("decode_tok_s", "prefill_tok_s")})
    merge(OUT, rows, KEY)


def stage_cnn(args) -> None:
    """EfficientNet-Lite0: static int8 alone vs 50% magnitude / Wanda pruning then static int8."""
    import lowbit
    from lowbit.data.images import photo_crops
    from lowbit.doctor import machine
    from lowbit.eval.metrics import token_kl
    from lowbit.models import load_model
    from lowbit.recipes import Prune, Sequence, StaticPTQ

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    model, _ = load_model("efficientnet-lite0")
    model.eval()
    calib, images = photo_crops(96, seed=0), photo_crops(args.images, seed=1)
    with torch.no_grad():
        ref = torch.cat([model(b) for b in images.split(64)]).log_softmax(-1)
    batches = list(calib.split(16))
    # every conv and the classifier, or only the 1x1 convs and the classifier (the depthwise
    # 3x3 and 5x5 kernels hold 9 or 25 weights per channel, 3% of the model)
    pointwise = tuple(n for n, m in model.named_modules()
                      if isinstance(m, torch.nn.Linear) or (isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1)))
    recipes = {
        "static int8": StaticPTQ(),
        "magnitude 50% (all layers) + static int8": Sequence(Prune(method="magnitude"), StaticPTQ()),
        "wanda 50% (all layers) + static int8": Sequence(Prune(method="wanda"), StaticPTQ()),
        "magnitude 50% (1x1 convs + FC) + static int8": Sequence(Prune(method="magnitude", include=pointwise), StaticPTQ()),
        "wanda 50% (1x1 convs + FC) + static int8": Sequence(Prune(method="wanda", include=pointwise), StaticPTQ()),
        "wanda 50% (1x1 convs + FC), float": Prune(method="wanda", include=pointwise),
    }
    common = {"model": "EfficientNet-Lite0", "tool": "lowbit", "lowbit_version": lowbit.__version__,
              "machine": machine(), "calibration": "96 photo crops seed 0",
              "eval": f"{args.images} photo crops seed 1 (top-1 agreement and KL vs fp32)"}
    rows = []
    for label, recipe in recipes.items():
        t = time.perf_counter()
        q = lowbit.quantize(model, recipe, data=batches)
        seconds = time.perf_counter() - t
        with torch.no_grad():
            logp = torch.cat([q(b) for b in images.split(64)]).log_softmax(-1)
        pruned = [r for r in q.lowbit_report.layers if r.status in ("pruned",)]
        rows.append({**common, "mode": "cnn", "setting": label, "method": label.split()[0],
                     "pruned_layers": len(pruned),
                     "num_bits": 8 if "int8" in label else 32, "group_size": None,
                     "top1_agreement": float((logp.argmax(-1) == ref.argmax(-1)).float().mean()),
                     "kl": float(token_kl(ref, logp).mean()), "quant_s": seconds})
        log.info("%s: agreement %.4f kl %.4f", label, rows[-1]["top1_agreement"], rows[-1]["kl"])
    merge(OUT, rows, KEY)


def stage_table(args) -> None:
    rows = json.loads(OUT.read_text())
    for mode in ("llm", "structured", "cnn"):
        sel = [r for r in rows if r["mode"] == mode]
        if not sel:
            continue
        print(f"\n### {mode}\n")
        if mode == "cnn":
            print("| setting | top-1 agreement | KL |\n|---|---|---|")
            for r in sel:
                print(f"| {r['setting']} | {r['top1_agreement']:.2%} | {r['kl']:.4f} |")
            continue
        print("| setting | tool | ppl | KL | zeros | bpw linears | quant s | decode tok/s | prefill tok/s |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in sel:
            f = lambda k, fmt: format(r[k], fmt) if r.get(k) is not None else "-"  # noqa: E731
            print(f"| {r['setting']} | {r.get('tool', '')} | {f('ppl', '.2f')} | {f('kl', '.4f')} | "
                  f"{f('zeros', '.1%')} | {f('bpw_linears', '.3f')} | {f('quant_s', '.0f')} | "
                  f"{f('decode_tok_s', '.1f')} | {f('prefill_tok_s', '.0f')} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=("llm", "structured", "cnn", "table"))
    ap.add_argument("--rows", default=DEFAULT_ROWS, help="llm: comma list of row labels")
    ap.add_argument("--tokens", type=int, default=32768)
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--recover-minutes", type=float, default=15.0)
    ap.add_argument("--fresh", action="store_true", help="rebuild cached models")
    ap.add_argument("--calib", type=int, default=128, help="calibration sequences of 512 tokens (smoke tests: fewer)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    {"llm": stage_llm, "structured": stage_structured, "cnn": stage_cnn, "table": stage_table}[args.stage](args)


if __name__ == "__main__":
    main()
