"""Print the README's result tables from results/*.json (so every quoted number comes from a file).

    python benchmarks/tables.py [kernels|kernels_cuda|llm|demo|ptq]
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


def llm(name: str = "llm") -> str:
    out = ["| method | bits | group | ppl | KL | bpw linears | bpw model | quant s | decode tok/s |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows(name), key=lambda r: (-(r.get("num_bits") or 32), r.get("method", ""))):
        out.append(f"| {r['method']} | {r.get('num_bits')} | {r.get('group_size') or 'channel'} | "
                   f"{fmt(r.get('ppl'))} | {fmt(r.get('kl'), 4)} | {fmt(r.get('bpw_linears'))} | "
                   f"{fmt(r.get('bpw_model'))} | {fmt(r.get('quant_s'), 1)} | "
                   f"{fmt(r.get('decode_tok_s'), 1)} |")
    return "\n".join(out)


def main(argv=None) -> int:
    which = (argv or sys.argv[1:]) or ["kernels"]
    for name in which:
        print(kernels(name) if name.startswith("kernels") else llm(name))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
