"""The report as Markdown (report.md); plots are linked by file name, next to it."""
from __future__ import annotations

from .document import Block, Bullets, Heading, Image, Paragraph, Table, build, main_table


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def render_table(t: Table) -> str:
    lines = ["| " + " | ".join(map(_cell, t.headers)) + " |", "|" + "---|" * len(t.headers)]
    lines += ["| " + " | ".join(map(_cell, row)) + " |" for row in t.rows]
    if t.footnotes:
        lines += [""] + list(t.footnotes)
    return "\n".join(lines)


def render_block(block: Block) -> str:
    if isinstance(block, Heading):
        return "#" * block.level + " " + block.text
    if isinstance(block, Paragraph):
        return block.text
    if isinstance(block, Bullets):
        return "\n".join(f"- {item}" for item in block.items)
    if isinstance(block, Table):
        return render_table(block)
    if isinstance(block, Image):
        return f"![{block.alt}]({block.filename})"
    raise TypeError(f"render_block: expected a document block, got {type(block).__name__}")


def table(comparison: dict) -> str:
    """The main table as Markdown: a header line, a separator, then one line per row of the comparison."""
    return render_table(main_table(comparison))


def render(comparison: dict, plot_files: list[str]) -> str:
    return "\n\n".join(render_block(b) for b in build(comparison, plot_files)) + "\n"
