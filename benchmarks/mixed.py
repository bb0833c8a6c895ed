"""Mixed precision on SmolLM2-135M under the protocol of shared/DATA.md -> results/mixed.json.

Stages (each reuses the cached sensitivity of the one before):

    python benchmarks/mixed.py sensitivity   # every linear x candidate measured alone + proxies
    python benchmarks/mixed.py frontier      # one run: uniform, llama.cpp-style rules, mixed at
                                             # every budget (GPTQ on the float model's Hessians)
    python benchmarks/mixed.py sequential    # the MixedPrecision recipe itself (GPTQ block by
                                             # block) at --budgets, evaluated in one pass
    python benchmarks/mixed.py cnn           # EfficientNet-Lite0: static int8 activations, W4/W8
    python benchmarks/mixed.py plot          # results/mixed.png: KL and ppl vs bits per weight

Calibration = the protocol's 128 x 512 tokens (seed 0, emma + mansfieldpark); the recipe holds
out the last 2 rows to measure on, and its sensitivity takes GPTQ's Hessians from the first 118
rows and the proxies from rows 118-125. Evaluation = perplexity and KL(fp32 || model) on the
first 32768 tokens of prideprejudice, all models of one stage in one lock-step pass (one fp32
reference). bpw = over the decoder linears (the tied embedding / head stays fp32 everywhere).
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

log = logging.getLogger("mixed")
OUT = ROOT / "results" / "mixed.json"
MODEL = "smollm2-135m"
CANDIDATES = ("w2g64", "w3g64", "w4g64", "w8")
BUDGETS = (3.0, 3.25, 3.5, 4.0, 4.5, 5.0)
SETTINGS = dict(method="gptq", holdout=2, proxy_samples=8, hessian_samples=118)
KEY = ("mode", "method", "setting")


def setup():
    import lowbit
    from lowbit.data import calibration_batches
    from lowbit.doctor import machine
    from lowbit.models import load_model

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    model, tokenizer = load_model(MODEL)
    model.eval()
    calib = calibration_batches(tokenizer, n=128, seq_len=512, seed=0)
    common = {"model": "SmolLM2-135M-Instruct", "tool": "lowbit", "lowbit_version": lowbit.__version__,
              "machine": machine(), "calibration": "128x512 seed 0 emma+mansfieldpark", "head": "fp32"}
    return model, tokenizer, calib, common


def get_sensitivity(model, calib, measure: bool, keep: bool = False):
    from lowbit.mixed import sensitivity

    return sensitivity(model, calib, CANDIDATES, measure=measure, keep_quantized=keep,
                       model_name="SmolLM2-135M-Instruct", **SETTINGS)


def evaluate(models: dict, tokenizer, num_tokens: int):
    from lowbit.data import eval_tokens
    from lowbit.eval import evaluate_lm

    tokens = eval_tokens(tokenizer, num_tokens=num_tokens)
    return evaluate_lm(models, tokens, reference="fp32"), int(tokens.numel())


def linear_bpw(q) -> float:
    """Bits per weight over the decoder linears, from the quantized modules themselves."""
    from lowbit.eval import footprint

    return footprint(q).bpw_linears


def stage_sensitivity(args) -> None:
    model, _, calib, common = setup()
    t = time.perf_counter()
    sens = get_sensitivity(model, calib, measure=True)
    log.info("%s", sens.summary())
    row = {**common, "mode": "sensitivity", "method": "gptq", "setting": ",".join(CANDIDATES),
           "layers": len(sens.layers), "candidates": sens.candidates, "seconds": sens.seconds,
           "wall_s": time.perf_counter() - t, "spearman": sens.spearman, "best_proxy": sens.best_proxy,
           "samples": sens.samples, "sensitivity_key": sens.key}
    merge(OUT, [row], KEY)
    (ROOT / "results" / "mixed_sensitivity.json").write_text(json.dumps(sens.as_dict()) + "\n")


def assemble(model, names, specs: dict, quantized: dict, extra: dict):
    """A copy of ``model`` whose layers ``names`` hold the precomputed weights of ``specs``."""
    from lowbit.mixed import parse_candidate
    from lowbit.nn.swap import set_submodule

    q = copy.deepcopy(model)
    for name in names:
        spec = specs[name]
        weight = quantized.get((name, spec)) if (name, spec) in quantized else extra[name, spec]
        set_submodule(q, name, parse_candidate(spec).module(weight, q.get_submodule(name)))
    return q


def stage_frontier(args) -> None:
    """Every setting from ONE set of per-layer GPTQ weights (each on the float model's Hessian of
    its input), so uniform, rule-based and mixed differ only in the choice per layer."""
    import numpy as np

    from lowbit.mixed import Budget, parse_candidate, solve
    from lowbit.mixed.rules import rule_choice
    from lowbit.mixed.sensitivity import held_block, quantize_all

    model, tokenizer, calib, common = setup()
    t = time.perf_counter()
    sens = get_sensitivity(model, calib, measure=True, keep=True)
    names = sens.layers
    rules = {r: rule_choice(r, names, lambda n: held_block(model, n)) for r in ("q3_k_m", "q4_k_m")}
    need = {(n, s) for choice in rules.values() for n, s in choice.items() if (n, s) not in sens.quantized}
    layers = {n: model.get_submodule(n) for n in names}
    extra = {}
    for spec in sorted({s for _, s in need}):
        sub = {n: layers[n] for n, s in need if s == spec}
        extra.update(quantize_all(sub, (parse_candidate(spec),), sens.hessians))
    prep_s = time.perf_counter() - t

    settings: dict[str, tuple[str, dict, dict]] = {}
    for spec in CANDIDATES:
        settings[f"uniform {spec}"] = ("uniform", {n: spec for n in names}, {})
    for r, choice in rules.items():
        settings[f"rule {r}"] = ("rule", choice, {})
    bits, numel = np.asarray(sens.bits), np.asarray(sens.numel)
    for source in ("kl_estimate",) + (("measured",) if sens.measured is not None else ()):
        for b in args.budgets:
            a = solve(sens.table(source), bits, numel, Budget(bpw=b), names, sens.candidates)
            choice = {n: sens.candidates[j] for n, j in zip(names, a.choice)}
            settings[f"mixed bpw={b:g} ({source})"] = ("mixed", choice, {"estimate": a.estimate, "source": source})
    models = {"fp32": model}
    for label, (_, choice, _) in settings.items():
        models[label] = assemble(model, names, choice, sens.quantized, extra)
    results, n_tokens = evaluate(models, tokenizer, args.tokens)
    rows = []
    for label, (kind, choice, info) in settings.items():
        res = results[label]
        counts = {s: sum(1 for v in choice.values() if v == s) for s in sorted(set(choice.values()))}
        rows.append({**common, "mode": "frontier (one-pass GPTQ on float Hessians)", "method": kind,
                     "setting": label, "num_bits": None, "group_size": 64, "ppl": res.ppl, "kl": res.kl,
                     "top1_agreement": res.top1_agreement, "bpw_linears": linear_bpw(models[label]),
                     "counts": counts, "eval_tokens": n_tokens, "prep_s": prep_s,
                     "hessian_rows": SETTINGS["hessian_samples"], **info})
        log.info("%-34s bpw %.3f ppl %.3f kl %.4f", label, rows[-1]["bpw_linears"], res.ppl, res.kl)
    rows.append({**common, "mode": "frontier (one-pass GPTQ on float Hessians)", "method": "fp32",
                 "setting": "fp32", "ppl": results["fp32"].ppl, "kl": 0.0, "bpw_linears": 32.0,
                 "eval_tokens": n_tokens})
    merge(OUT, rows, KEY)


def stage_sequential(args) -> None:
    """The MixedPrecision recipe as a user runs it (sequential GPTQ, refine), at each budget;
    each budget is evaluated (beside the fp32 reference) and written as soon as it is done."""
    import lowbit
    from lowbit.mixed import Budget
    from lowbit.recipes import MixedPrecision

    model, tokenizer, calib, common = setup()
    for b in args.budgets:
        recipe = MixedPrecision(candidates=CANDIDATES, budget=Budget(bpw=b), sensitivity=args.source,
                                **SETTINGS)
        spec = recipe.to_spec()
        t = time.perf_counter()
        q = lowbit.quantize(model, recipe, data=calib)
        seconds, details = time.perf_counter() - t, q.lowbit_report.details
        results, n_tokens = evaluate({"fp32": model, spec: q}, tokenizer, args.tokens)
        res = results[spec]
        row = {**common, "mode": "sequential (the MixedPrecision recipe)", "method": "mixed",
               "setting": spec, "budget_bpw": b, "ppl": res.ppl, "kl": res.kl,
               "top1_agreement": res.top1_agreement, "bpw_linears": linear_bpw(q),
               "quant_s": seconds, "counts": details["counts"], "estimate": details["estimate"],
               "held_out_kl": details["measured_kl"], "rounds": details["rounds"],
               "refinement": details.get("refinement"), "choice": details["choice"],
               "eval_tokens": n_tokens, "sensitivity": args.source, "fp32_ppl": results["fp32"].ppl}
        log.info("%s: bpw %.3f ppl %.3f kl %.4f quant %.0f s", spec, row["bpw_linears"], res.ppl, res.kl, seconds)
        merge(OUT, [row], KEY)
        del q


def stage_cnn(args) -> None:
    """EfficientNet-Lite0, static int8 activations: uniform W8, uniform W4 (stored 4-bit, run
    widened on the int8 kernel) and MixedPrecision W4/W8 at 0.75x uniform W8's weight bytes."""
    import lowbit
    from lowbit.data.images import photo_crops
    from lowbit.doctor import machine
    from lowbit.eval import footprint
    from lowbit.eval.metrics import token_kl
    from lowbit.mixed import Budget, parse_candidate
    from lowbit.mixed.sensitivity import select_layers
    from lowbit.models import load_model
    from lowbit.recipes import MixedPrecision, StaticPTQ

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    model, _ = load_model("efficientnet-lite0")
    model.eval()
    calib, images = photo_crops(96, seed=0), photo_crops(args.images, seed=1)
    holdout = 32                            # the recipe measures on these; nobody calibrates on them
    with torch.no_grad():
        ref = torch.cat([model(b) for b in images.split(64)]).log_softmax(-1)
    layers = select_layers(model, lm=False)
    w8 = parse_candidate("w8", "rtn")
    w8_mb = sum(w8.bits(m) * m.weight.numel() for m in layers.values()) / 8 / 2**20
    budget = Budget(size_mb=round(0.75 * w8_mb, 4))
    batches = list(calib[:-holdout].split(16))
    def mixed(method):
        return MixedPrecision(candidates=("w4pcsym", "w8"), budget=budget, method=method, activations="static",
                              holdout=holdout, proxy_samples=32, hessian_samples=32, calib_batch_size=16,
                              sensitivity=args.cnn_sensitivity)

    recipes = {"uniform W8 (static int8)": (StaticPTQ(), batches),
               "uniform W4 (static int8 activations)": (StaticPTQ(weight_bits=(("*", 4),)), batches),
               "uniform W4 GPTQ (static int8 activations)": (
                   StaticPTQ(weight_bits=(("*", 4),), weight_method="gptq"), batches),
               f"mixed W4/W8 size={budget.size_mb:g} MB (0.75x W8)": (mixed("rtn"), calib),
               f"mixed W4/W8 GPTQ size={budget.size_mb:g} MB (0.75x W8)": (mixed("gptq"), calib)}
    recipes = {k: v for k, v in recipes.items() if not args.cnn_rows or any(r in k for r in args.cnn_rows.split(","))}
    common = {"model": "EfficientNet-Lite0", "tool": "lowbit", "lowbit_version": lowbit.__version__,
              "machine": machine(), "calibration": f"{96 - holdout} photo crops seed 0",
              "eval": f"{args.images} photo crops seed 1 (top-1 agreement and KL vs fp32)"}
    rows = []
    for label, (recipe, data) in recipes.items():
        t = time.perf_counter()
        q = lowbit.quantize(model, recipe, data=data)
        seconds = time.perf_counter() - t
        with torch.no_grad():
            logp = torch.cat([q(b) for b in images.split(64)]).log_softmax(-1)
        fp = footprint(q)
        chosen = {n: m for n, m in q.named_modules() if n in layers}
        weight_mb = sum(m.weight.nbytes for m in chosen.values()) / 2**20
        details = q.lowbit_report.details
        rows.append({**common, "mode": "cnn", "method": "mixed" if details else "uniform", "setting": label,
                     "weight_method": "gptq" if "GPTQ" in label else "rtn",
                     "sensitivity": details.get("sensitivity"),
                     "top1_agreement": float((logp.argmax(-1) == ref.argmax(-1)).float().mean()),
                     "kl": float(token_kl(ref, logp).mean()), "size_mb": fp.size_mb,
                     "layers_weight_mb": weight_mb, "w8_layers_weight_mb": w8_mb,
                     "bytes_vs_w8": weight_mb / w8_mb, "quant_s": seconds,
                     "counts": details.get("counts"), "held_out_kl": details.get("measured_kl")})
        log.info("%s: agreement %.4f kl %.4f layers %.3f MB (%.3fx W8)", label, rows[-1]["top1_agreement"],
                 rows[-1]["kl"], weight_mb, weight_mb / w8_mb)
    merge(OUT, rows, KEY)


def stage_table(args) -> None:
    """The README's tables, printed from results/mixed.json."""
    rows = json.loads(OUT.read_text())
    sens = next((r for r in rows if r["mode"] == "sensitivity"), None)
    if sens:
        print("| proxy | " + " | ".join(sens["candidates"]) + " | mean | pooled |")
        print("|---|" + "---|" * (len(sens["candidates"]) + 2))
        for p, rho in sens["spearman"].items():
            print(f"| {p} | " + " | ".join(f"{rho.get(c, float('nan')):.3f}" for c in
                                           (*sens["candidates"], "mean", "pooled")) + " |")
        print(f"\nseconds: {sens['seconds']}\n")
    for mode in sorted({r["mode"] for r in rows} - {"sensitivity"}):
        print(f"\n{mode}\n\n| setting | bpw linears | ppl | KL | top-1 agr. | formats |\n|---|---|---|---|---|---|")
        for r in sorted((r for r in rows if r["mode"] == mode), key=lambda r: (r["method"], r.get("bpw_linears") or 0)):
            if r["mode"] == "cnn":
                print(f"| {r['setting']} | {r['bytes_vs_w8']:.3f}x W8 bytes | - | {r['kl']:.4f} | "
                      f"{r['top1_agreement']:.4f} | {r.get('counts') or ''} |")
                continue
            print(f"| {r['setting']} | {r['bpw_linears']:.3f} | {r['ppl']:.2f} | {r['kl']:.4f} | "
                  f"{r.get('top1_agreement') or 1:.4f} | {r.get('counts') or ''} |")


def stage_plot(args) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in json.loads(OUT.read_text()) if r.get("kl") is not None and r.get("method") != "fp32"
            and r["mode"] != "cnn"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    styles = {"uniform": ("o-", "uniform GPTQ"), "rule": ("s", "llama.cpp-style rule mix"),
              "mixed": ("^-", "MixedPrecision")}
    for mode in sorted({r["mode"] for r in rows}):
        for method, (marker, label) in styles.items():
            pts = sorted((r["bpw_linears"], r["kl"], r["ppl"]) for r in rows if r["mode"] == mode
                         and r["method"] == method and "measured)" not in r["setting"])
            if not pts:
                continue
            tag = "sequential" if mode.startswith("sequential") else "one-pass"
            for ax, k in zip(axes, (1, 2)):
                ax.plot([p[0] for p in pts], [p[k] for p in pts], marker, label=f"{label} ({tag})")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("KL(fp32 || model), nats/token")
    axes[1].set_ylabel("perplexity (Pride & Prejudice, 32768 tokens)")
    axes[1].set_ylim(top=60)
    for ax in axes:
        ax.set_xlabel("bits per weight (decoder linears)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("SmolLM2-135M: mixed precision vs uniform vs rule-based (results/mixed.json)")
    fig.tight_layout()
    fig.savefig(ROOT / "results" / "mixed.png", dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=("sensitivity", "frontier", "sequential", "cnn", "plot", "table"))
    ap.add_argument("--budgets", type=lambda s: [float(x) for x in s.split(",")], default=list(BUDGETS))
    ap.add_argument("--tokens", type=int, default=32768)
    ap.add_argument("--images", type=int, default=512, help="cnn: evaluation crops")
    ap.add_argument("--cnn-sensitivity", default="measured", help="cnn: the sensitivity the solver uses")
    ap.add_argument("--cnn-rows", default="", help="cnn: only the rows whose label contains one of these (comma list)")
    ap.add_argument("--source", default="kl_estimate", help="sequential: the sensitivity the solver uses")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    {"sensitivity": stage_sensitivity, "frontier": stage_frontier, "sequential": stage_sequential,
     "cnn": stage_cnn, "plot": stage_plot, "table": stage_table}[args.stage](args)


if __name__ == "__main__":
    main()
