"""Benchmark lowbit's Linear kernels against fp32/bf16 F.linear and torch.ao quantize_dynamic.

    python benchmarks/kernel_speed.py [--quick] [--out results/kernels.json]

Methods are timed round-robin (one call of each per round, medians over rounds) in one
process on 2 threads, so a burst of load elsewhere on the machine hits every method alike and
ratios within a run stay fair. Writes a list of row dicts atomically (tmp + os.replace).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

import lowbit.kernels as lk
from lowbit.doctor import machine
from lowbit.kernels import reference

SHAPES = [(576, 576), (576, 1536), (1536, 576), (576, 49152), (4096, 4096), (4096, 11008)]
QUICK_SHAPES = [(576, 1536), (4096, 11008)]
BATCHES = (1, 8, 64)
PEER = f"torch.ao quantize_dynamic (torch {torch.__version__.split('+')[0]})"


def quantize_int8(w):  # symmetric per output channel
    scale = (w.abs().amax(1) / 127).clamp_min(1e-12)
    return torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8), scale


def quantize_int4(w, group_size):  # asymmetric per group, q in 0..15
    N, K = w.shape
    g = w.reshape(N, K // group_size, group_size)  # (N, G, gs)
    lo, hi = g.amin(-1), g.amax(-1)
    scale = ((hi - lo) / 15).clamp_min(1e-8).bfloat16()
    zero_point = torch.round(-lo / scale.float()).clamp(0, 15).bfloat16()
    q = torch.round(g / scale.float()[..., None] + zero_point.float()[..., None]).clamp(0, 15)
    return reference.pack_int4(q.reshape(N, K).to(torch.uint8)), scale, zero_point


def quantize_lowbit(w, group_size, bits):  # asymmetric per group, q in 0..2^bits-1, bit-packed rows
    from lowbit.primitives import pack
    N, K = w.shape
    top = 2 ** bits - 1
    g = w.reshape(N, K // group_size, group_size)
    lo, hi = g.amin(-1), g.amax(-1)
    scale = ((hi - lo) / top).clamp_min(1e-8).bfloat16()
    zero_point = torch.round(-lo / scale.float()).clamp(0, top).bfloat16()
    q = torch.round(g / scale.float()[..., None] + zero_point.float()[..., None]).clamp(0, top)
    return pack(q.reshape(N, K).to(torch.uint8), bits), scale, zero_point


def methods(K: int, N: int) -> list[dict]:
    """Every method for one K x N layer: name, num_bits, group_size, kernel name, call(x)."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(K, N)
    w, b = linear.weight.detach(), linear.bias.detach()
    w_bf16, b_bf16 = w.bfloat16(), b.bfloat16()
    q8, s8 = quantize_int8(w)
    gs = 128 if K % 128 == 0 else 64
    w4 = quantize_int4(w, gs)
    w3, w2 = quantize_lowbit(w, gs, 3), quantize_lowbit(w, gs, 2)
    ag = 64 if K % 64 == 0 else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peer = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(linear), {torch.nn.Linear},
                                                      dtype=torch.qint8)
    return [
        dict(method="fp32 F.linear", tool="torch", num_bits=32, group_size=None,
             kernel=lambda x: "aten.linear fp32 (MKL sgemm)", call=lambda x: F.linear(x, w, b)),
        dict(method="bf16 F.linear", tool="torch", num_bits=16, group_size=None,
             kernel=lambda x: "aten.linear bf16 (oneDNN)", call=lambda x: F.linear(x.bfloat16(), w_bf16, b_bf16)),
        dict(method="int8 weight-only", tool="lowbit", num_bits=8, group_size=None,
             kernel=lambda x: lk.kernel_for("linear_int8_weight_only", x.device, x.dtype, x.shape),
             call=lambda x: lk.linear_int8_weight_only(x, q8, s8, b)),
        dict(method=f"int4 g{gs} weight-only", tool="lowbit", num_bits=4, group_size=gs,
             kernel=lambda x: lk.kernel_for("linear_int4", x.device, x.dtype, x.shape),
             call=lambda x: lk.linear_int4(x, *w4, gs, b)),
        dict(method=f"int3 g{gs} weight-only", tool="lowbit", num_bits=3, group_size=gs,
             kernel=lambda x: lk.kernel_for("linear_lowbit", x.device, x.dtype, x.shape),
             call=lambda x: lk.linear_lowbit(x, *w3, gs, 3, b)),
        dict(method=f"int2 g{gs} weight-only", tool="lowbit", num_bits=2, group_size=gs,
             kernel=lambda x: lk.kernel_for("linear_lowbit", x.device, x.dtype, x.shape),
             call=lambda x: lk.linear_lowbit(x, *w2, gs, 2, b)),
        dict(method="W8A8 dynamic (per-token sym int8)", tool="lowbit", num_bits=8, group_size=None,
             kernel=lambda x: lk.kernel_for("linear_w8a8_dynamic", x.device, x.dtype, x.shape),
             call=lambda x: lk.linear_w8a8_dynamic(x, q8, s8, b)),
        dict(method=f"W8A8 dynamic (token x {ag} groups, sym int8)", tool="lowbit", num_bits=8, group_size=None,
             kernel=lambda x: lk.kernel_for("linear_w8a8_dynamic", x.device, x.dtype, x.shape),
             call=lambda x: lk.linear_w8a8_dynamic(x, q8, s8, b, act_group_size=ag)),
        dict(method="W8A8 dynamic (per-tensor u8, fbgemm)", tool=PEER, num_bits=8, group_size=None,
             kernel=lambda x: "quantized::linear_dynamic (fbgemm)", call=lambda x: peer(x)),
    ]


def time_round_robin(calls: list, x, budget_s: float, min_rounds: int) -> list[float]:
    """Median seconds per call of each function, timed one call per function per round."""
    for call in calls:  # warm-up (first oneDNN/fbgemm call builds kernels)
        for _ in range(3):
            call(x)
    t0 = time.perf_counter()
    for call in calls:
        call(x)
    per_round = time.perf_counter() - t0
    rounds = max(min_rounds, min(400, int(budget_s / max(per_round, 1e-6))))
    samples = [[] for _ in calls]
    for _ in range(rounds):
        for i, call in enumerate(calls):
            start = time.perf_counter()
            call(x)
            samples[i].append(time.perf_counter() - start)
    return [statistics.median(s) for s in samples]


def run(quick: bool) -> list[dict]:
    torch.set_num_threads(2)
    info = dict(machine(), loadavg_at_start=os.getloadavg()[0])
    version = getattr(__import__("lowbit"), "__version__", "0.1.0")
    rows = []
    for K, N in QUICK_SHAPES if quick else SHAPES:
        ms = methods(K, N)
        for M in BATCHES:
            x = torch.randn(M, K)
            with torch.inference_mode():
                times = time_round_robin([m["call"] for m in ms], x, 0.5 if quick else 2.0, 10 if quick else 20)
            fp32 = times[0]
            for m, t in zip(ms, times):
                rows.append({"model": f"linear {K}x{N}", "method": m["method"], "kernel": m["kernel"](x),
                             "tool": m["tool"], "num_bits": m["num_bits"], "group_size": m["group_size"],
                             "M": M, "K": K, "N": N, "latency_us": round(t * 1e6, 1),
                             "speedup_vs_fp32": round(fp32 / t, 2), "machine": info,
                             "lowbit_version": version})
                print(f"{K}x{N} M={M:<3} {m['method']:<38} {t * 1e6:10.1f} us  x{fp32 / t:6.2f}  {rows[-1]['kernel']}",
                      flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two shapes, shorter timing")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "results" / "kernels.json"))
    args = parser.parse_args()
    rows = run(args.quick)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(rows, indent=1))
    os.replace(tmp, out)
    print(f"wrote {len(rows)} rows to {out}")


if __name__ == "__main__":
    main()
