"""Reading a comparison dict: validation, numbers out of rows, and how they are written.

A row's numbers are read through :func:`value` (None when missing, null or not finite), so a
row without a measurement shows a dash instead of breaking the report.
"""
from __future__ import annotations

import math

BUDGET_KINDS = ("size_mb", "bpw", "max_loss")
DASH = "—"


def check_comparison(comparison: dict) -> None:
    """Raise ``ValueError``/``TypeError`` saying what is missing from a comparison dict."""
    if not isinstance(comparison, dict):
        raise TypeError(f"comparison: expected a dict (the content of comparison.json), got {type(comparison).__name__}")
    metric = comparison.get("metric")
    if not isinstance(metric, dict) or not isinstance(metric.get("higher_is_better"), bool):
        raise ValueError(f"comparison['metric']: expected a dict with a bool 'higher_is_better' "
                         f"(and 'name', 'label'), got {metric!r}")
    rows = comparison.get("rows")
    if not isinstance(rows, list):
        raise ValueError(f"comparison['rows']: expected a list of row dicts, got {type(rows).__name__}")
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("strategy"), str):
            raise ValueError(f"comparison['rows'][{i}]: expected a dict with a 'strategy' string, got {row!r}")
        if row.get("status") not in ("ok", "failed"):
            raise ValueError(f"row {row['strategy']!r}: expected status 'ok' or 'failed', got {row.get('status')!r}")
    budget = comparison.get("budget")
    if budget is not None and (not isinstance(budget, dict) or budget.get("kind") not in BUDGET_KINDS
                               or not _is_number(budget.get("value")) or budget["value"] < 0):
        raise ValueError(f"comparison['budget']: expected None or {{'kind': one of {BUDGET_KINDS}, "
                         f"'value': a number >= 0}}, got {budget!r}")


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def value(row: dict, key: str) -> float | None:
    """``row[key]`` when it is a finite number, else None (missing, null, NaN, inf)."""
    x = row.get(key)
    return float(x) if _is_number(x) else None


def ok_rows(comparison: dict) -> list[dict]:
    return [r for r in comparison["rows"] if r.get("status") == "ok"]


def reference_row(comparison: dict) -> dict | None:
    """The ok float reference row (``reference: true``), if the comparison has one."""
    return next((r for r in ok_rows(comparison) if r.get("reference")), None)


def goodness(row: dict, higher_is_better: bool) -> float | None:
    """The primary quality metric oriented so that larger is better (None when not measured)."""
    q = value(row, "quality")
    if q is None:
        loss = value(row, "quality_loss")
        return None if loss is None else -loss
    return q if higher_is_better else -q


def method_name(row: dict) -> str:
    return str(row.get("method") or row["strategy"])


def metric_label(comparison: dict) -> str:
    """The primary metric's label with its direction, e.g. 'perplexity (lower is better)'."""
    metric = comparison["metric"]
    label = metric.get("label") or metric.get("name") or "quality"
    return f"{label} ({'higher' if metric['higher_is_better'] else 'lower'} is better)"


def speed_label(comparison: dict) -> str:
    speed = comparison.get("speed_metric") or {}
    return str(speed.get("label") or speed.get("name") or "speed")


def num(x: float | None) -> str:
    """A measured number with about three significant digits ('—' when not measured)."""
    if x is None:
        return DASH
    magnitude = abs(x)
    if magnitude >= 100:
        return f"{x:.0f}"
    if magnitude >= 10:
        return f"{x:.1f}"
    if magnitude >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def quality_num(x: float | None) -> str:
    """A quality metric, one digit finer than :func:`num` (perplexities 20.02 and 20.05 differ)."""
    if x is None:
        return DASH
    magnitude = abs(x)
    digits = 1 if magnitude >= 100 else 2 if magnitude >= 10 else 3 if magnitude >= 1 else 4
    return f"{x:.{digits}f}"


def pct(fraction: float | None, signed: bool = True) -> str:
    """A relative change as a percentage: 0.042 -> '+4.2%', 0.0025 -> '+0.25%'."""
    if fraction is None:
        return DASH
    digits = 2 if abs(fraction) < 0.01 else 1
    return f"{100 * fraction:{'+' if signed else ''}.{digits}f}%"


def ratio(x: float | None, reference: float | None) -> str:
    """``x / reference`` as '0.27×' ('—' when either is missing or the reference is 0)."""
    if x is None or not reference:
        return DASH
    return f"{x / reference:.2f}×"
