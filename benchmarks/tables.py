"""Print the README's result tables from results/*.json (so every quoted number comes from a file).

    python benchmarks/tables.py [kernels|kernels_cuda|llm|demo|qat]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent.parent / "results"


def rows(name: str) -> list[dict]:
    data = json.loads((RESULTS / f"{name}.json").read_text())
    return data["rows"] if isinstance(data, dict) else data


def fmt(v, digits=2):
    if v is None:
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def kernels(name: str = "kernels") -> str:
    rs = rows(name)
    base = "fp32" if name == "kernels" else "fp16"
    out = [f"| shape K x N | M | method | kernel | µs | x vs {base} |", "|---|---|---|---|---|---|"]
    for r in rs:
        speed = r.get("speedup_vs_fp32", r.get("speedup_vs_fp16"))
        out.append(f"| {r['K']}x{r['N']} | {r['M']} | {r['method']} | {r.get('kernel', '')} | "
                   f"{r['latency_us']:.1f} | {fmt(speed)} |")
    return "\n".join(out)


def kernels_summary(name: str = "kernels", shapes=((4096, 11008), (4096, 4096), (576, 1536), (1536, 576))) -> str:
    """Speed-ups over fp32 F.linear per shape and batch, one column per lowbit kernel."""
    cols = [("int8 weight-only", "int8"), ("int4 g", "int4"), ("int3 g", "int3"), ("int2 g", "int2"),
            ("W8A8 dynamic (per-token", "W8A8 per-token"), ("W8A8 dynamic (token x", "W8A8 token x 64")]
    out = ["| K x N | M | fp32 µs | " + " | ".join(c[1] for c in cols) + " | W8A8 token x 64 vs quantize_dynamic |",
           "|---|---|---|" + "---|" * len(cols) + "---|"]
    rs = rows(name)
    for K, N in shapes:
        for M in sorted({r["M"] for r in rs}):
            sel = [r for r in rs if r["K"] == K and r["N"] == N and r["M"] == M]
            if not sel:
                continue
            fp32 = next(r for r in sel if r["method"] == "fp32 F.linear")["latency_us"]
            got = [next((r for r in sel if r["method"].startswith(prefix)), None) for prefix, _ in cols]
            peer = next(r for r in sel if "fbgemm" in r["method"])["latency_us"]
            cells = [f"{fp32 / r['latency_us']:.2f}x" if r else "-" for r in got]
            out.append(f"| {K}x{N} | {M} | {fp32:.0f} | " + " | ".join(cells)
                       + f" | {peer / got[-1]['latency_us']:.2f}x faster |")
    return "\n".join(out)


def llm(name: str = "llm") -> str:
    out = ["| tool | method | bits | group | ppl | KL | bpw linears | quant s | peak MB | decode tok/s | save→load same tokens |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    order = lambda r: (-(r.get("num_bits") or 32), r.get("tool", "") != "lowbit", r.get("ppl") or 1e9)  # noqa: E731
    for r in sorted(rows(name), key=order):
        if r.get("error"):
            out.append(f"| {r.get('tool')} | {r['method']} | {r.get('num_bits')} | | failed: {r['error']} | | | | | | |")
            continue
        decode = fmt(r.get("decode_tok_s"), 1) + (" (reference path)" if r.get("reference_path") else "")
        if r.get("decode_tok_s") and (r.get("loadavg") or 0) > 3:  # other jobs on the 2 cores
            decode = f"~~{decode}~~ (load {r['loadavg']:.0f})"
        peak = fmt(r.get("peak_rss_mb"), 0)
        if "ru_maxrss" in (r.get("peak_rss_mb_note") or ""):
            peak = "(not measured: parent's RSS)"
        same = {True: "yes", False: "NO"}.get(r.get("save_load_same_tokens"), "-")
        out.append(f"| {r.get('tool', 'lowbit').split(' (')[0]} | {r['method']} | {r.get('num_bits')} | "
                   f"{r.get('group_size') or 'channel'} | {fmt(r.get('ppl'))} | {fmt(r.get('kl'), 4)} | "
                   f"{fmt(r.get('bpw_linears'))} | {fmt(r.get('quant_s'), 1)} | {peak} | "
                   f"{decode} | {same} |")
    return "\n".join(out)


def qat(name: str = "qat") -> str:
    out = ["| model | method | tool | result | vs fp32 |", "|---|---|---|---|---|"]
    for r in rows(name):
        if r.get("accuracy") is not None:
            result, delta = f"accuracy {100 * r['accuracy']:.2f}%", f"{r.get('delta_points', 0):+.2f} points"
        else:
            result, delta = f"ppl {fmt(r.get('ppl'))}, KL {fmt(r.get('kl'), 4)}", "-"
        out.append(f"| {r['model']} | {r['method']} | {r['tool'].split(' (')[0]} | {result} | {delta} |")
    return "\n".join(out)


def demo(name: str = "demo") -> str:
    out = ["| method | perplexity | KL vs fp32 | size MB | bits/weight (model) | decode tok/s | quantize s |",
           "|---|---|---|---|---|---|---|"]
    for r in rows(name):
        out.append(f"| {r['method']} | {fmt(r.get('ppl'), 3)} | {fmt(r.get('kl'), 4)} | {fmt(r.get('size_mb'), 1)} | "
                   f"{fmt(r.get('bpw_model'))} | {fmt(r.get('decode_tok_s'), 1)} | {fmt(r.get('quant_s'), 1)} |")
    return "\n".join(out)


def main(argv=None) -> int:
    which = (argv or sys.argv[1:]) or ["kernels"]
    for name in which:
        if name == "kernels":
            print(kernels_summary(name))
        else:
            table = {"demo": demo, "qat": qat}.get(name, llm)
            print(kernels(name) if name.startswith("kernels") else table(name))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
