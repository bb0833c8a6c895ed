"""Every lowbit LLM method on SmolLM2-135M under DATA.md's protocol -> results/llm.json.

    python benchmarks/llm.py [--runs gptq:4,awq:3,nf4,...] [--tokens 32768] [--calib 128]
                             [--no-decode] [--fp32-row] [--peers] [--out results/llm.json]

Each run quantizes in a child process that holds only the fp32 model and the calibration set,
so ``quant_s`` is the quantizing call alone and ``peak_rss_mb`` is the whole process's peak
(``getrusage``: model, data, Python and torch included); the child saves the model with
``lowbit.save`` and greedily generates 16 tokens. The parent loads the checkpoint with
``lowbit.load``, checks that it generates the same 16 tokens, evaluates it in lock-step with
the fp32 model (perplexity, KL(fp32 || q), top-1 agreement on the first ``--tokens`` tokens of
prideprejudice, 512-token windows), measures its footprint and its batch-1 decode speed
(32-token prompt, 128 new tokens, median of 3; rows whose layers run the reference path say so).

Calibration: 128 x 512 tokens, seed 0, emma + mansfieldpark. Only the decoder linears are
quantized; the tied embedding / output head stays fp32 ("head": "fp32"), as in DATA.md's peer
rows. W8 is per channel; lower bit widths use groups of 64 (SmolLM2's 576 is not a multiple of
128). ``--peers`` then runs benchmarks/llm_peers.py in .venv-peers (`make peers`) with the same
protocol. Rows are merged into the results file by (tool, method, num_bits, group_size).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

import results

ROOT = Path(__file__).resolve().parent.parent
MODEL = "smollm2-135m"
HEAD = "exclude=lm_head"  # the tied embedding / output head stays fp32
PROMPT = "The capital of France is"
# (method, bits) in the order they run: the targets first, W8 of the slow methods last.
DEFAULT_RUNS = ("rtn:4,rtn:3,gptq:4,gptq:3,awq:4,awq:3,hqq:4,hqq:3,gptq:2,hqq:2,rtn-sym:4,nf4,"
                "llm-int8,smoothquant-dynamic,smoothquant-static,w8a8-static,w8a8-dynamic,rtn:8,"
                "hqq:8,awq:8,gptq:8")
log = logging.getLogger("lowbit.bench")


# weight-only runs: method -> spec name and options; ":wB" / ":wBg64" is added per run.
WEIGHT_ONLY = {"rtn": "rtn:", "gptq": "gptq:", "awq": "awq:", "hqq": "hqq:asym,", "rtn-sym": "rtn:sym,"}
# fixed runs: name -> (recipe spec, the row's method label, num_bits, group_size)
FIXED = {
    "nf4": ("nf4", "nf4 + double quant", 4, 64),
    "llm-int8": ("llm-int8", "llm.int8 (threshold 6, activations per token x 64)", 8, None),
    "llm-int8-token": ("llm-int8:act_group_size=none", "llm.int8 (threshold 6)", 8, None),
    "smoothquant-dynamic": ("smoothquant:dynamic", "smoothquant w8a8 dynamic per-token (alpha 0.5)", 8, None),
    "smoothquant-static": ("smoothquant", "smoothquant w8a8 static per-tensor (alpha 0.5)", 8, None),
    "w8a8-static": ("static-w8a8", "w8a8 static per-tensor (naive)", 8, None),
    "w8a8-dynamic": (f"w8a8:{HEAD}", "w8a8 dynamic (activations per token x 64)", 8, None),
}


def run_spec(method: str, bits: int | None) -> str:
    """The recipe spec of one run (``lowbit.recipes.from_spec`` reads it)."""
    if method in WEIGHT_ONLY:
        if bits is None:
            raise SystemExit(f"run {method!r} needs a bit width, e.g. {method}:4")
        group = "" if bits == 8 else "g64"  # W8 per channel; SmolLM2's 576 is not a multiple of 128
        return f"{WEIGHT_ONLY[method]}w{bits}{group},{HEAD}"
    if method not in FIXED:
        raise SystemExit(f"unknown run {method!r}; known: {', '.join(WEIGHT_ONLY)} (with :bits), "
                         f"{', '.join(FIXED)}")
    return FIXED[method][0]


def make_recipe(method: str, bits: int | None):
    """(recipe, row fields) for one run."""
    from lowbit.recipes import from_spec

    recipe = from_spec(run_spec(method, bits))
    if method in WEIGHT_ONLY:
        fmt = recipe.weight_format
        return recipe, {"method": method, "num_bits": bits, "group_size": fmt.group_size,
                        "format": recipe.weight_format.label()}
    _, label, b, g = FIXED[method]
    return recipe, {"method": label, "num_bits": b, "group_size": g}


def parse_runs(spec: str) -> list[tuple[str, int | None]]:
    runs = []
    for item in filter(str.strip, spec.split(",")):  # --runs '' with --fp32-row: the fp32 row alone
        method, _, bits = item.strip().partition(":")
        runs.append((method, int(bits) if bits else None))
    return runs


def child(method: str, bits: int | None, calib_n: int, out_dir: str) -> None:
    """Quantize one way in this fresh process, save, and report time, memory and 16 tokens."""
    import lowbit
    from lowbit.data import calibration_batches
    from lowbit.eval import peak_rss_mb, timed
    from lowbit.eval.speed import greedy_generate
    from lowbit.models import load_model

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    recipe, _ = make_recipe(method, bits)
    model, tokenizer = load_model(MODEL)
    data = calibration_batches(tokenizer, n=calib_n, seq_len=512, seed=0) if recipe.needs_data else None
    before = peak_rss_mb()
    with timed() as t:
        q = lowbit.quantize(model, recipe, data=data, inplace=True)
    peak = peak_rss_mb()
    prompt = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.inference_mode():
        tokens = greedy_generate(q, prompt, 16)[0][0].tolist()
    lowbit.save(q, out_dir, tokenizer=tokenizer)
    kernels = sorted({r.kernel for r in q.lowbit_report.quantized})
    print("LOWBIT_CHILD " + json.dumps({"quant_s": t.seconds, "peak_rss_mb": peak,
                                        "rss_before_quantize_mb": before, "tokens": tokens,
                                        "kernels": kernels}))


def run_child(method: str, bits: int | None, calib_n: int, out_dir: str) -> dict:
    cmd = [sys.executable, __file__, "--child", f"{method}:{bits or ''}", "--calib", str(calib_n),
           "--child-out", out_dir]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("LOWBIT_CHILD ")), None)
    if proc.returncode or line is None:
        raise RuntimeError(f"quantizing {method}:{bits} failed (exit {proc.returncode}):\n"
                           f"{proc.stderr[-3000:]}")
    return json.loads(line.split(" ", 1)[1])


def merge(path: Path, rows: list[dict]) -> None:
    """Rows keyed by (tool, method, num_bits, group_size), the file replaced atomically."""
    results.merge(path, rows, key=results.LLM_KEY)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", default=DEFAULT_RUNS, help="comma list of method[:bits]")
    ap.add_argument("--tokens", type=int, default=32768)
    ap.add_argument("--calib", type=int, default=128, help="calibration sequences of 512 tokens")
    ap.add_argument("--no-decode", action="store_true", help="skip the batch-1 decode timing")
    ap.add_argument("--fp32-row", action="store_true", help="also write the fp32 row")
    ap.add_argument("--peers", action="store_true", help="then run benchmarks/llm_peers.py in .venv-peers")
    ap.add_argument("--memory-only", action="store_true",
                    help="only re-measure quantize time and peak memory of the runs' existing rows")
    ap.add_argument("--out", type=Path, default=ROOT / "results/llm.json")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.child:
        method, bits = parse_runs(args.child)[0]
        return child(method, bits, args.calib, args.child_out)

    import lowbit
    from lowbit.data import eval_tokens
    from lowbit.doctor import machine
    from lowbit.eval import decode_speed, evaluate_lm, footprint
    from lowbit.eval.speed import greedy_generate
    from lowbit.models import load_model

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    model, tokenizer = load_model(MODEL)
    model.eval()
    tokens = eval_tokens(tokenizer, num_tokens=args.tokens)
    fp32_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    common = {"model": "SmolLM2-135M-Instruct", "tool": "lowbit", "lowbit_version": lowbit.__version__,
              "machine": machine(), "eval_tokens": int(tokens.numel()),
              "calibration": f"{args.calib}x512 seed 0 emma+mansfieldpark", "head": "fp32",
              "fp32_model_mb": fp32_mb}
    prompt = tokenizer(PROMPT, return_tensors="pt").input_ids
    if args.memory_only:
        rows = json.loads(args.out.read_text())
        for method, bits in parse_runs(args.runs):
            _, fields = make_recipe(method, bits)
            with tempfile.TemporaryDirectory(prefix="lowbit-bench-") as out_dir:
                info = run_child(method, bits, args.calib, out_dir)
            for r in rows:
                if r.get("tool") == "lowbit" and all(r.get(k) == fields[k] for k in ("method", "num_bits", "group_size")):
                    r.update(quant_s=info["quant_s"], peak_rss_mb=info["peak_rss_mb"],
                             rss_before_quantize_mb=info["rss_before_quantize_mb"], loadavg=os.getloadavg()[0])
            log.info("%s: quant %.1f s, peak %.0f MiB", fields["method"], info["quant_s"], info["peak_rss_mb"])
            merge(args.out, rows)
        return
    if args.fp32_row:
        ref = evaluate_lm({"fp32": model}, tokens, reference="fp32")["fp32"]
        fp = footprint(model)
        row = {**common, "method": "fp32", "num_bits": 32, "group_size": None, "ppl": ref.ppl,
               "kl": 0.0, "bpw_model": fp.bpw_model, "bpw_linears": fp.bpw_linears, "size_mb": fp.size_mb}
        if not args.no_decode:
            row["decode_tok_s"] = decode_speed(model, tokenizer, repeats=3).decode_tok_s
        merge(args.out, [row])
    for method, bits in parse_runs(args.runs):
        _, fields = make_recipe(method, bits)
        with tempfile.TemporaryDirectory(prefix="lowbit-bench-") as out_dir:
            info = run_child(method, bits, args.calib, out_dir)
            q = lowbit.load(out_dir).eval()
        with torch.inference_mode():
            again = greedy_generate(q, prompt, 16)[0][0].tolist()
        result = evaluate_lm({"fp32": model, "q": q}, tokens, reference="fp32")["q"]
        fp = footprint(q)
        row = {**common, **fields, "ppl": result.ppl, "kl": result.kl,
               "top1_agreement": result.top1_agreement, "ppl_vs_fp32": None,
               "bpw_model": fp.bpw_model, "bpw_linears": fp.bpw_linears, "size_mb": fp.size_mb,
               "quant_s": info["quant_s"], "peak_rss_mb": info["peak_rss_mb"],
               "rss_before_quantize_mb": info["rss_before_quantize_mb"],
               "kernels": info["kernels"], "save_load_same_tokens": again == info["tokens"],
               "reference_path": any(k.startswith("reference.") for k in info["kernels"])}
        if not args.no_decode:
            row["decode_tok_s"] = decode_speed(q, tokenizer, repeats=3).decode_tok_s
        row["loadavg"] = os.getloadavg()[0]
        log.info("%s: ppl %.3f kl %.4f bpw %.3f quant %.1f s peak %.0f MB decode %s tok/s same tokens %s",
                 fields["method"], row["ppl"], row["kl"], row["bpw_linears"], row["quant_s"],
                 row["peak_rss_mb"], row.get("decode_tok_s"), row["save_load_same_tokens"])
        merge(args.out, [row])
        del q
    fp32 = next((r for r in json.loads(args.out.read_text()) if r.get("method") == "fp32"), None)
    if fp32:  # relative perplexity of every row against the fp32 row in the file
        rows = json.loads(args.out.read_text())
        for r in rows:
            r["ppl_vs_fp32"] = r["ppl"] / fp32["ppl"] - 1 if r.get("ppl") else None
        merge(args.out, rows)
    if args.peers:
        python = ROOT / ".venv-peers/bin/python"
        if not python.exists():
            raise SystemExit("--peers needs the peers' venv: run `make peers` first")
        subprocess.run([str(python), str(ROOT / "benchmarks/llm_peers.py"), "--tokens", str(args.tokens),
                        "--out", str(args.out)], check=True)


if __name__ == "__main__":
    main()
