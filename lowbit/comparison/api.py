"""``lowbit.compare``: which way of quantizing this model is best, measured on this machine."""
from __future__ import annotations

import datetime
import logging
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import __version__
from ..doctor import machine
from ..recipes import REGISTRY, from_spec
from .data import detect_kind, make_task
from .lm import recipe_fields
from .runner import failed_row, run_in_process, run_in_processes, run_on_ray
from .strategies import REFERENCE, default_strategies

log = logging.getLogger("lowbit")
_BUDGET = re.compile(r"^\s*(size|bpw|max-loss)\s*=\s*([0-9.]+)\s*(mb|%)?\s*$", re.IGNORECASE)
_BUDGET_KINDS = {"size": "size_mb", "bpw": "bpw", "max-loss": "max_loss"}


@dataclass(frozen=True)
class Budget:
    """What the recommendation must meet: ``size_mb`` (model MB), ``bpw`` (bits per weight,
    embeddings included) or ``max_loss`` (relative quality loss vs the float model, 0.02 = 2%)."""

    kind: str
    value: float

    def __post_init__(self) -> None:
        if self.kind not in _BUDGET_KINDS.values():
            raise ValueError(f"budget kind must be one of {sorted(_BUDGET_KINDS.values())}, got {self.kind!r}")
        if not self.value > 0:
            raise ValueError(f"budget {self.kind} must be positive, got {self.value}")

    @classmethod
    def parse(cls, text: str) -> "Budget":
        """``size=60`` / ``size=60MB``, ``bpw=4.5``, ``max-loss=0.02`` or ``max-loss=2%``."""
        m = _BUDGET.match(text)
        if not m:
            raise ValueError(f"budget {text!r} not understood; expected size=MB, bpw=BITS or "
                             f"max-loss=FRACTION (e.g. size=60, bpw=4.5, max-loss=2%)")
        value = float(m.group(2)) / (100 if m.group(3) == "%" else 1)
        return cls(_BUDGET_KINDS[m.group(1).lower()], value)

    def as_dict(self) -> dict:
        return {"kind": self.kind, "value": self.value}


def fast_kernels() -> dict[str, bool]:
    """Format -> whether it has a fast (non-reference) kernel on this machine."""
    from .. import kernels
    from ..kernels import rnn
    from ..recipes.autocast import native_half

    names = {"linear_int8_weight_only": "int8 weight-only", "linear_int4": "int4 weight-only",
             "linear_lowbit": "2/3/5/6-bit weight-only", "linear_w8a8_dynamic": "w8a8 dynamic",
             "linear_nf4": "nf4"}
    out = {names.get(r["op"], r["op"]): r["path"] != "reference" for r in kernels.available()
           if r["op"] in names}
    out["lstm w8a8 dynamic"] = not rnn.lstm_kernel(hidden_size=2).startswith("reference.")
    out["static int8 (torch quantized engine)"] = bool(torch.backends.quantized.supported_engines)
    out["bf16 matmul"] = native_half("bfloat16")
    return out


@dataclass
class Comparison:
    """The measured comparison: ``data`` is the comparison.json dict (see lowbit.report)."""

    data: dict

    @property
    def rows(self) -> list[dict]:
        return self.data["rows"]

    def table(self) -> str:
        from ..report import table

        return table(self.data)

    def recommend(self) -> dict:
        from ..report import recommend

        return recommend(self.data)

    def write_report(self, folder: str | os.PathLike) -> dict[str, Path]:
        from ..report import write_report

        return write_report(self.data, folder)


def _parse_strategies(strategies) -> list[str]:
    """Specs from a list or a comma-separated string, fp32 first. In a string the comma also
    separates a spec's options: a token that is no spec of its own but a valid option of the
    spec before it is glued back on ("gptq:w4g64,emb" stays one spec; "w8a8,nosuch" is two)."""
    tokens = [t.strip() for t in (strategies.split(",") if isinstance(strategies, str) else strategies)]
    specs: list[str] = []
    for token in filter(None, tokens):
        own = ":" in token or token in REGISTRY or token == REFERENCE
        glued = specs and f"{specs[-1]}{',' if ':' in specs[-1] else ':'}{token}"
        if glued and isinstance(strategies, str) and not own and _invalid(glued) is None:
            specs[-1] = glued
        else:
            specs.append(token)
    if not specs:
        raise ValueError("no strategies given; pass recipe specs such as 'w8a8,gptq:w4g64'")
    return ([REFERENCE] if REFERENCE not in specs else []) + specs


def _invalid(spec: str) -> str | None:
    """Why ``spec`` is no strategy (its error's first line), or None when it is one."""
    if spec == REFERENCE:
        return None
    try:
        from_spec(spec)
    except (ValueError, TypeError) as err:
        return str(err).splitlines()[0]
    return None


def compare(model: nn.Module | str, data: Any = None, strategies=None, budget=None, *,
            tokenizer: Any = None, kind: str | None = None, quick: bool = False,
            train_minutes: float = 0, workers: int | None = None, ray: str | None = None,
            isolate: bool = True, threads: int | None = None, model_name: str | None = None,
            report: str | os.PathLike | None = None, command: str | None = None) -> Comparison:
    """Quantize ``model`` every way in ``strategies`` and measure each against the float model.

    Args:
        model: an ``nn.Module`` or anything ``lowbit.models.load_model`` takes (a bundled name,
            a Hugging Face folder, a .gguf file, ``module:factory``).
        data: ``None`` (the kind's bundled default), ``"austen"``, ``"photos"``, ``"fashion"``,
            a ``.txt`` file, or a :class:`lowbit.comparison.tasks.Task`.
        strategies: recipe specs (a list or a comma-separated string); default: every family
            lowbit has for the model's kind (:func:`default_strategies`). ``fp32`` is always in.
        budget: a :class:`Budget` or its text (``size=60``, ``bpw=4.5``, ``max-loss=2%``).
        quick: less data and fewer timing runs (the notes say how much).
        train_minutes: adds QAT (and distillation for LMs) with this training budget each.
        workers, ray: run the trials on a local Ray with ``workers`` CPUs, or on the Ray
            cluster at ``ray``; otherwise each trial runs in a fresh child process
            (``isolate=False``: in this process).
        report: also write the report (report.md, report.html, comparison.json, plots) here.
        command: the command line that ran this, shown in the report's header.
    """
    start, started = time.perf_counter(), datetime.datetime.now(datetime.timezone.utc)
    if isinstance(model, str):
        from ..models import load_model

        model_name = model_name or model
        model, loaded_tokenizer = load_model(model)
        tokenizer = tokenizer if tokenizer is not None else loaded_tokenizer
    if not isinstance(model, nn.Module):
        raise TypeError(f"compare() expects an nn.Module or a model spec string, got {type(model).__name__}")
    model.eval()
    budget = Budget.parse(budget) if isinstance(budget, str) else budget
    kind = kind or getattr(data, "kind", None) or detect_kind(model, tokenizer)
    task = make_task(kind, model, tokenizer, data, quick=quick)
    specs = (default_strategies(kind, model, quick=quick, train_minutes=train_minutes)
             if strategies is None else _parse_strategies(strategies))
    threads = threads or max(1, min(2, os.cpu_count() or 1) // max(1, workers or 1))
    torch.set_num_threads(threads)
    log.info("compare: %s (%s), %d strategies", model_name or type(model).__name__, kind, len(specs))
    task.prepare(model)

    rows: dict[str, dict] = {}
    for spec in specs:
        why = _invalid(spec)
        if why:
            log.warning("lowbit compare: strategy %r skipped: %s", spec, why)
            rows[spec] = failed_row(spec, why)
    todo = [s for s in specs if s not in rows]
    if ray or (workers and workers > 1):
        trials = run_on_ray(model, task, todo, threads, address=ray, workers=workers)
    elif isolate:
        trials = run_in_processes(model, task, todo, threads)
    else:
        trials = run_in_process(model, task, todo, threads)
    for row in tqdm(trials, total=len(todo), desc="compare", unit="strategy", disable=None):
        rows[row["strategy"]] = row
        if row["status"] != "ok":
            log.warning("lowbit compare: strategy %r failed: %s", row["strategy"], row.get("error"))
    common = {"model": model_name or type(model).__name__, "tool": "lowbit", "lowbit_version": __version__}
    out = {
        **common, "kind": kind, "metric": dict(task.metric), "speed_metric": dict(task.speed_metric),
        "machine": {**machine(), "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "fast_kernels": fast_kernels(), "budget": budget.as_dict() if budget else None,
        "quick": quick, "notes": _notes(task, quick, workers, ray),
        "data": task.description, "started": started.isoformat(timespec="seconds"),
        "threads": threads, "rows": [{**common, **_recipe_fields(s), **rows[s]} for s in specs],
    }
    if command:
        out["command"] = command
    sens = _sensitivity(model, task, [s for s in specs if rows[s]["status"] == "ok"])
    if sens:
        out["sensitivity"] = sens
    _finite_or_null(out)
    out["wall_s"] = time.perf_counter() - start
    comparison = Comparison(out)
    if report is not None:
        comparison.write_report(report)
    return comparison


def _sensitivity(model: nn.Module, task, specs: list[str]) -> list[dict]:
    """Per-layer sensitivity rows of the first mixed-precision strategy that ran: its trial
    computed them with ``lowbit.sensitivity``, so they come from that function's cache."""
    from ..recipes.mixed import MixedPrecision

    for spec in specs:
        recipe = None if spec == REFERENCE else from_spec(spec)
        if not isinstance(recipe, MixedPrecision):
            continue
        try:
            sens = recipe.layer_sensitivity(model, task.calibration(recipe))
        except (ValueError, TypeError) as err:
            log.warning("lowbit compare: no sensitivity plot: %s", err)
            return []
        return [{**row, "source": recipe.sensitivity, "recipe": spec} for row in sens.rows(recipe.sensitivity)]
    return []


def _finite_or_null(comparison: dict) -> None:
    """NaN/inf measurements (a diverged perplexity) become null with a note: strict JSON."""
    for row in comparison["rows"]:
        for key, value in row.items():
            if isinstance(value, float) and not math.isfinite(value):
                row[key] = None
                comparison["notes"].append(f"{row['strategy']}: {key} was {value} (not finite), "
                                           f"shown as null")


def _recipe_fields(spec: str) -> dict:
    try:
        return recipe_fields(None if spec == REFERENCE else from_spec(spec))
    except (ValueError, TypeError):
        return {"num_bits": None, "group_size": None}


def _notes(task, quick: bool, workers, ray) -> list[str]:
    notes = []
    if quick:
        notes.append(f"quick mode: evaluated on {task.description.get('eval')}; calibrated on "
                     f"{task.description.get('calibration')}; {task.repeats} timed runs per speed "
                     f"figure (the full protocol uses more of each: run without --quick)")
    if ray or (workers and workers > 1):
        notes.append("trials ran in parallel on Ray: speed figures of concurrent trials share "
                     "the CPUs, compare them with care")
    return notes
