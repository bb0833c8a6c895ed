"""The report's content, once, as a list of blocks that markdown.py and html.py render.

Every number in a block is read from the comparison dict (or is a ratio of two of its numbers);
nothing is measured or estimated here.
"""
from __future__ import annotations

from dataclasses import dataclass

from .recommend import budget_phrase, choose, effective_budget, recommend
from .rows import (DASH, check_comparison, goodness, method_name, metric_label, num, pct, quality_num, ratio,
                   reference_row, speed_label, value)

SLOW_MARK = "†"
SLOW_FOOTNOTE = (f"{SLOW_MARK} speed measured with at least one layer on a reference (pure-PyTorch, slow) "
                 "kernel: not this format's real speed on hardware that has its fast kernel.")
# The textbook comparison's strategy families ("table 13.1"), in its order, with the row families each holds.
FAMILY_GROUPS = (("float / autocast", ("float", "autocast")), ("dynamic PTQ", ("dynamic",)),
                 ("static PTQ", ("static",)), ("weight-only", ("weight-only",)), ("LLM methods", ("llm",)),
                 ("QAT", ("qat",)), ("distillation", ("distill",)), ("mixed precision", ("mixed",)),
                 ("pruning", ("prune",)))
# CPU feature groups the header reports, with the /proc/cpuinfo flags that make each one present.
FLAG_GROUPS = (("AVX2", lambda f: f == "avx2"), ("AVX-512", lambda f: f.startswith("avx512")),
               ("VNNI", lambda f: f in ("avx512_vnni", "avx_vnni", "avx512vnni")),
               ("AMX", lambda f: f.startswith("amx")))


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Bullets:
    items: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    """A table; ``marks`` gives each row a class ('', 'failed', 'reference'), ``name`` its id in HTML."""
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    marks: tuple[str, ...] = ()
    footnotes: tuple[str, ...] = ()
    name: str = ""

    def __post_init__(self):
        for i, row in enumerate(self.rows):
            if len(row) != len(self.headers):
                raise ValueError(f"table {self.name!r} row {i}: expected {len(self.headers)} cells, got {len(row)}")
        if self.marks and len(self.marks) != len(self.rows):
            raise ValueError(f"table {self.name!r}: expected one mark per row ({len(self.rows)}), got {len(self.marks)}")


@dataclass(frozen=True)
class Image:
    filename: str
    alt: str


Block = Heading | Paragraph | Bullets | Table | Image


def _machine_lines(comparison: dict) -> list[str]:
    m = comparison.get("machine") or {}
    cores = f", {m['cores']} cores" if m.get("cores") is not None else ""
    torch = f", torch {m['torch']}" if m.get("torch") else ""
    lines = [f"Machine: {m.get('cpu') or 'CPU not recorded'}{cores}{torch}"]
    flags = m.get("flags", m.get("cpu_flags"))
    if flags is None:
        lines.append("CPU features: not recorded")
    else:
        groups = []
        for name, present in FLAG_GROUPS:
            hits = [f for f in flags if present(f)]
            groups.append(f"{name} {'yes (' + ' '.join(hits) + ')' if len(hits) > 1 else 'yes' if hits else 'no'}")
        lines.append("CPU features that matter: " + ", ".join(groups))
    gpu = m.get("gpu") or m.get("cuda")
    version = f" (CUDA {m['cuda']})" if m.get("gpu") and m.get("cuda") else ""
    lines.append(f"CUDA device: {gpu}{version}" if gpu else "CUDA device: none")
    return lines


def header(comparison: dict) -> list[Block]:
    title = f"lowbit compare: {comparison.get('model', 'model')}"
    if comparison.get("kind"):
        title += f" ({comparison['kind']})"
    run = []
    if comparison.get("started"):
        run.append(f"started {comparison['started']}")
    if value(comparison, "wall_s") is not None:
        run.append(f"wall time {num(value(comparison, 'wall_s'))} s")
    if comparison.get("quick"):
        run.append("quick mode")
    lines = _machine_lines(comparison)
    lines.append(f"Quality metric: {metric_label(comparison)}; speed metric: {speed_label(comparison)} "
                 "(higher is better)")
    if run:
        lines.append("Run: " + ", ".join(run))
    if comparison.get("command"):
        lines.append(f"Command: {comparison['command']}")
    blocks: list[Block] = [Heading(title, 1), Bullets(tuple(lines))]
    kernels = comparison.get("fast_kernels") or {}
    if kernels:
        blocks += [Heading("Kernels on this machine"),
                   Bullets(tuple(f"{fmt}: {'fast kernel HERE' if fast else 'reference path (slow) here'}"
                                 for fmt, fast in kernels.items()))]
    return blocks


def _needs(row: dict) -> str:
    needs = row.get("needs")
    text = DASH if needs is None else ", ".join(map(str, needs)) or "nothing"
    minutes = value(row, "train_minutes")
    return f"{text}; {num(minutes)} min training" if minutes else text


def _speed(row: dict) -> str:
    """The speed, † when a reference kernel ran, and its ratio to the float model timed in the
    same process (when the trial measured it)."""
    speed, same = value(row, "speed"), value(row, "speed_fp32_same_process")
    text = num(speed) + (SLOW_MARK if speed is not None and row.get("reference_kernels") else "")
    return text + (f" ({ratio(speed, same)} fp32)" if speed is not None and same else "")


def _main_cells(row: dict) -> tuple[str, ...]:
    name = method_name(row) + (" (float reference)" if row.get("reference") else "")
    if row.get("status") == "failed":
        error = " ".join(str(row.get("error") or "no error recorded").split())
        return (name, row["strategy"], f"failed: {error}") + (DASH,) * 8
    bpw = value(row, "bpw_model")
    return (name, row["strategy"], quality_num(value(row, "quality")), pct(value(row, "quality_loss")),
            num(value(row, "size_mb")), DASH if bpw is None else f"{bpw:.2f}", _speed(row),
            num(value(row, "quant_s")), num(value(row, "peak_rss_mb")), _needs(row),
            ", ".join(map(str, row.get("kernels") or [])) or DASH)


def main_table(comparison: dict) -> Table:
    """One line per row of the comparison, failed ones with their error."""
    check_comparison(comparison)
    arrow = "↑" if comparison["metric"]["higher_is_better"] else "↓"
    quality = comparison["metric"].get("label") or comparison["metric"].get("name") or "quality"
    rows = comparison["rows"]
    slow = any(r.get("reference_kernels") and value(r, "speed") is not None for r in rows)
    return Table(headers=("method", "strategy", f"{quality} {arrow}", "loss vs float", "size MB", "bits/weight",
                          speed_label(comparison), "quantize s", "peak MB", "needs", "kernels"),
                 rows=tuple(_main_cells(r) for r in rows),
                 marks=tuple("failed" if r.get("status") == "failed" else "reference" if r.get("reference")
                             else "" for r in rows),
                 footnotes=(SLOW_FOOTNOTE,) if slow else (), name="main-table")


def _family_best(comparison: dict, rows: list[dict]) -> tuple[dict, bool]:
    """The family's row the recommendation rule picks under the budget, or its best quality (over budget)."""
    hib = comparison["metric"]["higher_is_better"]
    pick = choose(rows, effective_budget(comparison), hib)
    if pick is not None:
        return pick, True
    measured = [r for r in rows if goodness(r, hib) is not None]
    return max(measured or rows, key=lambda r: goodness(r, hib) or float("-inf")), False


def _family_cells(comparison: dict, label: str, rows: list[dict]) -> tuple[str, ...]:
    ok = [r for r in rows if r.get("status") == "ok"]
    if not ok:
        return (label, DASH, f"0 of {len(rows)} (all failed)") + (DASH,) * 6
    best, within = _family_best(comparison, ok)
    ref = reference_row(comparison) or {}
    # the ratio to the float model timed in the same process just before, when the trial has it
    same = value(best, "speed_fp32_same_process")
    speed_ratio = ratio(value(best, "speed"), same if same else value(ref, "speed"))
    if speed_ratio != DASH and best.get("reference_kernels"):
        speed_ratio += SLOW_MARK
    minutes = value(best, "train_minutes")
    return (label, method_name(best) + ("" if within else " (over budget)"), f"{len(ok)} of {len(rows)}",
            pct(value(best, "quality_loss")), _needs({**best, "train_minutes": None}) + f"; {num(value(best, 'quant_s'))} s",
            ratio(value(best, "size_mb"), value(ref, "size_mb")), speed_ratio,
            num(value(best, "peak_rss_mb")) + " MB", f"{num(minutes)} min" if minutes else DASH)


def family_section(comparison: dict) -> list[Block]:
    """The textbook "table 13.1" view: one line per strategy family on the four axes, measured here."""
    groups = [(label, set(names)) for label, names in FAMILY_GROUPS]
    known = {n for _, names in groups for n in names}
    groups += [(f, {f}) for f in dict.fromkeys(r.get("family") or "unknown" for r in comparison["rows"])
               if f not in known]
    lines, missing = [], []
    for label, names in groups:
        rows = [r for r in comparison["rows"] if (r.get("family") or "unknown") in names]
        if rows:
            lines.append(_family_cells(comparison, label, rows))
        else:
            missing.append(label)
    intro = (f"Each family's line is its row that the recommendation rule picks under the same budget "
             f"({budget_phrase(comparison, effective_budget(comparison))}); '(over budget)' marks a family "
             "none of whose rows meets it, shown by its best quality. Ratios are against the float reference.")
    blocks: list[Block] = [Heading("By strategy family"), Paragraph(intro), Table(
        headers=("family", "best row", "rows ok", "ACCURACY: loss vs float", "COMPLEXITY: needs; time to apply",
                 "PERFORMANCE: size vs float", "PERFORMANCE: speed vs float (same process)", "RESOURCES: peak memory",
                 "RESOURCES: training"),
        rows=tuple(lines), footnotes=(SLOW_FOOTNOTE,) if any(SLOW_MARK in c[6] for c in lines) else (),
        name="family-table")]
    if missing:
        blocks.append(Paragraph("Not in this comparison: " + ", ".join(missing) + "."))
    return blocks


def closing(comparison: dict) -> list[Block]:
    notes = [str(n) for n in comparison.get("notes") or []]
    if comparison.get("quick") and not any("quick" in n.lower() for n in notes):
        notes.insert(0, "Quick mode: reduced calibration and evaluation; the numbers are indicative.")
    data = comparison.get("data") or {}
    about = [f"{key}: {text}" for key, text in data.items()]
    about.append(f"lowbit version: {comparison.get('lowbit_version') or 'not recorded'}")
    return [Heading("Notes"), Bullets(tuple(notes) or ("none",)), Heading("Data"), Bullets(tuple(about))]


def build(comparison: dict, plot_files: list[str]) -> list[Block]:
    """The whole report, in order: header, recommendation, table, plots, families, notes, data."""
    blocks = header(comparison)
    blocks += [Heading("Recommendation"), Paragraph(recommend(comparison)["text"]),
               Heading("All strategies"), main_table(comparison)]
    if plot_files:
        blocks += [Heading("Plots"), Paragraph(
            "Red: the Pareto front (no other row is both better and smaller, resp. faster). Star and dashed "
            "line: the float reference. Hollow markers: speed measured on a reference (slow) kernel.")]
        blocks += [Image(f, f.removesuffix(".png").replace("_", " ")) for f in plot_files]
    return blocks + family_section(comparison) + closing(comparison)
