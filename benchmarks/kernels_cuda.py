"""Benchmark lowbit's CUDA GEMV kernels against fp16/bf16 F.linear (cuBLAS) and the reference path.

    python benchmarks/kernels_cuda.py [--quick] [--sweep] [--out results/kernels_cuda.json]

Timing, in one process: each method's call is captured R times into a CUDA graph (so the
Python wrappers' launch overhead is left out, as in graph-captured decoding), the calls cycling
over enough copies of the weights that they cannot stay in L2 (a decode step reads each layer's
weights from HBM). After warm-up replays, latency = median over replays of event time / R.
``eager_us`` is the same R calls launched from Python, for reference. gbps counts weight bytes
read (packed weights + scales + zero points), against the GPU's nominal HBM bandwidth.
Writes a list of row dicts atomically (tmp + os.replace).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F

from lowbit.doctor import machine
from kernel_speed import quantize_int4, quantize_int8  # the same weights as the CPU benchmark
from lowbit.kernels import cuda, reference

SHAPES = [(4096, 4096), (4096, 11008), (11008, 4096), (576, 1536), (576, 49152)]  # (K, N)
QUICK_SHAPES = [(4096, 11008)]
BATCHES = (1, 4, 8)
ROTATE_BYTES = 256 * 2**20  # weight copies cycled per graph: several times H100/H200's 50-60 MB L2
NOMINAL_GBPS = {"H100 PCIe": 2000, "H100": 3350, "H200": 4800}


def gpu_machine() -> dict:
    """lowbit.doctor.machine("cuda") plus the nominal HBM bandwidth and the extension's status."""
    info = machine("cuda")
    peak = next((v for k, v in NOMINAL_GBPS.items() if k in info["gpu"]), None)
    return {**info, "nominal_hbm_gbps": peak, "kernels": cuda.extension_status()[1]}


def nbytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def methods(K: int, N: int) -> list[dict]:
    """Every method for one K x N layer: name, dtype of x, weights (a tuple), call(x, *weights)."""
    torch.manual_seed(0)
    w = torch.randn(N, K, device="cuda") / math.sqrt(K)
    gs = 128 if K % 128 == 0 else 64
    w4, w8 = quantize_int4(w, gs), quantize_int8(w)
    int4 = lambda x, *wt: (cuda.int4_gemv if x.shape[0] <= cuda.GEMV_MAX_M else cuda.int4_dense)(x, *wt, gs)
    int8 = lambda x, *wt: (cuda.int8_gemv if x.shape[0] <= cuda.GEMV_MAX_M else cuda.int8_dense)(x, *wt)
    name4 = lambda M: "cuda.int4_gemv" if M <= cuda.GEMV_MAX_M else "cuda.int4_dense"
    name8 = lambda M: "cuda.int8_gemv" if M <= cuda.GEMV_MAX_M else "cuda.int8_dense"
    return [
        dict(method="fp16 F.linear", tool="torch", num_bits=16, group_size=None, dtype=torch.float16,
             weights=(w.half(),), call=F.linear, kernel=lambda M: "aten.linear fp16 (cuBLAS)"),
        dict(method="bf16 F.linear", tool="torch", num_bits=16, group_size=None, dtype=torch.bfloat16,
             weights=(w.bfloat16(),), call=F.linear, kernel=lambda M: "aten.linear bf16 (cuBLAS)"),
        dict(method=f"int4 g{gs} weight-only, fp16 x", tool="lowbit", num_bits=4, group_size=gs,
             dtype=torch.float16, weights=w4, call=int4, kernel=name4),
        dict(method=f"int4 g{gs} weight-only, bf16 x", tool="lowbit", num_bits=4, group_size=gs,
             dtype=torch.bfloat16, weights=w4, call=int4, kernel=name4),
        dict(method="int8 weight-only, fp16 x", tool="lowbit", num_bits=8, group_size=None,
             dtype=torch.float16, weights=w8, call=int8, kernel=name8),
        dict(method=f"int4 g{gs} reference (dequantize + matmul), fp16 x", tool="lowbit", num_bits=4,
             group_size=gs, dtype=torch.float16, weights=w4,
             call=lambda x, *wt: reference.linear_int4(x, *wt, gs), kernel=lambda M: "reference.linear_int4"),
    ]


def time_method(call, x, weights, replays: int) -> tuple[float, float]:
    """(graph latency, eager latency) in seconds per call, weights cycled over L2-busting copies."""
    copies = max(1, min(256, math.ceil(ROTATE_BYTES / nbytes(*weights))))
    sets = [weights] + [tuple(t.clone() for t in weights) for _ in range(copies - 1)]
    calls = max(copies, 20)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up (builds, cuBLAS heuristics) outside the capture
        for i in range(3):
            call(x, *sets[i % copies])
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls):
            call(x, *sets[i % copies])
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def timed(fn, n):
        samples = []
        for _ in range(n):
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1e3 / calls)
        return statistics.median(samples)

    graph.replay()
    graph_s = timed(graph.replay, replays)
    eager_s = timed(lambda: [call(x, *sets[i % copies]) for i in range(calls)], max(3, replays // 4))
    del graph, sets
    return graph_s, eager_s


def run(quick: bool) -> list[dict]:
    info, version = gpu_machine(), getattr(__import__("lowbit"), "__version__", "0.1.0")
    peak = info["nominal_hbm_gbps"]
    rows = []
    for K, N in QUICK_SHAPES if quick else SHAPES:
        ms = methods(K, N)
        for M in BATCHES:
            x = torch.randn(M, K, device="cuda")
            times = [time_method(m["call"], x.to(m["dtype"]), m["weights"], 10 if quick else 25) for m in ms]
            fp16 = times[0][0]
            for m, (t, eager) in zip(ms, times):
                weight_bytes = nbytes(*m["weights"])
                gbps = weight_bytes / t / 1e9
                rows.append({"model": f"linear {K}x{N}", "method": m["method"], "kernel": m["kernel"](M),
                             "tool": m["tool"], "num_bits": m["num_bits"], "group_size": m["group_size"],
                             "M": M, "K": K, "N": N, "latency_us": round(t * 1e6, 2),
                             "eager_us": round(eager * 1e6, 2), "speedup_vs_fp16": round(fp16 / t, 2),
                             "weight_bytes": weight_bytes, "gbps": round(gbps, 1),
                             "pct_of_nominal_hbm": round(100 * gbps / peak, 1) if peak else None,
                             "machine": info, "lowbit_version": version})
                print(f"{K}x{N} M={M} {m['method']:<50} {t * 1e6:8.2f} us (eager {eager * 1e6:7.2f})"
                      f"  x{fp16 / t:5.2f}  {gbps:7.1f} GB/s  {rows[-1]['kernel']}", flush=True)
    return rows


def sweep() -> None:
    """Print int4/int8 GEMV latency over (warps, unroll) launch settings (tuning aid, not saved)."""
    ext = cuda.extension_status()[0]
    for K, N, batches in [(4096, 11008, (1, 8)), (11008, 4096, (1,)), (576, 49152, (1,))]:
        gs = 128 if K % 128 == 0 else 64
        w4 = quantize_int4(torch.randn(N, K, device="cuda"), gs)
        w8 = quantize_int8(torch.randn(N, K, device="cuda"))
        for M in batches:
            x = torch.randn(M, K, device="cuda", dtype=torch.float16)
            for warps in (0, 4, 8):
                for unroll in (1, 2, 4):
                    t4, _ = time_method(lambda x, *w: ext.int4_gemv(x, *w, gs, None, warps, unroll), x, w4, 10)
                    t8, _ = time_method(lambda x, *w: ext.int8_gemv(x, *w, None, warps, unroll), x, w8, 10)
                    print(f"sweep {K}x{N} M={M} warps={warps} unroll={unroll}: int4 {t4 * 1e6:7.2f} us"
                          f"  int8 {t8 * 1e6:7.2f} us", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one shape, fewer replays")
    parser.add_argument("--sweep", action="store_true", help="also print a (warps, unroll) sweep")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "results" / "kernels_cuda.json"))
    args = parser.parse_args()
    if cuda.extension_status()[0] is None:
        raise SystemExit(f"benchmarks/kernels_cuda.py: {cuda.extension_status()[1]}")
    rows = run(args.quick)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(rows, indent=1))
    os.replace(tmp, out)
    print(f"wrote {len(rows)} rows to {out}")
    if args.sweep:
        sweep()


if __name__ == "__main__":
    main()
