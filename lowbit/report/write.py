"""Writing a report folder atomically: everything is rendered in a temporary folder next to it,
then moved in, so a failure (a plot that cannot be drawn, a full disk) never leaves a half-written
report behind."""
from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from pathlib import Path

from . import html, markdown
from .plots import draw_all
from .rows import check_comparison

log = logging.getLogger("lowbit")

JSON_NAME, MD_NAME, HTML_NAME = "comparison.json", "report.md", "report.html"
PLOT_NAMES = ("quality_vs_size.png", "quality_vs_speed.png", "sensitivity.png")


def _serialise(comparison: dict) -> str:
    try:
        return json.dumps(comparison, indent=2) + "\n"
    except (TypeError, ValueError) as e:
        raise TypeError(f"write_report: the comparison must be JSON-serialisable (it is comparison.json), "
                        f"but {e}; convert tensors and numpy numbers to float/int/list first") from None


def _move_in(staging: Path, folder: Path, names: list[str]) -> None:
    """Put the staged files in ``folder``: one rename when it is new, else file by file (report last)."""
    if not folder.exists():
        staging.rename(folder)
        return
    for name in PLOT_NAMES:  # a plot of an earlier report that this one does not have
        if name not in names and (folder / name).exists():
            (folder / name).unlink()
    for name in names:
        os.replace(staging / name, folder / name)


def write_report(comparison: dict, folder: str | Path) -> dict:
    """Write ``comparison.json``, ``report.md``, a self-contained ``report.html`` and the plot PNGs.

    The plots are ``quality_vs_size.png`` and ``quality_vs_speed.png``, plus ``sensitivity.png``
    when the comparison has per-layer sensitivity. Files of an earlier report in ``folder`` are
    replaced; other files there are left alone. Returns ``{"json": Path, "md": Path, "html": Path,
    "plots": [Path, ...]}``.
    """
    check_comparison(comparison)
    text = _serialise(comparison)
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"write_report: expected a folder for the report, got the file {folder}; "
                         "give a folder path (it is created when missing)")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.parent / f".{folder.name}.{uuid.uuid4().hex[:12]}.tmp"
    staging.mkdir()
    try:
        (staging / JSON_NAME).write_text(text, encoding="utf-8")
        plots = [p.name for p in draw_all(comparison, staging)]
        (staging / MD_NAME).write_text(markdown.render(comparison, plots), encoding="utf-8")
        (staging / HTML_NAME).write_text(html.render(comparison, plots, staging), encoding="utf-8")
        _move_in(staging, folder, plots + [MD_NAME, HTML_NAME, JSON_NAME])
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("report written to %s", folder)
    return {"json": folder / JSON_NAME, "md": folder / MD_NAME, "html": folder / HTML_NAME,
            "plots": [folder / name for name in plots]}
