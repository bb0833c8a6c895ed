"""``lowbit doctor``: before anything runs, what each layer would become and which kernel runs it."""
from __future__ import annotations

import platform

import torch
from torch import nn

from . import kernels
from .formats import bits_per_weight
from .nn.qlinear import kernel_op
from .nn.swap import matches

_FLAGS = ("avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile", "avx2", "fma")


def cpu_flags() -> list[str]:
    """The CPU features lowbit's kernels care about, as /proc/cpuinfo names them."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        flags = []
    return [f for f in _FLAGS if f in flags]


def machine() -> dict:
    return {"cores": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
            "cpu_flags": cpu_flags(), "torch": torch.__version__}


def kernel_table() -> str:
    lines = ["| op | kernel | path | note |", "|---|---|---|---|"]
    for row in kernels.available():
        lines.append(f"| {row['op']} | {row['kernel']} | {row['path']} | {row.get('reason', '')} |")
    return "\n".join(lines)


def layer_kernel(fmt, activation, x: torch.Tensor) -> str:
    """The kernel a Linear quantized to ``fmt`` (with ``activation`` mode) runs for ``x``."""
    if activation in ("int8_static", "static"):
        return "torch._int_mm (int8 x int8), static per-tensor activation scale"
    if activation == "llm_int8":
        op = "linear_w8a8_dynamic"
    else:
        op = kernel_op(fmt, "int8_dynamic" if activation == "dynamic" else activation)
    return kernels.kernel_for(op, x.device, x.dtype, x.shape)


def plan_rows(model: nn.Module, recipe) -> list[dict]:
    """One row per candidate layer: the format it would get, its kernel, its memory."""
    rows = []
    fmt, activation = recipe.format, recipe.activation
    for name, module in model.named_modules():
        if not name or not isinstance(module, recipe.types):
            continue
        weight = module.weight
        fp32_mb = weight.numel() * 4 / 2**20
        row = {"layer": name, "type": type(module).__name__, "shape": tuple(weight.shape),
               "fp32_mb": fp32_mb}
        if not matches(name, recipe.include) or matches(name, recipe.exclude):
            rows.append({**row, "format": "float (excluded)", "kernel": "-", "mb": fp32_mb})
            continue
        cols = weight.shape[1] if weight.dim() > 1 else 1
        if fmt.group_size and cols % fmt.group_size:
            rows.append({**row, "format": f"ERROR: group_size {fmt.group_size} does not divide "
                         f"{cols}", "kernel": "-", "mb": fp32_mb})
            continue
        if isinstance(module, nn.Embedding):
            kernel = "gather + dequantize (pure PyTorch)"
        else:
            kernel = layer_kernel(fmt, activation, torch.zeros(1, cols))
        bpw = bits_per_weight(fmt, weight.numel(), weight.shape[0])
        rows.append({**row, "format": fmt.label(), "kernel": kernel,
                     "mb": weight.numel() * bpw / 8 / 2**20})
    return rows


def diagnose(model: nn.Module, recipe=None) -> str:
    """A Markdown report: machine, kernels, and (with a recipe) the per-layer plan."""
    m = machine()
    out = [f"machine: {m['cpu']}, {m['cores']} threads, torch {m['torch']}, "
           f"flags: {' '.join(m['cpu_flags']) or 'none of interest'}", "", kernel_table()]
    params = sum(p.numel() for p in model.parameters())
    out += ["", f"model: {type(model).__name__}, {params / 1e6:.1f}M parameters, "
            f"{params * 4 / 2**20:.0f} MB in fp32"]
    if recipe is None:
        out.append("(give --recipe to see what each layer would become)")
        return "\n".join(out)
    rows = plan_rows(model, recipe)
    out += ["", f"plan for {recipe.describe()}:", "",
            "| layer | type | shape | format | kernel | MB (fp32 -> quantized) |", "|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['layer']} | {r['type']} | {r['shape']} | {r['format']} | {r['kernel']} | "
                   f"{r['fp32_mb']:.2f} -> {r['mb']:.2f} |")
    errors = [r for r in rows if r["format"].startswith("ERROR")]
    total_fp, total_q = sum(r["fp32_mb"] for r in rows), sum(r["mb"] for r in rows)
    out += ["", f"these layers: {total_fp:.1f} MB fp32 -> {total_q:.1f} MB; "
            f"{len(errors)} layer(s) would fail"]
    if errors:
        out.append("fix: choose a group size that divides those layers, exclude them, or pass "
                   "skip_ragged=True to leave them float")
    return "\n".join(out)
