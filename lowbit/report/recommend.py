"""Which strategy to use: the pick under a budget, its cheaper and better neighbours, the Pareto front.

Pure functions over the comparison dict (the content of ``comparison.json``); no I/O.
Quality is compared through :func:`goodness`, the primary metric oriented so that larger is
better (``metric.higher_is_better`` says which way the raw value points).
"""
from __future__ import annotations

import math

from .rows import check_comparison, goodness, method_name, num, pct, quality_num, speed_label, value

# The row field each budget kind limits (from above).
BUDGET_FIELD = {"size_mb": "size_mb", "bpw": "bpw_model", "max_loss": "quality_loss"}
# No budget given: the largest relative quality loss accepted, per model kind. A causal LM's
# perplexity moves more for the same real damage than an accuracy or a cosine does.
DEFAULT_MAX_LOSS = {"causal-lm": 0.05, "encoder": 0.01, "cnn": 0.01, "rnn-lm": 0.01}
FALLBACK_MAX_LOSS = 0.01


def effective_budget(comparison: dict) -> dict:
    """The budget recommend() applies: the given one, or the kind's default max-loss (``default: True``)."""
    budget = comparison.get("budget")
    if budget is not None:
        return {"kind": budget["kind"], "value": float(budget["value"]), "default": False}
    limit = DEFAULT_MAX_LOSS.get(comparison.get("kind"), FALLBACK_MAX_LOSS)
    return {"kind": "max_loss", "value": limit, "default": True}


def meets(row: dict, budget: dict) -> bool:
    x = value(row, BUDGET_FIELD[budget["kind"]])
    return x is not None and x <= budget["value"]


def _speed(row: dict) -> float:
    s = value(row, "speed")
    return -math.inf if s is None else s


def choose(rows: list[dict], budget: dict, higher_is_better: bool) -> dict | None:
    """The best row meeting ``budget``; the reference row only when it is the only one meeting it.

    size_mb / bpw: the best quality (ties: faster). max_loss: the smallest size (ties: better
    quality, then faster).
    """
    candidates = [r for r in rows if r.get("status") == "ok" and meets(r, budget)
                  and goodness(r, higher_is_better) is not None]
    candidates = [r for r in candidates if not r.get("reference")] or candidates
    if not candidates:
        return None
    if budget["kind"] == "max_loss":
        def key(r):
            size = value(r, "size_mb")
            return (-(math.inf if size is None else size), goodness(r, higher_is_better), _speed(r))
    else:
        def key(r):
            return (goodness(r, higher_is_better), _speed(r))
    return max(candidates, key=key)


def pareto_front(rows: list[dict], x: str, *, x_higher_is_better: bool, higher_is_better: bool) -> list[dict]:
    """The ok rows no other row dominates on (``x``, quality), sorted by ``x`` ascending.

    A row dominates another when it is at least as good on both axes and strictly better on one
    (for size: smaller; for speed: faster). Rows without ``x`` or quality are left out.
    """
    sign = 1.0 if x_higher_is_better else -1.0
    points = [(sign * value(r, x), goodness(r, higher_is_better), r) for r in rows
              if r.get("status") == "ok" and value(r, x) is not None and goodness(r, higher_is_better) is not None]

    def dominated(p) -> bool:
        return any(a >= p[0] and b >= p[1] and (a > p[0] or b > p[1]) for a, b, _ in points)

    return sorted((r for p in points if not dominated(p) for r in [p[2]]), key=lambda r: value(r, x))


def _cheaper(rows: list[dict], pick: dict, hib: bool) -> dict | None:
    """The best-quality ok row smaller than the pick (ties: smaller, then faster)."""
    size = value(pick, "size_mb")
    smaller = [r for r in rows if r is not pick and r.get("status") == "ok" and size is not None
               and value(r, "size_mb") is not None and value(r, "size_mb") < size
               and goodness(r, hib) is not None]
    return max(smaller, key=lambda r: (goodness(r, hib), -value(r, "size_mb"), _speed(r)), default=None)


def _better(rows: list[dict], pick: dict, hib: bool) -> dict | None:
    """The smallest ok row with better quality than the pick (ties: better quality, then faster)."""
    g = goodness(pick, hib)
    better = [r for r in rows if r is not pick and r.get("status") == "ok" and goodness(r, hib) is not None
              and goodness(r, hib) > g]
    return min(better, key=lambda r: (math.inf if value(r, "size_mb") is None else value(r, "size_mb"),
                                      -goodness(r, hib), -_speed(r)), default=None)


def _closest(rows: list[dict], budget: dict) -> dict | None:
    """The ok (non-reference where possible) row nearest to meeting ``budget``."""
    field = BUDGET_FIELD[budget["kind"]]
    measured = [r for r in rows if r.get("status") == "ok" and value(r, field) is not None]
    measured = [r for r in measured if not r.get("reference")] or measured
    return min(measured, key=lambda r: value(r, field), default=None)


def recommend(comparison: dict) -> dict:
    """The strategy to use under the comparison's budget, with its next cheaper and better options.

    Budgets (``comparison["budget"]``): ``size_mb`` / ``bpw`` (bits per weight, ``bpw_model``):
    among ok rows within it, the best quality, ties broken by speed. ``max_loss`` (relative
    quality loss vs the float reference, 0.01 = 1%): among ok rows within it, the smallest, ties
    broken by quality then speed. No budget: ``max_loss`` with a default per model kind,
    :data:`DEFAULT_MAX_LOSS` (5% for a causal LM's perplexity, 1% for encoders, CNNs and RNN
    LMs, 1% for any other kind); the paragraph says which default it used.

    Failed rows are never picked; the float reference row is picked only when it is the only row
    meeting the budget, and the paragraph says so. ``cheaper`` is the best-quality row smaller
    than the pick, ``better`` the smallest row with better quality. When nothing meets the
    budget ``pick`` is None and ``closest`` names the row nearest to it.

    Returns ``{"pick", "cheaper", "better", "closest", "budget", "met", "text"}`` (rows are the
    comparison's own dicts; ``budget`` is the one applied).
    """
    check_comparison(comparison)
    hib = comparison["metric"]["higher_is_better"]
    rows = comparison["rows"]
    budget = effective_budget(comparison)
    pick = choose(rows, budget, hib)
    result = {"pick": pick, "cheaper": None, "better": None, "closest": None, "budget": budget,
              "met": pick is not None}
    if pick is not None:
        result["cheaper"] = _cheaper(rows, pick, hib)
        result["better"] = _better(rows, pick, hib)
    else:
        result["closest"] = _closest(rows, budget)
    result["text"] = recommendation_text(comparison, result)
    return result


def budget_phrase(comparison: dict, budget: dict) -> str:
    """A budget in words: 'model size <= 60 MB'."""
    v = budget["value"]
    if budget["kind"] == "size_mb":
        return f"model size ≤ {num(v)} MB"
    if budget["kind"] == "bpw":
        return f"≤ {num(v)} bits per weight"
    metric = comparison["metric"]
    return f"quality loss ≤ {pct(v, signed=False)} of the float model's {metric.get('label') or metric.get('name')}"


def describe(comparison: dict, row: dict, named: bool = True) -> str:
    """One row's measurements in words: 'GPTQ W4 g64 (gptq:w4g64): perplexity 21.3, loss +4.2% vs float, ...'."""
    metric = comparison["metric"]
    parts = [f"{metric.get('label') or metric.get('name')} {quality_num(value(row, 'quality'))}"]
    if not row.get("reference") and value(row, "quality_loss") is not None:
        parts.append(f"loss {pct(value(row, 'quality_loss'))} vs float")
    if value(row, "size_mb") is not None:
        parts.append(f"{num(value(row, 'size_mb'))} MB")
    if value(row, "bpw_model") is not None:
        parts.append(f"{value(row, 'bpw_model'):.2f} bits/weight")
    if value(row, "speed") is not None:
        slow = " (on a reference (slow) kernel, not this format's real speed)" if row.get("reference_kernels") else ""
        parts.append(f"{num(value(row, 'speed'))} {speed_label(comparison)}{slow}")
    return (f"{_name(row)}: " if named else "") + ", ".join(parts)


def _name(row: dict) -> str:
    """'GPTQ W4 g64 (gptq:w4g64)', or the strategy alone when it is also the method's name."""
    name = method_name(row)
    return name if name == row["strategy"] else f"{name} ({row['strategy']})"


def _change(new: float | None, old: float | None) -> str:
    return pct(new / old - 1) if new is not None and old else "—"


def _neighbours(comparison: dict, result: dict) -> list[str]:
    pick, cheaper, better = result["pick"], result["cheaper"], result["better"]
    out = []
    if cheaper is None:
        out.append("Nothing smaller than the pick was measured.")
    else:
        loss_a, loss_b = value(pick, "quality_loss"), value(cheaper, "quality_loss")
        cost = (f", {100 * (loss_b - loss_a):.1f} percentage points more quality loss"
                if loss_a is not None and loss_b is not None else "")
        out.append(f"Next cheaper option: {describe(comparison, cheaper)}; size "
                   f"{_change(value(cheaper, 'size_mb'), value(pick, 'size_mb'))} vs the pick{cost}.")
    if better is None:
        out.append("Nothing measured has better quality than the pick.")
    else:
        speed = ""
        if value(better, "speed") is not None and value(pick, "speed") is not None:
            speed = f", speed {_change(value(better, 'speed'), value(pick, 'speed'))}"
        out.append(f"Next better option: {describe(comparison, better)}; size "
                   f"{_change(value(better, 'size_mb'), value(pick, 'size_mb'))} vs the pick{speed}.")
    return out


def _miss(comparison: dict, budget: dict, row: dict) -> str:
    """How far ``row`` is from meeting ``budget``: '42.3 MB (+423.0%) over the budget'."""
    v = budget["value"]
    x = value(row, BUDGET_FIELD[budget["kind"]])
    if budget["kind"] == "max_loss":
        return f"{100 * (x - v):.2f} percentage points of quality loss over the budget"
    unit = " MB" if budget["kind"] == "size_mb" else " bits/weight"
    relative = f" ({pct(x / v - 1)})" if v else ""
    return f"{num(x - v)}{unit}{relative} over the budget"


def recommendation_text(comparison: dict, result: dict) -> str:
    """The recommendation paragraph of the report, from recommend()'s result."""
    budget = result["budget"]
    if budget["default"]:
        kind = comparison.get("kind") or "model of unknown kind"
        out = [f"No budget was given, so lowbit applied its default for a {kind}: "
               f"{budget_phrase(comparison, budget)} (defaults: 5% for causal LMs, 1% for encoders, "
               f"CNNs, RNN LMs and other kinds)."]
    else:
        out = [f"Budget: {budget_phrase(comparison, budget)}."]
    pick = result["pick"]
    if not any(r.get("status") == "ok" for r in comparison["rows"]):
        return " ".join(out + ["Every strategy failed, so there is nothing to recommend; the table lists the errors."])
    if pick is None:
        out.append(f"No strategy meets the budget ({budget_phrase(comparison, budget)}).")
        closest = result["closest"]
        out.append("No row has the measurement this budget needs." if closest is None else
                   f"The closest is {_name(closest)}, {_miss(comparison, budget, closest)}: "
                   f"{describe(comparison, closest, named=False)}.")
        return " ".join(out)
    if pick.get("reference"):
        out.append(f"Only the float reference meets this budget, so keep the model unquantized: "
                   f"{describe(comparison, pick)}. No quantization strategy met it.")
    else:
        out.append(f"Recommended: {describe(comparison, pick)}.")
    return " ".join(out + _neighbours(comparison, result))
