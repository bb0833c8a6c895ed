"""``lowbit doctor``: before anything runs, what each layer would become and which kernel runs it."""
from __future__ import annotations

import os
import platform

import torch
from torch import nn

from . import kernels
from .kernels import rnn

_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512vbmi", "avx512_vnni", "avx512_bf16",
          "avx512_fp16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")


def _cpuinfo(key: str) -> str:
    """The first ``key : value`` of /proc/cpuinfo ('' where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.split(":")[0].strip() == key), "")
    except OSError:
        return ""


def cpu_flags() -> list[str]:
    """The CPU features lowbit's kernels care about, as /proc/cpuinfo names them."""
    flags = set(_cpuinfo("flags").split())
    return [f for f in _FLAGS if f in flags]


def machine(device: str = "cpu") -> dict:
    """What a result row records about the machine that measured it (the one definition).

    ``cores`` is the torch thread count the process runs with (what the measurement used),
    ``logical_cpus`` the machine's; ``cpu`` the model name from /proc/cpuinfo. With
    ``device="cuda"`` the GPU's name, CUDA version, SM count and L2 size are added.
    """
    info = {"cores": torch.get_num_threads(), "logical_cpus": os.cpu_count(),
            "cpu": _cpuinfo("model name") or platform.processor() or platform.machine(),
            "cpu_flags": cpu_flags(), "torch": torch.__version__}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, cuda=torch.version.cuda, sm_count=props.multi_processor_count,
                    l2_mb=round(props.L2_cache_size / 2**20, 1))
    elif device != "cpu":
        raise ValueError(f"machine(device=...) expects 'cpu' or 'cuda', got {device!r}")
    return info


def kernel_table() -> str:
    lines = ["| op | kernel | path | note |", "|---|---|---|---|"]
    for row in kernels.available():
        lines.append(f"| {row['op']} | {row['kernel']} | {row['path']} | {row.get('reason', '')} |")
    lstm = rnn.lstm_kernel(hidden_size=2)  # QLSTM (nn.LSTM under w8a8); odd hidden sizes run the reference
    lines.append(f"| lstm_w8a8_dynamic | {lstm} | {'reference' if lstm.startswith('reference.') else 'real'} "
                 f"| {rnn.why()} |")
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
