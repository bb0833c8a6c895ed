"""The report as one self-contained HTML page: inline CSS, plots embedded as PNG data URIs.

Nothing on the page loads from elsewhere (no links, scripts, fonts or remote images), so the
file can be mailed or archived alone.
"""
from __future__ import annotations

import base64
from html import escape
from pathlib import Path

from .document import Block, Bullets, Heading, Image, Paragraph, Table, build

CSS = """
body { font-family: system-ui, sans-serif; max-width: 1150px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; } tr.reference td { background: #f5f8ff; } tr.failed td { background: #fff0f0; color: #a00; }
p.footnote { font-size: 0.8em; color: #555; } figure { margin: 1em 0; } img { max-width: 100%; }
"""


def _table(t: Table) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in t.headers)
    body = []
    for i, row in enumerate(t.rows):
        mark = t.marks[i] if t.marks else ""
        cls = f' class="{mark}"' if mark else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>")
    ident = f' id="{escape(t.name)}"' if t.name else ""
    notes = "".join(f'<p class="footnote">{escape(n)}</p>' for n in t.footnotes)
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{notes}"


def _image(image: Image, folder: Path) -> str:
    data = base64.b64encode((folder / image.filename).read_bytes()).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{escape(image.alt)}">'
            f"<figcaption>{escape(image.alt)}</figcaption></figure>")


def render_block(block: Block, folder: Path) -> str:
    if isinstance(block, Heading):
        return f"<h{block.level}>{escape(block.text)}</h{block.level}>"
    if isinstance(block, Paragraph):
        return f"<p>{escape(block.text)}</p>"
    if isinstance(block, Bullets):
        return "<ul>" + "".join(f"<li>{escape(item)}</li>" for item in block.items) + "</ul>"
    if isinstance(block, Table):
        return _table(block)
    if isinstance(block, Image):
        return _image(block, folder)
    raise TypeError(f"render_block: expected a document block, got {type(block).__name__}")


def render(comparison: dict, plot_files: list[str], folder: Path) -> str:
    """The page; ``plot_files`` are PNG names inside ``folder``, read and embedded."""
    title = escape(f"lowbit compare: {comparison.get('model', 'model')}")
    body = "\n".join(render_block(b, folder) for b in build(comparison, plot_files))
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{CSS}</style></head>\n<body>\n{body}\n</body></html>\n")
