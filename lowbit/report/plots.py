"""The report's plots (matplotlib, drawn on an Agg canvas: no pyplot, no global backend state).

Each function draws one figure from the comparison dict and saves it as a PNG at ``path``.
"""
from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .recommend import pareto_front
from .rows import method_name, metric_label, speed_label, value

FAMILY_COLOURS = {"float": "#222222", "autocast": "#7f7f7f", "dynamic": "#1f77b4", "static": "#ff7f0e",
                  "weight-only": "#2ca02c", "llm": "#d62728", "qat": "#9467bd", "distill": "#8c564b",
                  "mixed": "#e377c2", "prune": "#bcbd22"}
OTHER_COLOUR = "#17becf"
MAX_SENSITIVITY_BARS = 40
_DPI = 110


def _colour(row: dict) -> str:
    return FAMILY_COLOURS.get(row.get("family"), OTHER_COLOUR)


def _legend(ax, rows: list[dict], has_front: bool) -> None:
    families = list(dict.fromkeys(r.get("family") or "other" for r in rows if not r.get("reference")))
    handles = [Line2D([], [], marker="o", ls="", color=FAMILY_COLOURS.get(f, OTHER_COLOUR), label=f) for f in families]
    if any(r.get("reference") for r in rows):
        handles.append(Line2D([], [], marker="*", ms=12, ls="--", color="black", label="float reference"))
    if has_front:
        handles.append(Line2D([], [], marker="o", mfc="none", mec="red", ms=11, ls="-", color="red",
                              label="Pareto front"))
    if any(r.get("reference_kernels") for r in rows):
        handles.append(Line2D([], [], marker="o", mfc="none", mec="black", ls="", label="reference (slow) kernel"))
    ax.legend(handles=handles, fontsize=8, loc="best", framealpha=0.85)


def _scatter(ax, rows: list[dict], x: str, hib: bool) -> None:
    """One labelled point per row: family colour, a star for the reference, hollow on slow kernels."""
    for r in rows:
        px, py = value(r, x), value(r, "quality")
        hollow = bool(r.get("reference_kernels"))
        marker, size = ("*", 220) if r.get("reference") else ("o", 55)
        ax.scatter([px], [py], marker=marker, s=size, zorder=3, linewidths=1.5,
                   facecolors="none" if hollow else _colour(r), edgecolors=_colour(r))
        ax.annotate(r.get("strategy") or method_name(r), (px, py), xytext=(5, 4), textcoords="offset points", fontsize=7)


def quality_plot(comparison: dict, x: str, xlabel: str, path: Path, *, x_higher_is_better: bool) -> Path:
    """Quality (the primary metric) against ``x`` with the float line and the Pareto front."""
    hib = comparison["metric"]["higher_is_better"]
    rows = [r for r in comparison["rows"] if r.get("status") == "ok"
            and value(r, x) is not None and value(r, "quality") is not None]
    fig = Figure(figsize=(8, 5.5), dpi=_DPI)
    ax = fig.add_subplot()
    ax.set_xlabel(xlabel)
    ax.set_ylabel(metric_label(comparison))
    metric = comparison["metric"].get("label") or comparison["metric"].get("name")
    ax.set_title(f"{comparison.get('model', 'model')}: {metric} vs {xlabel.split(' (higher')[0]}")
    ax.grid(alpha=0.3)
    if not rows:
        ax.text(0.5, 0.5, f"no row has both {x} and quality measured", ha="center", va="center",
                transform=ax.transAxes)
    else:
        _scatter(ax, rows, x, hib)
        reference = next((r for r in rows if r.get("reference")), None)
        if reference is not None:
            ax.axhline(value(reference, "quality"), color="black", ls="--", lw=1, zorder=1)
        front = pareto_front(rows, x, x_higher_is_better=x_higher_is_better, higher_is_better=hib)
        fx, fy = [value(r, x) for r in front], [value(r, "quality") for r in front]
        # Size: best quality reachable at size <= x (holds to the right). Speed: at speed >= x (to the left).
        ax.step(fx, fy, where="pre" if x_higher_is_better else "post", color="red", lw=1.2, zorder=2)
        ax.scatter(fx, fy, s=150, facecolors="none", edgecolors="red", linewidths=1.2, zorder=4)
        xs = [value(r, x) for r in rows]
        if min(xs) > 0 and max(xs) / min(xs) > 8:
            ax.set_xscale("log")
        _legend(ax, rows, has_front=bool(front))
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def quality_vs_size(comparison: dict, path: Path) -> Path:
    return quality_plot(comparison, "size_mb", "model size (MB)", path, x_higher_is_better=False)


def quality_vs_speed(comparison: dict, path: Path) -> Path:
    label = f"{speed_label(comparison)} (higher is better)"
    return quality_plot(comparison, "speed", label, path, x_higher_is_better=True)


def sensitivity(comparison: dict, path: Path) -> Path:
    """Horizontal bars: the quality loss of quantizing each layer alone (largest first)."""
    entries = [e for e in comparison.get("sensitivity") or [] if value(e, "quality_loss") is not None]
    entries.sort(key=lambda e: value(e, "quality_loss"), reverse=True)
    shown = entries[:MAX_SENSITIVITY_BARS]
    several = len({e.get("strategy") for e in shown}) > 1
    labels = [f"{e.get('layer')} [{e.get('strategy')}]" if several else str(e.get("layer")) for e in shown]
    fig = Figure(figsize=(9, 1.5 + 0.28 * max(len(shown), 1)), dpi=_DPI)
    ax = fig.add_subplot()
    own = shown[0].get("metric") if shown else None     # e.g. lowbit.sensitivity's KL
    scale = 1 if own else 100
    ax.barh(range(len(shown)), [scale * value(e, "quality_loss") for e in shown], color="#1f77b4")
    ax.set_yticks(range(len(shown)), labels, fontsize=7)
    ax.invert_yaxis()
    if own:
        ax.set_xscale("log")
        ax.set_xlabel(f"{own} when only this layer is quantized ({shown[0].get('source', 'measured')})")
    else:
        metric = comparison["metric"].get("label") or comparison["metric"].get("name")
        ax.set_xlabel(f"quality loss when only this layer is quantized (% of the float model's {metric})")
    strategies = sorted({str(e.get("strategy")) for e in shown})
    title = f"per-layer sensitivity ({', '.join(strategies)})"
    if len(entries) > len(shown):
        title += f": the {len(shown)} largest of {len(entries)}"
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def draw_all(comparison: dict, folder: Path) -> list[Path]:
    """Every plot the comparison has data for, written into ``folder``; their paths."""
    paths = [quality_vs_size(comparison, folder / "quality_vs_size.png"),
             quality_vs_speed(comparison, folder / "quality_vs_speed.png")]
    if any(value(e, "quality_loss") is not None for e in comparison.get("sensitivity") or []):
        paths.append(sensitivity(comparison, folder / "sensitivity.png"))
    return paths
