"""The report of a comparison: ``report.md``, a self-contained ``report.html``, plots and ``comparison.json``.

- :func:`write_report` writes the folder (atomically);
- :func:`recommend` picks the strategy to use under the comparison's budget (pure);
- :func:`table` is the main table as Markdown (what ``lowbit compare`` prints).

All three read the comparison dict that ``lowbit.compare`` produces (the content of comparison.json).
"""
from .markdown import table
from .recommend import pareto_front, recommend
from .write import write_report

__all__ = ["pareto_front", "recommend", "table", "write_report"]
