"""``lowbit doctor``: before anything runs, what each layer would become and which kernel runs it."""
from __future__ import annotations

import platform

import torch
from torch import nn

from . import kernels

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
    plan = recipe.plan(model)
    out += ["", plan.table()]
    if plan.by_status("error"):
        out.append("fix: choose a group size that divides those layers, exclude them, or pass "
                   "skip_ragged=True to leave them float")
    if plan.reference_layers:
        out.append(f"note: {len(plan.reference_layers)} layer(s) would run a pure-PyTorch reference "
                   f"kernel (slow)")
    return "\n".join(out)
